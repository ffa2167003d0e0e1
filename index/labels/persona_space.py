"""The persona space, without a dictionary: where each persona's shift lies, from the harvest's
document shifts alone.

v_k is persona k's mean shift at the hook (its answer tokens against the reference, over its
wordings and the items); v_kj the same under wording j alone. Over the non-control personas P:

- the common direction m = mean_{k in P} v_k, and each persona's share along it,
  common_share = <v_k, m^>^2 / |v_k|^2 (the remainder's share is 1 - common_share);
- the plain controls' direction p (the mean shift of the controls that name no persona: no
  system turn, a neutral prompt, random words: "a system prompt is there"), each persona's share
  along it, control_share = <v_k, p^>^2 / |v_k|^2, and cos(p, m);
- the remainder r_kj = v_kj - <v_kj, m^> m^ under each wording, and its reproducibility: the
  mean cosine between the persona's own wordings' remainders, against its null, the mean cosine
  between its wordings' remainders and other personas';
- the principal components of the centred persona vectors v_k - m (k in P), each one's share
  of their variance, and every persona's and control's coordinates on them;
- the assistant axis a = v_axis - m (axis: the no-system-turn control, or a persona the user
  names) and its cosine with PC1 (PC1 is oriented along a, so the cosine is >= 0).

Intervals resample the items within topics; each resample recomputes everything (PCs are
sign-aligned to the point estimate's). Pure numpy: the database side feeds it arrays.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import cast

import numpy as np

N_COMPONENTS = 5
"""Principal components reported (fewer when there are fewer personas)."""


@dataclass(frozen=True)
class Shifts:
    """The harvest's document shifts as arrays, one unit per (persona, wording)."""

    x: np.ndarray
    """[units, items, d] each unit's shift on each item (NaN where the document is missing)."""
    unit_persona: np.ndarray
    """[units] the persona (index into `personas`) of each unit."""
    personas: list[str]
    """Every persona and control, in output order."""
    is_main: np.ndarray
    """[personas] True for the personas (not controls): they define m, the PCs and the null."""
    is_plain_control: np.ndarray
    """[personas] True for the controls that name no persona (their mean shift is p)."""
    axis: int | None
    """Index of the persona whose shift minus m is the assistant axis (None: no axis)."""


@dataclass(frozen=True)
class Space:
    """One estimate of the persona space (the point estimate, or one resample)."""

    norm: np.ndarray
    """[personas] |v_k|."""
    common_share: np.ndarray
    """[personas] <v_k, m^>^2 / |v_k|^2."""
    control_share: np.ndarray
    """[personas] <v_k, p^>^2 / |v_k|^2 (NaN without plain controls)."""
    reproducibility: np.ndarray
    """[personas] mean cosine between the remainders of the persona's own wordings (NaN with
    one wording)."""
    reproducibility_null: np.ndarray
    """[personas] mean cosine between its wordings' remainders and other personas'."""
    scores: np.ndarray
    """[personas, components] coordinates of v_k - m on the principal components."""
    variance_share: np.ndarray
    """[components] each component's share of the centred persona vectors' variance."""
    components: np.ndarray
    """[components, d] the principal directions (unit vectors)."""
    control_common_cosine: float
    """cos(p, m)."""
    axis_pc1_cosine: float
    """cos(a, PC1), PC1 oriented along a (NaN without an axis)."""
    axis_common_cosine: float
    """cos(a, m)."""
    control_norm_ratio: float
    """|p| / |m|."""
    axis_norm_ratio: float
    """|a| / |m|."""
    components_common_cosine: np.ndarray
    """[components] each principal direction's cosine with m."""


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else np.full_like(v, np.nan)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / den if den > 0 else float("nan")


def _mean_cosine(rows_a: np.ndarray, rows_b: np.ndarray, same: bool) -> float:
    """Mean cosine over pairs of rows (distinct pairs i < j when `same`)."""
    if len(rows_a) == 0 or len(rows_b) == 0:
        return float("nan")
    a = rows_a / np.maximum(np.linalg.norm(rows_a, axis=1, keepdims=True), 1e-30)
    b = rows_b / np.maximum(np.linalg.norm(rows_b, axis=1, keepdims=True), 1e-30)
    c = a @ b.T
    if same:
        upper = c[np.triu_indices(len(rows_a), k=1)]
        return float(upper.mean()) if upper.size else float("nan")
    return float(c.mean())


def space(shifts: Shifts, unit_means: np.ndarray, reference: Space | None = None) -> Space:
    """The persona space from `unit_means` [units, d] (each unit's mean shift over the items,
    or over one resample of them); `reference`: the point estimate, whose components' signs
    the resample's are aligned to."""
    n_personas = len(shifts.personas)
    v = np.stack([unit_means[shifts.unit_persona == k].mean(axis=0) for k in range(n_personas)])
    main = np.flatnonzero(shifts.is_main)
    m = v[main].mean(axis=0)
    m_hat = _unit(m)
    norm2 = np.einsum("kd,kd->k", v, v)
    with np.errstate(divide="ignore", invalid="ignore"):
        common = (v @ m_hat) ** 2 / norm2
        plain = np.flatnonzero(shifts.is_plain_control)
        p = v[plain].mean(axis=0) if len(plain) else np.full_like(m, np.nan)
        control = (v @ _unit(p)) ** 2 / norm2 if len(plain) else np.full(n_personas, np.nan)
    remainder = unit_means - np.outer(unit_means @ m_hat, m_hat)
    within, null = np.full(n_personas, np.nan), np.full(n_personas, np.nan)
    for k in range(n_personas):
        mine = remainder[shifts.unit_persona == k]
        others = remainder[np.isin(shifts.unit_persona, main[main != k])]
        within[k] = _mean_cosine(mine, mine, same=True)
        null[k] = _mean_cosine(mine, others, same=False)
    centred = v[main] - m
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    n_comp = min(N_COMPONENTS, len(main) - 1, vt.shape[0])
    comps = vt[:n_comp].copy()
    var = sing[:n_comp] ** 2 / max(float((sing**2).sum()), 1e-300)
    axis = v[shifts.axis] - m if shifts.axis is not None else None
    if reference is not None:  # signs follow the point estimate's components
        signs = np.sign(np.einsum("cd,cd->c", comps, reference.components[:n_comp]))
        comps *= np.where(signs == 0, 1, signs)[:, None]
    elif axis is not None and n_comp and comps[0] @ axis < 0:
        comps[0] *= -1
    scores = (v - m) @ comps.T
    m_norm = float(np.linalg.norm(m))
    return Space(
        np.sqrt(norm2),
        common,
        control,
        within,
        null,
        scores,
        var,
        comps,
        _cos(p, m) if len(plain) else float("nan"),
        _cos(axis, comps[0]) if axis is not None and n_comp else float("nan"),
        _cos(axis, m) if axis is not None else float("nan"),
        float(np.linalg.norm(p)) / m_norm if len(plain) and m_norm else float("nan"),
        float(np.linalg.norm(axis)) / m_norm if axis is not None and m_norm else float("nan"),
        np.array([_cos(c, m) for c in comps]),
    )


def unit_means(x: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """[units, d] each unit's mean shift over the items (weighted by a resample's item
    multiplicities; missing documents left out)."""
    present = ~np.isnan(x[..., 0])  # [units, items]
    w = present.astype(np.float64) if weights is None else present * weights[None, :]
    total = np.maximum(w.sum(axis=1), 1e-12)
    return cast("np.ndarray", np.einsum("ui,uid->ud", w, np.nan_to_num(x)) / total[:, None])


@dataclass(frozen=True)
class Estimate:
    """The point estimate and the resamples' intervals of every per-persona measure."""

    point: Space
    """The estimate on all items."""
    low: dict[str, np.ndarray]
    """Measure name → its lower interval bound per persona (per component for variance)."""
    high: dict[str, np.ndarray]
    """The same, upper bounds."""
    n_items: int
    """Items the estimate is made on."""


INTERVALS = ("norm", "common_share", "control_share", "reproducibility", "scores", "variance_share")
"""The measures given item-bootstrap intervals."""


def estimate(shifts: Shifts, weights: np.ndarray, confidence: float) -> Estimate:
    """The point estimate and item-bootstrap intervals (`weights` [items, B] multiplicities)."""
    point = space(shifts, unit_means(shifts.x, None))
    boots = [
        space(shifts, unit_means(shifts.x, weights[:, b]), point) for b in range(weights.shape[1])
    ]
    tail = (1 - confidence) / 2
    low, high = {}, {}
    for name in INTERVALS:
        stack = np.stack([getattr(s, name) for s in boots]) if boots else None
        if stack is None or len(stack) < 2:
            low[name] = high[name] = np.full_like(getattr(point, name), np.nan)
            continue
        with warnings.catch_warnings():  # (a measure undefined for a persona stays NaN)
            warnings.simplefilter("ignore", RuntimeWarning)
            low[name] = np.nanquantile(stack, tail, axis=0)
            high[name] = np.nanquantile(stack, 1 - tail, axis=0)
    return Estimate(point, low, high, shifts.x.shape[1])
