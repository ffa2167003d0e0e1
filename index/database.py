"""Opening, creating and publishing feature databases (one DuckDB file each).

Writers never touch the user's database until their work is complete: a harvest fills a partial
file beside it, committed batch by batch, and then merges its rows into the database in a single
transaction (or, when there is no database yet, into a new file built aside and renamed). Killing
the process at any moment leaves the previous database as it was.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from core.errors import BadInput, interrupts_deferred, is_interrupt
from index.schema import (
    BLOCK_SIZE,
    TABLES,
    battery_rows,
)


def faiss_dir(db: Path) -> Path:
    """The folder beside `db` holding its FAISS indexes and persona vectors (paths stored in
    the database are relative to it, so a database moved with its folder keeps working)."""
    return db.parent / f"{db.name}.faiss"


def connect(path: Path, *, read_only: bool = False, what: str = "--db",
            config: dict[str, Any] | None = None) -> Any:
    """A DuckDB connection to an existing or new file (`config`: extra settings); BadInput in one
    line when the file is not a DuckDB database or another process holds its lock."""
    try:
        return duckdb.connect(str(path), read_only=read_only,
                              config={"default_block_size": str(BLOCK_SIZE), **(config or {})})
    except duckdb.IOException as e:
        msg = str(e)
        if "lock" in msg.lower():
            pid = re.search(r"PID (\d+)", msg)
            holder = f" (PID {pid.group(1)})" if pid else ""
            raise BadInput(f"{what} {path}: locked by another process{holder}; wait for it to "
                           "finish or close it") from None
        if "not a valid DuckDB database" in msg:
            raise BadInput(f"{what} {path}: not a DuckDB database") from None
        raise BadInput(f"{what} {path}: {msg.splitlines()[0]}") from None
    except duckdb.Error as e:
        raise BadInput(f"{what} {path}: {str(e).splitlines()[0]}") from None


@contextmanager
def transaction(con: Any) -> Iterator[None]:
    """BEGIN … COMMIT, rolled back on any error or Ctrl-C. Ctrl-C during the work surfaces as
    DuckDB's "Query interrupted" error, which becomes KeyboardInterrupt here (exit 130, not a
    traceback); during COMMIT it is held until the commit is done."""
    con.execute("BEGIN TRANSACTION")
    try:
        try:
            yield
        except Exception as e:
            if is_interrupt(e):
                raise KeyboardInterrupt from None
            raise
        with interrupts_deferred():
            con.execute("COMMIT")
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except Exception:  # the connection may be unusable; closing it rolls back too
            pass
        raise


def insert_frame(con: Any, table: str, frame: Any, head: list[Any] | None = None) -> None:
    """INSERT INTO `table` the rows of a pandas or Arrow frame, after the constant columns
    `head` (given as parameters); the frame's columns follow the table's order."""
    marks = "?, " * len(head or [])
    con.register("_frame", frame)
    try:
        con.execute(f"INSERT INTO {table} SELECT {marks}* FROM _frame", head or [])
    finally:
        con.unregister("_frame")


def remove(path: Path) -> None:
    """Delete a database file and its write-ahead log, if they exist."""
    path.unlink(missing_ok=True)
    Path(f"{path}.wal").unlink(missing_ok=True)


def tables(con: Any, catalog: str | None = None) -> set[str]:
    """Names of the tables in a connection's (or an attached catalog's) main schema."""
    return {r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = "
        "coalesce(?, current_database()) AND schema_name = 'main'", [catalog]).fetchall()}


def require_shoggoth(con: Any, path: Path, what: str = "--db",
                     catalog: str | None = None) -> None:
    """BadInput unless the database holds the contract tables (an empty file is allowed)."""
    found = tables(con, catalog)
    missing = set(TABLES) - found
    if found and missing:
        raise BadInput(f"{what} {path}: not a shoggoth database (no '{sorted(missing)[0]}' "
                       "table)")


def check_same_battery(con: Any, path: Path, other: dict[str, list[tuple[Any, ...]]],
                       catalog: str | None = None, what: str = "--db") -> None:
    """BadInput when the database holds a different persona battery than `other` (rows as
    `battery_rows` gives them)."""
    for table, rows in battery_rows(con, catalog).items():
        if rows != other[table]:
            raise BadInput(f"{what} {path}: holds a different persona battery ({table} differ); "
                           "use the same --personas and --items, or another database")


def harvested(con: Any, sae_id: str, catalog: str | None = None) -> dict[str, Any] | None:
    """The finished run that harvested `sae_id` into this database: its config and run_id."""
    prefix = f"{catalog}." if catalog else ""
    if "saes" not in tables(con, catalog):
        return None
    row = con.execute(
        f"SELECT r.run_id, r.config_json FROM {prefix}saes s JOIN {prefix}runs r USING (run_id) "
        "WHERE s.sae_id = ? AND r.status = 'finished'", [sae_id]).fetchone()
    if row is None:
        return None
    return {"run_id": row[0], "config": json.loads(row[1])}


def storage(con: Any, path: Path) -> dict[str, float]:
    """Bytes on disk: the whole file, and the blocks holding the activations table."""
    block = con.execute("SELECT block_size FROM pragma_database_size() "
                        "WHERE database_name = current_database()").fetchone()[0]
    blocks = con.execute("SELECT count(DISTINCT block_id) FROM pragma_storage_info('activations') "
                         "WHERE block_id >= 0").fetchone()[0]
    return {"file_bytes": path.stat().st_size, "activations_bytes": blocks * block}


def choose_sae(con: Any, path: Path, sae: str | None) -> tuple[str, dict[str, Any]]:
    """The SAE a command works on (`--sae`, or the only one) and its `saes` row."""
    if not tables(con):
        raise BadInput(f"--db {path}: not a shoggoth database (it is empty)")
    cur = con.execute("SELECT * FROM saes ORDER BY sae_id")
    cols = [d[0] for d in cur.description]
    saes = {r[0]: dict(zip(cols, r, strict=True)) for r in cur.fetchall()}
    if not saes:
        raise BadInput(f"--db {path}: holds no harvest yet (run `shoggoth harvest`)")
    if sae is None:
        if len(saes) > 1:
            raise BadInput(f"--db {path}: holds several SAEs ({', '.join(saes)}); choose one "
                           "with --sae")
        sae = next(iter(saes))
    if sae not in saes:
        raise BadInput(f"--sae {sae}: not in {path} (it holds {', '.join(saes)})")
    return sae, saes[sae]
