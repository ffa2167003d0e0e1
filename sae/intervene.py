"""Interventions at an SAE's hook on a causal LM: the answer's per-token log-probabilities with
the residual edited at the answer tokens (ablation and steering), their gradient (attribution),
and greedy or sampled generation with a feature clamped.

A document is split where its answer starts: the prefix (system prompt, question, template
tokens) runs once, with its KV cache kept for every block; the answer then runs through the
blocks before the hook once, and on from the hook in as many batch rows as there are edits, each
row its own edit of the residual there. The first answer token is predicted by the prefix's
last position, which no edit at the answer touches; the answer's other tokens are predicted by
the rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from shoggoth.sae.activations import _cache_kwarg_alias, cache_layers, expand_cache
from shoggoth.sae.models import Model, hook_layer
from shoggoth.sae.prompts import Prompt, collate, pad_id

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


def _forward(
    model: Model,
    tokens: torch.Tensor,
    kv: Any,
    hooks: list[tuple[str, Any]],
    logits_to_keep: int = 0,
) -> Any:
    """The logits after the KV cache `kv` (all positions'; with logits_to_keep, the last ones:
    a prefix needs only its last, and Gemma's unembedding costs more than its blocks)."""
    with _cache_kwarg_alias(model.bridge):
        return model.bridge.run_with_hooks(
            tokens.to(model.device),
            fwd_hooks=hooks,
            cache=kv,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )


def prepare(model: Model, prompt: Prompt) -> Answer:
    """Run a document's prefix once; keep its KV cache and the first answer token's
    log-probabilities."""
    from transformers import DynamicCache

    start, end = answer_span(prompt)
    kv = DynamicCache()
    with torch.inference_mode():
        logits = _forward(model, torch.tensor([prompt.input_ids[:start]]), kv, [], logits_to_keep=1)
    return Answer(
        prompt.input_ids[start:end], cache_layers(kv), torch.log_softmax(logits[0, -1].float(), -1)
    )


def _edit_hook(edit: Edit | None, rows: int | None = None) -> Any:
    """The hook that adds edit(x) to the activations; with `rows`, it first widens the one row
    that reaches it to `rows` (the blocks before it ran once for all of them)."""

    def hook(x: torch.Tensor, hook: Any = None) -> torch.Tensor:
        if rows is not None:
            x = x.expand(rows, *x.shape[1:])
        return x if edit is None else x + edit(x).to(x.device, x.dtype)

    return hook


def shared_blocks(hook: str) -> int | None:
    """How many blocks run wholly before `hook` (their keys and values are the same for every
    edit made at it); None for a hook this cannot tell (inside an attention, say)."""
    layer = hook_layer(hook)
    if layer is None:
        return None
    point = hook.split(".", 2)[-1]
    if point == "hook_resid_pre":
        return layer
    if point in ("hook_resid_mid", "hook_mlp_in", "hook_mlp_out", "hook_resid_post"):
        return layer + 1
    return None


def answer_logprobs(
    model: Model, answer: Answer, hook: str, edit: Edit | None, rows: int, full: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[rows, len(answer)] log-probabilities of the answer's tokens with the residual at `hook`
    edited on the answer's tokens (row r gets edit(x)[r]; no edit: all rows clean), and with
    `full`, the rows' [rows, len(answer) - 1, vocab] log-distributions at the answer positions
    that predict its tokens 2.. (for KL)."""
    ids = torch.tensor(answer.ids)
    first = answer.first_logprobs[ids[0]].expand(rows, 1).cpu()
    if len(answer.ids) == 1:
        return first, None
    shared = shared_blocks(hook) if rows > 1 else None
    if shared is None:
        tokens, kv = ids[:-1].expand(rows, -1), expand_cache(answer.cache, rows)
        at_hook = _edit_hook(edit)
    else:
        # The rows differ from the hook on: the blocks before it run once, for one row (about
        # half the work at a middle layer), and the blocks after it read the cache widened.
        tokens, kv = ids[:-1][None], expand_cache(answer.cache, rows, shared)
        at_hook = _edit_hook(edit, rows)
    with torch.inference_mode():
        logits = _forward(model, tokens, kv, [(hook, at_hook)])
        logp = torch.log_softmax(logits.float(), -1)
        target = ids[1:].to(logp.device).expand(rows, -1)
        rest = logp.gather(-1, target[..., None])[..., 0].cpu()
    return torch.cat([first, rest], 1), (logp.cpu() if full else None)


def kl(clean: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(clean ‖ edited) per row, from log-distributions
    [rows, positions, vocab] (`clean` [1, positions, vocab] broadcast over the rows)."""
    return (clean.exp() * (clean - edited)).sum(-1).mean(-1)


class AttributionPass:
    """One forward pass of documents with the same answer, its graph kept for attribution
    patching: each prompt is cut after its answer and left-padded, so the answers line up at the
    end. `x`: the activations at the hook on the answer positions that predict its tokens 2..
    ([rows, n-1, d]); `lp`: the answer's log-probabilities per row ([rows, n])."""

    def __init__(self, model: Model, prompts: list[Prompt], hook: str) -> None:
        spans = [answer_span(p) for p in prompts]
        cut = [
            Prompt(p.input_ids[:end], p.mask[:end], p.template)
            for p, (_, end) in zip(prompts, spans, strict=True)
        ]
        self.n = n = spans[0][1] - spans[0][0]
        batch = collate(cut, pad_id(model.tokenizer), "left").to(model.device)
        ids = batch.input_ids[:, -n:]
        keep: dict[str, torch.Tensor] = {}

        def leaf_hook(x: torch.Tensor, hook: Any = None) -> torch.Tensor:
            keep["leaf"] = x.detach().requires_grad_(True)
            return keep["leaf"]

        with torch.enable_grad():
            # Only the positions that predict the answer need logits (transformers'
            # logits_to_keep); the slice below holds either way.
            logits = model.bridge.run_with_hooks(
                batch.input_ids,
                fwd_hooks=[(hook, leaf_hook)],
                attention_mask=batch.attention_mask,
                logits_to_keep=n + 1,
            )
            logp = torch.log_softmax(logits[:, -n - 1 : -1].float(), -1)
            self._lp = logp.gather(-1, ids.to(logp.device)[..., None])[..., 0]
        self._leaf = keep["leaf"]
        self.x = self._leaf[:, -n:-1].detach().float().cpu()
        self.lp = self._lp.detach().cpu()

    def grad(self, w: torch.Tensor) -> torch.Tensor:
        """Per row r, the gradient of Σ_t w[r, t] · log p_r(token t) at the hook ([rows, n-1,
        d]; w [rows, n], held constant). Frees the graph."""
        w = w.to(self._lp.device, self._lp.dtype)
        (g,) = torch.autograd.grad((self._lp[:, 1:] * w[:, 1:]).sum(), self._leaf)
        return g[:, -self.n : -1].float().cpu()

    def grads(self, w: torch.Tensor) -> torch.Tensor:
        """For a pass of one document, the gradient of every weighting of its log-probabilities
        at once: [m, n-1, d] for w [m, n], one batched backward pass over the one forward (a
        document weighted m ways costs one forward, not m). Frees the graph."""
        if self._lp.shape[0] != 1:
            raise ValueError("grads: the pass must hold one document")
        w = w.to(self._lp.device, self._lp.dtype)
        (g,) = torch.autograd.grad(
            self._lp[:, 1:], self._leaf, grad_outputs=w[:, None, 1:], is_grads_batched=True
        )
        return g[:, 0, -self.n : -1].float().cpu()


def generate(
    model: Model,
    prompt_ids: list[int],
    hook: str,
    edit: Edit | None,
    max_tokens: int,
    *,
    on_prompt: bool = False,
    temperature: float = 0.0,
    seed: int = 0,
    stop_ids: set[int] | None = None,
) -> tuple[list[int], str]:
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
                token = int(
                    torch.multinomial(torch.softmax(last / temperature, -1), 1, generator=gen)
                )
            else:
                token = int(last.argmax())
            if stop_ids and token in stop_ids:
                return out, "eos"
            out.append(token)
            logits = _forward(model, torch.tensor([[token]]), kv, [(hook, _edit_hook(edit))])
    return out, "length"
