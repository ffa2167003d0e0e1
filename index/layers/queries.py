"""The reads of the table `shoggoth layers` writes (layer_probe)."""

from __future__ import annotations

import pandas as pd

from shoggoth.index.store.connection import Connection
from shoggoth.index.store.read import (
    if_table,
)


def layer_probe(con: Connection, sae_id: str) -> pd.DataFrame:
    """Where the persona lives by layer (empty before `shoggoth layers`)."""
    return if_table(
        con,
        "layer_probe",
        "SELECT * EXCLUDE (sae_id) FROM layer_probe WHERE sae_id = ? ORDER BY layer",
        [sae_id],
    )
