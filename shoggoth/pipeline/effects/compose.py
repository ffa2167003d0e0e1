"""The causal composition test of `shoggoth effects`: does a persona's shift, rebuilt from the
parts `label` cuts it into, act like the persona?

For persona k and item i, the persona's shift at the hook on the answer tokens, in the
dictionary's code c_k(t) (`Setup.shift_codes`), is cut as the decomposition of `label` cuts it
(index/labels/decompose.py): the common pattern c̄(t) (every feature at its mean code over the
personas, token by token: the personas share the answer's tokens) and the persona's own
modulation c_k(t) − c̄(t), whole or only in the features labelled its own. Steering adds a part
to the reference document's residual on the answer tokens (does it reproduce the persona?): the
common pattern, the pattern with its own modulation (the dictionary's whole reconstruction), its
own modulation alone, and the shift itself (the ceiling). Ablation replaces the persona's own
modulation by the common pattern in its own document (the mask with its own part removed), or
only the part in its own features. Each is scored against Δ_k, the persona's shift of the
answer's log-probabilities (tokens 2..), by the share it reproduces or removes, summed over
items (index/effects/stats.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from shoggoth.index.effects.stats import bootstrap_indices, projection_terms, ratio_ci
from shoggoth.index.labels.decompose import PARTS
from shoggoth.pipeline.effects.measure import Setup
from shoggoth.sae.intervene import answer_logprobs

STEER_PARTS = ("common", "common+own", "own", "shift")
"""What steering adds to the reference document: the common pattern, the pattern with the
persona's own modulation (the dictionary's whole reconstruction of its shift), its own
modulation alone, and the shift itself (the ceiling: what one edit at this hook, on the
answer's tokens, can reproduce)."""
ABLATE_PARTS = ("own", "own_features")
"""What ablation takes from the persona's document: its own modulation (replaced by the common
pattern), or only the part of it in the features labelled its own."""
OWN_PARTS = (PARTS.index("own"), PARTS.index("family"))


def _run_rows(s: Setup, condition: int, item: int, vectors: list[torch.Tensor]) -> torch.Tensor:
    """[rows, n] the answer's log-probabilities under `condition` with each vector [n - 1, d]
    added at the hook on the positions that predict tokens 2.. (one row each)."""
    out = []
    for start in range(0, len(vectors), s.batch):
        chunk = torch.stack(vectors[start : start + s.batch])

        def edit(x: torch.Tensor, chunk: torch.Tensor = chunk) -> torch.Tensor:
            return chunk.to(x.device)

        lp, _ = answer_logprobs(s.model, s.answer(condition, item), s.hook, edit, len(chunk))
        out.append(lp)
    return torch.cat(out)


def _changes(s: Setup, condition: int, item: int, vectors: list[torch.Tensor]) -> torch.Tensor:
    """[rows, n - 1] the change of the answer's log-probabilities (tokens 2..) under
    `condition` when each vector is added, against an unedited row run in the same batch (both
    sides of each difference from one computation)."""
    rows = _run_rows(s, condition, item, [torch.zeros_like(vectors[0]), *vectors])
    return (rows[1:] - rows[:1])[:, 1:]


def composition_edits(
    s: Setup, parts: np.ndarray, x: torch.Tensor
) -> dict[int, list[torch.Tensor]]:
    """The composition test's edits of one item, per condition: under persona k (condition
    k + 1) its own modulation and its own features' part removed, under no persona (0) every
    persona's STEER_PARTS added in turn; each a vector [n - 1, d] added at the hook. `parts` and
    `x` as for `compose_item`; no edits for a one-token answer."""
    n_personas = len(s.conditions) - 1
    if x.shape[1] == 0:  # a one-token answer: nothing after the prefix to edit
        return {}
    w_dec = s.w_dec.float()
    x_ref = x[0]
    codes = [
        s.shift_codes(x[k], x_ref).to(w_dec.device)  # [n, features]
        for k in range(1, n_personas + 1)
    ]
    common = torch.stack(codes).mean(dim=0)
    edits: dict[int, list[torch.Tensor]] = {0: []}
    for k, code in enumerate(codes):
        own_mask = torch.as_tensor(np.isin(parts[k], OWN_PARTS), device=w_dec.device)
        own = (code - common) @ w_dec
        edits[0] += [common @ w_dec, code @ w_dec, own, x[k + 1] - x_ref]
        edits[k + 1] = [-own, -((code - common) * own_mask) @ w_dec]
    return edits


def composition_arrays(
    s: Setup, lp: torch.Tensor, changes: dict[int, np.ndarray]
) -> dict[str, np.ndarray]:
    """One item's composition arrays (`compose_item`'s) from the changes [rows, n - 1] its
    edits (`composition_edits`) made, per condition."""
    n_personas, n = len(s.conditions) - 1, lp.shape[1] - 1
    out = {
        "delta": (lp[1:] - lp[:1])[:, 1:].double().numpy(),
        "steer": np.zeros((n_personas, len(STEER_PARTS), n)),
        "ablate": np.zeros((n_personas, len(ABLATE_PARTS), n)),
    }
    if not changes:
        return out
    for k in range(n_personas):
        out["ablate"][k] = changes[k + 1]
    out["steer"] = changes[0].reshape(n_personas, len(STEER_PARTS), -1)
    return out


def compose_item(
    s: Setup, item: int, parts: np.ndarray, lp: torch.Tensor, x: torch.Tensor
) -> dict[str, np.ndarray]:
    """One item's composition test, run on its own (the effects step runs its edits in the
    exact pass's batches: `exact_rows(added=...)`). `parts` [personas, features]: each
    persona's part (index into decompose.PARTS) of every feature (its own: mask-specific or
    mask-family); `lp` [conditions, n] and `x` [conditions, n - 1, d]: every condition's clean
    run (`clean_rows`, from the item's screen). Returns delta[k, t] the persona's shift of the
    answer's log-probabilities (tokens 2..), steer[k, j, t] the change of the reference's when
    STEER_PARTS[j] is added, ablate[k, j, t] the change of the persona's when ABLATE_PARTS[j]
    is removed."""
    edits = composition_edits(s, parts, x)
    changes = {c: _changes(s, c, item, vectors).numpy() for c, vectors in edits.items()}
    return composition_arrays(s, lp, changes)


def composition_rows(
    names: list[str],
    composes: list[dict[str, np.ndarray]],
    n_boot: int,
    confidence: float,
    seed: int,
) -> pd.DataFrame:
    """The persona_composition rows: per persona, test (steer: the share of its effect a part
    added to the reference reproduces; ablate: the share a part removed from the persona
    takes away) and part, the share summed over items with its item-bootstrap interval."""
    draws = bootstrap_indices(len(composes), n_boot, seed)
    rows = []
    for k, name in enumerate(names[1:]):
        delta = [c["delta"][k] for c in composes]
        for test, sign, key, labels in (
            ("steer", 1.0, "steer", STEER_PARTS),
            ("ablate", -1.0, "ablate", ABLATE_PARTS),
        ):
            for j, part in enumerate(labels):
                num, den = projection_terms([sign * c[key][k, j] for c in composes], delta)
                share, low, high = ratio_ci(num, den, draws, confidence)
                rows.append(
                    {
                        "persona": name,
                        "test": test,
                        "part": part,
                        "share": share,
                        "ci_low": low,
                        "ci_high": high,
                        "n_items": len(composes),
                    }
                )
    return pd.DataFrame(rows)
