"""The shared reads of a feature database: the SAE (`SaeView`), the battery, the harvest's
counts and means, feature names and manual labels. Each stage's own tables are read through
that stage's `queries` module (index/labels/queries.py, index/effects/queries.py, …), so the
stage that writes a table also holds its reads; no caller writes SQL against the tables. Every
result that names a feature carries its label (a manual label wins over the automatic one).

`SaeView` is one SAE of a database opened read-only (or read through a cursor the caller
owns); the functions below it take one.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pandas as pd

from shoggoth.core.atomic import file_sha256
from shoggoth.core.errors import BadInput
from shoggoth.index.store.connection import Connection, one_row
from shoggoth.index.store.database import (
    WAIT,
    check_claims,
    check_writable,
    choose_sae,
    connect,
    faiss_dir,
    require_shoggoth,
    tables,
)
from shoggoth.index.store.sae_record import SaeRecord

if TYPE_CHECKING:
    import faiss


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def cached_sha256(path: Path) -> str:
    """A file's sha256, hashed once per (path, size, modification time) in this process."""
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


class SaeView:
    """A read-only view of one SAE in a feature database: labels, FAISS, persona vectors."""

    def __init__(
        self, db: Path, sae: str | None = None, con: Connection | None = None, wait: float = 0.0
    ) -> None:
        """Opens `db` read-only (waiting up to `wait` seconds for a writer's lock), or reads
        through `con` (a cursor the caller owns)."""
        if con is None and not db.is_file():
            raise BadInput(f"--db {db}: no such file")
        self.db = db
        self.owned = con is None
        self.con = connect(db, read_only=True, wait=wait) if con is None else con
        require_shoggoth(self.con, db)
        self.record = choose_sae(self.con, db, sae)
        """The chosen SAE's `saes` row."""
        self.sae_id = self.record.sae_id
        check_claims(self.con, db, self.record)
        self.tables = tables(self.con)
        self.labelled = has_table(self.con, "feature_labels")

    @classmethod
    def for_writing(cls, db: Path, sae: str | None = None) -> SaeView:
        """The view a step that will write `db` reads its inputs through: BadInput in one line
        unless the file exists, can be written and is free, checked before the work (not after
        it), then the contract tables and the chosen SAE (`sae`: its id, or None for the only
        one) as for any view."""
        if not db.is_file():
            raise BadInput(f"--db {db}: no such file")
        check_writable(db)
        return cls(db, sae, wait=WAIT)

    def close(self) -> None:
        if self.owned:
            self.con.close()

    def labels(self, features: list[int]) -> dict[int, dict[str, Any]]:
        """label, top_persona and density of each feature (label 'unlabelled' before
        `shoggoth label`)."""
        named = names(self.con, self.sae_id, features)
        if not self.labelled:
            return {
                f: {
                    "label": "unlabelled",
                    "top_persona": None,
                    "density": None,
                    "name": named.get(f),
                }
                for f in features
            }
        rows = self.con.execute(
            """
            SELECT l.feature, l.label, coalesce(l.top_persona, l.family_set), f.density
            FROM feature_labels l JOIN features f USING (sae_id, feature)
            WHERE l.sae_id = ? AND l.feature IN (SELECT unnest(?::INTEGER[]))""",
            [self.sae_id, features],
        ).fetchall()
        found = {
            f: {"label": lab, "top_persona": top, "density": dens} for f, lab, top, dens in rows
        }
        return {
            f: {
                **found.get(f, {"label": "unlabelled", "top_persona": None, "density": None}),
                "name": named.get(f),
            }
            for f in features
        }

    def check_feature(self, feature: int) -> None:
        d_sae = self.record.d_sae
        if not 0 <= feature < d_sae:
            raise BadInput(
                f"--feature {feature}: out of range (the SAE '{self.sae_id}' has "
                f"{d_sae:,} features, 0 to {d_sae - 1})"
            )

    def faiss_index(self, name: str = "decoder") -> faiss.Index:
        import faiss

        row = None
        if "faiss_indexes" in self.tables:
            row = self.con.execute(
                "SELECT * FROM faiss_indexes WHERE sae_id = ? AND name = ?", [self.sae_id, name]
            ).fetchdf()
        path = None if row is None or row.empty else self.file(row["path"].iloc[0])
        if path is None or not path.is_file():
            raise BadInput(
                f"--db {self.db}: no {name} index for '{self.sae_id}'; run `shoggoth index` first"
            )
        expected = row["sha256"].iloc[0] if row is not None and "sha256" in row else None
        if expected is not None and cached_sha256(path) != expected:
            raise BadInput(
                f"--db {self.db}: the {name} index {path} is not the one this database "
                f"was indexed with (its sha256 differs); run `shoggoth index --db "
                f"{self.db}` again"
            )
        return faiss.read_index(str(path))

    def file(self, stored: str) -> Path:
        """A path stored by `shoggoth index`, resolved against the database's FAISS folder."""
        return faiss_dir(self.db) / stored

    def persona_prompts(self, persona: str) -> list[str]:
        """A persona's system prompts, by paraphrase."""
        return cast("list[str]", prompts_of(self.con, persona)["prompt"].tolist())

    def check_persona(self, persona: str) -> None:
        names = persona_names(self.con)
        if persona not in names:
            raise BadInput(
                f"--persona {persona}: not in this database's battery (it has {', '.join(names)})"
            )


@contextmanager
def step_database(db: Path, sae: str | None) -> Iterator[tuple[Connection, SaeRecord]]:
    """`SaeView.for_writing` for a step that reads through SQL: yields the view's read-only
    connection and the SAE's `saes` row, and closes the connection after."""
    view = SaeView.for_writing(db, sae)
    try:
        yield view.con, view.record
    finally:
        view.close()


# --- named queries for the explorer: each takes a connection (or cursor) and returns a frame ---


def if_table(con: Connection, table: str, sql: str, params: Any) -> pd.DataFrame:
    """The query's rows, or an empty frame when `table` is not there yet (before the command
    that writes it has run)."""
    return con.execute(sql, params).df() if has_table(con, table) else pd.DataFrame()


def has_table(con: Connection, name: str) -> bool:
    """Whether the database has a table or view called `name`."""
    return bool(
        one_row(
            con,
            "SELECT count(*) FROM (SELECT 1 FROM duckdb_tables() WHERE table_name = $n UNION ALL "
            "SELECT 1 FROM duckdb_views() WHERE view_name = $n)",
            {"n": name},
        )[0]
    )


def names(con: Connection, sae_id: str, features: list[int]) -> dict[int, str]:
    """Each of `features`' name: its handle, plus the persona it prefers when its label says so
    (`feature_names`; empty before `shoggoth index`)."""
    if not has_table(con, "feature_names"):
        return {}
    rows = con.execute(
        "SELECT feature, name FROM feature_names WHERE sae_id = ? AND "
        "feature IN (SELECT unnest(?::INTEGER[]))",
        [sae_id, [int(f) for f in features]],
    ).fetchall()
    return {int(f): n for f, n in rows}


def with_names(
    con: Connection,
    sae_id: str,
    frame: pd.DataFrame,
    column: str = "feature",
    explained: bool = False,
) -> pd.DataFrame:
    """`frame` with a `name` column right after its feature column (`column`); with
    `explained`, also each feature's explanation and its detection and fuzzing scores."""
    if frame.empty or column not in frame.columns:
        return frame
    found = names(con, sae_id, frame[column].dropna().astype(int).unique().tolist())
    out = frame.copy()
    named = out[column].map(lambda f: found.get(int(f)) if pd.notna(f) else None)
    out.insert(out.columns.get_loc(column) + 1, "name", named)
    if explained and has_table(con, "feature_explanations"):
        scores = con.execute(
            "SELECT feature AS _f, explanation, detection, fuzzing FROM "
            "feature_explanations WHERE sae_id = ?",
            [sae_id],
        ).df()
        out = out.merge(scores, how="left", left_on=column, right_on="_f").drop(columns="_f")
    return out


def feature_name(con: Connection, sae_id: str, feature: int) -> dict[str, Any]:
    """One feature's handle, preferred persona, name and explanation with its scores (each None
    when not computed)."""
    if not has_table(con, "feature_names"):
        return {}
    cur = con.execute(
        "SELECT * EXCLUDE (sae_id) FROM feature_names WHERE sae_id = ? AND feature = ?",
        [sae_id, feature],
    )
    row = cur.fetchone()
    return {} if row is None else dict(zip([c[0] for c in cur.description], row, strict=True))


def saes(con: Connection) -> pd.DataFrame:
    """Every SAE of the database (the `saes` table), by sae_id."""
    return con.execute("SELECT * FROM saes ORDER BY sae_id").df()


def kind_column(con: Connection) -> str:
    """SQL for each SAE's kind (residual or difference) in `saes`, also in databases written
    before the column existed (all residual)."""
    have = one_row(
        con,
        "SELECT count(*) FROM information_schema.columns WHERE table_name = "
        "'saes' AND column_name = 'kind' AND table_schema = current_schema()",
    )[0]
    return "coalesce(kind, 'residual')" if have else "'residual'"


def sae_overview(con: Connection) -> pd.DataFrame:
    """The SAEs, each with its kind and its training metrics (from its directory's
    shoggoth.json, where it is still there)."""
    frame = con.execute(
        f"SELECT sae_id, {kind_column(con)} AS kind, model, hook, architecture, "
        "d_in, d_sae, value_decimals, logit_effects, path FROM saes "
        "ORDER BY sae_id"
    ).df()
    metrics = []
    for path in frame.pop("path"):
        meta = Path(path or "") / "shoggoth.json"
        ev = json.loads(meta.read_text()).get("evaluation") or {} if meta.is_file() else {}
        metrics.append(
            {k: ev.get(k) for k in ("explained_variance", "l0", "dead_fraction", "persona_signal")}
        )
    return pd.concat([frame, pd.DataFrame(metrics, index=frame.index)], axis=1)


def harvest_counts(con: Connection, sae_id: str) -> dict[str, int]:
    """Documents, answer tokens and stored activations of one SAE's harvest."""
    docs, tokens = one_row(
        con, "SELECT count(*), coalesce(sum(n_tokens), 0) FROM documents WHERE sae_id = ?", [sae_id]
    )
    acts = one_row(con, "SELECT count(*) FROM activations WHERE sae_id = ?", [sae_id])[0]
    return {"documents": int(docs), "tokens": int(tokens), "activations": int(acts)}


def persona_table(con: Connection) -> pd.DataFrame:
    """The battery's personas with their family, control flags and number of prompts."""
    return con.execute("""
        SELECT p.persona::VARCHAR AS persona, p.family, p.is_control, p.control_of,
               count(pp.paraphrase) AS prompts, p.description
        FROM personas p LEFT JOIN persona_prompts pp USING (persona)
        GROUP BY p.persona, p.family, p.is_control, p.control_of, p.description
        ORDER BY p.persona""").df()


def persona_names(con: Connection) -> list[str]:
    """The battery's persona names, in battery order."""
    return [
        r[0]
        for r in con.execute("SELECT persona::VARCHAR FROM personas ORDER BY persona").fetchall()
    ]


def prompts_of(con: Connection, persona: str) -> pd.DataFrame:
    """A persona's prompts: paraphrase, prompt."""
    return con.execute(
        "SELECT paraphrase, prompt FROM persona_prompts WHERE persona = ? ORDER BY paraphrase",
        [persona],
    ).df()


def persona_means(con: Connection, sae_id: str, feature: int) -> pd.DataFrame:
    """A feature's mean activation per persona over documents (zeros included), with the
    half-width of its 95% normal-approximation confidence interval."""
    return con.execute(
        """
        WITH n AS (SELECT persona, count(*) AS docs FROM documents WHERE sae_id = $sae
                   GROUP BY ALL),
             s AS (SELECT persona, sum(mean_act) AS s1, sum(mean_act * mean_act) AS s2
                   FROM doc_features WHERE sae_id = $sae AND feature = $f GROUP BY ALL)
        SELECT n.persona::VARCHAR AS persona, p.family, p.is_control,
               coalesce(s1, 0) / docs AS mean,
               1.96 * sqrt(greatest(coalesce(s2, 0) / docs - pow(coalesce(s1, 0) / docs, 2), 0)
                           / docs) AS half
        FROM n LEFT JOIN s USING (persona) JOIN personas p USING (persona)
        ORDER BY n.persona""",
        {"sae": sae_id, "f": feature},
    ).df()


def manual_labels(con: Connection, sae_id: str, feature: int) -> pd.DataFrame:
    """The manual labels saved for a feature, newest first."""
    return if_table(
        con,
        "annotations",
        "SELECT created_at, label, note, author FROM annotations WHERE sae_id = ? "
        "AND feature = ? ORDER BY created_at DESC",
        [sae_id, feature],
    )
