"""The activations an SAE trains on: a deterministic stream over the packed training contexts.

sae-lens's ActivationsStore keeps a mixing buffer that its checkpoints do not save, so a resumed
run trained on other batches than an uninterrupted one. This stream is a pure function of
(contexts, seed, position): contexts are taken in chunks, each chunk's activations (special
tokens left out) are shuffled by a generator seeded with the chunk's index, and the batches are
consecutive slices of the concatenation. Resuming at token `n` recomputes one chunk and
continues, so a resume reproduces the uninterrupted run bit for bit on the CPU. The model runs
only up to the hooked block.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from sae.activations import continuation_activations
from sae.prompts import Batch

CHUNK_CONTEXTS = 64
"""Contexts per shuffled chunk: about 8k tokens of 128-token contexts (sae-lens's default buffer
holds 16 batches of 16 prompts)."""


def context_activations(model: Any, contexts: torch.Tensor, hook: str, keep: torch.Tensor,
                        batch: int = 32) -> torch.Tensor:
    """[n_kept_tokens, d] activations at `hook` for unpadded contexts, at the `keep` positions
    (float32, on the CPU)."""
    out = []
    for start in range(0, len(contexts), batch):
        ids = contexts[start : start + batch]
        b = Batch(ids, torch.ones_like(ids), keep[start : start + batch])
        out.append(continuation_activations(model, b, hook).float().cpu())
    return torch.cat(out)


@dataclass
class ActivationStream:
    """Batches of `batch_tokens` activations, forever (the contexts repeat, reshuffled, when the
    run wants more tokens than they hold)."""

    model: Any
    hook: str
    contexts: torch.Tensor
    keep: torch.Tensor
    """Which positions are trained on (special tokens are not)."""
    batch_tokens: int
    seed: int
    chunk_contexts: int = CHUNK_CONTEXTS
    sizes: list[int] = field(init=False)
    """Tokens kept in each chunk of one pass over the contexts."""

    def __post_init__(self) -> None:
        per_context = self.keep.sum(dim=1).tolist()
        c = self.chunk_contexts
        self.sizes = [int(sum(per_context[s : s + c])) for s in range(0, len(per_context), c)]
        if sum(self.sizes) == 0:
            raise ValueError("no trainable tokens in the contexts")

    def chunk(self, index: int) -> torch.Tensor:
        """The shuffled activations of chunk `index` of the endless stream."""
        epoch, c = divmod(index, len(self.sizes))
        lo, hi = c * self.chunk_contexts, (c + 1) * self.chunk_contexts
        acts = context_activations(self.model, self.contexts[lo:hi], self.hook,
                                   self.keep[lo:hi])
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 10_007 + c)
        return acts[torch.randperm(len(acts), generator=g)]

    def batches(self, start: int = 0) -> Iterator[torch.Tensor]:
        """The batches from token position `start` (a multiple of `batch_tokens`) on."""
        epoch_tokens = sum(self.sizes)
        index = (start // epoch_tokens) * len(self.sizes)
        offset = start % epoch_tokens
        while offset >= self.sizes[index % len(self.sizes)]:
            offset -= self.sizes[index % len(self.sizes)]
            index += 1
        buffer = self.chunk(index)[offset:]
        index += 1
        while True:
            while len(buffer) < self.batch_tokens:
                buffer = torch.cat([buffer, self.chunk(index)])
                index += 1
            yield buffer[: self.batch_tokens]
            buffer = buffer[self.batch_tokens :]
