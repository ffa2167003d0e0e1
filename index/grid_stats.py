"""The statistics of the context × content grid, vectorised over a chunk of features.

A block is one persona prompt (k, j) and one item i, with four documents: the persona's own
answer under its prompt (a, the mask in action), the neutral answer under it (b), the own answer
under no persona (c) and the neutral answer under no persona (d). Per block:

    context     = (a + b − c − d) / 2   same texts, persona prompt vs none
    content     = (a + c − b − d) / 2   same contexts, the persona's text vs the neutral one
    interaction =  a − b − c + d        what the prompt and its text do together

Items are blocks: a prompt's contrast is the mean over its items. Prompts are the replicates:
`max_t_test` asks whether any persona's prompts share a non-zero mean. Flipping the sign of
whole prompts (swapping which of a prompt's contexts, or texts, is called the persona's: the
grid's prompt reassignment) makes the null runs that calibrate it.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

EFFECTS = ("context", "content", "interaction")


def block_contrasts(a: np.ndarray, b: np.ndarray, c: np.ndarray,
                    d: np.ndarray) -> dict[str, np.ndarray]:
    """The three contrasts of every block (arrays of any matching shape)."""
    return {"context": (a + b - c - d) / 2, "content": (a + c - b - d) / 2,
            "interaction": a - b - c + d}


def persona_se(m: np.ndarray, persona_of_prompt: np.ndarray,
               boot: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int]:
    """(estimate, standard error) [feature, persona] and degrees of freedom: each persona's
    mean prompt contrast (m: [feature, prompt]); its variance is the prompts' pooled
    within-persona variance / n_k (prompts are the replicates, N − K degrees of freedom) plus
    its variance over the item bootstrap (`boot` [feature, persona, B]): the items are shared by
    every prompt, and the neutral answer under no persona by every persona, so their noise does
    not average out over prompts. NaN errors where no persona has two prompts."""
    n_f, n = m.shape
    k = int(persona_of_prompt.max()) + 1
    sizes = np.bincount(persona_of_prompt, minlength=k).astype(np.float64)
    sums = np.zeros((n_f, k))
    np.add.at(sums.T, persona_of_prompt, m.T)
    est = sums / sizes
    if n - k < 1:
        return est, np.full_like(est, np.nan), 0
    resid = m - est[:, persona_of_prompt]
    var = ((resid ** 2).sum(axis=1) / (n - k))[:, None] / sizes
    if boot is not None and boot.shape[2] > 1:
        var = var + np.nanvar(boot, axis=2)
    return est, np.sqrt(var), n - k


def max_t_test(est: np.ndarray, se: np.ndarray, df: int) -> tuple[np.ndarray, np.ndarray]:
    """(largest |t| over the personas, its p-value) per feature for H0: no persona's effect
    differs from 0; the two-sided t(df) tail, Bonferroni over the K personas."""
    k = est.shape[1]
    if df < 1:
        return np.full(len(est), np.nan), np.full(len(est), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, np.abs(est) / se, np.where(est != 0, np.inf, 0.0))
    t_max = np.nan_to_num(t, nan=0.0).max(axis=1)
    return t_max, np.minimum(1.0, k * 2 * stats.t.sf(t_max, df))


def intervals(est: np.ndarray, se: np.ndarray, df: int,
              confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided `confidence` intervals est ± t_df · se (NaN without degrees of freedom)."""
    if df < 1:
        return np.full_like(est, np.nan), np.full_like(est, np.nan)
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    return est - half, est + half
