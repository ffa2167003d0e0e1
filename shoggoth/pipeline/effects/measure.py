"""The measurements of `shoggoth effects`, one item at a time (the unit a run resumes from).

Conditions: 0 is the no-persona baseline, 1..K the battery's personas, each with one prompt.
Per item, the *screen* runs every condition's document once forward and backward and estimates,
for every feature and persona, the share of the persona's shift its ablation would remove
(attribution patching); the *exact* pass then ablates the chosen features for real (each in its
own batch row, after the document's prefix KV cache) and steers them under no persona.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from shoggoth.sae.encode import shift_input
from shoggoth.sae.intervene import (
    Answer,
    AttributionPass,
    answer_logprobs,
    kl,
    prepare,
)
from shoggoth.sae.models import Model
from shoggoth.sae.prompts import Prompt

if TYPE_CHECKING:
    from sae_lens import SAE


@dataclass
class Setup:
    """What every item's measurement needs."""

    model: Model
    sae: SAE
    hook: str
    w_dec: torch.Tensor
    """[features, d] decoder directions (float32, on the SAE's device)."""
    conditions: list[str]
    """Condition names: the baseline control first, then the personas."""
    prompts: list[list[Prompt]]
    """[condition][item] the document's prompt."""
    batch: int
    """Batch rows per forward pass."""
    kind: str = "residual"
    """residual: the SAE encodes the hook's activations; difference: their shift against the
    baseline document (condition 0, the dictionary's reference) of the same item."""
    _answers: dict[tuple[int, int], Answer] = field(default_factory=dict, repr=False)
    _rows: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, repr=False
    )

    def answer(self, condition: int, item: int) -> Answer:
        """The document's prefix run once (kept while its item is measured)."""
        key = (condition, item)
        if key not in self._answers:
            self._answers = {k: v for k, v in self._answers.items() if k[1] == item}
            self._answers[key] = prepare(self.model, self.prompts[condition][item])
        return self._answers[key]

    def clean(self, condition: int, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The document's clean answer log-probabilities [n] and its activations at the hook
        on the positions that predict tokens 2.. [n - 1, d] (kept while its item is
        measured)."""
        key = (condition, item)
        if key not in self._rows:
            self._rows = {k: v for k, v in self._rows.items() if k[1] == item}
            kept: dict[str, torch.Tensor] = {}

            def capture(x: torch.Tensor) -> torch.Tensor:
                kept["x"] = x[0].detach().float().clone()
                return torch.zeros_like(x)

            lp, _ = answer_logprobs(self.model, self.answer(condition, item), self.hook, capture, 1)
            d = self.w_dec.shape[1]
            self._rows[key] = (lp[0], kept.get("x", torch.zeros(0, d)).to(self.w_dec.device))
        return self._rows[key]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[..., features] SAE activations of hook activations [..., d]."""
        with torch.inference_mode():
            flat = x.reshape(-1, x.shape[-1]).to(self.sae.device, self.sae.dtype)
            return self.sae.encode(flat).float().view(*x.shape[:-1], -1)

    def codes(self, x: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
        """[..., features] what the SAE reads in hook activations x [..., positions, d]: x
        itself (a residual SAE), or its shift against the reference document's activations
        x_ref [positions, d] (a difference dictionary; a row without a shift encodes to
        nothing, as in the harvest)."""
        if self.kind != "difference":
            return self.encode(x)
        x = x.to(self.w_dec.device).float()
        shift, silent = shift_input(x, x_ref.to(x.device).float())
        acts = self.encode(shift)
        return torch.where(silent[..., None].to(acts.device), 0.0, acts)

    def shift_codes(self, x: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
        """[positions, features] the persona's shift in the SAE's code: the code of the shift
        (a difference dictionary), or the code under the persona minus the code under the
        reference (a residual SAE)."""
        if self.kind == "difference":
            return self.codes(x, x_ref)
        return self.encode(x) - self.encode(x_ref)


def _attribution_rows(s: Setup, acts: torch.Tensor, grad: torch.Tensor) -> np.ndarray:
    """[rows, features] estimated change of each row's weighted log-probability sum when each
    feature is ablated on the answer: -Σ_t a_f(t) <d_f, grad_t> (acts: [rows, n-1, features],
    grad: [rows, n-1, d])."""
    return cast("np.ndarray", -(acts * (grad @ s.w_dec.cpu().T)).sum(1).numpy())


def screen_item(s: Setup, item: int) -> dict[str, np.ndarray]:
    """The clean log-probabilities under every condition and the attribution estimates:
    attr_persona[k-1, f] of ablating f under persona k and attr_base[k-1, f] under no persona,
    each weighted by persona k's per-token shift; fired[c, f] whether f fires on the answer.

    Two forward passes: the K persona documents in one left-padded batch (the answers line up),
    and the no-persona document once, whose K weightings (one per persona's shift) then share
    one batched backward pass; none where no feature fires on it (a difference dictionary reads
    no shift there), since ablating nothing changes nothing. x[c]: the hook's activations under
    condition c (0 first), from which the composition test cuts each persona's shift without
    running the documents again."""
    k = len(s.conditions) - 1
    base = AttributionPass(s.model, [s.prompts[0][item]], s.hook)
    personas = AttributionPass(s.model, [s.prompts[c][item] for c in range(1, k + 1)], s.hook)
    shift = personas.lp - base.lp
    x = torch.cat([personas.x, base.x])
    # Row k is the no-persona document (a difference dictionary's reference).
    codes = s.codes(x, x[k]).cpu()
    attr_persona = _attribution_rows(s, codes[:k], personas.grad(shift))
    if codes[k].any():
        attr_base = _attribution_rows(s, codes[k:].expand(k, -1, -1), base.grads(shift))
    else:
        attr_base = np.zeros_like(attr_persona)
    fired = (codes > 0).any(1).numpy()
    return {
        "lp0": base.lp[0].numpy(),
        "lp": personas.lp.numpy(),
        "attr_persona": attr_persona,
        "attr_base": attr_base,
        "fired": np.concatenate([fired[k:], fired[:k]]),
        "x": torch.cat([x[k : k + 1], x[:k]]).numpy(),
    }


def clean_rows(
    s: Setup, item: int, screen: dict[str, np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean answer log-probabilities [conditions, n] and hook activations on the positions
    that predict tokens 2.. [conditions, n - 1, d] of every condition (0 first), as the screen
    measured them; recomputed (one forward pass each) for a screen saved without them."""
    if "x" in screen:
        lp = torch.from_numpy(np.concatenate([screen["lp0"][None], screen["lp"]]))
        return lp, torch.from_numpy(screen["x"]).to(s.w_dec.device)
    rows = [s.clean(c, item) for c in range(len(s.conditions))]
    return torch.stack([lp for lp, _ in rows]), torch.stack([x for _, x in rows])


@dataclass
class EffectsPlan:
    """Which features the exact pass measures, and where."""

    features: list[int]
    """The chosen features."""
    roles: list[str]
    """candidate, baseline or chosen, per feature."""
    conditions: list[list[int]]
    """Per feature, the persona conditions (1..K) its ablation is measured under (the
    baseline, 0, always is)."""
    steer: list[float]
    """Per feature, the activation it is steered with under no persona (0: not steered)."""


def _edit(
    s: Setup,
    plan: EffectsPlan,
    jobs: list[tuple[str, int]],
    x_ref: torch.Tensor,
    added: Sequence[torch.Tensor] = (),
) -> Any:
    """The edit of a batch of rows: clean (nothing), ablate or steer feature plan.features[j],
    or add vector added[j] ([positions, d])."""
    dirs = s.w_dec[[plan.features[j] if kind in ("ablate", "steer") else 0 for kind, j in jobs]]

    def edit(x: torch.Tensor) -> torch.Tensor:
        # Rows are identical up to the hook, so row 0's activations serve every row.
        acts = s.codes(x[0], x_ref)  # [positions, features]
        zero = torch.zeros(x.shape[1], device=acts.device)
        scale = torch.stack(
            [
                -acts[:, plan.features[j]]
                if kind == "ablate"
                else torch.full((x.shape[1],), plan.steer[j], device=acts.device)
                if kind == "steer"
                else zero
                for kind, j in jobs
            ]
        )  # [rows, positions]
        delta = scale[..., None] * dirs[:, None, :].to(scale.device)
        for r, (kind, j) in enumerate(jobs):
            if kind == "add":
                delta[r] = added[j].to(delta.device, delta.dtype)
        return delta

    return edit


def _jobs(
    plan: EffectsPlan, condition: int, fired: np.ndarray
) -> tuple[list[tuple[str, int]], list[int]]:
    """The rows to run under a condition (ablations of the features that fire, and under the
    baseline every steering), and the measured features that do not fire (exactly no
    effect)."""
    measured = [
        j for j, conds in enumerate(plan.conditions) if condition == 0 or condition in conds
    ]
    jobs = [("ablate", j) for j in measured if fired[condition, plan.features[j]]]
    silent = [j for j in measured if not fired[condition, plan.features[j]]]
    if condition == 0:
        jobs += [("steer", j) for j in range(len(plan.features)) if plan.steer[j] > 0]
    return jobs, silent


def exact_item(
    s: Setup, item: int, plan: EffectsPlan, fired: np.ndarray, x_ref: torch.Tensor | None = None
) -> dict[str, np.ndarray]:
    """`exact_rows` with nothing added: exact ablation and steering on one item."""
    return exact_rows(s, item, plan, fired, x_ref)[0]


def exact_rows(
    s: Setup,
    item: int,
    plan: EffectsPlan,
    fired: np.ndarray,
    x_ref: torch.Tensor | None = None,
    added: dict[int, list[torch.Tensor]] | None = None,
) -> tuple[dict[str, np.ndarray], dict[int, np.ndarray]]:
    """Exact ablation and steering on one item: ablate[j, c, t] the change of the answer's
    log-probabilities (tokens 2..) when feature j is ablated under condition c (NaN: not
    measured), ablate_kl[j, c] the mean KL of the next-token distributions, steer[j, t] the
    change under no persona when feature j is steered. `x_ref`: the reference document's hook
    activations, which a difference dictionary encodes against (None: run it once more).
    `added`: per condition, vectors [n - 1, d] to add at the hook, one row each, in the same
    batches (the composition test's edits); returned second, per condition, their changes
    [rows, n - 1] against the same unedited row."""
    n_f, n_cond = len(plan.features), len(s.conditions)
    n = len(s.answer(0, item).ids) - 1
    changed: dict[int, np.ndarray] = {}
    out = {
        "ablate": np.full((n_f, n_cond, n), np.nan),
        "ablate_kl": np.full((n_f, n_cond), np.nan),
        "steer": np.zeros((n_f, n)),
    }
    for c in range(n_cond):
        jobs, silent = _jobs(plan, c, fired)
        out["ablate"][silent, c] = 0.0
        out["ablate_kl"][silent, c] = 0.0
        vectors = (added or {}).get(c, [])
        jobs += [("add", j) for j in range(len(vectors))]
        if not jobs:
            continue
        answer = s.answer(c, item)
        if s.kind != "difference":
            x_ref = s.w_dec[:0]
        elif x_ref is None:
            x_ref = s.clean(0, item)[1]
        jobs = [("clean", -1), *jobs]  # the unedited row rides in the first batch
        clean = clean_full = None
        changes = np.zeros((len(vectors), n), dtype=np.float32)
        for start in range(0, len(jobs), s.batch):
            chunk = jobs[start : start + s.batch]
            lp, full = answer_logprobs(
                s.model,
                answer,
                s.hook,
                _edit(s, plan, chunk, x_ref, vectors),
                len(chunk),
                full=True,
            )
            if clean is None:
                clean, clean_full = lp[:1], None if full is None else full[:1]
            change = (lp - clean)[:, 1:].numpy()
            divergence = (
                kl(clean_full, full).numpy()
                if full is not None and clean_full is not None
                else np.zeros(len(chunk))
            )
            for r, (kind, j) in enumerate(chunk):
                if kind == "ablate":
                    out["ablate"][j, c], out["ablate_kl"][j, c] = change[r], divergence[r]
                elif kind == "steer":
                    out["steer"][j] = change[r]
                elif kind == "add":
                    changes[j] = change[r]
        if vectors:
            changed[c] = changes
    return out, changed
