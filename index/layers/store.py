"""The `layer_probe` table: where the persona lives by layer (written by `shoggoth layers`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from shoggoth.core.config import Config, config_metadata
from shoggoth.index.store.connection import Connection
from shoggoth.index.store.database import WAIT, connect, record_run, replace_rows, transaction

LAYER_PROBE_COLUMNS = """
    sae_id VARCHAR NOT NULL, layer INTEGER NOT NULL, hook VARCHAR NOT NULL,
    n_documents INTEGER NOT NULL, n_personas INTEGER NOT NULL, n_items INTEGER NOT NULL,
    chance DOUBLE NOT NULL, probe_accuracy DOUBLE, persona_norm_mean DOUBLE,
    persona_norm_max DOUBLE, sae_signal_fraction DOUBLE, probe_on_reconstruction DOUBLE,
    probe_on_error DOUBLE, is_sae_layer BOOLEAN NOT NULL, PRIMARY KEY (sae_id, layer)"""


def create_probe_tables(con: Connection) -> None:
    """The table `shoggoth layers` writes (if missing)."""
    con.execute(f"CREATE TABLE IF NOT EXISTS layer_probe ({LAYER_PROBE_COLUMNS})")


def write_layer_probe(db: Path, sae_id: str, table: pd.DataFrame, config: Config) -> None:
    """Replace this SAE's layer_probe rows, with a `runs` record, in one transaction."""
    con = connect(db, wait=WAIT)
    try:
        with transaction(con):
            create_probe_tables(con)
            replace_rows(con, "layer_probe", sae_id, table.assign(sae_id=sae_id))
            record_run(con, "layers", sae_id, config_metadata(config))
    finally:
        con.close()
