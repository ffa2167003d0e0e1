"""Reading a hook's activations, stopping the forward pass at the hooked block."""

from __future__ import annotations

import torch

from sae.models import Model, hook_layer
from sae.prompts import Batch


def activations(model: Model, batch: Batch, hook: str) -> torch.Tensor:
    """[batch, seq, d] activations at `hook` (detached, on the model's device and dtype).

    Blocks after the hooked one are not run. Padding is masked and left-padded rows get
    positions derived from the attention mask, so a padded row equals the same row alone.
    """
    layer = hook_layer(hook)
    stop = layer + 1 if layer is not None and layer + 1 < model.n_layers else None
    batch = batch.to(model.device)
    with torch.inference_mode():
        _, cache = model.bridge.run_with_cache(
            batch.input_ids,
            names_filter=hook,
            stop_at_layer=stop,
            attention_mask=batch.attention_mask,
            return_cache_object=False,
        )
    return cache[hook]


def continuation_activations(model: Model, batch: Batch, hook: str) -> torch.Tensor:
    """[n_continuation_tokens, d] activations at `hook` on the continuation tokens only, in
    batch-row then position order."""
    acts = activations(model, batch, hook)
    return acts[batch.continuation_mask.to(acts.device)]
