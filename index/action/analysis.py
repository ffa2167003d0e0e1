"""`analyse_grid`: the grid's tests, labels, per-persona effects and calibrated false-discovery
rates, from a grid harvest's documents and per-document activations (no database)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from shoggoth.core.errors import BadInput
from shoggoth.index.action.labels import (
    CELLS,
    GRID_EFFECT_LABELS,
    ActionDesign,
    Chunked,
    GridLabelConfig,
    build_layout,
    gather,
)
from shoggoth.index.action.stats import EFFECTS
from shoggoth.index.labels.stats import bh_qvalues

FEATURE_COLUMNS = [
    "feature",
    "grid_label",
    "n_docs_firing",
    *[f"{e}_{x}" for e in EFFECTS for x in ("t", "p", "q", "persona")],
    "action_ratio_high",
    "action_power",
]
EFFECT_COLUMNS = [
    "feature",
    "persona",
    "n_prompts",
    *CELLS,
    *[f"{e}{x}" for e in EFFECTS for x in ("", "_low", "_high")],
]


@dataclass
class GridAnalysis:
    """What `analyse_grid` finds: per feature, per feature and persona, and per label."""

    features: pd.DataFrame
    """One row per feature (FEATURE_COLUMNS)."""
    effects: pd.DataFrame
    """One row per live feature and persona (EFFECT_COLUMNS)."""
    fdr: pd.DataFrame
    """label, n_real, n_null (mean over the calibration runs), fdr."""
    notes: list[str]


def decide(
    q: dict[str, np.ndarray],
    n_docs: np.ndarray,
    broad: np.ndarray,
    ratio_high: np.ndarray,
    cfg: GridLabelConfig,
) -> np.ndarray:
    """Each feature's grid label, in order of precedence (docs/grid.md)."""
    sig = {e: np.isfinite(q[e]) & (q[e] < cfg.alpha) for e in EFFECTS}
    label = np.full(len(n_docs), "unclear", dtype=object)
    none = ~(sig["context"] | sig["content"] | sig["interaction"])
    with np.errstate(invalid="ignore"):
        label[none & broad & (ratio_high <= cfg.shared_ratio_bound)] = "shared-in-action"
    label[sig["content"] & ~sig["context"]] = "content"
    label[sig["context"] & ~sig["content"]] = "context"
    label[sig["context"] & sig["content"]] = "context+content"
    label[sig["interaction"]] = "context:content"
    label[(n_docs > 0) & (n_docs < cfg.min_docs)] = "rare"
    label[n_docs == 0] = "dead"
    return label


def calibrate(g: Chunked, cfg: GridLabelConfig) -> dict[str, float]:
    """Mean count of each effect label over the null runs (`Chunked.null_p`), labelled by the
    same rules."""
    counts = dict.fromkeys(GRID_EFFECT_LABELS, 0.0)
    no_bound = np.full(len(g.n_docs_firing), np.nan)
    for r in range(cfg.calibration):
        q = {e: bh_qvalues(g.null_p[r, i]) for i, e in enumerate(EFFECTS)}
        labels = decide(q, g.n_docs_firing, g.broad, no_bound, cfg)
        for name in GRID_EFFECT_LABELS:
            counts[name] += float((labels == name).sum()) / cfg.calibration
    return counts


def strongest(
    est: np.ndarray, low: np.ndarray, high: np.ndarray, personas: list[str]
) -> list[str | None]:
    """The persona whose effect is largest relative to its interval (by |estimate| where no
    interval exists)."""
    half = (high - low) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(np.isfinite(half) & (half > 0), np.abs(est) / half, np.abs(est))
    score = np.where(np.isfinite(score), score, -1)
    best = score.argmax(axis=1)
    return [personas[b] if score[i, b] >= 0 else None for i, b in enumerate(best)]


def analyse_grid(
    documents: pd.DataFrame,
    doc_features: pd.DataFrame,
    n_features: int,
    config: GridLabelConfig | None = None,
) -> GridAnalysis:
    """documents: cell, persona, paraphrase, item_id (row i is document i); doc_features: doc,
    feature, mean_act (zeros may be left out)."""
    cfg = config or GridLabelConfig()
    for col in ("doc", "feature", "mean_act"):
        if col not in doc_features.columns:
            raise BadInput(f"grid doc_features: missing column '{col}'")
    lay = build_layout(documents)
    g = gather(doc_features, lay, n_features, cfg)
    q = {e: bh_qvalues(g.p[e]) for e in EFFECTS}
    labels = decide(q, g.n_docs_firing, g.broad, g.ratio_high, cfg)
    table: dict[str, Any] = {
        "feature": np.arange(n_features),
        "grid_label": labels,
        "n_docs_firing": g.n_docs_firing,
    }
    for e in EFFECTS:
        table[f"{e}_t"], table[f"{e}_p"], table[f"{e}_q"] = g.t_stat[e], g.p[e], q[e]
        table[f"{e}_persona"] = strongest(*g.ci[e], lay.personas)
    table["action_ratio_high"], table["action_power"] = g.ratio_high, g.power
    features = pd.DataFrame(table)[FEATURE_COLUMNS]
    real = {name: int((labels == name).sum()) for name in GRID_EFFECT_LABELS}
    null = calibrate(g, cfg) if cfg.calibration else dict.fromkeys(GRID_EFFECT_LABELS, np.nan)
    fdr = pd.DataFrame(
        {
            "label": list(GRID_EFFECT_LABELS),
            "n_real": [real[n] for n in GRID_EFFECT_LABELS],
            "n_null": [null[n] for n in GRID_EFFECT_LABELS],
        }
    )
    fdr["fdr"] = np.where(
        fdr["n_real"] > 0, np.minimum(1.0, fdr["n_null"] / fdr["n_real"].clip(lower=1)), np.nan
    )
    return GridAnalysis(features, effect_rows(g, lay), fdr, lay.notes)


def effect_rows(g: Chunked, lay: ActionDesign) -> pd.DataFrame:
    """Per live feature and persona: the four cell means and the three effects with their
    intervals."""
    live = np.flatnonzero(g.n_docs_firing > 0)
    k, q = len(lay.personas), lay.persona_average
    n_prompts = np.bincount(lay.persona_of_prompt, minlength=k)
    cols: dict[str, np.ndarray] = {
        "feature": np.repeat(live, k),
        "persona": np.tile(np.array(lay.personas, object), len(live)),
        "n_prompts": np.tile(n_prompts.astype(int), len(live)),
    }
    for c in CELLS:
        cols[c] = (g.cells[c][live] @ q).ravel()
    for e in EFFECTS:
        est, low, high = g.ci[e]
        cols[e], cols[f"{e}_low"], cols[f"{e}_high"] = (x[live].ravel() for x in (est, low, high))
    return pd.DataFrame(cols)[EFFECT_COLUMNS]
