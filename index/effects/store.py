"""The tables `shoggoth effects` writes: per feature × persona causal measures, the personas'
own shifts of the answer, and the features table's causal summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from shoggoth.core.config import config_metadata
from shoggoth.index.store.database import (
    WAIT,
    connect,
    record_run,
    replace_rows,
    tables,
    transaction,
)
from shoggoth.index.store.schema import add_feature_columns

EFFECT_TABLES: dict[str, str] = {
    "feature_effects": """
        sae_id VARCHAR NOT NULL, feature INTEGER NOT NULL, persona VARCHAR NOT NULL,
        measure VARCHAR NOT NULL, estimate DOUBLE, ci_low DOUBLE, ci_high DOUBLE,
        n INTEGER NOT NULL, role VARCHAR NOT NULL,
        PRIMARY KEY (sae_id, feature, persona, measure)""",
    "persona_shifts": """
        sae_id VARCHAR NOT NULL, persona VARCHAR NOT NULL, shift DOUBLE, ci_low DOUBLE,
        ci_high DOUBLE, rms_token_shift DOUBLE, n_items INTEGER NOT NULL,
        n_tokens INTEGER NOT NULL, PRIMARY KEY (sae_id, persona)""",
}
"""feature_effects.measure: attribution (the screen's estimate of the mediated fraction),
mediated, ablate_logprob, ablate_kl, steer_toward; role: candidate (top of the screen),
baseline (a random shared feature), chosen (named with --features)."""

MEASURES = ("attribution", "mediated", "ablate_logprob", "ablate_kl", "steer_toward")

CAUSAL_SQL = """
UPDATE features f SET causal = b.summary, mediated = b.estimate, mediated_persona = b.persona
FROM (
  SELECT m.feature, m.persona, m.estimate,
    CASE WHEN m.ci_low > 0 THEN
      printf('mediates %.0f%% [%.0f%%, %.0f%%] of %s''s shift of the answer (ablation KL %.2g)',
             100 * m.estimate, 100 * m.ci_low, 100 * m.ci_high, m.persona,
             coalesce(k.estimate, 0))
    ELSE
      printf('no mediation shown (largest: %s, %.0f%% [%.0f%%, %.0f%%]; ablation KL %.2g)',
             m.persona, 100 * m.estimate, 100 * m.ci_low, 100 * m.ci_high,
             coalesce(k.estimate, 0))
    END AS summary
  FROM (SELECT *, row_number() OVER (PARTITION BY feature ORDER BY estimate DESC NULLS LAST,
                                     persona) AS r
        FROM feature_effects WHERE sae_id = $sae AND measure = 'mediated') m
  LEFT JOIN feature_effects k ON k.sae_id = $sae AND k.feature = m.feature
       AND k.persona = m.persona AND k.measure = 'ablate_kl'
  WHERE m.r = 1) b
WHERE f.sae_id = $sae AND f.feature = b.feature
"""


def create_effect_tables(con: Any) -> None:
    """The tables `shoggoth effects` writes (if missing)."""
    for table, columns in EFFECT_TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")


def refresh_causal(con: Any, sae_id: str) -> None:
    """Fill the features table's causal summary of one SAE from feature_effects (inside the
    caller's transaction; nothing to do before both tables exist)."""
    have = tables(con)
    if "features" not in have or "feature_effects" not in have:
        return
    add_feature_columns(con)
    con.execute("UPDATE features SET causal = NULL, mediated = NULL, mediated_persona = NULL "
                "WHERE sae_id = ?", [sae_id])
    con.execute(CAUSAL_SQL, {"sae": sae_id})


def write_effects(db: Path, sae_id: str, effects: pd.DataFrame, shifts: pd.DataFrame,
                  config: Any) -> None:
    """Replace one SAE's effects (and its features' causal summary), with a `runs` record, in
    one transaction."""
    con = connect(db, wait=WAIT)
    try:
        with transaction(con):
            create_effect_tables(con)
            replace_rows(con, "feature_effects", sae_id, effects.assign(sae_id=sae_id))
            replace_rows(con, "persona_shifts", sae_id, shifts.assign(sae_id=sae_id))
            refresh_causal(con, sae_id)
            record_run(con, "effects", sae_id, config_metadata(config))
    finally:
        con.close()
