"""`shoggoth sql`: SQL on the feature database, read-only and sandboxed by default.

The connection is read-only, with DuckDB's external access disabled (no file reads or writes, no
COPY, ATTACH, EXPORT, extension installs or loads) and its configuration locked, so a query can
only read the database it was given. `--write` opens it for writing, still sandboxed.
"""

from __future__ import annotations

import csv
import json
import re
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import duckdb
import pyarrow.parquet as pq

from shoggoth.core.atomic import write_atomic
from shoggoth.core.config import TIMEOUT, Config, option
from shoggoth.core.errors import BadInput, first_line, is_interrupt
from shoggoth.core.outputs import refuse_output_over
from shoggoth.index.store.connection import Connection
from shoggoth.index.store.database import LOCKED, OutOfMemory, connect, tables
from shoggoth.index.store.export import MANIFEST, read_manifest, view_sql
from shoggoth.index.store.schema import define_own_views

MEMORY = re.compile(r"(\d{1,20}(?:\.\d{1,20})?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)
DEFAULT_MEMORY_LIMIT = "4GB"
"""Well below the 24 GB of the machines this is built on; DuckDB spills what does not fit."""


def sandbox(memory_limit: str = DEFAULT_MEMORY_LIMIT) -> dict[str, Any]:
    """Settings beyond the sandbox every connection has (`database.SANDBOX`): a memory cap, and
    a configuration no statement can change (`database.LOCKED`)."""
    return {"memory_limit": memory_limit, **LOCKED}


@dataclass
class SqlConfig(Config):
    """`shoggoth sql`: run SQL on a feature database."""

    db: Path = option(required="the feature database to query")
    """The feature database."""
    query: list[str] = option([], required='the SQL to run, e.g. shoggoth sql --db F "SELECT 1"')
    """The SQL to run (quote it); several statements may be separated by ';'."""
    format: Literal["table", "csv", "json", "parquet"] = "table"
    """Output format (parquet needs --out)."""
    out: Path | None = None
    """Write the result to this file instead of standard output (written atomically)."""
    write: bool = False
    """Allow statements that modify the database (still no file or network access)."""
    max_rows: int = option(1000, min=0)
    """Rows shown by the table format (the others print every row)."""
    timeout: float = option(60.0, **TIMEOUT)
    """Seconds a query may run before it is stopped (0: no limit)."""
    memory_limit: str = DEFAULT_MEMORY_LIMIT
    """DuckDB's memory cap for the query, e.g. 2GB or 500MB; a query that needs more fails with
    one line (what fits is spilled to disk)."""
    parquet: Path | None = None
    """The export folder a views database from `shoggoth export --views` reads, when the views
    database lies outside it (by default only the views database's own folder is readable)."""

    def check(self) -> None:
        if not " ".join(self.query).strip():
            raise BadInput('query: give the SQL to run, e.g. shoggoth sql --db F "SELECT 1"')
        if self.format == "parquet" and self.out is None:
            raise BadInput("--format parquet: needs --out FILE")
        if self.out is not None and self.out.is_dir():
            raise BadInput(f"--out {self.out}: is a directory, expected a file")
        if self.out is not None:
            refuse_output_over(self.out, "--out", [self.db])
        size_bytes(self.memory_limit)  # BadInput unless a size a machine could have


def sandboxed(
    db: Path,
    write: bool = False,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    parquet: Path | None = None,
) -> Any:
    """A connection that can read (or with `write`, modify) `db` and nothing else, within
    `memory_limit`. A views database from `shoggoth export` may also read its export folder
    (DuckDB's allowed_directories), and its views are defined again, for this connection, from
    the export's manifest: that folder comes from the paths the user gave (`parquet`, or the
    folder the views database lies in when it holds an export manifest), never from what the
    database says. A database is data, and a hostile one must not widen what a query can
    touch. (DuckDB lets a query write into an allowed folder; `execute` refuses the statements
    that write files.)"""
    if not db.is_file():
        raise BadInput(f"--db {db}: no such file")
    if parquet is not None and not (parquet / MANIFEST).is_file():
        raise BadInput(f"--parquet {parquet}: not a shoggoth export (no {MANIFEST})")
    folder = parquet.resolve() if parquet is not None else None
    if folder is None:
        probe = connect(db, read_only=True)
        try:
            folder = export_folder(probe, db, None)
        finally:
            probe.close()
    try:
        con = connect(
            db,
            read_only=not write,
            config=sandbox(memory_limit.strip()),
            folders=[] if folder is None else [folder],
        )
    except OutOfMemory:  # opening it reads its catalog and checks its views: memory too
        raise BadInput(
            f"--memory-limit {memory_limit.strip()}: too little to open {db.name}; "
            "give more, such as 100MB"
        ) from None
    try:
        if folder is not None and tables(con) == {"export_info"}:
            define_export_views(con, folder)
    except BaseException:
        con.close()
        raise
    return con


def define_export_views(con: duckdb.DuckDBPyConnection, folder: Path) -> None:
    """The views of an export's tables, as temporary views over the Parquet files in `folder`
    (from its manifest, every name checked): what the views database holds is not used."""
    manifest = read_manifest(folder)
    defined = set()
    for table, columns in manifest.columns.items():
        try:
            con.execute(view_sql(table, columns, str(folder), temp=True))
            defined.add(table)
        except duckdb.Error:  # its files are gone: a query on it says the table is missing
            pass
    define_own_views(con, defined)


def export_folder(con: Connection, db: Path, parquet: Path | None) -> Path | None:
    """The export folder a views database may read: `parquet` when given, else the views
    database's own folder when it is an export (its manifest beside it); None otherwise."""
    if "export_info" not in tables(con):
        return None
    if parquet is not None:
        return parquet.resolve()
    here = db.resolve().parent
    return here if (here / MANIFEST).is_file() else None


def run_sql(
    cfg: SqlConfig, on_stuck: Callable[[str], None] | None = None
) -> tuple[list[str], list[tuple[Any, ...]], Any]:
    """Run the query; returns (columns, rows, arrow table or None) of the last statement.
    `on_stuck`: see `execute`."""
    sql = " ".join(cfg.query).strip()
    con = sandboxed(cfg.db, cfg.write, cfg.memory_limit, cfg.parquet)
    try:
        return execute(con, sql, timeout=cfg.timeout, on_stuck=on_stuck)
    finally:
        con.close()


def size_bytes(size: str) -> int:
    """'300MB' → 300,000,000; '2GiB' → 2,147,483,648 (a size MEMORY accepts), counted exactly;
    BadInput for any other text and for more than a petabyte, more than a machine addresses
    (DuckDB's setting and the address-space cap would overflow)."""
    match = MEMORY.fullmatch(size.strip())
    shown = size if len(size) <= 40 else size[:39] + "…"
    if match is None:
        raise BadInput(f"--memory-limit {shown}: expected a size such as 2GB or 500MB")
    number, unit = match.groups()
    unit = unit.upper()
    scale = 1024 if "I" in unit else 1000
    power = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit[0]]
    whole, _, fraction = number.partition(".")
    count = int(whole + fraction) * scale**power // 10 ** len(fraction)
    if count > 10**15:
        raise BadInput(
            f"--memory-limit {shown}: more than 1PB, more memory than a machine "
            "addresses; give a size such as 2GB or 500MB"
        )
    return int(count)


ADDRESS_SPACE_SLACK = 2 << 30
"""Address space a process may reserve beyond its use (thread stacks, malloc arenas)."""


def bound_address_space(memory_limit: str) -> None:
    """Cap this process's address space near `memory_limit`: DuckDB's own cap covers its buffer
    manager, not every allocation (a list built in one piece grew to 16 GB under a 300 MB cap),
    and an allocation over this one fails, as one line, instead of exhausting the machine. For
    the `sql` program only: it limits the whole process."""
    used = next(
        int(line.split()[1]) * 1024
        for line in open("/proc/self/status")
        if line.startswith("VmSize:")
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = used + 2 * size_bytes(memory_limit) + ADDRESS_SPACE_SLACK
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


STUCK_GRACE = 3.0
"""Seconds a query may take to honour an interrupt before `on_stuck` is called."""


def execute(
    con: Connection,
    sql: str,
    read_only_hint: str = "pass --write to modify it",
    timeout: float = 0.0,
    cancelled: Callable[[], bool] | None = None,
    on_stuck: Callable[[str], None] | None = None,
) -> tuple[list[str], list[tuple[Any, ...]], Any]:
    """Run `sql` on a sandboxed connection; (columns, rows, arrow table or None) of the last
    statement, every DuckDB error as one BadInput line (a write on a read-only connection
    ends with `read_only_hint`).

    The query runs in a worker thread while this one waits in short steps, so that a timeout
    (`timeout` seconds; 0: none) or Ctrl-C stops it through DuckDB's own interrupt within a
    fraction of a second (DuckDB alone holds Ctrl-C until some queries finish). `cancelled`,
    polled as it waits, stops it the same way when whoever asked has gone (a closed browser
    tab).

    Some work does not look at DuckDB's interrupt flag (building one huge list): when the query
    has not stopped `STUCK_GRACE` seconds after the interrupt, `on_stuck(why)` is called
    (the `sql` program exits there; a read-only connection has nothing to lose, and a write
    is atomic in DuckDB's log), so the timeout and Ctrl-C hold."""
    outcome: dict[str, Any] = {}
    finished = threading.Event()  # (not Thread.join: an interrupted join can report a live
    # thread as finished on Python 3.11)

    def work() -> None:
        try:
            outcome["result"] = _execute(con, sql, read_only_hint)
        except BaseException as e:  # handed to the waiting thread
            outcome["error"] = e
        finally:
            finished.set()

    threading.Thread(target=work, name="shoggoth-sql", daemon=True).start()
    started = time.monotonic()
    timed_out = gone = False
    stopped_at = 0.0
    try:
        while not finished.wait(0.05):
            if timed_out or gone:
                if on_stuck is not None and time.monotonic() - stopped_at > STUCK_GRACE:
                    on_stuck("timeout" if timed_out else "cancelled")
                continue
            if timeout and time.monotonic() - started > timeout:
                timed_out = True
            elif cancelled is not None and cancelled():
                gone = True
            if timed_out or gone:
                stopped_at = time.monotonic()
                con.interrupt()
    except KeyboardInterrupt:
        con.interrupt()
        if not finished.wait(STUCK_GRACE if on_stuck is not None else 10):
            if on_stuck is not None:
                on_stuck("interrupt")
        raise
    if timed_out:
        raise BadInput(
            f"sql: stopped after {timeout:g} s (--timeout); narrow the query or raise --timeout"
        )
    if gone:
        raise BadInput("sql: cancelled (whoever asked for it has gone)")
    if "error" in outcome:
        raise outcome["error"]
    return cast("tuple[list[str], list[tuple[Any, ...]], Any]", outcome["result"])


FILE_STATEMENTS = frozenset(
    {
        "COPY",
        "COPY_DATABASE",
        "EXPORT",
        "ATTACH",
        "DETACH",
        "LOAD",
        "EXTENSION",
        "SET",
        "VARIABLE_SET",
    }
)
"""Statement types that touch files or settings: refused before they run (DuckDB's sandbox
refuses them too, except a COPY into a folder a views database may read, which it allows)."""


def refuse_file_statements(sql: str) -> None:
    """BadInput when `sql` holds a statement that could write a file or change a setting."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise BadInput(f"sql: {first_line(e)}") from None
    for statement in statements:
        kind = statement.type.name
        if kind in FILE_STATEMENTS:
            raise BadInput(
                f"sql: refused, shoggoth sql cannot touch files, the network, "
                f"extensions or settings (a {kind} statement)"
            )


def _execute(
    con: Connection, sql: str, read_only_hint: str
) -> tuple[list[str], list[tuple[Any, ...]], Any]:
    refuse_file_statements(sql)
    try:
        result = con.execute(sql)
        if result is None:  # DuckDB found no statement: only ';' or comments
            raise BadInput("sql: no statement to run (the query holds only ';' or comments)")
        if result.description is None:
            return [], [], None
        table = result.to_arrow_table()
        if table is None:
            return [], [], None
        return table.column_names, [tuple(r.values()) for r in table.to_pylist()], table
    except duckdb.PermissionException as e:
        raise BadInput(
            f"sql: refused, shoggoth sql cannot touch files, the network or "
            f"extensions ({first_line(e)})"
        ) from None
    except duckdb.InvalidInputException as e:
        if "read-only" in str(e) or "read only" in str(e):
            raise BadInput(f"sql: the database is opened read-only; {read_only_hint}") from None
        raise BadInput(f"sql: {first_line(e)}") from None
    except duckdb.OutOfMemoryException as e:
        raise BadInput(
            f"sql: the query needs more memory than --memory-limit allows ({first_line(e)})"
        ) from None
    except duckdb.Error as e:
        if is_interrupt(e):
            raise KeyboardInterrupt from None
        raise BadInput(f"sql: {first_line(e)}") from None


def write_output(
    cfg: SqlConfig, columns: list[str], rows: list[tuple[Any, ...]], table: Any
) -> None:
    """Print or write the result in the requested format."""
    if cfg.format == "table" and cfg.out is None:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        shown = Table(show_lines=False)
        for col in columns:
            shown.add_column(col)
        for row in rows[: cfg.max_rows]:  # Text: brackets in values are data, not markup
            shown.add_row(*(Text("NULL" if v is None else str(v)) for v in row))
        console = Console()
        console.print(shown)
        more = f" (first {cfg.max_rows} shown)" if len(rows) > cfg.max_rows else ""
        console.print(f"{len(rows):,} rows{more}", highlight=False)
        return
    if cfg.out is None:
        _write_text(sys.stdout, cfg.format, columns, rows)
        return

    def write(tmp: str) -> None:
        if cfg.format == "parquet":
            pq.write_table(table, tmp)
        else:
            with open(tmp, "w", newline="") as f:
                _write_text(f, "csv" if cfg.format == "table" else cfg.format, columns, rows)

    write_atomic(cfg.out, write)


def _write_text(f: Any, fmt: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    if fmt == "csv":
        w = csv.writer(f, lineterminator="\n")  # as sqlite3 and duckdb print: no \r
        w.writerow(columns)
        w.writerows(rows)
    else:
        json.dump([dict(zip(columns, r, strict=True)) for r in rows], f, default=str, indent=1)
        f.write("\n")
