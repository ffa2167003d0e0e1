"""The explorer's access to a feature database: a read-only, sandboxed DuckDB connection per page
run (opened by the run's first query, closed when the run ends), and the one write the explorer
makes (manual labels into `annotations`).

The explorer holds no connection between page runs, so it never blocks a writer for longer than
a page takes to render: `shoggoth label`, `index`, `merge` and `harvest` can write while it is
open (they wait for a running page, and a page waits for a committing writer). `shoggoth index`
publishes a rebuild by renaming a new file over the old one; the next run opens the new file.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from shoggoth.core.errors import BadInput
from shoggoth.index.store import read
from shoggoth.index.store.connection import Connection
from shoggoth.index.store.database import Locked, connect, require_shoggoth, tables, transaction
from shoggoth.index.store.schema import LABEL_TABLES
from shoggoth.index.store.sql import sandbox

READ_WAIT = 15.0
"""Seconds a page waits for a writer's transaction to commit before it says the file is busy."""


class Store:
    """One database file as the explorer sees it: connections on demand, and a generation that
    moves whenever the explorer itself writes (so cached queries are redone)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.generation = 0
        self.open: set[Any] = set()

    def identity(self) -> tuple[int, int] | None:
        """The file on disk (inode and modification time): a rename or a write changes it."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def connect(self) -> Connection:
        """A read-only, sandboxed connection for one page run (close it with `release`)."""
        try:
            con = connect(self.path, read_only=True, config=sandbox(), wait=READ_WAIT)
        except Locked as e:
            raise BadInput(
                f"{e} (another command is writing the database; reload the page in a moment)"
            ) from None
        with self.lock:
            self.open.add(con)
        return con

    def release(self, con: Connection) -> None:
        with self.lock:
            self.open.discard(con)
        con.close()

    def close(self) -> None:
        """Close every connection still open (other processes may then write the file)."""
        with self.lock:
            for con in list(self.open):
                self.release(con)

    def annotate(
        self, sae_id: str, feature: int, label: str | None, note: str | None, author: str | None
    ) -> None:
        """Append a manual label (it wins over the automatic one in `feature_labels`)."""
        with self.lock:
            self.close()  # this process's readers, so that it may open the file for writing
            try:
                rw = connect(self.path, config=sandbox(), wait=READ_WAIT)
            except BadInput as e:
                raise BadInput(f"cannot save the label: {e}") from None
            try:
                with transaction(rw):
                    rw.execute(
                        f"CREATE TABLE IF NOT EXISTS annotations ({LABEL_TABLES['annotations']})"
                    )
                    rw.execute(
                        "INSERT INTO annotations (sae_id, feature, label, note, "
                        "author) VALUES (?, ?, ?, ?, ?)",
                        [sae_id, feature, label, note, author],
                    )
                rw.execute("CHECKPOINT")
            finally:
                rw.close()
                self.generation += 1


def check_database(path: Path | None) -> str | None:
    """Why the explorer cannot show `path` (missing, not a database, empty, unharvested, or
    locked), in a sentence that says what to run; None when it can."""
    if path is None:
        return "No database was given. Start the explorer with `shoggoth explore --db FILE`."
    if not path.is_file():
        return (
            f"There is no feature database at `{path}` (no such file). Build one with "
            "`shoggoth demo "
            "--no-serve` (the built-in model and battery), or `shoggoth harvest`, `shoggoth "
            "label` and `shoggoth index` for your own SAE."
        )
    try:
        con = connect(path, read_only=True, config=sandbox(), wait=READ_WAIT)  # as the store
    except BadInput as e:
        return str(e)
    try:
        require_shoggoth(con, path)
        if not tables(con) or read.saes(con).empty:
            return (
                f"`{path}` holds no feature tables (no harvest yet). Run `shoggoth harvest "
                f"--db {path} --sae-dir SAE_DIR`, then `shoggoth label` and `shoggoth index`."
            )
    except BadInput as e:
        return str(e)
    finally:
        con.close()
    return None
