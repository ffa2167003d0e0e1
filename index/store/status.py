"""What a feature database holds for one SAE: harvested, labelled, indexed. The demo asks this
to decide which steps are up to date."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoggoth.core.errors import BadInput
from shoggoth.index.store.connection import Connection, one_row
from shoggoth.index.store.database import WAIT, connect, require_shoggoth, tables
from shoggoth.index.store.read import kind_column
from shoggoth.index.store.schema import battery_rows, stale_label_tables


@dataclass
class Status:
    """How far one SAE's harvest has been taken in a database."""

    harvested: bool = False
    """A finished harvest of the SAE with these weights is in the database."""
    labelled: bool = False
    """`shoggoth label` has written its features."""
    indexed: bool = False
    """`shoggoth index` has written its dictionary."""
    other_sae: bool = False
    """The database holds a harvest of other weights (a retrained SAE)."""
    documents: int = 0
    """Documents harvested."""
    probed: bool = False
    """`shoggoth layers` has written its layer probe."""
    other_battery: bool = False
    """The database holds another persona battery (the built-in one changed)."""
    effects: bool = False
    """`shoggoth effects` has written its measurements."""
    grid: bool = False
    """`shoggoth grid` has written its labels."""
    explained: bool = False
    """`shoggoth explain` has written explanations."""


def _rows(con: Connection, sae_id: str, table: str, names: set[str]) -> int:
    if table not in names:
        return 0
    return int(one_row(con, f"SELECT count(*) FROM {table} WHERE sae_id = ?", [sae_id])[0])


def sae_status(
    db: Path, weights_sha256: str, battery: dict[str, list[tuple]] | None = None
) -> Status:
    """The status of the SAE whose weights hash to `weights_sha256` in `db` (all False when
    the file does not exist). `battery`: the rows the battery tables should hold."""
    if not db.is_file():
        return Status()
    con = connect(db, read_only=True)
    try:
        names = tables(con)
        if "saes" not in names:
            return Status()
        if battery is not None and "personas" in names and battery_rows(con) != battery:
            return Status(other_battery=True)
        row = con.execute(
            "SELECT sae_id FROM saes WHERE weights_sha256 = ?", [weights_sha256]
        ).fetchone()
        if row is None:
            others = one_row(con, "SELECT count(*) FROM saes")[0]
            return Status(other_sae=others > 0)
        return status_of(con, row[0], names)
    finally:
        con.close()


def status_of(con: Connection, sae_id: str, names: set[str]) -> Status:
    """How far `sae_id`'s harvest has been taken (`names`: the database's tables)."""
    documents = _rows(con, sae_id, "documents", names)
    labelled = (
        "features" not in stale_label_tables(con) and _rows(con, sae_id, "features", names) > 0
    )
    # (a dictionary built before handles and maps existed counts as stale)
    indexed = all(
        _rows(con, sae_id, t, names) > 0
        for t in ("faiss_indexes", "feature_handles", "feature_maps")
    )
    return Status(
        True,
        labelled,
        indexed,
        False,
        documents,
        probed=_rows(con, sae_id, "layer_probe", names) > 0,
        effects=_rows(con, sae_id, "persona_shifts", names) > 0,
        grid=_rows(con, sae_id, "grid_features", names) > 0,
        explained=_rows(con, sae_id, "feature_explanations", names) > 0,
    )


STAGES = ("harvested", "labelled", "probed", "effects", "grid", "indexed", "explained")
"""The stages `shoggoth status` reports, in pipeline order."""


def database_status(db: Path) -> list[dict[str, Any]]:
    """Per SAE in `db`: its id, model, hook, width, documents and each stage done or not;
    BadInput when `db` is not a feature database."""
    if not db.is_file():
        raise BadInput(f"--db {db}: no such file")
    con = connect(db, read_only=True, wait=WAIT)
    try:
        require_shoggoth(con, db)
        names = tables(con)
        if "saes" not in names:
            return []
        rows = con.execute(
            f"SELECT sae_id, {kind_column(con)}, model, hook, d_sae FROM saes ORDER BY sae_id"
        ).fetchall()
        out = []
        for sae_id, kind, model, hook, d_sae in rows:
            status = status_of(con, sae_id, names)
            out.append(
                {
                    "sae_id": sae_id,
                    "kind": kind,
                    "model": model,
                    "hook": hook,
                    "d_sae": d_sae,
                    "documents": status.documents,
                    **{stage: getattr(status, stage) for stage in STAGES},
                }
            )
        return out
    finally:
        con.close()
