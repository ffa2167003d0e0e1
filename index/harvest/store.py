"""The database side of `shoggoth harvest`: the partial file a harvest writes batch by batch, its
resume state, and publishing it into the user's database."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from shoggoth.battery.personas import Item, Persona
from shoggoth.core.errors import BadInput
from shoggoth.index.store.connection import Connection, one_row
from shoggoth.index.store.database import (
    WAIT,
    check_same_battery,
    connect,
    harvested,
    insert_frame,
    remove,
    require_shoggoth,
    storage,
    tables,
    transaction,
)
from shoggoth.index.store.merge import MergeConfig, merge
from shoggoth.index.store.schema import battery_of, create_schema, upgrade_contract


def _held_runs(db: Path, personas: Sequence[Persona], items: Sequence[Item]) -> dict[str, Any]:
    """Check the database a harvest adds to (readable, not locked, a shoggoth database with the
    same battery); {sae_id: finished run} of the SAEs it already holds."""
    if db.is_dir():
        raise BadInput(f"--db {db}: is a directory, expected a DuckDB file")
    if not db.exists():
        if not db.parent.is_dir():
            raise BadInput(f"--db {db}: its folder {db.parent} does not exist")
        return {}
    con = connect(db, read_only=True, wait=WAIT)
    try:
        require_shoggoth(con, db)
        if not tables(con):
            return {}
        check_same_battery(con, db, battery_of(personas, items))
        ids = [r[0] for r in con.execute("SELECT sae_id FROM saes").fetchall()]
        return {i: harvested(con, i) for i in ids}
    finally:
        con.close()


@dataclass
class HarvestTarget:
    """The database a harvest adds to, and the life of the partial file it writes on the way:
    checked when made (before any work), opened or resumed, published, summarised."""

    db: Path
    """The user's database (publishing creates it when it does not exist)."""
    personas: Sequence[Persona]
    """The battery's personas, as harvested."""
    items: Sequence[Item]
    """The battery's items, as harvested."""
    sae_ids: list[str]
    """The SAEs harvested together, from the same forward passes."""
    held: dict[str, Any] = field(init=False)
    """{sae_id: finished run} of the SAEs the database already held when the harvest began."""

    def __post_init__(self) -> None:
        self.held = _held_runs(self.db, self.personas, self.items)

    @property
    def partial(self) -> Path:
        """Where the unfinished harvest keeps its batches, beside the database."""
        return self.db.parent / f".{self.db.name}.{'+'.join(self.sae_ids)}.partial"

    def already_done(self, sae_id: str, identity: dict[str, Any]) -> HarvestSummary:
        """A rerun of a finished harvest: its summary when the settings match, else BadInput."""
        done = self.held.get(sae_id)
        stored = (done or {}).get("config", {}).get("identity")
        if done is None or stored != identity:
            diff = sorted(k for k in identity if (stored or {}).get(k) != identity[k])
            raise BadInput(
                f"--db {self.db}: already holds SAE '{sae_id}' harvested with other settings "
                f"({', '.join(diff)}); use another --sae or another --db"
            )
        remove(self.partial)  # published, but killed before the partial file was removed
        return replace(summary(self.db, sae_id, 0.0), already_harvested=True)

    def open_partial(self) -> PartialStore:
        """The partial database, created (schema and battery) when new, else resumed."""
        path = self.partial
        if not path.exists():
            building = path.with_name(path.name + ".new")
            remove(building)
            con = connect(building)
            create_schema(con, self.personas, self.items)
            con.close()
            os.replace(building, path)
        con = connect(path, what="partial harvest")
        try:
            check_same_battery(
                con, path, battery_of(self.personas, self.items), what="partial harvest"
            )
            upgrade_contract(con)  # a partial file an earlier version began
        except BadInput:
            con.close()
            raise
        return PartialStore(path, con)

    def publish(self) -> None:
        """Publish the finished partial harvest into the database, re-checking the database first
        (it may have changed while the harvest ran)."""
        held = _held_runs(self.db, self.personas, self.items)
        for sae_id in self.sae_ids:
            if sae_id in held:
                raise BadInput(
                    f"--db {self.db}: gained SAE '{sae_id}' while this harvest ran; the "
                    f"finished harvest is kept in {self.partial}"
                )
        # Through merge even for a new database: a fresh file, sorted by key, without the free
        # blocks that batch-by-batch appends leave (a new file is built aside and renamed; an
        # existing one gains the rows in one transaction).
        merge(MergeConfig(db=self.db, inputs=[self.partial]), as_is=True)
        remove(self.partial)


class HarvestBatch(Protocol):
    """One SAE's rows of one batch, as the model side computes them (`sae.encode.Computed` is
    one); `doc` in the column dicts indexes the batch's items."""

    @property
    def n_tokens(self) -> list[int]:
        """Continuation tokens per document."""

    @property
    def activations(self) -> dict[str, np.ndarray]:
        """doc, pos, feature, value of every stored activation."""

    @property
    def doc_features(self) -> dict[str, np.ndarray]:
        """doc, feature, mean_act, max_act, n_fire per document and feature that fired."""

    @property
    def residual_sum(self) -> np.ndarray:
        """[d_in] the SAE's inputs summed over the batch's continuation tokens."""

    @property
    def shift(self) -> np.ndarray | None:
        """[n_docs, d_in] each document's mean shift against its reference (None: not kept)."""

    @property
    def shift_hat(self) -> np.ndarray | None:
        """[n_docs, d_in] the same shift through the dictionary."""


class PartialStore:
    """The partial database of one harvest: written one batch per transaction."""

    def __init__(self, path: Path, con: Connection) -> None:
        self.path = path
        self.con = con
        self.run_ids: dict[str, str] = {}
        """sae_id → its harvest run."""

    def resume_state(self, sae_id: str) -> dict[str, Any] | None:
        """The stored settings and progress of an earlier, unfinished run (None if new)."""
        row = self.con.execute(
            "SELECT r.run_id, r.config_json, s.value_decimals, s.prefix_cache FROM saes s "
            "JOIN runs r USING (run_id) WHERE s.sae_id = ?",
            [sae_id],
        ).fetchone()
        if row is None:
            return None
        self.run_ids[sae_id] = row[0]
        docs = one_row(self.con, "SELECT count(*) FROM documents")[0]
        return {
            "identity": json.loads(row[1])["identity"],
            "value_decimals": row[2],
            "prefix_cache": row[3],
            "documents": docs,
        }

    def start(
        self,
        sae_id: str,
        identity: dict[str, Any],
        config: dict[str, Any],
        versions: dict[str, str],
        sae_row: dict[str, Any],
        tokens: list[tuple[str, list[int], list[str]]],
    ) -> None:
        """Record the run, the SAE and each item's continuation tokens, in one transaction."""
        run_id = self.run_ids[sae_id] = uuid.uuid4().hex[:12]
        con = self.con
        rows = [
            (item_id, pos, tid, text)
            for item_id, ids, texts in tokens
            for pos, (tid, text) in enumerate(zip(ids, texts, strict=True))
        ]
        with transaction(con):
            con.execute(
                "INSERT INTO runs VALUES (?, 'harvest', ?, ?, now(), NULL, 'running')",
                [
                    run_id,
                    json.dumps({"identity": identity, "config": config}),
                    json.dumps(versions),
                ],
            )
            cols = ["sae_id", *sae_row, "run_id"]
            con.execute(
                f"INSERT INTO saes ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [sae_id, *sae_row.values(), run_id],
            )
            insert_frame(
                con,
                "tokens",
                pa.table(
                    {
                        "item_id": [r[0] for r in rows],
                        "pos": pa.array([r[1] for r in rows], pa.int32()),
                        "token_id": pa.array([r[2] for r in rows], pa.int32()),
                        "token": [r[3] for r in rows],
                    }
                ),
                [sae_id],
            )

    def done_documents(self, sae_id: str) -> set[tuple[str, int, str]]:
        """(persona, paraphrase, item_id) of every document already written."""
        return {
            (p, int(j), i)
            for p, j, i in self.con.execute(
                "SELECT persona::VARCHAR, paraphrase, item_id::VARCHAR FROM documents "
                "WHERE sae_id = ?",
                [sae_id],
            ).fetchall()
        }

    def write(
        self,
        persona: str,
        paraphrase: int,
        item_ids: list[str],
        per_sae: list[tuple[str, HarvestBatch]],
    ) -> None:
        """One batch's documents, activations, per-document aggregates and residual sum, for
        every SAE (`per_sae`: (sae_id, its computed batch: n_tokens, activations, doc_features,
        residual_sum)), in one transaction. In the computed dicts, column `doc` indexes
        `item_ids`. (Publishing sorts the rows.)"""

        def with_items(columns: dict[str, np.ndarray]) -> pa.Table:
            items = pa.DictionaryArray.from_arrays(
                pa.array(columns["doc"], pa.int32()), pa.array(item_ids)
            ).cast(pa.string())
            return pa.table({"item_id": items, **{k: v for k, v in columns.items() if k != "doc"}})

        with transaction(self.con):
            for sae_id, out in per_sae:
                docs = pa.table(
                    {"item_id": item_ids, "n_tokens": pa.array(out.n_tokens, pa.int32())}
                )
                tables = {
                    "documents": docs,
                    "activations": with_items(out.activations),
                    "doc_features": with_items(out.doc_features),
                }
                for name, table in tables.items():
                    insert_frame(self.con, name, table, [sae_id, persona, paraphrase])
                self.con.execute(
                    "INSERT INTO residual_sums VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        sae_id,
                        persona,
                        paraphrase,
                        item_ids[0],
                        int(sum(out.n_tokens)),
                        out.residual_sum.tolist(),
                    ],
                )
                if out.shift is not None and out.shift_hat is not None:
                    insert_frame(
                        self.con,
                        "document_shifts",
                        pa.table(
                            {
                                "item_id": item_ids,
                                "shift": pa.array(list(out.shift), pa.list_(pa.float32())),
                                "shift_hat": pa.array(list(out.shift_hat), pa.list_(pa.float32())),
                            }
                        ),
                        [sae_id, persona, paraphrase],
                    )

    def finish(self) -> None:
        """Mark the runs finished and fold the write-ahead log into the file."""
        for run_id in self.run_ids.values():
            self.con.execute(
                "UPDATE runs SET status = 'finished', finished_at = now() WHERE run_id = ?",
                [run_id],
            )
        self.con.execute("CHECKPOINT")

    def close(self) -> None:
        self.con.close()


@dataclass(frozen=True)
class HarvestSummary:
    """One SAE's end-of-harvest report: what the database holds of it, and how fast it came."""

    db: str
    """The database harvested into."""
    sae_id: str
    """The SAE harvested."""
    documents: int
    """Its documents in the database."""
    tokens: int
    """Its answer tokens in the database."""
    activations: int
    """Its non-zero activations in the database."""
    seconds: float
    """The harvest's wall time (0 when it was already done)."""
    file_bytes: int
    """The database file's size."""
    bytes_per_activation: float
    """Bytes of the activations table per activation (all SAEs)."""
    file_bytes_per_token: float
    """The file's bytes per harvested token (all SAEs)."""
    batch_seconds: float | None = None
    """This run's time in its batches, model load and set-up excluded (None: not measured)."""
    tokens_per_second: float | None = None
    """This run's steady-state rate (None: not measured)."""
    already_harvested: bool = False
    """The database held this harvest already; nothing was done."""

    def as_json(self) -> dict[str, object]:
        """The `--format json` output."""
        out: dict[str, object] = {
            "db": self.db,
            "sae_id": self.sae_id,
            "documents": self.documents,
            "tokens": self.tokens,
            "activations": self.activations,
            "seconds": self.seconds,
            "file_bytes": self.file_bytes,
            "bytes_per_activation": self.bytes_per_activation,
            "file_bytes_per_token": self.file_bytes_per_token,
        }
        if self.already_harvested:
            out["already_harvested"] = True
        if self.batch_seconds is not None:
            out["batch_seconds"] = self.batch_seconds
            out["tokens_per_second"] = self.tokens_per_second
        return out


@dataclass(frozen=True)
class HarvestResult:
    """What `shoggoth harvest` did: the summary of each SAE harvested together."""

    first: HarvestSummary
    """The first SAE's summary."""
    others: list[HarvestSummary]
    """The other SAEs' summaries (harvested from the same forward passes)."""
    shards: int | None = None
    """With --ray: the shards merged (None: one process)."""

    @property
    def summaries(self) -> list[HarvestSummary]:
        """Every SAE's summary, the first first."""
        return [self.first, *self.others]

    def as_json(self) -> dict[str, object]:
        """The `--format json` output: the first SAE's summary, with `others` the rest's."""
        shards = {} if self.shards is None else {"shards": self.shards}
        return {**self.first.as_json(), **shards, "others": [o.as_json() for o in self.others]}


def summary(db: Path, sae_id: str, seconds: float) -> HarvestSummary:
    """Counts and sizes for the end-of-run report."""
    con = connect(db, read_only=True, wait=WAIT)
    try:
        docs, tokens = one_row(
            con,
            "SELECT count(*), coalesce(sum(n_tokens), 0) FROM documents WHERE sae_id = ?",
            [sae_id],
        )
        acts = one_row(con, "SELECT count(*) FROM activations WHERE sae_id = ?", [sae_id])[0]
        all_acts, all_tokens = one_row(
            con,
            "SELECT (SELECT count(*) FROM activations), "
            "(SELECT coalesce(sum(n_tokens), 0) FROM documents)",
        )
        sizes = storage(con, db)
    finally:
        con.close()
    return HarvestSummary(
        str(db),
        sae_id,
        int(docs),
        int(tokens),
        int(acts),
        round(seconds, 1),
        int(sizes["file_bytes"]),
        round(sizes["activations_bytes"] / max(all_acts, 1), 3),
        round(sizes["file_bytes"] / max(int(all_tokens), 1), 1),
    )
