"""Reading a hook's activations, stopping the forward pass at the hooked block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from shoggoth.sae.models import Model, hook_layer
from shoggoth.sae.prompts import Batch


def activations(model: Model, batch: Batch, hook: str) -> torch.Tensor:
    """[batch, seq, d] activations at `hook` (detached, on the model's device and dtype).

    Blocks after the hooked one are not run. Padding is masked and left-padded rows get
    positions derived from the attention mask, so a padded row equals the same row alone.
    """
    return activations_at(model, batch, [hook])[hook]


def activations_at(model: Model, batch: Batch, hooks: list[str]) -> dict[str, torch.Tensor]:
    """`activations` at several hooks from one forward pass, stopped after the deepest."""
    batch = batch.to(model.device)
    with torch.inference_mode():
        _, cache = model.bridge.run_with_cache(
            batch.input_ids,
            names_filter=list(hooks),
            stop_at_layer=_stop_layer(model, hooks),
            attention_mask=batch.attention_mask,
            return_cache_object=False,
        )
    return {h: cache[h] for h in hooks}


def continuation_activations(model: Model, batch: Batch, hook: str) -> torch.Tensor:
    """[n_continuation_tokens, d] activations at `hook` on the continuation tokens only, in
    batch-row then position order."""
    acts = activations(model, batch, hook)
    return acts[batch.continuation_mask.to(acts.device)]


@contextmanager
def _cache_kwarg_alias(bridge: Any) -> Iterator[None]:
    """Hand the KV cache to TransformerLens's attention bridges under the name they read.

    transformers 5 passes the cache to attention modules as `cache`; TransformerLens 3.9's
    attention bridges look for `past_key_values` and otherwise silently attend to the new tokens
    alone. A pre-hook copies one name to the other for the duration of the call.
    """

    def alias(_module: Any, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
            kwargs["past_key_values"] = kwargs["cache"]
        return args, kwargs

    handles = [
        m.register_forward_pre_hook(alias, with_kwargs=True)
        for m in bridge.modules()
        if hasattr(m, "_update_kv_cache")
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class PrefixCache:
    """The KV cache of a token prefix, for the blocks up to the hooked one."""

    ids: list[int]
    """The prefix's token ids."""
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    """Per block: keys and values, [1, heads, len(ids), head_dim]."""


def _stop_layer(model: Model, hooks: str | list[str]) -> int | None:
    """The block to stop before: one after the deepest hooked block (None: run them all)."""
    layers = [hook_layer(h) for h in ([hooks] if isinstance(hooks, str) else hooks)]
    if any(layer is None for layer in layers):
        return None
    deepest = max(layer for layer in layers if layer is not None)
    return deepest + 1 if deepest + 1 < model.n_layers else None


def _run_cached(
    model: Model, tokens: torch.Tensor, kv: Any, hooks: str | list[str]
) -> dict[str, torch.Tensor]:
    """Run `tokens` after (and into) the KV cache `kv`, up to the deepest hooked block."""
    names = [hooks] if isinstance(hooks, str) else list(hooks)
    with torch.inference_mode(), _cache_kwarg_alias(model.bridge):
        _, cache = model.bridge.run_with_cache(
            tokens.to(model.device),
            names_filter=names,
            stop_at_layer=_stop_layer(model, names),
            return_cache_object=False,
            cache=kv,
            use_cache=True,
        )
    return {h: cache[h] for h in names}


def cache_layers(kv: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The keys and values a DynamicCache holds, per block that ran."""
    return [
        (layer.keys, layer.values)
        for layer in kv.layers
        if getattr(layer, "keys", None) is not None and layer.keys.numel()
    ]


def expand_cache(
    layers: list[tuple[torch.Tensor, torch.Tensor]], rows: int, single: int = 0
) -> Any:
    """A DynamicCache holding one prefix's keys and values for `rows` batch rows; its first
    `single` blocks for one row (blocks that run once, before the rows differ)."""
    from transformers import DynamicCache

    kv = DynamicCache()
    for i, (keys, values) in enumerate(layers):
        n = 1 if i < single else rows
        # expand() shares the prefix's memory; the cache's concatenation makes the copy.
        kv.update(keys.expand(n, -1, -1, -1), values.expand(n, -1, -1, -1), i)
    return kv


def prefix_cache(model: Model, ids: list[int], hooks: str | list[str]) -> PrefixCache:
    """Run a causal LM over `ids` once and keep its KV cache up to the deepest hooked block."""
    from transformers import DynamicCache

    kv = DynamicCache()
    _run_cached(model, torch.tensor([ids], dtype=torch.long), kv, hooks)
    return PrefixCache(list(ids), cache_layers(kv))


def activations_after_prefix(
    model: Model, prefix: PrefixCache, batch: Batch, hook: str
) -> torch.Tensor:
    """[batch, seq, d] activations at `hook` for right-padded suffixes that all continue `prefix`.

    Equals `activations` on prefix + suffix (restricted to the suffix positions) while running
    the model over the suffix tokens only. Causal attention means the right padding is never
    attended to by real tokens, so no attention mask is needed.
    """
    return activations_after_prefix_at(model, prefix, batch, [hook])[hook]


def activations_after_prefix_at(
    model: Model, prefix: PrefixCache, batch: Batch, hooks: list[str]
) -> dict[str, torch.Tensor]:
    """`activations_after_prefix` at several hooks from one pass."""
    kv = expand_cache(prefix.layers, batch.input_ids.shape[0])
    return _run_cached(model, batch.input_ids, kv, hooks)
