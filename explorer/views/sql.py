"""SQL: a read-only console, sandboxed exactly as `shoggoth sql` (no files, no ATTACH, no
extensions, no configuration changes, no writes)."""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from shoggoth.core.errors import BadInput
from shoggoth.explorer.common import code, cursor, session_gone
from shoggoth.index.store.sql import DEFAULT_MEMORY_LIMIT, execute

QUERIES = Path(__file__).resolve().parents[2] / "docs" / "queries.sql"
TIMEOUT = 30.0
"""Seconds a query from this page may run (the connection's memory is capped too)."""

st.title("SQL")
st.caption(
    "Read-only. The tables are documented in docs/schema.md. External access is "
    "disabled: reading or writing files, ATTACH, INSTALL/LOAD and SET are refused. A "
    f"query may run {TIMEOUT:g} s and use up to {DEFAULT_MEMORY_LIMIT}; closing the tab "
    "cancels it."
)
examples: dict[str, str] = {}
if QUERIES.is_file():
    parts = re.split(r"^-- name: (\w+)\n", QUERIES.read_text(), flags=re.M)
    examples = {n: b.strip() for n, b in zip(parts[1::2], parts[2::2], strict=True)}
choice = st.selectbox("example queries", ["(write your own)", *examples], key="s_example")
default = st.query_params.get(
    "query",
    "SELECT label, count(*) AS features FROM features GROUP BY label ORDER BY features DESC",
)
if choice != "(write your own)":
    default = examples[choice]
sql = st.text_area("query", default, height=200, key=f"s_query_{choice}")
# A link may fill the editor (?query=…), but only a click runs it: a crafted link must not
# start a query on page load.
if st.button("Run", type="primary", key="s_run"):
    st.query_params["query"] = sql
    try:
        columns, rows, table = execute(
            cursor(),
            sql,
            "the explorer cannot modify it",
            timeout=TIMEOUT,
            cancelled=session_gone(),
        )
    except BadInput as e:
        st.error(code(e))  # (an error may quote values from the database)
    else:
        if table is None:
            st.write("(no result)")
        else:
            frame = table.to_pandas()
            st.caption(f"{len(frame):,} rows")
            st.dataframe(frame, hide_index=True)
            st.download_button(
                "Download CSV", frame.to_csv(index=False), file_name="query.csv", mime="text/csv"
            )
