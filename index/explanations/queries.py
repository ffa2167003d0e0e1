"""The reads of the table `shoggoth explain` writes (feature_explanations)."""

from __future__ import annotations

import pandas as pd

from shoggoth.index.store.connection import Connection
from shoggoth.index.store.read import (
    has_table,
)


def explanations(con: Connection, sae_id: str) -> pd.DataFrame:
    """The stored explanations with their names and scores: feature, name, explanation,
    explainer, scorer, detection, detection_n, fuzzing, fuzzing_n (empty before `explain`)."""
    if not has_table(con, "feature_explanations"):
        return pd.DataFrame()
    return con.execute(
        """
        SELECT e.feature, n.name, e.explanation, e.explainer, e.scorer, e.detection,
               e.detection_n, e.fuzzing, e.fuzzing_n
        FROM feature_explanations e LEFT JOIN feature_names n USING (sae_id, feature)
        WHERE e.sae_id = ? ORDER BY e.feature""",
        [sae_id],
    ).df()
