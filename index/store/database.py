"""Opening, creating and publishing feature databases (one DuckDB file each).

Writers never touch the user's database until their work is complete: a harvest fills a partial
file beside it, committed batch by batch, and then merges its rows into the database in a single
transaction (or, when there is no database yet, into a new file built aside and renamed). Killing
the process at any moment leaves the previous database as it was.
"""

from __future__ import annotations

import fcntl
import functools
import glob
import json
import os
import re
import shutil
import struct
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import duckdb

from shoggoth.core.errors import BadInput, first_line, interrupts_deferred, is_interrupt
from shoggoth.core.names import check_sae_id, shown_name
from shoggoth.core.versions import library_versions
from shoggoth.index.store.connection import Connection, one_row
from shoggoth.index.store.sae_record import SaeRecord
from shoggoth.index.store.schema import (
    BLOCK_SIZE,
    KNOWN_TABLES,
    TABLES,
    battery_rows,
    define_own_views,
)

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

Frame: TypeAlias = "pd.DataFrame | pa.Table"
"""Rows to insert: a pandas frame or an Arrow table."""


def faiss_dir(db: Path) -> Path:
    """The folder beside `db` holding its FAISS indexes and persona vectors (paths stored in
    the database are relative to it, so a database moved with its folder keeps working)."""
    return db.parent / f"{db.name}.faiss"


WAIT = 30.0
"""Seconds a command waits for another process's lock before it gives up: readers (the
explorer, `shoggoth sql`) hold it for a query, writers for a transaction."""


class Locked(BadInput):
    """Another process holds the database's lock (a writer, or a reader while we write)."""


class OutOfMemory(BadInput):
    """Opening the database needed more memory than the connection's `memory_limit` allows."""


SANDBOX: dict[str, bool] = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
}
"""DuckDB settings every connection to a user's database gets: no file or network access but
the paths a command names (`allowed`), no extension loads. A database is data: its views and
macros run under these settings too. Connections that run a user's SQL also lock the
configuration (`LOCKED`), so no statement can change these."""

LOCKED = {"lock_configuration": True}
"""For connections that run SQL from a user (`shoggoth sql`, the explorer)."""


def connect(
    path: Path,
    *,
    read_only: bool = False,
    what: str = "--db",
    config: dict[str, Any] | None = None,
    wait: float = 0.0,
    folders: Sequence[Path] = (),
    files: Sequence[Path] = (),
) -> Connection:
    """The one way shoggoth opens a database: a sandboxed DuckDB connection (`SANDBOX`, plus
    `config`'s extra settings) to an existing or new file. `folders`, `files`: what DuckDB
    itself may read and write besides the database, e.g. an export's folder or a file to
    ATTACH; nothing else. shoggoth's own views and macros are defined by shoggoth
    for the connection (temporary objects, which win over the file's), and a file whose macros
    shadow DuckDB's functions, or whose views take the name of a shoggoth table, is refused.

    BadInput in one line when the file is not a DuckDB database or is hostile in those ways;
    `Locked` when another process holds its lock for longer than `wait` seconds (readers such
    as the explorer hold it for a page's queries, writers for a transaction)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            con = _connect(path, read_only, what, config, folders, files)
            break
        except Locked:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
    try:
        trust_nothing_from(con, path, what)
    except duckdb.OutOfMemoryException as e:
        con.close()
        raise OutOfMemory(f"{what} {path}: {first_line(e)}") from None
    except BaseException:
        con.close()
        raise
    return con


def _connect(
    path: Path,
    read_only: bool,
    what: str,
    config: dict[str, Any] | None,
    folders: Sequence[Path],
    files: Sequence[Path],
) -> Connection:
    settings = {"default_block_size": str(BLOCK_SIZE), **SANDBOX, **(config or {})}
    late = {
        k: settings.pop(k)
        for k in ("enable_external_access", "lock_configuration")
        if k in settings
    }
    try:
        con = duckdb.connect(str(path), read_only=read_only, config=settings)
    except duckdb.OutOfMemoryException as e:
        raise OutOfMemory(f"{what} {path}: {first_line(e)}") from None
    except duckdb.IOException as e:
        msg = str(e)
        if "lock" in msg.lower():
            pid = re.search(r"PID (\d+)", msg)
            holder = f" (PID {pid.group(1)})" if pid else ""
            raise Locked(
                f"{what} {path}: locked by another process{holder}; wait for it to "
                "finish or close it"
            ) from None
        if "not a valid DuckDB database" in msg:
            raise BadInput(f"{what} {path}: not a DuckDB database") from None
        raise BadInput(f"{what} {path}: {first_line(e)}") from None
    except duckdb.Error as e:
        raise BadInput(f"{what} {path}: {first_line(e)}") from None
    try:
        if folders:
            _set(con, "SET allowed_directories = ?", [[str(p).rstrip("/") + "/" for p in folders]])
        if files:
            _set(con, "SET allowed_paths = ?", [[str(p) for p in files]])
        for key, value in late.items():  # last: after these, no setting can change
            _set(con, f"SET {key} = {str(value).lower()}", None)
    except BaseException:
        con.close()
        raise
    return con


def _set(con: duckdb.DuckDBPyConnection, statement: str, params: list[object] | None) -> None:
    """A sandbox setting. A second connection of this process to the same file shares the first
    one's database instance, whose settings may be locked already: that is fine when the
    instance is sandboxed (external access off), and refused otherwise."""
    try:
        con.execute(statement, params)
    except duckdb.InvalidInputException as e:
        locked = "locked" in str(e)
        setting = con.execute("SELECT current_setting('enable_external_access')").fetchone()
        closed = setting is not None and setting[0] in (False, "false")
        if not (locked and closed):
            raise


@functools.cache
def _system_functions() -> frozenset[str]:
    """The names of DuckDB's own functions (listed once per process)."""
    with duckdb.connect(":memory:") as con:
        return frozenset(
            r[0]
            for r in con.execute(
                "SELECT DISTINCT function_name FROM duckdb_functions() "
                "WHERE database_name = 'system'"
            ).fetchall()
        )


def trust_nothing_from(con: duckdb.DuckDBPyConnection, path: Path, what: str) -> None:
    """Refuse what a hostile file could use to change shoggoth's queries (a macro named like
    one of DuckDB's functions, a view named like one of shoggoth's tables), then define
    shoggoth's own views and macros as temporary objects, which the file's cannot replace."""
    macros = [
        r[0]
        for r in con.execute(
            "SELECT function_name FROM duckdb_functions() WHERE database_name = current_database() "
            "AND function_type IN ('macro', 'table_macro') AND function_name <> 'example_contexts'"
        ).fetchall()
    ]
    shadowing = next((m for m in macros if m in _system_functions()), None)
    if shadowing is not None:
        raise BadInput(
            f"{what} {path}: defines a macro '{shown_name(shadowing)}' that replaces "
            "DuckDB's own function; shoggoth does not open it"
        )
    view = con.execute(
        "SELECT view_name FROM duckdb_views() WHERE database_name = current_database() AND "
        "NOT internal AND list_contains(?, view_name) LIMIT 1",
        [sorted(KNOWN_TABLES)],
    ).fetchone()
    if view is not None and tables(con) != {"export_info"}:  # (an export's views database:
        # its views are redefined from the export's manifest, see index/store/sql.py)
        raise BadInput(
            f"{what} {path}: '{shown_name(view[0])}' is a view where shoggoth keeps a "
            "table; shoggoth does not open it"
        )
    define_own_views(con)


def lock_holder(path: Path) -> int | None:
    """The PID of another process holding a lock on `path` that a writer would wait for (DuckDB
    takes fcntl locks: shared for read-only connections, exclusive for writers); None when the
    file is free or missing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        kind, _, _, _, pid = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, query))
    finally:
        os.close(fd)
    return None if kind == fcntl.F_UNLCK else pid


def check_writable(path: Path, what: str = "--db", wait: float = 10.0) -> None:
    """Before a long command's work: BadInput now when the database or its folder cannot be
    written (an immutable file, a read-only file system, no permission), and `Locked`, naming
    the process, when another process keeps it locked for `wait` seconds, instead of after the
    work."""
    check_can_write(path, what)
    deadline = time.monotonic() + wait
    while (pid := lock_holder(path)) is not None:
        if time.monotonic() >= deadline:
            raise Locked(
                f"{what} {path}: in use by another process (PID {pid}); wait for it "
                "to finish or close it, then run this again"
            )
        time.sleep(0.1)


def check_can_write(path: Path, what: str = "--db") -> None:
    """BadInput unless `path` (when it exists) opens for writing and its folder takes new files
    (a writer needs both: the WAL and the FAISS folder live beside the database)."""
    try:
        if path.exists():
            os.close(os.open(path, os.O_RDWR))
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise BadInput(
            f"{what} {path}: cannot be written ({e.strerror or e}); nothing was done"
        ) from None


def identity(path: Path) -> tuple[Any, ...]:
    """What changes whenever a database is written: the file's inode, size and modification
    time, and its write-ahead log's (a commit may still be only in the log)."""

    def stat(p: Path) -> tuple[int, int, int] | None:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    return stat(path), stat(Path(f"{path}.wal"))


def _wait_for(lock: Callable[[], None], wait: float, refused: Callable[[], Locked]) -> None:
    """Call `lock` (a non-blocking lock that raises OSError while another process holds it)
    until it succeeds; `refused()` is raised after `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            lock()
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise refused() from None
            time.sleep(0.1)


@contextmanager
def exclusive(path: Path, what: str = "--db", wait: float = 30.0) -> Iterator[None]:
    """Hold an exclusive fcntl lock on `path` (the lock DuckDB itself takes), so no DuckDB
    connection of another process can open it meanwhile; waits up to `wait` seconds for readers
    and writers to finish. The lock is released when the block ends."""

    def refused() -> Locked:
        pid = lock_holder(path)
        return Locked(
            f"{what} {path}: in use by another process"
            + (f" (PID {pid})" if pid else "")
            + "; run this again when it is done"
        )

    fd = os.open(path, os.O_RDWR)
    try:
        _wait_for(lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB), wait, refused)
        yield
    finally:
        os.close(fd)  # releases the lock


WRITE_WAIT = 600.0
"""Seconds a writer waits for another writer of the same folder to publish (a harvest's merge
into a large database takes minutes)."""


@contextmanager
def writing(db: Path, what: str = "--db", wait: float = WRITE_WAIT) -> Iterator[None]:
    """Hold the writers' lock of `db`'s folder: the commands that rebuild a database aside and
    rename it into place (merge, a harvest's publish, index) take turns, so that the second
    builds on the first's result instead of losing it or being refused after its work. A BSD
    lock (flock) on the folder: no file is left behind, and DuckDB's own fcntl locks on the
    database are untouched. `Locked` after `wait` seconds."""
    try:
        fd = os.open(db.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise BadInput(f"{what} {db}: its folder cannot be opened ({e.strerror or e})") from None
    try:
        _wait_for(
            lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB),
            wait,
            lambda: Locked(
                f"{what} {db}: another shoggoth command is writing into {db.parent} for over "
                f"{wait:g} s; run this again when it is done"
            ),
        )
        yield
    finally:
        os.close(fd)  # releases the lock


def partial_beside(db: Path, purpose: str) -> Path:
    """Where this process builds a new version of `db` aside (`.<db>.<purpose>-<pid>.partial`):
    one file per process, so two commands never share one; the files of processes that are
    gone (killed) are removed."""
    for old in db.parent.glob(f".{glob.escape(db.name)}.{purpose}-*.partial"):
        pid = old.name[len(f".{db.name}.{purpose}-") : -len(".partial")]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            remove(old)
    return db.parent / f".{db.name}.{purpose}-{os.getpid()}.partial"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def snapshot(db: Path, partial: Path) -> tuple[Any, ...]:
    """Copy `db` (its write-ahead log folded in first) to `partial`, to be rebuilt aside and
    published with `replace_unless_changed`; returns `db`'s identity at the copy."""
    fold = connect(db, wait=WAIT)
    fold.execute("CHECKPOINT")
    fold.close()
    copied = identity(db)
    shutil.copyfile(db, partial)
    return copied


def replace_unless_changed(
    partial: Path, db: Path, copied: tuple[Any, ...], what: str = "--db"
) -> None:
    """Rename the rebuilt copy `partial` over `db`, unless `db` was written since it was copied
    (another command's work would be lost): the check and the rename happen under `db`'s
    exclusive lock, so no writer can slip between them. A reader of the old file keeps it."""
    with exclusive(db, what):
        if identity(db) != copied:
            raise BadInput(
                f"{what} {db}: another command wrote it meanwhile; nothing was "
                "replaced (its work is kept): run this command again"
            )
        os.replace(partial, db)


@contextmanager
def transaction(con: Connection) -> Iterator[None]:
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


def record_run(con: Connection, command: str, sae_id: str, config: dict[str, Any]) -> None:
    """A finished `runs` row for a command that rewrote one SAE's derived tables: its config
    (with anything else worth keeping, e.g. notes) and the library versions."""
    con.execute(
        f"INSERT INTO runs VALUES (?, '{command}', ?, ?, now(), now(), 'finished')",
        [
            uuid.uuid4().hex[:12],
            json.dumps({"identity": None, "config": config, "sae_id": sae_id}),
            json.dumps(library_versions()),
        ],
    )


def replace_rows(
    con: Connection, table: str, sae_id: str, frame: Frame, key: dict[str, Any] | None = None
) -> None:
    """Replace one SAE's rows of `table` (only those matching `key` too, column → value) with
    `frame` (columns matched by name)."""
    where = "".join(f" AND {column} = ?" for column in key or {})
    con.execute(f"DELETE FROM {table} WHERE sae_id = ?{where}", [sae_id, *(key or {}).values()])
    con.register("_rows", frame)
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rows")
    finally:
        try:
            con.unregister("_rows")
        except duckdb.Error:  # (an aborted transaction: the insert's own error is the news)
            pass


def insert_frame(con: Connection, table: str, frame: Frame, head: list[Any] | None = None) -> None:
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


def tables(con: Connection, catalog: str | None = None) -> set[str]:
    """Names of the tables in a connection's (or an attached catalog's) main schema."""
    return {
        r[0]
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = "
            "coalesce(?, current_database()) AND schema_name = 'main'",
            [catalog],
        ).fetchall()
    }


def require_shoggoth(
    con: Connection, path: Path, what: str = "--db", catalog: str | None = None
) -> None:
    """BadInput unless the database holds the contract tables (an empty file is allowed)."""
    found = tables(con, catalog)
    missing = set(TABLES) - found
    if found and missing:
        raise BadInput(f"{what} {path}: not a shoggoth database (no '{sorted(missing)[0]}' table)")
    if found:
        check_column_types(con, path, what, catalog)


TYPE_FAMILIES = {
    "INTEGER": "number",
    "SMALLINT": "number",
    "BIGINT": "number",
    "FLOAT": "number",
    "DOUBLE": "number",
    "VARCHAR": "text",
    "BOOLEAN": "BOOLEAN",
    "TIMESTAMP": "TIMESTAMP",
    "JSON": "text",
    "DOUBLE[]": "list",
    "FLOAT[]": "list",
    "INTEGER[]": "list",
    "VARCHAR[]": "list",
}
"""Declared column type → what a stored column must be (a damaged or hostile file that turned a
number into text would otherwise fail deep inside a query, as a traceback)."""


def _family(data_type: str) -> str:
    if data_type.endswith("[]"):
        return "list"
    if data_type in (
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "HUGEINT",
        "FLOAT",
        "DOUBLE",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
    ) or data_type.startswith("DECIMAL"):
        return "number"
    if data_type in ("VARCHAR", "JSON") or data_type.startswith("ENUM"):
        return "text"
    return data_type


def check_column_types(
    con: duckdb.DuckDBPyConnection, path: Path, what: str = "--db", catalog: str | None = None
) -> None:
    """BadInput when a contract table's column holds another kind of value than the schema
    declares (text where a number belongs, …), naming the table and column."""
    stored = {
        (t, c): d
        for t, c, d in con.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE database_name = "
            "coalesce(?, current_database()) AND schema_name = 'main'",
            [catalog],
        ).fetchall()
    }
    for table, definitions in TABLES.items():
        for part in re.split(r",(?![^()]*\))", definitions):
            words = part.split()
            if not words or words[0] == "PRIMARY" or (table, words[0]) not in stored:
                continue
            want = TYPE_FAMILIES.get(words[1])
            got = _family(stored[table, words[0]])
            if want is not None and got != want:
                raise BadInput(
                    f"{what} {path}: {table}.{words[0]} holds "
                    f"{shown_name(stored[table, words[0]])}, not {words[1]}; the "
                    "database is damaged"
                )


def check_same_battery(
    con: Connection,
    path: Path,
    other: dict[str, list[tuple[Any, ...]]],
    catalog: str | None = None,
    what: str = "--db",
) -> None:
    """BadInput when the database holds a different persona battery than `other` (rows as
    `battery_rows` gives them)."""
    for table, rows in battery_rows(con, catalog).items():
        if rows != other[table]:
            raise BadInput(
                f"{what} {path}: holds a different persona battery ({table} differ); "
                "use the same --personas, --items, --paraphrases and --items-per-topic, "
                "or another database"
            )


def harvested(con: Connection, sae_id: str, catalog: str | None = None) -> dict[str, Any] | None:
    """The finished run that harvested `sae_id` into this database: its config and run_id."""
    prefix = f"{catalog}." if catalog else ""
    if "saes" not in tables(con, catalog):
        return None
    row = con.execute(
        f"SELECT r.run_id, r.config_json FROM {prefix}saes s JOIN {prefix}runs r USING (run_id) "
        "WHERE s.sae_id = ? AND r.status = 'finished'",
        [sae_id],
    ).fetchone()
    if row is None:
        return None
    return {"run_id": row[0], "config": json.loads(row[1])}


def storage(con: Connection, path: Path) -> dict[str, float]:
    """Bytes on disk: the whole file, and the blocks holding the activations table."""
    block = one_row(
        con,
        "SELECT block_size FROM pragma_database_size() WHERE database_name = current_database()",
    )[0]
    blocks = one_row(
        con,
        "SELECT count(DISTINCT block_id) FROM pragma_storage_info('activations') "
        "WHERE block_id >= 0",
    )[0]
    return {"file_bytes": path.stat().st_size, "activations_bytes": blocks * block}


def choose_sae(con: Connection, path: Path, sae: str | None) -> SaeRecord:
    """The `saes` row of the SAE a command works on (`--sae`, or the only one), checked."""
    if not tables(con):
        raise BadInput(f"--db {path}: not a shoggoth database (it is empty)")
    try:
        cur = con.execute("SELECT * FROM saes ORDER BY sae_id")
    except duckdb.Error as e:
        raise BadInput(f"--db {path}: its saes table cannot be read ({first_line(e)})") from None
    cols = [d[0] for d in cur.description]
    saes = {r[0]: dict(zip(cols, r, strict=True)) for r in cur.fetchall()}
    held = ", ".join(shown_name(s) for s in list(saes)[:10]) + (", …" if len(saes) > 10 else "")
    if not saes:
        raise BadInput(f"--db {path}: holds no harvest yet (run `shoggoth harvest`)")
    if sae is None:
        if len(saes) > 1:
            raise BadInput(f"--db {path}: holds several SAEs ({held}); choose one with --sae")
        sae = next(iter(saes))
    if sae not in saes:
        raise BadInput(f"--sae {shown_name(sae)}: not in {path} (it holds {held})")
    check_sae_id(sae, f"--db {path}")
    check_saes_row(saes[sae], path)
    return SaeRecord.from_row(saes[sae])


SAES_INTEGERS = {"d_in": 1 << 20, "d_sae": 1 << 26, "value_decimals": 12}
"""Integer columns of `saes` and the largest value shoggoth accepts (d_sae: 67M features, far
above any published SAE; larger claims are checked before anything is allocated from them)."""


def check_saes_row(row: dict[str, Any], path: Path) -> None:
    """BadInput when a `saes` row holds what no shoggoth database does: a wrong type or an
    absurd size (a damaged or hostile file must not make a command allocate from it)."""
    for column, most in SAES_INTEGERS.items():
        value = row.get(column)
        if value is None and column == "value_decimals":
            continue
        least = 0 if column == "value_decimals" else 1
        if type(value) is not int or not least <= value <= most:
            raise BadInput(
                f"--db {path}: saes.{column} of '{shown_name(row.get('sae_id'))}' is "
                f"'{shown_name(value)}', not a count from {least} to {most:,}; the "
                "database is damaged"
            )
    for column in (
        "model",
        "hook",
        "kind",
        "path",
        "reference",
        "template",
        "release",
        "sae_lens_id",
        "neuronpedia_id",
    ):
        if row.get(column) is not None and not isinstance(row[column], str):
            raise BadInput(
                f"--db {path}: saes.{column} of '{shown_name(row.get('sae_id'))}' "
                "is not text; the database is damaged"
            )


def weight_shapes(path: Path) -> dict[str, list[int]] | None:
    """The tensor shapes a safetensors file declares in its header (read without loading a
    tensor); None when the file is missing or not safetensors."""
    try:
        with path.open("rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            if size > 100 << 20:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return None
    if not isinstance(header, dict):
        return None
    return {
        k: v["shape"]
        for k, v in header.items()
        if isinstance(v, dict) and isinstance(v.get("shape"), list)
    }


def check_claims(con: Connection, path: Path, sae: SaeRecord) -> None:
    """BadInput when the `saes` row claims what the database and the SAE's weights do not
    hold: a feature index at or past d_sae, or a decoder of another shape than d_sae × d_in
    (commands allocate arrays of d_sae rows: a damaged or hostile claim must fail here, in one
    line, not as an exhausted machine)."""
    found = con.execute(
        "SELECT max(feature) FROM doc_features WHERE sae_id = ?", [sae.sae_id]
    ).fetchone()
    top = found[0] if found else None
    if top is not None and not 0 <= int(top) < sae.d_sae:
        raise BadInput(
            f"--db {path}: holds feature {top} of '{sae.sae_id}', whose saes row says "
            f"it has {sae.d_sae:,}; the database is damaged"
        )
    if not sae.path:
        return
    shapes = weight_shapes(Path(sae.path) / "sae_weights.safetensors")
    decoder = (shapes or {}).get("W_dec")
    if decoder is not None and sorted(decoder) != sorted([sae.d_sae, sae.d_in]):
        raise BadInput(
            f"--db {path}: saes says '{sae.sae_id}' has {sae.d_sae:,} features of "
            f"{sae.d_in:,} dimensions, its weights ({sae.path}) a decoder of "
            f"{decoder}; the database is damaged"
        )
