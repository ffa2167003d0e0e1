"""The database side of `shoggoth grid`: one SAE's and answer set's grid tables, replaced in one
transaction with the run that made them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from shoggoth.index.action.analysis import GridAnalysis
from shoggoth.index.store.database import WAIT, connect, record_run, replace_rows, transaction
from shoggoth.index.store.schema import create_grid_tables

DOCUMENT_COLUMNS = [
    "doc",
    "cell",
    "context",
    "context_paraphrase",
    "text_persona",
    "text_paraphrase",
    "item_id",
    "persona",
    "paraphrase",
    "n_tokens",
]


def write_grid(
    db: Path,
    key: dict[str, str],
    documents: pd.DataFrame,
    doc_features: pd.DataFrame,
    result: GridAnalysis,
    config: dict[str, Any],
) -> None:
    """Replace the grid tables' rows of `key` (sae_id, answer_set, neutral) and record the
    run."""
    tables = {
        "grid_documents": documents[DOCUMENT_COLUMNS],
        "grid_doc_features": doc_features,
        "grid_features": result.features,
        "grid_effects": result.effects,
        "grid_fdr": result.fdr,
    }
    con = connect(db, wait=WAIT)
    try:
        with transaction(con):
            create_grid_tables(con)
            sae_id, rest = key["sae_id"], {k: v for k, v in key.items() if k != "sae_id"}
            for name, frame in tables.items():
                replace_rows(con, name, sae_id, frame.assign(**key), rest)
            record_run(con, "grid", key["sae_id"], {**config, **key})
    finally:
        con.close()
