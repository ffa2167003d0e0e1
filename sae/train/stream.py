"""The activations an SAE trains on: a deterministic stream over the packed training contexts.

sae-lens's ActivationsStore keeps a mixing buffer that its checkpoints do not save, so a resumed
run trained on other batches than an uninterrupted one. This stream is a pure function of
(contexts, seed, position): contexts are taken in chunks, each chunk's activations (special
tokens left out) are shuffled by a generator seeded with the chunk's index, and the batches are
consecutive slices of the concatenation. Resuming at token `n` recomputes one chunk and
continues, so a resume reproduces the uninterrupted run bit for bit on the CPU. The model runs
once per chunk for every hooked layer, and only up to the deepest.

A stream can be split into shards (contexts i::N, each shuffled on its own): a batch is then the
shards' slices side by side. Under DDP each rank streams one shard; one process streaming all N
trains on the very same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from shoggoth.sae.activations import activations_at
from shoggoth.sae.models import Model
from shoggoth.sae.prompts import Batch

CHUNK_CONTEXTS = 64
"""Contexts per shuffled chunk: about 8k tokens of 128-token contexts (sae-lens's default buffer
holds 16 batches of 16 prompts)."""


def contexts_activations(
    model: Model, contexts: torch.Tensor, hooks: list[str], keep: torch.Tensor, batch: int = 32
) -> dict[str, torch.Tensor]:
    """Per hook, [n_kept_tokens, d] activations for unpadded contexts at the `keep` positions
    (float32, on the CPU), all hooks from one forward pass per batch."""
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    for start in range(0, len(contexts), batch):
        ids = contexts[start : start + batch]
        b = Batch(ids, torch.ones_like(ids), keep[start : start + batch])
        acts = activations_at(model, b, hooks)
        for h in hooks:
            out[h].append(acts[h][b.continuation_mask.to(acts[h].device)].float().cpu())
    return {h: torch.cat(parts) for h, parts in out.items()}


def context_activations(
    model: Model, contexts: torch.Tensor, hook: str, keep: torch.Tensor, batch: int = 32
) -> torch.Tensor:
    """[n_kept_tokens, d] activations at `hook` for unpadded contexts, at the `keep` positions
    (float32, on the CPU)."""
    return contexts_activations(model, contexts, [hook], keep, batch)[hook]


@dataclass
class ActivationStream:
    """Batches of `batch_tokens` activations per hook, forever (the contexts repeat, reshuffled,
    when the run wants more tokens than they hold)."""

    model: Model
    hooks: list[str]
    contexts: torch.Tensor
    keep: torch.Tensor
    """Which positions are trained on (special tokens are not)."""
    batch_tokens: int
    seed: int
    shard: int = 0
    """This stream's shard: it reads contexts shard::shards."""
    shards: int = 1
    chunk_contexts: int = CHUNK_CONTEXTS
    sizes: list[int] = field(init=False)
    """Tokens kept in each chunk of one pass over the contexts."""

    def __post_init__(self) -> None:
        self.contexts = self.contexts[self.shard :: self.shards]
        self.keep = self.keep[self.shard :: self.shards]
        per_context = self.keep.sum(dim=1).tolist()
        c = self.chunk_contexts
        self.sizes = [int(sum(per_context[s : s + c])) for s in range(0, len(per_context), c)]
        if sum(self.sizes) == 0:
            raise ValueError("no trainable tokens in the contexts")

    def chunk(self, index: int) -> dict[str, torch.Tensor]:
        """The shuffled activations of chunk `index` of the endless stream, per hook."""
        epoch, c = divmod(index, len(self.sizes))
        lo, hi = c * self.chunk_contexts, (c + 1) * self.chunk_contexts
        acts = contexts_activations(self.model, self.contexts[lo:hi], self.hooks, self.keep[lo:hi])
        # Shard 0 keeps the unsharded stream's seeds, so one shard is the plain stream.
        g = torch.Generator().manual_seed(
            self.seed * 1_000_003 + epoch * 10_007 + c + self.shard * 7_919_993
        )
        order = torch.randperm(len(acts[self.hooks[0]]), generator=g)
        return {h: a[order] for h, a in acts.items()}

    def batches(self, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The batches from token position `start` (a multiple of `batch_tokens`) on."""
        epoch_tokens = sum(self.sizes)
        index = (start // epoch_tokens) * len(self.sizes)
        offset = start % epoch_tokens
        while offset >= self.sizes[index % len(self.sizes)]:
            offset -= self.sizes[index % len(self.sizes)]
            index += 1
        buffer = {h: a[offset:] for h, a in self.chunk(index).items()}
        index += 1
        n = self.batch_tokens
        while True:
            while len(buffer[self.hooks[0]]) < n:
                more = self.chunk(index)
                buffer = {h: torch.cat([buffer[h], more[h]]) for h in self.hooks}
                index += 1
            yield {h: a[:n] for h, a in buffer.items()}
            buffer = {h: a[n:] for h, a in buffer.items()}


def sharded_batches(
    model: Model,
    hooks: list[str],
    contexts: torch.Tensor,
    keep: torch.Tensor,
    batch_tokens: int,
    seed: int,
    start: int,
    shards: int,
    ranks: list[int],
) -> Iterator[dict[str, torch.Tensor]]:
    """The batches from global token position `start`, built from the `ranks` shards of
    `shards` (each contributing batch_tokens / shards rows, side by side): all shards in one
    process, or one shard per DDP rank."""
    per = batch_tokens // shards
    streams = [
        ActivationStream(model, hooks, contexts, keep, per, seed, r, shards).batches(
            start // shards
        )
        for r in ranks
    ]
    if len(streams) == 1:
        yield from streams[0]
        return
    while True:
        parts = [next(s) for s in streams]
        yield {h: torch.cat([p[h] for p in parts]) for h in hooks}


def single_hook(batches: Iterator[dict[str, torch.Tensor]], hook: str) -> Iterator[torch.Tensor]:
    """One hook's batches, as sae-lens's single-SAE trainer takes them."""
    for b in batches:
        yield b[hook]
