"""The tables `shoggoth effects` writes: per feature × persona causal measures, the personas'
own shifts of the answer, and the features table's causal summary."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from shoggoth.core.config import Config, config_metadata
from shoggoth.index.store.connection import Connection
from shoggoth.index.store.database import (
    WAIT,
    connect,
    record_run,
    replace_rows,
    transaction,
)
from shoggoth.index.store.derived import refresh_causal

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
    "persona_composition": """
        sae_id VARCHAR NOT NULL, persona VARCHAR NOT NULL, test VARCHAR NOT NULL,
        part VARCHAR NOT NULL, share DOUBLE, ci_low DOUBLE, ci_high DOUBLE,
        n_items INTEGER NOT NULL, PRIMARY KEY (sae_id, persona, test, part)""",
}
"""feature_effects.measure: attribution (the screen's estimate of the mediated fraction),
mediated, ablate_logprob, ablate_kl, steer_toward; role: candidate (top of the screen),
baseline (a random shared feature), chosen (named with --features). persona_composition: the
causal composition test (test steer: the share of the persona's effect that a part of its shift
added to the reference reproduces; test ablate: the share a part removed from the persona takes
away; part: common, common+own, own, shift for steer; own, own_features for ablate)."""


def create_effect_tables(con: Connection) -> None:
    """The tables `shoggoth effects` writes (if missing)."""
    for table, columns in EFFECT_TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")


def write_effects(
    db: Path,
    sae_id: str,
    effects: pd.DataFrame,
    shifts: pd.DataFrame,
    composition: pd.DataFrame,
    config: Config,
) -> None:
    """Replace one SAE's effects (and its features' causal summary), with a `runs` record, in
    one transaction."""
    con = connect(db, wait=WAIT)
    try:
        with transaction(con):
            create_effect_tables(con)
            replace_rows(con, "feature_effects", sae_id, effects.assign(sae_id=sae_id))
            replace_rows(con, "persona_shifts", sae_id, shifts.assign(sae_id=sae_id))
            replace_rows(con, "persona_composition", sae_id, composition.assign(sae_id=sae_id))
            refresh_causal(con, sae_id)
            record_run(con, "effects", sae_id, config_metadata(config))
    finally:
        con.close()
