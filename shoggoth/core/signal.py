"""The share of the persona signal a dictionary carries, the one measure every dictionary is
evaluated by: Σ_k ⟨v_k, v̂_k⟩ / Σ_k |v_k|², with v_k persona k's mean shift against the reference
(over its prompts and the items) and v̂_k the same shift through the dictionary (a residual SAE:
its reconstruction under the persona minus under the reference; a difference dictionary: its
reconstruction of the shift). 1 when the dictionary keeps every persona's shift, 0 when it keeps
none of it; a dictionary below one half cannot speak for the model's personas."""

from __future__ import annotations

import numpy as np

WEAK_SIGNAL = 0.5
"""Below this share, a label run says its labels cannot speak for the model."""


def signal_fraction(v: np.ndarray, v_hat: np.ndarray) -> float:
    """Σ_k ⟨v_k, v̂_k⟩ / Σ_k |v_k|² of [personas, d] mean shifts and their reconstructions."""
    v, v_hat = np.asarray(v, np.float64), np.asarray(v_hat, np.float64)
    den = float((v * v).sum())
    return float((v * v_hat).sum() / den) if den > 0 else float("nan")


def grouped_means(rows: np.ndarray, group: np.ndarray) -> np.ndarray:
    """[groups, d]: the mean row of each group (groups in sorted order)."""
    return np.stack([rows[group == g].mean(axis=0) for g in np.unique(group)])


def weak_signal_note(fraction: float) -> str | None:
    """The note (printed as a `note:` line) of a dictionary that carries less than half of the
    persona signal; None otherwise."""
    if not np.isfinite(fraction) or fraction >= WEAK_SIGNAL:
        return None
    return (
        f"this dictionary carries {fraction:.0%} of the persona signal (under "
        f"{WEAK_SIGNAL:.0%}): its labels cannot speak for the model's personas; a "
        "difference dictionary (`shoggoth train --target difference`) sees more of them"
    )
