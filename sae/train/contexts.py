"""Packing documents into fixed-length token contexts for SAE training and evaluation.

Each context looks like the prompts shoggoth measures later: causal LMs get BOS first; encoders
get their [CLS] … [SEP] wrapping. Documents are joined by the separator token (SEP or EOS) and cut
into equal bodies, so no padding is ever needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar

import torch

from shoggoth.core.errors import BadInput
from shoggoth.sae.prompts import special_wrapping

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def context_layout(
    tokenizer: PreTrainedTokenizerBase, is_causal: bool
) -> tuple[list[int], list[int], int | None]:
    """(head tokens, tail tokens, document separator) for one context."""
    if is_causal:
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        return ([bos] if bos is not None else []), [], (eos if eos is not None else bos)
    head, tail = special_wrapping(tokenizer)
    return head, tail, tokenizer.sep_token_id


def pack_contexts(
    tokenizer: PreTrainedTokenizerBase,
    texts: Iterable[str],
    context_size: int,
    *,
    is_causal: bool,
    max_contexts: int | None = None,
    batch_docs: int = 512,
) -> torch.Tensor:
    """[n_contexts, context_size] token ids; the incomplete last body is dropped."""
    head, tail, sep = context_layout(tokenizer, is_causal)
    body = context_size - len(head) - len(tail)
    if body < 1:
        raise BadInput(f"context size {context_size}: too small to hold any text")
    stream: list[int] = []
    rows: list[list[int]] = []
    texts = list(texts)
    for start in range(0, len(texts), batch_docs):
        for ids in tokenizer(texts[start : start + batch_docs], add_special_tokens=False)[
            "input_ids"
        ]:
            stream.extend(ids)
            if sep is not None:
                stream.append(sep)
        while len(stream) >= body:
            rows.append(head + stream[:body] + tail)
            del stream[:body]
            if max_contexts is not None and len(rows) >= max_contexts:
                return torch.tensor(rows, dtype=torch.long)
    return torch.tensor(rows, dtype=torch.long).reshape(-1, context_size)


T = TypeVar("T")


def split_documents(texts: list[T], eval_every: int = 25) -> tuple[list[T], list[T]]:
    """(train, held-out) documents: every `eval_every`-th document is held out."""
    held = [t for i, t in enumerate(texts) if i % eval_every == eval_every - 1]
    train = [t for i, t in enumerate(texts) if i % eval_every != eval_every - 1]
    return train, held
