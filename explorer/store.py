"""The explorer's access to a feature database: one read-only, sandboxed DuckDB connection shared
by every browser session, a cursor per session, and the one write the explorer makes (manual
labels into `annotations`).

Read-only connections let other processes read the same file meanwhile (`shoggoth sql`, a second
explorer). `shoggoth index` publishes a rebuild by renaming a new file over the old one; the store
notices the new file and reopens. To save a label it closes its connection, writes in a short
read-write transaction, and reopens; sessions then take fresh cursors.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from core.errors import BadInput
from index import read
from index.database import connect, require_shoggoth, tables, transaction
from index.schema import LABEL_TABLES
from index.sql import SANDBOX


class Store:
    """A shared read-only connection to `path` and the cursors handed out from it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.generation = 0
        self.con: Any = None
        self.cursors: list[Any] = []
        self.identity: tuple[int, int] | None = None
        self._open()

    def _stat(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_ino, st.st_mtime_ns

    def _open(self) -> None:
        self.con = connect(self.path, read_only=True, config=SANDBOX)
        self.identity = self._stat()

    def close(self) -> None:
        """Close the connection and every cursor (other processes may then write the file)."""
        with self.lock:
            self._close()

    def _close(self) -> None:
        for cur in self.cursors:
            cur.close()
        self.cursors.clear()
        if self.con is not None:
            self.con.close()
            self.con = None

    def refresh(self) -> None:
        """Reopen when the file on disk was replaced since it was opened."""
        with self.lock:
            try:
                current = self._stat()
            except FileNotFoundError:
                return
            if current != self.identity:
                self._close()
                self._open()
                self.generation += 1

    def cursor(self) -> tuple[int, Any]:
        """(generation, a new cursor): a session keeps its cursor until the generation moves."""
        with self.lock:
            cur = self.con.cursor()
            self.cursors.append(cur)
            return self.generation, cur

    def annotate(self, sae_id: str, feature: int, label: str | None, note: str | None,
                 author: str | None) -> None:
        """Append a manual label (it wins over the automatic one in `feature_labels`)."""
        with self.lock:
            self._close()
            try:
                try:
                    rw = connect(self.path, config=SANDBOX)
                except BadInput as e:
                    raise BadInput(f"cannot save the label: {e}") from None
                try:
                    with transaction(rw):
                        rw.execute(f"CREATE TABLE IF NOT EXISTS annotations "
                                   f"({LABEL_TABLES['annotations']})")
                        rw.execute("INSERT INTO annotations (sae_id, feature, label, note, "
                                   "author) VALUES (?, ?, ?, ?, ?)",
                                   [sae_id, feature, label, note, author])
                    rw.execute("CHECKPOINT")
                finally:
                    rw.close()
            finally:
                self._open()
                self.generation += 1


def check_database(path: Path | None) -> str | None:
    """Why the explorer cannot show `path` (missing, not a database, empty, unharvested, or
    locked), in a sentence that says what to run; None when it can."""
    if path is None:
        return "No database was given. Start the explorer with `shoggoth explore --db FILE`."
    if not path.is_file():
        return (f"There is no feature database at `{path}`. Build one with `shoggoth demo "
                "--no-serve` (the built-in model and battery), or `shoggoth harvest`, `shoggoth "
                "label` and `shoggoth index` for your own SAE.")
    try:
        con = connect(path, read_only=True, config=SANDBOX)  # as the store opens it
    except BadInput as e:
        return str(e)
    try:
        require_shoggoth(con, path)
        if not tables(con) or read.saes(con).empty:
            return (f"`{path}` holds no harvest yet. Run `shoggoth harvest --db {path} --sae "
                    "SAE_DIR`, then `shoggoth label` and `shoggoth index`.")
    except BadInput as e:
        return str(e)
    finally:
        con.close()
    return None
