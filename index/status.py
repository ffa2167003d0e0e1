"""What a feature database holds for one SAE: harvested, labelled, indexed. The demo asks this
to decide which steps are up to date."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from index.database import connect, tables


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


def sae_status(db: Path, weights_sha256: str) -> Status:
    """The status of the SAE whose weights hash to `weights_sha256` in `db` (all False when
    the file does not exist)."""
    if not db.is_file():
        return Status()
    con = connect(db, read_only=True)
    try:
        names = tables(con)
        if "saes" not in names:
            return Status()
        row = con.execute("SELECT sae_id FROM saes WHERE weights_sha256 = ?",
                          [weights_sha256]).fetchone()
        if row is None:
            others = con.execute("SELECT count(*) FROM saes").fetchone()[0]
            return Status(other_sae=others > 0)
        sae_id = row[0]
        documents = con.execute("SELECT count(*) FROM documents WHERE sae_id = ?",
                                [sae_id]).fetchone()[0]
        labelled = "features" in names and con.execute(
            "SELECT count(*) FROM features WHERE sae_id = ?", [sae_id]).fetchone()[0] > 0
        indexed = "faiss_indexes" in names and con.execute(
            "SELECT count(*) FROM faiss_indexes WHERE sae_id = ?", [sae_id]).fetchone()[0] > 0
        return Status(True, labelled, indexed, False, documents)
    finally:
        con.close()
