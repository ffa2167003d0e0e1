"""The statistics of the context × content grid, vectorised over a chunk of features.

A block is one persona prompt (k, j) and one item i, with four documents: the persona's own
answer under its prompt (a, the mask in action), the neutral answer under it (b), the own answer
under no persona (c) and the neutral answer under no persona (d). Per block:

    context     = (a + b − c − d) / 2   same texts, persona prompt vs none
    content     = (a + c − b − d) / 2   same contexts, the persona's text vs the neutral one
    interaction =  a − b − c + d        what the prompt and its text do together

Items are blocks: a prompt's contrast is the mean over its items. Prompts are the replicates:
`effect_test` asks whether any persona's prompts share a non-zero mean. Flipping the sign of
whole prompts (swapping which of a prompt's contexts, or texts, is called the persona's: the
grid's prompt reassignment) makes the null runs that calibrate it.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

EFFECTS = ("context", "content", "interaction")


def block_contrasts(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray
) -> dict[str, np.ndarray]:
    """The three contrasts of every block (arrays of any matching shape)."""
    return {
        "context": (a + b - c - d) / 2,
        "content": (a + c - b - d) / 2,
        "interaction": a - b - c + d,
    }


def persona_se(
    m: np.ndarray, persona_of_prompt: np.ndarray, boot: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
    """Each persona's mean prompt contrast (m: [feature, prompt]) and its standard error
    [feature, persona], the degrees of freedom, and the same two for the mean over the personas
    [feature]. A variance is the prompts' pooled within-persona variance over the prompts
    averaged (prompts are the replicates, N − K degrees of freedom) plus the estimate's variance
    over the item bootstrap (`boot` [feature, persona, B]): the items are shared by every prompt,
    and the neutral answer under no persona by every persona, so their noise does not average
    out over prompts. NaN errors where no persona has two prompts."""
    n_f, n = m.shape
    k = int(persona_of_prompt.max()) + 1
    sizes = np.bincount(persona_of_prompt, minlength=k).astype(np.float64)
    sums = np.zeros((n_f, k))
    np.add.at(sums.T, persona_of_prompt, m.T)
    est = sums / sizes
    overall = est.mean(axis=1)
    if n - k < 1:
        return est, np.full_like(est, np.nan), 0, overall, np.full_like(overall, np.nan)
    resid = m - est[:, persona_of_prompt]
    s2 = (resid**2).sum(axis=1) / (n - k)
    var = s2[:, None] / sizes
    var_all = s2 * (1 / sizes).sum() / k**2
    if boot is not None and boot.shape[2] > 1:
        var = var + np.nanvar(boot, axis=2)
        var_all = var_all + np.nanvar(boot.mean(axis=1), axis=1)
    return est, np.sqrt(var), n - k, overall, np.sqrt(var_all)


def effect_test(
    est: np.ndarray, se: np.ndarray, df: int, overall: np.ndarray, se_all: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(largest |t|, p-value) per feature for H0: no persona's effect differs from 0. Two
    t(df) tests, Bonferroni-combined: the mean over the personas (power for an effect every
    persona shares) and the largest persona |t| times K (power for one persona's effect)."""
    k = est.shape[1]
    if df < 1:
        return np.full(len(est), np.nan), np.full(len(est), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, np.abs(est) / se, np.where(est != 0, np.inf, 0.0))
        t_all = np.where(se_all > 0, np.abs(overall) / se_all, np.where(overall != 0, np.inf, 0.0))
    t_max = np.nan_to_num(t, nan=0.0).max(axis=1)
    p_max = np.minimum(1.0, k * 2 * stats.t.sf(t_max, df))
    p_all = 2 * stats.t.sf(np.nan_to_num(t_all, nan=0.0), df)
    return np.maximum(t_max, np.nan_to_num(t_all)), np.minimum(1.0, 2 * np.minimum(p_max, p_all))


def intervals(
    est: np.ndarray, se: np.ndarray, df: int, confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided `confidence` intervals est ± t_df · se (NaN without degrees of freedom)."""
    if df < 1:
        return np.full_like(est, np.nan), np.full_like(est, np.nan)
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    return est - half, est + half
