"""Output paths that must never be written: a feature database, its write-ahead log or its
FAISS folder. A one-word typo in `--out` must not replace a database full of labels."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from shoggoth.core.errors import BadInput

DUCKDB_MAGIC = b"DUCK"
"""DuckDB files carry this at byte 8 (after the checksum of the first header)."""


def is_duckdb_file(path: Path) -> bool:
    """Whether `path` is a regular file with DuckDB's header."""
    try:
        with path.open("rb") as f:
            return f.read(12)[8:12] == DUCKDB_MAGIC
    except OSError:
        return False


def database_family(db: Path) -> list[Path]:
    """The paths a database owns: the file, its write-ahead log and its FAISS folder."""
    return [db, db.with_name(db.name + ".wal"), db.with_name(db.name + ".faiss")]


def _owned_by_a_database(path: Path) -> Path | None:
    """The database `path` belongs to when it is a WAL or a FAISS folder (or inside one) of an
    existing database; None otherwise."""
    for p in (path, *path.parents):
        for suffix in (".wal", ".faiss"):
            if p.name.endswith(suffix):
                owner = p.with_name(p.name[: -len(suffix)])
                if owner.is_file():
                    return owner
    return None


def refuse_output_over(
    out: Path, flag: str, protected: Iterable[Path | None] = (), replaceable: bool = False
) -> None:
    """BadInput when writing `out` (given as `flag`) could replace or delete a database:

    - `out` is one of `protected` (the command's own input databases), its WAL or its FAISS
      folder, or a folder that holds one of them (an output folder is replaced as a whole);
    - `out` is any DuckDB file, WAL or FAISS folder of an existing database (unless
      `replaceable`: an output that is itself a DuckDB file the command owns, such as the
      views database of an export, which the caller checks further).
    """
    target = out.expanduser().resolve()
    for db in protected:
        if db is None:
            continue
        for owned in database_family(db.expanduser().resolve()):
            if target == owned or owned in target.parents:
                raise BadInput(
                    f"{flag} {out}: is the database {db} (or part of it); choose "
                    "another path, nothing was written"
                )
            if target in owned.parents:
                raise BadInput(
                    f"{flag} {out}: holds the database {db}; choose another path, "
                    "nothing was written"
                )
    if not replaceable and target.is_file() and is_duckdb_file(target):
        raise BadInput(
            f"{flag} {out}: is a DuckDB database; shoggoth never writes an output "
            "over one, nothing was written"
        )
    owner = _owned_by_a_database(target)
    if owner is not None:
        raise BadInput(
            f"{flag} {out}: belongs to the database {owner}; choose another path, "
            "nothing was written"
        )
