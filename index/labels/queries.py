"""The reads of the tables `shoggoth label` writes (features, calibration, label_fdr, its runs)."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

import duckdb
import pandas as pd

from shoggoth.index.labels.decompose import PARTS, PATTERN_PARTS, answer
from shoggoth.index.labels.rules import LabelConfig
from shoggoth.index.store.connection import Connection
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


def labelled_features(con: Connection, sae_id: str, feature: int | None = None) -> pd.DataFrame:
    """Every feature's (or one feature's) statistics and labels; empty before `label`."""
    if not has_table(con, "features"):
        return pd.DataFrame()
    if feature is not None:
        return with_names(
            con,
            sae_id,
            con.execute(LABELLED_SQL + " AND f.feature = ?", [sae_id, feature]).df(),
            explained=True,
        )
    return with_names(
        con,
        sae_id,
        con.execute(LABELLED_SQL + " ORDER BY f.feature", [sae_id]).df(),
        explained=True,
    )


def _label_run(con: Connection, sae_id: str) -> dict[str, Any]:
    """The config saved by the label run whose labels are stored for `sae_id` ({} if none)."""
    if not has_table(con, "runs"):
        return {}
    row = con.execute(
        "SELECT config_json FROM runs WHERE command = 'label' AND "
        "json_extract_string(config_json, '$.sae_id') = ? ORDER BY started_at DESC LIMIT 1",
        [sae_id],
    ).fetchone()
    return json.loads(row[0]).get("config", {}) if row else {}


def label_thresholds(con: Connection, sae_id: str) -> LabelConfig:
    """The thresholds of the label run whose labels are stored for `sae_id` (the defaults when
    no run recorded them)."""
    stored = _label_run(con, sae_id)
    names = {f.name for f in fields(LabelConfig)}
    return LabelConfig(**{k: v for k, v in stored.items() if k in names})


def calibration(con: Connection, sae_id: str) -> pd.DataFrame:
    """The label run's calibration counts, one row per run and label (empty before `label`)."""
    return if_table(
        con,
        "calibration",
        "SELECT run, description, n_live, label, n FROM calibration "
        "WHERE sae_id = ? ORDER BY run, label",
        [sae_id],
    )


def label_fdr(con: Connection, sae_id: str) -> pd.DataFrame:
    """Per label: real count, mean count under prompt reassignment, count in the split run,
    and the estimated false-discovery rate (persona labels only; empty before `label`)."""
    return if_table(
        con,
        "label_fdr",
        "SELECT label, n_real, n_null, n_split, fdr FROM label_fdr WHERE sae_id = ?",
        [sae_id],
    )


def label_notes(con: Connection, sae_id: str) -> list[str]:
    """What the last label run said its battery could not support."""
    return list(_label_run(con, sae_id).get("notes", []))


def mask_features(con: Connection, sae_id: str, persona: str, limit: int) -> pd.DataFrame:
    """A persona's own features (labels in force; see MASK_FEATURES_SQL), strongest first."""
    return with_names(
        con, sae_id, con.execute(MASK_FEATURES_SQL, [sae_id, persona, persona, limit]).df()
    )


def persona_signal(con: Connection, sae_id: str) -> pd.DataFrame:
    """persona_signal rows of an SAE (persona, n_docs, shift_norm, carried)."""
    return if_table(
        con,
        "persona_signal",
        "SELECT persona, n_docs, shift_norm, carried FROM "
        "persona_signal WHERE sae_id = ? ORDER BY persona",
        [sae_id],
    )


def signal_carried(signal: pd.DataFrame) -> float | None:
    """The dictionary's share of the persona signal, Σ_k ⟨v_k, v̂_k⟩ / Σ_k |v_k|², from its
    persona_signal rows (None without them)."""
    ok = signal.dropna(subset=["carried"]) if not signal.empty else signal
    if ok.empty:
        return None
    norm2 = ok["shift_norm"].to_numpy() ** 2
    return float((ok["carried"].to_numpy() * norm2).sum() / norm2.sum()) if norm2.sum() else None


def _parts(
    con: duckdb.DuckDBPyConnection,
    table: str,
    order: tuple[str, ...],
    sae_id: str,
    persona: str | None,
) -> pd.DataFrame:
    frame = if_table(
        con,
        table,
        f"SELECT persona, part, share, ci_low, ci_high, n_items FROM {table} "
        "WHERE sae_id = ? AND (? IS NULL OR persona = ?) ORDER BY persona",
        [sae_id, persona, persona],
    )
    if frame.empty:
        return frame
    frame["order"] = frame["part"].map({p: n for n, p in enumerate(order)})
    return frame.sort_values(["persona", "order"]).drop(columns="order").reset_index(drop=True)


def persona_decomposition(
    con: duckdb.DuckDBPyConnection, sae_id: str, persona: str | None = None
) -> pd.DataFrame:
    """persona_decomposition rows (persona, part, share, ci_low, ci_high, n_items), parts in
    their order (decompose.PATTERN_PARTS); one persona's, or every persona's."""
    return _parts(con, "persona_decomposition", PATTERN_PARTS, sae_id, persona)


def persona_label_shares(
    con: duckdb.DuckDBPyConnection, sae_id: str, persona: str | None = None
) -> pd.DataFrame:
    """persona_label_shares rows: the shift cut by label (decompose.PARTS order)."""
    return _parts(con, "persona_label_shares", PARTS, sae_id, persona)


def persona_space(con: duckdb.DuckDBPyConnection, sae_id: str) -> pd.DataFrame:
    """persona_space rows of an SAE's harvest (personas first, then controls)."""
    return if_table(
        con,
        "persona_space",
        "SELECT * EXCLUDE (sae_id) FROM persona_space "
        "WHERE sae_id = ? ORDER BY is_control, persona",
        [sae_id],
    )


def persona_space_axes(con: duckdb.DuckDBPyConnection, sae_id: str) -> pd.DataFrame:
    """persona_space_axes rows (PC1…, controls, assistant)."""
    return if_table(
        con,
        "persona_space_axes",
        "SELECT * EXCLUDE (sae_id) FROM persona_space_axes WHERE sae_id = ? ORDER BY axis",
        [sae_id],
    )


def persona_own_features(con: duckdb.DuckDBPyConnection, sae_id: str, persona: str) -> pd.DataFrame:
    """The features carrying most of one persona's own modulation (persona_own_features)."""
    return if_table(
        con,
        "persona_own_features",
        "SELECT rank, feature, share, modulation, label "
        "FROM persona_own_features WHERE sae_id = ? AND persona = ? ORDER BY rank",
        [sae_id, persona],
    )


def answers(decomposition: pd.DataFrame) -> dict[str, str]:
    """{persona: its one-line answer} from persona_decomposition rows."""
    out: dict[str, str] = {}
    if decomposition.empty:
        return out
    for persona, group in decomposition.groupby("persona", sort=True):
        parts = {r.part: (r.share, r.ci_low, r.ci_high) for r in group.itertuples()}
        out[str(persona)] = answer(str(persona), parts)
    return out


def space_summary(space: pd.DataFrame, axes: pd.DataFrame) -> str | None:
    """The persona space in one sentence (None without one): the median persona's share along
    the common direction, the remainder's reproducibility against its null, PC1's share of the
    variance and the assistant axis's cosine with PC1."""
    if space.empty:
        return None
    main = space[~space["is_control"].astype(bool)]
    by_axis = axes.set_index("axis") if not axes.empty else pd.DataFrame()
    common, within = main["common_share"].median(), main["reproducibility"].median()
    text = (
        f"persona space (no dictionary): a median {common:.2f} of a persona's shift lies "
        "along the personas' common direction; the rest is reproducible across wordings at "
        f"a median cosine {within:.2f} (between personas: "
        f"{main['reproducibility_null'].median():.2f})"
    )
    if "PC1" in by_axis.index:
        text += f"; PC1 holds {by_axis.loc['PC1', 'variance_share']:.0%} of its variance"
    if "assistant" in by_axis.index:
        text += (
            f"; the assistant axis lies at cosine {by_axis.loc['assistant', 'cosine_pc1']:.2f}"
            " with PC1"
        )
    return text
