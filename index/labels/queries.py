"""The reads of the tables `shoggoth label` writes (features, calibration, label_fdr, its runs)."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

import pandas as pd

from shoggoth.index.labels.rules import LabelConfig
from shoggoth.index.store.read import (
    has_table,
    if_table,
    with_names,
)

MASK_FEATURES_SQL = """
SELECT l.feature, l.label, f.top_share, f.set_ratio, f.q_value
FROM feature_labels l JOIN features f USING (sae_id, feature)
WHERE l.sae_id = ? AND l.label IN ('mask-specific', 'persona-concept', 'mask-or-concept',
                                   'mask-family')
  AND (l.top_persona = ? OR list_contains(string_split(l.family_set, ','), ?))
ORDER BY l.label = 'mask-family', l.label, f.set_ratio DESC LIMIT ?"""
"""A persona's own features (mask-specific, persona-concept, mask-or-concept, then mask-family;
labels in force), by how far the persona stands apart (set_ratio); parameters: sae_id, persona,
persona, limit."""

LABELLED_SQL = """
SELECT f.* EXCLUDE (label), l.label, f.label AS auto_label, l.manual_label, l.note, p.family
FROM features f JOIN feature_labels l USING (sae_id, feature)
LEFT JOIN personas p ON p.persona::VARCHAR = f.top_persona
WHERE f.sae_id = ?"""
"""Features' statistics with the label in force (manual over automatic) and the automatic one."""

def labelled_features(con: Any, sae: str, feature: int | None = None) -> pd.DataFrame:
    """Every feature's (or one feature's) statistics and labels; empty before `label`."""
    if not has_table(con, "features"):
        return pd.DataFrame()
    if feature is not None:
        return with_names(con, sae,
                          con.execute(LABELLED_SQL + " AND f.feature = ?", [sae, feature]).df(),
                          explained=True)
    return with_names(con, sae, con.execute(LABELLED_SQL + " ORDER BY f.feature", [sae]).df(),
                      explained=True)

def _label_run(con: Any, sae: str) -> dict[str, Any]:
    """The config saved by the label run whose labels are stored for `sae` ({} if none)."""
    if not has_table(con, "runs"):
        return {}
    row = con.execute(
        "SELECT config_json FROM runs WHERE command = 'label' AND "
        "json_extract_string(config_json, '$.sae_id') = ? ORDER BY started_at DESC LIMIT 1",
        [sae]).fetchone()
    return json.loads(row[0]).get("config", {}) if row else {}

def label_thresholds(con: Any, sae: str) -> LabelConfig:
    """The thresholds of the label run whose labels are stored for `sae` (the defaults when
    no run recorded them)."""
    stored = _label_run(con, sae)
    names = {f.name for f in fields(LabelConfig)}
    return LabelConfig(**{k: v for k, v in stored.items() if k in names})

def calibration(con: Any, sae: str) -> pd.DataFrame:
    """The label run's calibration counts, one row per run and label (empty before `label`)."""
    return if_table(con, "calibration",
                     "SELECT run, description, n_live, label, n FROM calibration "
                     "WHERE sae_id = ? ORDER BY run, label", [sae])

def label_fdr(con: Any, sae: str) -> pd.DataFrame:
    """Per label: real count, mean count under prompt reassignment, count in the split run,
    and the estimated false-discovery rate (persona labels only; empty before `label`)."""
    return if_table(con, "label_fdr",
                     "SELECT label, n_real, n_null, n_split, fdr FROM label_fdr "
                     "WHERE sae_id = ?", [sae])

def label_notes(con: Any, sae: str) -> list[str]:
    """What the last label run said its battery could not support."""
    return list(_label_run(con, sae).get("notes", []))

def mask_features(con: Any, sae: str, persona: str, limit: int) -> pd.DataFrame:
    """A persona's own features (labels in force; see MASK_FEATURES_SQL), strongest first."""
    return with_names(con, sae, con.execute(MASK_FEATURES_SQL,
                                            [sae, persona, persona, limit]).df())
