"""`shoggoth merge`: combine databases — typically the N shard files of one harvest — into one.

Every input must hold the same persona battery. For each SAE, the inputs must hold either one
complete harvest or exactly the shards 0..N-1 of one sharded harvest (same settings but for
--shard). The merged rows are the rows one unsharded run writes; the SAE's record points to a
`merge` run that lists the shard runs.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from shoggoth.battery.units import parse_shard
from shoggoth.core.config import Config, config_metadata, option
from shoggoth.core.errors import BadInput, first_line
from shoggoth.core.names import check_sae_id, identifier, shown_name
from shoggoth.index.store.connection import Connection
from shoggoth.index.store.database import (
    check_saes_row,
    check_same_battery,
    connect,
    partial_beside,
    remove,
    replace_unless_changed,
    require_shoggoth,
    snapshot,
    tables,
    transaction,
    writing,
)
from shoggoth.index.store.schema import (
    HARVEST_TABLES,
    ORDER,
    SAES_COLUMNS,
    battery_rows,
    catalog_has_table,
    create_schema,
    quote,
    read_battery,
    upgrade_contract,
)


@dataclass
class MergeConfig(Config):
    """`shoggoth merge`: combine shard files (or whole databases) into one database."""

    db: Path = option(required="the database to write")
    """The database to write: created if missing, otherwise added to in one transaction."""
    inputs: list[Path] = option([], required="give the database files to merge")
    """Database files to merge, e.g. the N files of `shoggoth harvest --shard I/N`."""


@dataclass
class Holding:
    """One input's harvest of one SAE."""

    path: Path
    catalog: str
    sae_row: dict[str, Any]
    identity: dict[str, Any]


def _holdings(con: Connection, path: Path, catalog: str) -> list[Holding]:
    out = []
    cols = [d[0] for d in con.execute(f"SELECT * FROM {catalog}.saes LIMIT 0").description]
    unknown = [c for c in cols if c not in SAES_COLUMNS]
    if unknown:  # (names from another file never reach a statement unless they are ours)
        raise BadInput(
            f"input {path}: its saes table has a column shoggoth does not know "
            f"('{shown_name(unknown[0])}')"
        )
    for row in con.execute(f"SELECT * FROM {catalog}.saes").fetchall():
        sae = dict(zip(cols, row, strict=True))
        check_sae_id(sae["sae_id"], f"input {path}")
        check_saes_row(sae, path)
        run = con.execute(
            f"SELECT status, config_json FROM {catalog}.runs WHERE run_id = ?", [sae["run_id"]]
        ).fetchone()
        if run is None or run[0] != "finished":
            raise BadInput(f"{path}: its harvest of '{sae['sae_id']}' did not finish")
        out.append(Holding(path, catalog, sae, json.loads(run[1])["identity"]))
    return out


def _check_group(sae_id: str, group: list[Holding]) -> None:
    """One complete harvest, or every shard of one sharded harvest exactly once."""
    shards: list[Any] = [h.identity.get("shard") for h in group]
    if len(group) == 1 and shards[0] is None:
        return
    if None in shards:
        raise BadInput(
            f"SAE '{sae_id}': is in more than one input ({group[0].path}, "
            f"{group[1].path}); merge the shards of one harvest, or databases "
            "holding different SAEs"
        )
    parsed = [parse_shard(s) for s in shards]
    n = {total for _, total in parsed}
    got = sorted(i for i, _ in parsed)
    if len(n) != 1 or got != list(range(n.pop())):
        raise BadInput(
            f"SAE '{sae_id}': the shards given are {', '.join(sorted(shards))}; "
            "give each shard I/N of one harvest exactly once"
        )
    base = {k: v for k, v in group[0].identity.items() if k != "shard"}
    keep = ("run_id", "path")
    for h in group[1:]:
        other = {k: v for k, v in h.identity.items() if k != "shard"}
        same_sae = all(h.sae_row[k] == group[0].sae_row[k] for k in h.sae_row if k not in keep)
        if other != base or not same_sae:
            raise BadInput(
                f"{h.path}: its shard of '{sae_id}' was harvested with other settings "
                f"than {group[0].path}"
            )


def _copy(
    con: Connection, groups: dict[str, list[Holding]], merge_run: dict[str, Any] | None
) -> None:
    """Insert every input's rows; sharded SAEs get one saes row pointing at a merge run (none
    when `merge_run` is None: rows are copied as they are)."""
    catalogs = sorted({h.catalog for g in groups.values() for h in g})
    upgrade_contract(con)
    for cat in catalogs:
        con.execute(f"INSERT OR IGNORE INTO runs SELECT * FROM {cat}.runs")
    for group in groups.values():
        row = dict(group[0].sae_row)
        if merge_run is not None and group[0].identity.get("shard") is not None:
            run_id = uuid.uuid4().hex[:12]
            identity = {**group[0].identity, "shard": None}
            con.execute(
                "INSERT INTO runs VALUES (?, 'merge', ?, ?, now(), now(), 'finished')",
                [
                    run_id,
                    json.dumps(
                        {
                            "identity": identity,
                            "config": merge_run,
                            "shard_runs": [h.sae_row["run_id"] for h in group],
                        }
                    ),
                    json.dumps({}),
                ],
            )
            row["run_id"] = run_id
        cols = [identifier(c, f"{group[0].path}: a column of saes") for c in row]
        con.execute(
            f"INSERT INTO saes ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            list(row.values()),
        )
    for table in HARVEST_TABLES:
        # (older files lack some)
        holding = [c for c in catalogs if catalog_has_table(con, c, table)]
        if not holding:
            continue
        union = " UNION ALL ".join(f"SELECT * FROM {c}.{table}" for c in holding)
        distinct = "DISTINCT " if table == "tokens" else ""  # every shard stores every item
        con.execute(
            f"INSERT INTO {table} SELECT {distinct}* FROM ({union}) ORDER BY {ORDER[table]}"
        )


def merge(cfg: MergeConfig, *, as_is: bool = False) -> dict[str, Any]:
    """Merge `cfg.inputs` into `cfg.db`; returns what was merged.

    `as_is` copies one input without combining shards (how a finished harvest, sharded or not,
    is published into its --db)."""
    if len(set(map(Path.resolve, cfg.inputs))) != len(cfg.inputs):
        raise BadInput("inputs: a file is given twice")
    for path in cfg.inputs:
        if not path.is_file():
            raise BadInput(f"{path}: no such file")
        if path.resolve() == cfg.db.resolve():
            raise BadInput(f"{path}: is the --db being written")
    if cfg.db.is_dir():
        raise BadInput(f"--db {cfg.db}: is a directory, expected a DuckDB file")
    # Built aside (a copy of an existing --db) and renamed into place: a killed merge leaves
    # --db as it was, byte for byte; the next merge removes the partial file.
    if not cfg.db.exists() and not cfg.db.parent.is_dir():
        raise BadInput(f"--db {cfg.db}: its folder {cfg.db.parent} does not exist")
    with writing(cfg.db):
        groups = _build(cfg, as_is)
    return {"db": str(cfg.db), "saes": {k: len(v) for k, v in groups.items()}}


def _build(cfg: MergeConfig, as_is: bool) -> dict[str, list[Holding]]:
    """Build the merged database aside (this process's own partial file) and rename it into
    place; the caller holds the folder's writers' lock."""
    building = partial_beside(cfg.db, "merge")
    remove(building)
    copied = snapshot(cfg.db, building) if cfg.db.exists() else None
    allowed = [p for path in cfg.inputs for p in (path.resolve(), Path(f"{path.resolve()}.wal"))]
    con = connect(building, files=allowed)
    try:
        require_shoggoth(con, cfg.db)
        groups: dict[str, list[Holding]] = {}
        battery: dict[str, list[tuple[Any, ...]]] | None = None
        run = uuid.uuid4().hex[:8]  # catalog names no database file name can take
        for n, path in enumerate(cfg.inputs):
            cat = f"merge_input_{n}_{run}"
            connect(path, read_only=True, what="input").close()  # one-line errors first
            con.execute(f"ATTACH {quote(str(path.resolve()))} AS {cat} (READ_ONLY)")
            require_shoggoth(con, path, what="input", catalog=cat)
            if not tables(con, cat):
                raise BadInput(f"input {path}: is empty")
            if battery is None:
                battery = battery_rows(con, cat)
            else:
                check_same_battery(con, path, battery, catalog=cat, what="input")
            for h in _holdings(con, path, cat):
                groups.setdefault(h.sae_row["sae_id"], []).append(h)
        for sae_id, group in groups.items():
            if not as_is:
                _check_group(sae_id, group)
        if tables(con) and battery is not None:
            check_same_battery(con, cfg.db, battery)
            present = {r[0] for r in con.execute("SELECT sae_id FROM saes").fetchall()}
            clash = sorted(present & set(groups))
            if clash:
                raise BadInput(f"--db {cfg.db}: already holds SAE '{clash[0]}'")
        try:
            with transaction(con):
                if not tables(con):
                    create_schema(con, *read_battery(con, f"merge_input_0_{run}"))
                _copy(con, groups, None if as_is else config_metadata(cfg))
        except duckdb.Error as e:  # a damaged input whose tables do not match the contract
            raise BadInput(
                f"inputs: their rows do not fit the database ({first_line(e)}); nothing was merged"
            ) from None
        con.execute("CHECKPOINT")
        con.close()
        if copied is None:
            os.replace(building, cfg.db)
        else:
            replace_unless_changed(building, cfg.db, copied)
    finally:
        con.close()
        remove(building)
    return groups
