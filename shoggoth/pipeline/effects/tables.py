"""From per-item measurements to the plan of the exact pass and to the rows of feature_effects
and persona_shifts (index/effects/stats.py holds the statistics)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from shoggoth.index.effects.stats import bootstrap_indices, mean_ci, projection_terms, ratio_ci
from shoggoth.index.labels.decompose import SHARED_LABELS
from shoggoth.pipeline.effects.measure import EffectsPlan

BASELINE_LABELS = SHARED_LABELS
"""The labels the baseline sample is drawn from: the features shared by every mask (a
difference dictionary's are shared-modulated)."""


def screen_estimates(screens: list[dict[str, np.ndarray]]) -> np.ndarray:
    """[personas, features] the screen's estimate of each feature's mediated fraction:
    Σ_items (attr_base − attr_persona) / Σ_items |Δ_k|² (tokens 2.., as the exact pass)."""
    num = sum(s["attr_base"] - s["attr_persona"] for s in screens)
    den = sum(((s["lp"] - s["lp0"])[:, 1:] ** 2).sum(1) for s in screens)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den[:, None] > 0, num / den[:, None], np.nan)


def make_plan(
    screen: np.ndarray,
    fired: np.ndarray,
    labels: dict[int, str],
    typical: dict[int, float],
    *,
    chosen: list[int] | None,
    allowed: set[int] | None,
    top: int,
    baseline: int,
    per_feature: int,
    seed: int,
) -> EffectsPlan:
    """The features to measure exactly: `chosen`, or the `top` live features by the screen's
    largest |estimate| (among `allowed`), plus `baseline` random features labelled shared (any
    live feature when unlabelled); each under its `per_feature` personas of largest |estimate|
    (0: every persona). A feature that never fired has no typical activation and is skipped."""
    live = [int(f) for f in np.flatnonzero(fired.any(0)) if typical.get(int(f), 0) > 0]
    score = np.nan_to_num(np.abs(screen)).max(0)
    if chosen is not None:
        feats, roles = list(chosen), ["chosen"] * len(chosen)
    else:
        pool = [f for f in live if allowed is None or f in allowed]
        feats = sorted(pool, key=lambda f: (-score[f], f))[:top]
        roles = ["candidate"] * len(feats)
        shared = [
            f
            for f in live
            if f not in feats and (labels.get(f) in BASELINE_LABELS if labels else True)
        ]
        rng = np.random.default_rng(seed)
        extra = (
            sorted(rng.choice(shared, size=min(baseline, len(shared)), replace=False).tolist())
            if shared
            else []
        )
        feats, roles = feats + extra, roles + ["baseline"] * len(extra)
    conds = []
    for f in feats:
        order = np.argsort(-np.nan_to_num(np.abs(screen[:, f])), kind="stable")
        keep = order if per_feature == 0 else order[:per_feature]
        conds.append(sorted(int(k) + 1 for k in keep))
    return EffectsPlan(feats, roles, conds, [float(typical.get(f, 0.0)) for f in feats])


def token_shifts(screens: list[dict[str, np.ndarray]], k: int) -> list[np.ndarray]:
    """Per item: persona k's (0-based) shift of the answer's per-token log-probabilities."""
    return [s["lp"][k] - s["lp0"] for s in screens]


def shift_rows(
    names: list[str],
    screens: list[dict[str, np.ndarray]],
    n_boot: int,
    confidence: float,
    seed: int,
) -> pd.DataFrame:
    """Per persona: its shift of the answer's log-probability against no persona (summed over
    the answer's tokens, mean over items) with its interval, and the per-token RMS shift."""
    draws = bootstrap_indices(len(screens), n_boot, seed)
    rows = []
    for k, name in enumerate(names[1:]):
        per_item = token_shifts(screens, k)
        est, lo, hi = mean_ci(np.array([d.sum() for d in per_item]), draws, confidence)
        tokens = np.concatenate(per_item)
        rows.append(
            {
                "persona": name,
                "shift": est,
                "ci_low": lo,
                "ci_high": hi,
                "rms_token_shift": float(np.sqrt((tokens**2).mean())),
                "n_items": len(screens),
                "n_tokens": len(tokens),
            }
        )
    return pd.DataFrame(rows)


def effect_rows(
    names: list[str],
    screens: list[dict[str, np.ndarray]],
    exact: list[dict[str, np.ndarray]],
    plan: EffectsPlan,
    screen: np.ndarray,
    fired: np.ndarray,
    n_boot: int,
    confidence: float,
    seed: int,
) -> pd.DataFrame:
    """The feature_effects rows: the screen's estimate for every live feature and persona,
    then per chosen feature the exact measures with their item-bootstrap intervals (`fired`:
    [conditions, features], whether it fired on any item)."""
    n_items = len(screens)
    draws = bootstrap_indices(n_items, n_boot, seed)
    rows: list[tuple[Any, ...]] = []
    live = np.flatnonzero(fired.any(0))
    for k, name in enumerate(names[1:]):
        for one in live:
            rows.append(
                (int(one), name, "attribution", screen[k, one], None, None, n_items, "screen")
            )
    shifts = [[d[1:] for d in token_shifts(screens, k)] for k in range(len(names) - 1)]
    for j, f in enumerate(plan.features):
        role = plan.roles[j]
        for c in [0, *plan.conditions[j]]:
            change = np.array([e["ablate"][j, c].sum() for e in exact])
            rows.append(
                (f, names[c], "ablate_logprob", *mean_ci(change, draws, confidence), n_items, role)
            )
            divergence = np.array([e["ablate_kl"][j, c] for e in exact])
            rows.append(
                (f, names[c], "ablate_kl", *mean_ci(divergence, draws, confidence), n_items, role)
            )
            if c == 0:
                continue
            removed = [e["ablate"][j, 0] - e["ablate"][j, c] for e in exact]
            num, den = projection_terms(removed, shifts[c - 1])
            rows.append(
                (f, names[c], "mediated", *ratio_ci(num, den, draws, confidence), n_items, role)
            )
        if plan.steer[j] <= 0:  # it never fired under a persona: nothing to steer with
            continue
        for k in range(len(names) - 1):
            num, den = projection_terms([e["steer"][j] for e in exact], shifts[k])
            rows.append(
                (
                    f,
                    names[k + 1],
                    "steer_toward",
                    *ratio_ci(num, den, draws, confidence),
                    n_items,
                    role,
                )
            )
    return pd.DataFrame(
        rows,
        columns=["feature", "persona", "measure", "estimate", "ci_low", "ci_high", "n", "role"],
    )
