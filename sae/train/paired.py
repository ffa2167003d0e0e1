"""The paired activation stream a difference dictionary trains on.

Each training piece is rendered twice: under a training persona's system prompt and under the
reference (the empty system turn by default). The two token sequences end in the same tokens
(the conversation itself); on those shared tokens, special tokens left out, the stream yields
the persona's activations h(persona + text) and the shift δ = h(persona + text) − h(reference +
text). A residual SAE can train on the first and a difference dictionary on the second from the
same pair of forward passes.

Like ActivationStream (stream.py), it is a pure function of (pairs, seed, position): chunks of
pairs are run, shuffled by a generator seeded with the chunk's index, and cut into consecutive
batches, so a resumed run trains on the very same batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from shoggoth.battery.personas import Persona
from shoggoth.core.errors import BadInput
from shoggoth.core.progress import Progress
from shoggoth.sae.encode import prompts_activations
from shoggoth.sae.models import Model
from shoggoth.sae.prompts import EMPTY_SYSTEM, Prompt, special_ids
from shoggoth.sae.train.chat_corpus import Conversation, Piece, render_conversation
from shoggoth.sae.train.chitchat import render
from shoggoth.sae.train.stream import ChunkedStream, side_by_side

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DIFFERENCE = ":difference"
"""The suffix of a hook's key for its shifts in a paired batch (hook + DIFFERENCE)."""
CHUNK_PAIRS = 64
"""Pairs per chunk of the stream: run together, then shuffled together."""

ChunkActivations = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]
"""A chunk's activations per hook under the persona and under the reference (paired_activations'
first two results)."""


def difference_key(hook: str) -> str:
    return hook + DIFFERENCE


def render_system(reference: str) -> str | None:
    """A system prompt as the chat renderer takes it: EMPTY_SYSTEM is an empty system turn, ""
    no system turn."""
    if reference == EMPTY_SYSTEM:
        return ""
    return reference or None


@dataclass
class Pairs:
    """Persona and reference token sequences of the same pieces, and which of their positions
    are the shared, measured tokens (the same count in both rows of a pair)."""

    persona_ids: list[list[int]]
    reference_ids: list[list[int]]
    persona_keep: list[list[bool]]
    reference_keep: list[list[bool]]
    persona_of: list[int]
    """Index of each pair's training persona."""
    names: list[str]
    """The training personas' names."""

    def __len__(self) -> int:
        return len(self.persona_ids)

    def select(self, rows: Sequence[int]) -> Pairs:
        return Pairs(
            [self.persona_ids[i] for i in rows],
            [self.reference_ids[i] for i in rows],
            [self.persona_keep[i] for i in rows],
            [self.reference_keep[i] for i in rows],
            [self.persona_of[i] for i in rows],
            self.names,
        )

    def tokens(self) -> int:
        return sum(sum(k) for k in self.persona_keep)


def _shared_suffix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(reversed(a), reversed(b), strict=False):
        if x != y:
            break
        n += 1
    return n


def render_piece(tokenizer: PreTrainedTokenizerBase, system: str | None, piece: Piece) -> str:
    """A piece under `system` (None: no system turn; "": an empty one): a chitchat piece's turns
    alternate as user and assistant, a chat corpus's conversation keeps its roles."""
    if isinstance(piece, Conversation):
        return render_conversation(tokenizer, piece, system)
    return render(tokenizer, system, piece)


def make_pairs(
    tokenizer: PreTrainedTokenizerBase,
    pieces: Sequence[Piece],
    personas: list[Persona],
    reference: str,
    context_size: int,
    prepend_bos: bool,
    is_causal: bool = True,
    max_tokens: int | None = None,
) -> Pairs:
    """Piece i under training persona i % len(personas) (its paraphrases in turn) and under the
    reference; each sequence at most `context_size` tokens (the piece's end is cut from both).
    A conversation with a system turn of its own is passed over."""
    if not personas:
        raise BadInput("--personas: no training personas")
    specials = special_ids(tokenizer)
    bos = getattr(tokenizer, "bos_token_id", None)
    ref_system = render_system(reference)
    out = Pairs([], [], [], [], [], [p.name for p in personas])
    total = 0
    for i, piece in enumerate(pieces):
        if isinstance(piece, Conversation) and piece.has_system:
            continue  # its own system turn is where the persona and the reference would go
        k = i % len(personas)
        persona = personas[k]
        prompt = persona.prompts[(i // len(personas)) % len(persona.prompts)]
        texts = [
            render_piece(tokenizer, render_system(prompt), piece),
            render_piece(tokenizer, ref_system, piece),
        ]
        # An encoder gets its [CLS] … [SEP] wrapping; a causal LM its BOS, as in training.
        p, r = (tokenizer(t, add_special_tokens=not is_causal)["input_ids"] for t in texts)
        if prepend_bos and bos is not None:
            p, r = ([bos] + s if not s or s[0] != bos else s for s in (p, r))
        shared = _shared_suffix(p, r)
        cut = max(0, len(p) - context_size, len(r) - context_size)
        if shared - cut <= 0:
            continue  # the persona prompt alone fills the context
        p, r = p[: len(p) - cut], r[: len(r) - cut]
        shared -= cut
        # The shared tokens, minus special ones; the same positions of the suffix in both.
        tail = [t not in specials for t in p[len(p) - shared :]]
        if not any(tail):
            continue
        out.persona_ids.append(p)
        out.reference_ids.append(r)
        out.persona_keep.append([False] * (len(p) - shared) + tail)
        out.reference_keep.append([False] * (len(r) - shared) + tail)
        out.persona_of.append(k)
        total += sum(tail)
        if max_tokens is not None and total >= max_tokens:
            break
    if not out.persona_ids:
        raise BadInput(
            f"--context-size {context_size}: no piece leaves any shared token beside "
            "its persona prompt"
        )
    return out


def paired_activations(
    model: Model,
    pairs: Pairs,
    hooks: list[str],
    batch: int = 32,
    advance: Callable[[int], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """Per hook, [n_shared_tokens, d] activations under the persona and under the reference
    (float32, on the CPU, pair then position order), and the persona index of each row. Each
    side runs as the harvest's prompts do (`prompts_activations`: shortest first, at most
    `batch` rows a pass, right-padded, so a causal row's positions are its own), its measured
    tokens the shared ones. `advance` is told the pairs' token pairs once both sides have run."""
    sides = []
    for ids, keep in (
        (pairs.persona_ids, pairs.persona_keep),
        (pairs.reference_ids, pairs.reference_keep),
    ):
        prompts = [Prompt(i, k, "plain") for i, k in zip(ids, keep, strict=True)]
        acts, _ = prompts_activations(model, prompts, hooks, None, batch, padding="right")
        sides.append({h: a.float().cpu() for h, a in acts.items()})
    if advance is not None:
        advance(pairs.tokens())
    counts = torch.tensor([sum(k) for k in pairs.persona_keep])
    who = torch.repeat_interleave(torch.tensor(pairs.persona_of), counts)
    return sides[0], sides[1], who


@dataclass
class PairedStream(ChunkedStream):
    """Batches of `batch_tokens` rows per key, forever: `hook` (the persona's activations) and
    `hook + DIFFERENCE` (its shift against the reference) for every hook."""

    model: Model
    hooks: list[str]
    pairs: Pairs
    batch_tokens: int
    seed: int
    shard: int = 0
    shards: int = 1
    chunk_pairs: int = CHUNK_PAIRS
    keep: bool = False
    """Hold each chunk's activations in memory once run, so that later epochs reshuffle them
    without forward passes (the batches are the same either way)."""
    primed: dict[int, ChunkActivations] = field(default_factory=dict)
    """Chunks of the first pass whose activations were already run (the training's data mean
    reads the first chunk): each is used once, in place of its forward passes."""
    show_progress: bool = True
    """Print the forward passes' progress (token pairs, rate, ETA) on stderr, from shard 0: the
    optimizer's bar does not move while a chunk's pairs run."""
    sizes: list[int] = field(init=False)
    _progress: Progress | None = field(init=False, default=None, repr=False)
    _pass: int = field(init=False, default=-1, repr=False)
    _kept: dict[int, ChunkActivations] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.pairs = self.pairs.select(range(self.shard, len(self.pairs), self.shards))
        per = [sum(k) for k in self.pairs.persona_keep]
        c = self.chunk_pairs
        self.sizes = [sum(per[s : s + c]) for s in range(0, len(per), c)]
        if sum(self.sizes) == 0:
            raise ValueError("no trainable token pairs")

    @property
    def keys(self) -> list[str]:
        return [*self.hooks, *(difference_key(h) for h in self.hooks)]

    def rows(self, chunk: int, epoch: int) -> dict[str, torch.Tensor]:
        """Chunk `chunk`'s persona activations and shifts per hook (run again on every pass
        unless `keep` holds them)."""
        if chunk in self._kept:
            persona, ref = self._kept[chunk]
        elif epoch == 0 and chunk in self.primed:
            persona, ref = self.primed.pop(chunk)
            advance = self._advance(epoch)
            if advance is not None:
                advance(self.sizes[chunk])
            if self.keep:
                self._kept[chunk] = persona, ref
        else:
            lo = chunk * self.chunk_pairs
            part = self.pairs.select(range(lo, min(len(self.pairs), lo + self.chunk_pairs)))
            persona, ref, _ = paired_activations(
                self.model, part, self.hooks, advance=self._advance(epoch)
            )
            if self.keep:
                self._kept[chunk] = persona, ref
        out = {h: persona[h] for h in self.hooks}
        out.update({difference_key(h): persona[h] - ref[h] for h in self.hooks})
        return out

    def _advance(self, epoch: int) -> Callable[[int], None] | None:
        """What counts this pass's token pairs as their forward passes finish (one pass: with
        `keep`, the first epoch's; else each epoch's)."""
        if not self.show_progress or self.shard != 0:
            return None
        if self._pass != epoch:
            if self._progress is not None:
                self._progress.__exit__(None, None, None)
            title = "paired stream: forward passes" + (
                " (held for later epochs)" if self.keep else f", epoch {epoch + 1}"
            )
            self._progress = Progress(
                title, sum(self.sizes), unit="token pairs", bar=False
            ).__enter__()
            self._pass = epoch
        progress = self._progress
        assert progress is not None  # (made above on a new pass)

        def advance(n: int) -> None:
            progress.advance(n, rate=f"{progress.rate():,.0f} pairs/s")

        return advance


def sharded_paired_batches(
    model: Model,
    hooks: list[str],
    pairs: Pairs,
    batch_tokens: int,
    seed: int,
    start: int,
    shards: int,
    ranks: list[int],
    keep: bool = False,
    primed: dict[int, ChunkActivations] | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """As stream.sharded_batches, over pairs (`keep`: hold the activations for later
    epochs; `primed`: chunks of the unsharded stream already run, read when the stream
    starts)."""
    per = batch_tokens // shards
    yield from side_by_side(
        [
            PairedStream(
                model,
                hooks,
                pairs,
                per,
                seed,
                r,
                shards,
                keep=keep,
                primed=(primed or {}) if shards == 1 and start == 0 else {},
            ).batches(start // shards)
            for r in ranks
        ]
    )
