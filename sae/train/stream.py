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


class ChunkedStream:
    """The position arithmetic every training stream shares, written once: chunk `index` of the
    endless stream is pass `index // len(sizes)` over chunk `index % len(sizes)`, its rows
    shuffled by a generator seeded with (seed, pass, chunk, shard); the batches are consecutive
    `batch_tokens`-row slices of the chunks' concatenation, so the stream at token `start` is a
    pure function of the data, the seed and `start` (what a resumed run relies on).

    A subclass sets `sizes` (rows in each chunk of one pass), `seed`, `shard` and `batch_tokens`
    and says what a chunk's rows are (`rows`)."""

    sizes: list[int]
    seed: int
    shard: int
    batch_tokens: int

    def rows(self, chunk: int, epoch: int) -> dict[str, torch.Tensor]:
        """Chunk `chunk`'s rows per key, unshuffled, on the CPU (`epoch`: which pass it is)."""
        raise NotImplementedError

    def chunk(self, index: int) -> dict[str, torch.Tensor]:
        """The shuffled rows of chunk `index` of the endless stream, per key."""
        epoch, c = divmod(index, len(self.sizes))
        rows = self.rows(c, epoch)
        # Shard 0 keeps the unsharded stream's seeds, so one shard is the plain stream.
        g = torch.Generator().manual_seed(
            self.seed * 1_000_003 + epoch * 10_007 + c + self.shard * 7_919_993
        )
        order = torch.randperm(len(next(iter(rows.values()))), generator=g)
        return {k: a[order] for k, a in rows.items()}

    def batches(self, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The batches from token position `start` (a multiple of `batch_tokens`) on."""
        epoch_tokens = sum(self.sizes)
        index = (start // epoch_tokens) * len(self.sizes)
        offset = start % epoch_tokens
        while offset >= self.sizes[index % len(self.sizes)]:
            offset -= self.sizes[index % len(self.sizes)]
            index += 1
        buffer = {k: a[offset:] for k, a in self.chunk(index).items()}
        index += 1
        n = self.batch_tokens
        while True:
            while len(next(iter(buffer.values()))) < n:
                more = self.chunk(index)
                buffer = {k: torch.cat([buffer[k], more[k]]) for k in buffer}
                index += 1
            yield {k: a[:n] for k, a in buffer.items()}
            buffer = {k: a[n:] for k, a in buffer.items()}


def side_by_side(
    streams: list[Iterator[dict[str, torch.Tensor]]],
) -> Iterator[dict[str, torch.Tensor]]:
    """One batch from each shard's stream, joined row-wise (a single stream passes through)."""
    if len(streams) == 1:
        yield from streams[0]
        return
    while True:
        parts = [next(s) for s in streams]
        yield {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


@dataclass
class ActivationStream(ChunkedStream):
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

    def rows(self, chunk: int, epoch: int) -> dict[str, torch.Tensor]:
        """Chunk `chunk`'s activations per hook (the model runs again on every pass)."""
        lo, hi = chunk * self.chunk_contexts, (chunk + 1) * self.chunk_contexts
        return contexts_activations(self.model, self.contexts[lo:hi], self.hooks, self.keep[lo:hi])


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
    yield from side_by_side(
        [
            ActivationStream(model, hooks, contexts, keep, per, seed, r, shards).batches(
                start // shards
            )
            for r in ranks
        ]
    )


def single_hook(batches: Iterator[dict[str, torch.Tensor]], hook: str) -> Iterator[torch.Tensor]:
    """One hook's batches, as sae-lens's single-SAE trainer takes them."""
    for b in batches:
        yield b[hook]
