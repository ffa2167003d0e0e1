"""The `layer_probe` table: where the persona lives by layer (written by `shoggoth layers`)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

from core.config import config_metadata
from core.versions import library_versions
from index.database import WAIT, connect, transaction

LAYER_PROBE_COLUMNS = """
    sae_id VARCHAR NOT NULL, layer INTEGER NOT NULL, hook VARCHAR NOT NULL,
    n_documents INTEGER NOT NULL, n_personas INTEGER NOT NULL, n_items INTEGER NOT NULL,
    chance DOUBLE NOT NULL, probe_accuracy DOUBLE, persona_norm_mean DOUBLE,
    persona_norm_max DOUBLE, sae_signal_fraction DOUBLE, probe_on_reconstruction DOUBLE,
    probe_on_error DOUBLE, is_sae_layer BOOLEAN NOT NULL, PRIMARY KEY (sae_id, layer)"""


def create_probe_tables(con: Any) -> None:
    """The table `shoggoth layers` writes (if missing)."""
    con.execute(f"CREATE TABLE IF NOT EXISTS layer_probe ({LAYER_PROBE_COLUMNS})")


def write_layer_probe(db: Path, sae_id: str, table: pd.DataFrame, config: Any) -> None:
    """Replace this SAE's layer_probe rows, with a `runs` record, in one transaction."""
    con = connect(db, wait=WAIT)
    try:
        with transaction(con):
            create_probe_tables(con)
            con.execute("DELETE FROM layer_probe WHERE sae_id = ?", [sae_id])
            con.register("_probe", table.assign(sae_id=sae_id))
            con.execute("INSERT INTO layer_probe BY NAME SELECT * FROM _probe")
            con.unregister("_probe")
            con.execute("INSERT INTO runs VALUES (?, 'layers', ?, ?, now(), now(), 'finished')",
                        [uuid.uuid4().hex[:12],
                         json.dumps({"identity": None, "config": config_metadata(config),
                                     "sae_id": sae_id}),
                         json.dumps(library_versions())])
    finally:
        con.close()
