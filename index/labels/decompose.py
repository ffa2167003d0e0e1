"""Each mask's shift decomposed over the dictionary's features, grouped by their labels.

A persona's shift at the hook, v (its mean answer-token activation minus the reference's, over
its prompts and the items), is what the dictionary must explain. The dictionary's version of it
is a sum over features, v̂ = Σ_f ā_f d_f (ā_f: the feature's mean activation under the persona,
minus under the reference for a residual SAE; d_f: its decoder direction). Grouping the features
by label splits v̂ into parts u_G, and the error e = v − Σ_G u_G is what no feature carries. Each
part's share is its projection on the shift, ⟨v, u_G⟩ / |v|²: the shares sum to 1 exactly, a
part that points away from the shift counts negative, and a part orthogonal to it counts zero.

Intervals resample the items (within topics): the shift and every part are item means, so one
resample moves them together. Pure numpy: the database side feeds it arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

PARTS = ("own", "family", "shared", "concept", "other", "error")
"""A persona's features by label: mask-specific to it (own), mask-family with it (family),
shared / shared-modulated / mask-general (shared by every mask), persona-concept or
mask-or-concept for it (concept), every other feature (other: other personas' features,
unclear, rare), and what the dictionary does not reconstruct (error)."""

PATTERN_PARTS = ("common", "own_features", "own_modulation", "error")
"""A persona's shift cut by activation pattern, not by label: every feature at its mean
activation over the personas (common: the pattern every mask shares), the persona's activations
minus that mean (its own modulation) in the features labelled its own or its family's
(own_features) and in every other feature (own_modulation), and what the dictionary does not
reconstruct (error)."""

SHARED_LABELS = ("shared", "shared-modulated", "mask-general")
CONCEPT_LABELS = ("persona-concept", "mask-or-concept")


def part_of_features(labels: pd.DataFrame, persona: str) -> np.ndarray:
    """Index into PARTS (without error) of every feature, for `persona`: `labels` has columns
    label, top_persona and family_set, one row per feature in feature order."""
    label = labels["label"].to_numpy().astype(str)
    top = labels["top_persona"].fillna("").to_numpy().astype(str)
    family = labels["family_set"].fillna("").to_numpy().astype(str)
    in_family = np.array([persona in f.split(",") for f in family])
    part = np.full(len(label), PARTS.index("other"))
    part[np.isin(label, SHARED_LABELS)] = PARTS.index("shared")
    part[np.isin(label, CONCEPT_LABELS) & ((top == persona) | in_family)] = PARTS.index("concept")
    part[(label == "mask-family") & in_family] = PARTS.index("family")
    part[(label == "mask-specific") & (top == persona)] = PARTS.index("own")
    return part


def own_features(labels: pd.DataFrame, persona: str) -> np.ndarray:
    """[features] True for the features labelled `persona`'s own (mask-specific to it) or its
    family's (mask-family with it); `labels` as for `part_of_features`."""
    part = part_of_features(labels, persona)
    return np.isin(part, [PARTS.index("own"), PARTS.index("family")])


def shares(shift: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """[parts + 1] shares of one shift [d] split into parts [parts, d] and the error."""
    norm2 = float(shift @ shift)
    if norm2 <= 0:
        return np.full(len(parts) + 1, np.nan)
    error = shift - parts.sum(axis=0)
    return np.append(parts @ shift, error @ shift) / norm2


@dataclass
class Decomposition:
    """One persona's shares (PARTS order), their intervals, and the shift's size."""

    share: np.ndarray
    low: np.ndarray
    high: np.ndarray
    shift_norm: float
    n_items: int


def decompose(
    shift: np.ndarray, parts: np.ndarray, weights: np.ndarray, confidence: float
) -> Decomposition:
    """Shares of a persona's mean shift and their item-bootstrap intervals: `shift` [items, d]
    (the persona's mean shift on each item), `parts` [parts, items, d] the parts' item means
    (the error is the last share), `weights` [items, B] the resamples' item multiplicities."""
    point = shares(shift.mean(axis=0), parts.mean(axis=1))
    total = np.maximum(weights.sum(axis=0), 1e-12)  # [B]
    v = (weights.T @ shift) / total[:, None]  # [B, d]
    u = np.einsum("ib,gid->bgd", weights, parts, optimize=True) / total[:, None, None]
    norm2 = np.einsum("bd,bd->b", v, v)
    err = v - u.sum(axis=1)
    boot = np.concatenate(
        [np.einsum("bgd,bd->bg", u, v), np.einsum("bd,bd->b", err, v)[:, None]], axis=1
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = boot / norm2[:, None]
    tail = (1 - confidence) / 2
    ok = np.isfinite(boot).all(axis=1)
    if ok.sum() >= 2:
        low, high = np.quantile(boot[ok], [tail, 1 - tail], axis=0)
    else:
        low = high = np.full(len(parts) + 1, np.nan)
    return Decomposition(point, low, high, float(np.linalg.norm(shift.mean(axis=0))), len(shift))


def answer(persona: str, parts: dict[str, tuple[float, float, float]]) -> str:
    """The one-line answer for a persona, from its PATTERN_PARTS' (share, low, high)."""

    def part(name: str) -> str:
        share, low, high = parts.get(name, (float("nan"),) * 3)
        return f"{share:.2f} [{low:.2f}, {high:.2f}]"

    own = sum(parts.get(name, (float("nan"),))[0] for name in ("own_features", "own_modulation"))
    return (
        f"{persona}'s shift: {part('common')} the pattern every mask shares, {own:.2f} its "
        f"own modulation ({part('own_modulation')} over features every mask uses, "
        f"{part('own_features')} in features of its own), {part('error')} unexplained"
    )
