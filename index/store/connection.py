"""The type of an open feature database: DuckDB's own connection class, under one name that every
module of the database side (and the explorer above it) annotates its `con` with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import duckdb

Connection: TypeAlias = duckdb.DuckDBPyConnection
"""A DuckDB connection opened by `shoggoth.index.store.database.connect` (sandboxed, with
shoggoth's views and macros defined on it)."""


def one_row(
    con: Connection, sql: str, params: Sequence[object] | Mapping[str, object] | None = None
) -> tuple[Any, ...]:
    """The row of a query that always returns exactly one (an aggregate such as count(*)). Read
    with fetchall, which finishes the result: after fetchone DuckDB refuses other work on the
    connection (a transaction's next statement) until the result is exhausted."""
    rows = con.execute(sql, params or []).fetchall()
    if len(rows) != 1:
        raise RuntimeError(f"expected one row from: {sql}")
    return rows[0]
