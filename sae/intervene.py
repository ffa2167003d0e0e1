"""Interventions at an SAE's hook on a causal LM: the answer's per-token log-probabilities with
the residual edited at the answer tokens (ablation and steering), their gradient (attribution),
and greedy or sampled generation with a feature clamped.

A document is split where its answer starts: the prefix (system prompt, question, template
tokens) runs once, with its KV cache kept for every block; the answer then runs in as many batch
rows as there are edits, each row its own edit of the residual at the hook. The first answer
token is predicted by the prefix's last position, which no edit at the answer touches; the
answer's other tokens are predicted by the rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from shoggoth.sae.activations import _cache_kwarg_alias, cache_layers, expand_cache
from shoggoth.sae.models import Model
from shoggoth.sae.prompts import Prompt

Edit = Callable[[torch.Tensor], torch.Tensor]
"""Given the clean activations at the hook, [rows, positions, d], returns what to add to them
(on any device: the hook moves it to the activations', which on a model spread over several
devices need not be the SAE's)."""


@dataclass
class Answer:
    """A document cut at its answer: the prefix's KV cache (every block) and the answer."""

    ids: list[int]
    """The answer's tokens (the measured continuation)."""
    cache: list[tuple[torch.Tensor, torch.Tensor]]
    """Per block: keys and values of the prefix, [1, heads, prefix length, head_dim]."""
    first_logprobs: torch.Tensor
    """[vocab] log-probabilities at the prefix's last position (they predict ids[0])."""


def answer_span(prompt: Prompt) -> tuple[int, int]:
    """[start, end) of the measured tokens; they must be one contiguous span."""
    start = prompt.mask.index(True)
    end = len(prompt.mask) - prompt.mask[::-1].index(True)
    if not all(prompt.mask[start:end]):
        raise ValueError("the measured tokens are not one contiguous span")
    return start, end


def _forward(model: Model, tokens: torch.Tensor, kv: Any, hooks: list[tuple[str, Any]],
             logits_to_keep: int = 0) -> Any:
    """The logits after the KV cache `kv` (all positions'; with logits_to_keep, the last ones:
    a prefix needs only its last, and Gemma's unembedding costs more than its blocks)."""
    with _cache_kwarg_alias(model.bridge):
        return model.bridge.run_with_hooks(tokens.to(model.device), fwd_hooks=hooks, cache=kv,
                                           use_cache=True, logits_to_keep=logits_to_keep)


def prepare(model: Model, prompt: Prompt) -> Answer:
    """Run a document's prefix once; keep its KV cache and the first answer token's
    log-probabilities."""
    from transformers import DynamicCache

    start, end = answer_span(prompt)
    kv = DynamicCache()
    with torch.inference_mode():
        logits = _forward(model, torch.tensor([prompt.input_ids[:start]]), kv, [],
                          logits_to_keep=1)
    return Answer(prompt.input_ids[start:end], cache_layers(kv),
                  torch.log_softmax(logits[0, -1].float(), -1))


def _edit_hook(edit: Edit | None) -> Any:
    def hook(x: torch.Tensor, hook: Any = None) -> torch.Tensor:
        return x if edit is None else x + edit(x).to(x.device, x.dtype)

    return hook


def answer_logprobs(model: Model, answer: Answer, hook: str, edit: Edit | None, rows: int,
                    full: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[rows, len(answer)] log-probabilities of the answer's tokens with the residual at `hook`
    edited on the answer's tokens (row r gets edit(x)[r]; no edit: all rows clean), and with
    `full`, the rows' [rows, len(answer) - 1, vocab] log-distributions at the answer positions
    that predict its tokens 2.. (for KL)."""
    ids = torch.tensor(answer.ids)
    first = answer.first_logprobs[ids[0]].expand(rows, 1).cpu()
    if len(answer.ids) == 1:
        return first, None
    tokens = ids[:-1].expand(rows, -1)
    with torch.inference_mode():
        logits = _forward(model, tokens, expand_cache(answer.cache, rows),
                          [(hook, _edit_hook(edit))])
        logp = torch.log_softmax(logits.float(), -1)
        target = ids[1:].to(logp.device).expand(rows, -1)
        rest = logp.gather(-1, target[..., None])[..., 0].cpu()
    return torch.cat([first, rest], 1), (logp.cpu() if full else None)


def kl(clean: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(clean ‖ edited) per row, from log-distributions
    [rows, positions, vocab] (`clean` [1, positions, vocab] broadcast over the rows)."""
    return (clean.exp() * (clean - edited)).sum(-1).mean(-1)


def attribution_after_prefix(model: Model, answers: list[Answer], rows: list[int], hook: str,
                             weights: Callable[[torch.Tensor], torch.Tensor]
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attribution patching for several documents with the same answer, in one forward and backward
    pass over their answers: each document's prefix ran once beforehand (`prepare`: its KV cache,
    without gradients), and the gradient at the hook on the answer's positions flows through the
    answer's own positions alone (the prefix's keys and values do not depend on them), so no prefix
    token runs with gradients. Document c runs in rows[c] rows (the same activations, each row its
    own weighting). Returns, over the rows in order, the hook's activations on the positions that
    predict tokens 2.. ([R, n-1, d]), the answer's log-probabilities ([R, n]) and the gradient of
    Σ_t w[r, t] · log p_r(token t), w = weights(log-probabilities) held constant
    ([R, n-1, d])."""
    ids = torch.tensor(answers[0].ids)
    n = len(ids)
    leaves: list[torch.Tensor] = []
    lps: list[torch.Tensor] = []
    with torch.enable_grad():
        for answer, r in zip(answers, rows, strict=True):
            first = answer.first_logprobs[ids[0]].expand(r, 1).cpu()
            if n == 1:
                lps.append(first)
                continue
            keep: dict[str, torch.Tensor] = {}

            def leaf_hook(x: torch.Tensor, hook: Any = None,
                          keep: dict[str, torch.Tensor] = keep) -> torch.Tensor:
                keep["leaf"] = x.detach().requires_grad_(True)
                return keep["leaf"]

            logits = _forward(model, ids[:-1].expand(r, -1), expand_cache(answer.cache, r),
                              [(hook, leaf_hook)])
            logp = torch.log_softmax(logits.float(), -1)
            rest = logp.gather(-1, ids[1:].to(logp.device).expand(r, -1)[..., None])[..., 0]
            leaves.append(keep["leaf"])
            lps.append(torch.cat([first.to(rest.device), rest], 1))
        lp = torch.cat([x.to(lps[0].device) for x in lps])
        if n == 1:
            d = int(model.d_model)
            empty = torch.zeros(len(lp), 0, d)
            return empty, lp.detach().cpu(), empty
        w = weights(lp.detach().cpu()).to(lp.device, lp.dtype)
        grads = torch.autograd.grad((lp[:, 1:] * w[:, 1:]).sum(), leaves)
    x = torch.cat([leaf.detach().float().cpu() for leaf in leaves])
    return x, lp.detach().cpu(), torch.cat([g.float().cpu() for g in grads])


def generate(model: Model, prompt_ids: list[int], hook: str, edit: Edit | None,
             max_tokens: int, *, on_prompt: bool = False, temperature: float = 0.0,
             seed: int = 0, stop_ids: set[int] | None = None) -> tuple[list[int], str]:
    """Continue `prompt_ids` with the residual at `hook` edited on every generated position
    (and on the prompt with `on_prompt`): greedy at temperature 0, else seeded sampling.
    Returns the new token ids and why it stopped ('eos' or 'length')."""
    from transformers import DynamicCache

    gen = torch.Generator().manual_seed(seed)
    kv = DynamicCache()
    prompt_hook = _edit_hook(edit if on_prompt else None)
    out: list[int] = []
    with torch.inference_mode():
        logits = _forward(model, torch.tensor([prompt_ids]), kv, [(hook, prompt_hook)])
        for _ in range(max_tokens):
            last = logits[0, -1].float().cpu()
            if temperature > 0:
                token = int(torch.multinomial(torch.softmax(last / temperature, -1), 1,
                                              generator=gen))
            else:
                token = int(last.argmax())
            if stop_ids and token in stop_ids:
                return out, "eos"
            out.append(token)
            logits = _forward(model, torch.tensor([[token]]), kv, [(hook, _edit_hook(edit))])
    return out, "length"
