"""The statistics behind a label, vectorised over a chunk of features. Every formula and the
reason for it is in docs/labels.md.

- `persona_test`: do the personas differ, with the *prompt* as the replicate (a one-way ANOVA on
  log prompt means, its p-value from permuting the prompts' persona labels).
- `contrast`: the smallest set of personas that stands apart (a clear multiple of the rest, and
  every member's weakest prompt above every other persona's best prompt).
- `equivalence`: an upper confidence bound on how far any persona is from the others, from the
  prompts' spread and a bootstrap of items within topics, and the power of that bound.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import cast

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values over the finite p-values (NaN where p is not finite)."""
    q = np.full(len(p), np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return q


def permutation_design(
    persona_of_prompt: np.ndarray, n_groups: int, n_perm: int, seed: int
) -> np.ndarray:
    """[prompts, (1 + n_perm) * groups] one-hot persona assignment: the real one first, then
    n_perm random relabellings of the prompts (group sizes kept)."""
    rng = np.random.default_rng(seed)
    n = len(persona_of_prompt)
    design = np.zeros((n, (1 + n_perm) * n_groups), dtype=np.float32)
    for b in range(1 + n_perm):
        groups = persona_of_prompt if b == 0 else persona_of_prompt[rng.permutation(n)]
        design[np.arange(n), b * n_groups + groups] = 1.0
    return design


def persona_test(
    m: np.ndarray,
    persona_of_prompt: np.ndarray,
    design: np.ndarray,
    log_floor: float,
    min_exceed: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """(F statistic, p-value) per feature; m is [features, main prompts] of prompt means.

    y = log(m + c), c = log_floor × the feature's mean prompt mean. The between-persona sum of
    squares is compared with its value under every relabelling in `design`; the p-value is
    (1 + #relabellings at least as large) / (1 + #relabellings). Where fewer than `min_exceed`
    relabellings reach it, the permutations cannot resolve the tail and the F distribution's
    tail (prompts as replicates: K-1 and N-K degrees of freedom) is used when smaller.
    """
    n_f, n = m.shape
    k = int(persona_of_prompt.max()) + 1 if n else 0
    if k < 2 or n - k < 1:
        return np.full(n_f, np.nan), np.full(n_f, np.nan)
    c = log_floor * m.mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        y = np.log(m + np.where(c > 0, c, 1.0))
    y = y - y.mean(axis=1, keepdims=True)
    sizes = np.bincount(persona_of_prompt, minlength=k).astype(np.float64)
    sums = (y.astype(np.float32) @ design).reshape(n_f, -1, k).astype(np.float64)
    between = (sums**2 / sizes).sum(axis=2)  # [feature, 1 + n_perm]
    total = (y**2).sum(axis=1)
    obs = between[:, 0]
    tol = 1e-5 * np.maximum(total, 1e-12)
    exceed = (between[:, 1:] >= obs[:, None] - tol[:, None]).sum(axis=1)
    p_perm = (1 + exceed) / between.shape[1]
    within = np.maximum(total - obs, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f_stat = (obs / (k - 1)) / (within / (n - k))
    p_f = np.where(within > 0, stats.f.sf(f_stat, k - 1, n - k), np.where(obs > 0, 0.0, 1.0))
    p = np.where(exceed < min_exceed, np.minimum(p_perm, p_f), p_perm)
    return np.where(total > 1e-12, f_stat, 0.0), np.where(total > 1e-12, p, 1.0)


@dataclass
class Contrast:
    """The smallest set of personas (ranked by mean) that stands apart, per feature."""

    order: np.ndarray
    """[feature, persona]: main personas by decreasing mean."""
    set_size: np.ndarray
    """Size of the smallest set standing apart; 0 when none does (up to max_size)."""
    set_ratio: np.ndarray
    """Weakest member's mean / strongest non-member's mean, for that set (or the top alone)."""
    set_margin: np.ndarray
    """Weakest member prompt / strongest non-member prompt (> 1: every wording stands apart)."""
    top_ratio: np.ndarray
    """Top persona's mean / the runner-up's."""
    top_margin: np.ndarray
    """Top persona's weakest prompt / the other personas' best prompt."""


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(
            den > 0, num / np.where(den > 0, den, 1.0), np.where(num > 0, np.inf, np.nan)
        )


def contrast(
    mu: np.ndarray, lo: np.ndarray, hi: np.ndarray, ratio: float, max_size: int
) -> Contrast:
    """mu, lo, hi: [feature, main persona] mean, weakest prompt mean and best prompt mean.

    A set S of the top s personas stands apart when min_S mu >= ratio × max_rest mu and
    min over S's prompts > max over the other personas' prompts.
    """
    n_f, k = mu.shape
    order = np.argsort(-mu, axis=1, kind="stable")
    ms = np.take_along_axis(mu, order, axis=1)
    low = np.minimum.accumulate(np.take_along_axis(lo, order, axis=1), axis=1)
    high = np.maximum.accumulate(np.take_along_axis(hi, order, axis=1)[:, ::-1], axis=1)[:, ::-1]
    size = np.zeros(n_f, dtype=np.int64)
    set_ratio, set_margin = np.full(n_f, np.nan), np.full(n_f, np.nan)
    top_ratio, top_margin = np.full(n_f, np.nan), np.full(n_f, np.nan)
    for s in range(1, min(max_size, k - 1) + 1):
        r, g = _ratio(ms[:, s - 1], ms[:, s]), _ratio(low[:, s - 1], high[:, s])
        if s == 1:
            top_ratio, top_margin = r, g
            set_ratio, set_margin = r.copy(), g.copy()
        ok = (size == 0) & (r >= ratio) & (g > 1)
        size[ok], set_ratio[ok], set_margin[ok] = s, r[ok], g[ok]
    return Contrast(order, size, set_ratio, set_margin, top_ratio, top_margin)


def equivalence(
    mu: np.ndarray,
    log_m: np.ndarray,
    persona_of_prompt: np.ndarray,
    item_ests: np.ndarray | None,
    bound: float,
    confidence: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(upper bound of max_k mean_k / mean of the others, power) per feature.

    mu: [feature, persona] persona means (> 0); log_m: [feature, prompt] log prompt means.
    est_k = log mu_k - log(mean of the other personas' mu). Its variance: the prompts' pooled
    within-persona variance s² (prompts are the replicates), s² (1/n_k + Σ_{j≠k} 1/n_j / (K-1)²),
    plus the variance of est_k over the item bootstrap (`item_ests` [feature, persona, B]).
    Bound: exp(max_k |est_k| + t se_k) with t the one-sided `confidence` quantile (an
    intersection-union test: every persona must pass, so no multiplicity correction). Power:
    the chance a feature with all personas truly equal, and these standard errors, passes.
    """
    n_f, k = mu.shape
    sizes = np.bincount(persona_of_prompt, minlength=k).astype(np.float64)
    n = len(persona_of_prompt)
    if k < 2 or n - k < 1:
        return np.full(n_f, np.nan), np.full(n_f, np.nan)
    sums = np.zeros((n_f, k))
    np.add.at(sums.T, persona_of_prompt, log_m.T)
    resid = log_m - (sums / sizes)[:, persona_of_prompt]
    s2 = (resid**2).sum(axis=1) / (n - k)
    inv = 1.0 / sizes
    var = s2[:, None] * (inv + (inv.sum() - inv) / (k - 1) ** 2)
    rest = (mu.sum(axis=1, keepdims=True) - mu) / (k - 1)
    est = np.log(mu) - np.log(rest)
    if item_ests is not None:
        finite = np.where(np.isfinite(item_ests), item_ests, np.nan)
        with warnings.catch_warnings():  # an all-NaN row is handled below
            warnings.simplefilter("ignore", RuntimeWarning)
            item_var = np.nanvar(finite, axis=2) if finite.shape[2] else np.zeros_like(var)
        var = var + np.where(np.isfinite(item_var), item_var, np.inf)
    se = np.sqrt(var)
    t = stats.t.ppf(confidence, n - k)
    delta = np.log(bound)
    high = np.exp((np.abs(est) + t * se).max(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (delta - t * se) / se, np.inf)
    power = np.prod(np.clip(2 * stats.norm.cdf(z) - 1, 0, 1), axis=1)
    return high, power


def item_bootstrap(a: np.ndarray, present: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """est_k (see `equivalence`) under each item resample: a [feature, persona, item] the
    paraphrase-averaged cell means, present [persona, item], weights [item, B] multiplicities.
    """
    num = np.einsum("fki,ib->fkb", a, weights, optimize=True)
    den = present.astype(np.float64) @ weights  # [persona, B]
    mu = num / np.maximum(den, 1e-12)[None]
    k = mu.shape[1]
    rest = (mu.sum(axis=1, keepdims=True) - mu) / (k - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return cast("np.ndarray", np.log(mu) - np.log(rest))


def stratified_weights(topic_of_item: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """[item, B] multiplicities: each topic's items resampled with replacement within it."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(topic_of_item), n_boot))
    for t in np.unique(topic_of_item):
        idx = np.flatnonzero(topic_of_item == t)
        draws = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), size=n_boot)
        out[idx] = draws.T
    return out
