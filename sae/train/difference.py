"""What a difference dictionary trains and is evaluated on: the corpus as pieces under the
training personas and under the reference (paired.py makes the token pairs), and the share of
the persona signal a dictionary carries on held-out pieces."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from shoggoth.battery.personas import Persona, load_personas
from shoggoth.core.signal import grouped_means, signal_fraction
from shoggoth.sae.models import Model
from shoggoth.sae.train.chat_corpus import Piece
from shoggoth.sae.train.chitchat import training_personas
from shoggoth.sae.train.contexts import split_documents
from shoggoth.sae.train.corpus import load_pieces
from shoggoth.sae.train.paired import Pairs, make_pairs

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformers import PreTrainedTokenizerBase

DIFFERENCE, RESIDUAL = "difference", "residual"
HELD_PIECES = 1024
"""Held-out pieces the persona signal is measured on, at most."""


def persona_set(path: Path | None) -> list[Persona]:
    """The training personas: a personas file's non-control personas, or the built-in ones."""
    personas = training_personas() if path is None else load_personas(path)
    return [p for p in personas if not p.is_control and any(t.strip() for t in p.prompts)]


def corpus_pieces(
    dataset: str,
    text_column: str,
    max_chars: int,
    tokenizer: PreTrainedTokenizerBase | None = None,
    model_name: str = "",
) -> list[Piece]:
    """The corpus as pieces: the chat corpus's conversation pieces, a chat dataset's
    conversations without a system turn of their own, or each document of any other dataset
    as one turn (corpus.load_pieces)."""
    return load_pieces(dataset, text_column, max_chars, tokenizer, model_name)


def training_pairs(
    model: Model,
    dataset: str,
    text_column: str,
    personas: list[Persona],
    reference: str,
    context_size: int,
    tokens: int | None,
    eval_tokens: int,
) -> tuple[Pairs | None, Pairs]:
    """(training pairs, or None when `tokens` is None; held-out pairs): every 25th piece is
    held out, as for a residual SAE."""
    train, held = split_documents(
        corpus_pieces(
            dataset,
            text_column,
            20 * ((tokens or 0) + 2 * eval_tokens),
            model.tokenizer,
            model.name,
        )
    )

    def make(part: list[Piece], n: int) -> Pairs:
        return make_pairs(
            model.tokenizer,
            part,
            personas,
            reference,
            context_size,
            model.is_causal and model.prepend_bos,
            model.is_causal,
            max_tokens=n,
        )

    # The held-out evaluation needs a few thousand tokens: the first HELD_PIECES pieces hold
    # them (and a context too short for pairs is found without rendering the whole corpus).
    return (
        make(train, tokens) if tokens is not None else None,
        make(held[:HELD_PIECES], eval_tokens),
    )


@torch.no_grad()
def persona_signal(
    sae: SAE, kind: str, persona: torch.Tensor, x: torch.Tensor, x_ref: torch.Tensor
) -> float:
    """The share of the persona signal `sae` carries on paired activations (core/signal.py):
    a residual SAE reconstructs both documents, a difference dictionary their shift."""

    def recon(a: torch.Tensor) -> torch.Tensor:
        a = a.to(sae.device, sae.dtype)
        return (
            torch.cat([sae.decode(sae.encode(a[s : s + 4096])) for s in range(0, len(a), 4096)])
            .float()
            .cpu()
        )

    shift = x - x_ref
    shift_hat = recon(shift) if kind == DIFFERENCE else recon(x) - recon(x_ref)
    who = persona.numpy()
    return signal_fraction(
        grouped_means(shift.double().numpy(), who), grouped_means(shift_hat.double().numpy(), who)
    )
