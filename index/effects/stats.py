"""Statistics of causal effects, with items as the unit of resampling.

Every effect is measured on the answer's per-token log-probabilities. For persona k and item i,
Δ_k(i) is the vector of log p(token | persona k) − log p(token | no persona) over the answer's
tokens. An intervention's change of those log-probabilities, C(i), is scored against Δ_k by
least-squares projection summed over items, Σ_i <C(i), Δ_k(i)> / Σ_i |Δ_k(i)|²: the share of
the persona's shift that the intervention reproduces (steering) or removes (ablation, where C is
the change of Δ itself). Intervals come from resampling items (the percentile bootstrap).
"""

from __future__ import annotations

import numpy as np


def bootstrap_indices(n_items: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n_items] item indices drawn with replacement (seeded)."""
    return np.random.default_rng(seed).integers(0, n_items, size=(n_boot, n_items))


def ratio_ci(
    num: np.ndarray, den: np.ndarray, draws: np.ndarray, confidence: float
) -> tuple[float, float, float]:
    """Σ num / Σ den over items, and its percentile-bootstrap interval (resampled items)."""
    total = float(den.sum())
    if total <= 0:
        return float("nan"), float("nan"), float("nan")
    estimate = float(num.sum()) / total
    den_b = den[draws].sum(1)
    ok = den_b > 0
    boot = num[draws].sum(1)[ok] / den_b[ok]
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    return estimate, float(lo), float(hi)


def mean_ci(values: np.ndarray, draws: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """The mean over items and its percentile-bootstrap interval."""
    boot = values[draws].mean(1)
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(values.mean()), float(lo), float(hi)


def projection_terms(
    change: list[np.ndarray], shift: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per item: <C(i), Δ(i)> and |Δ(i)|², the terms of `ratio_ci`."""
    num = np.array([float(np.dot(c, d)) for c, d in zip(change, shift, strict=True)])
    den = np.array([float(np.dot(d, d)) for d in shift])
    return num, den
