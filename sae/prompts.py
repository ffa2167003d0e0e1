"""Prompts with a continuation mask: which tokens belong to the text being measured.

A prompt is (system/persona prompt, user question, continuation). Models with a chat template get
it (system, user, assistant = continuation); others get plain text,
`system + "\\n\\n" + user + "\\n\\n" + continuation`. The mask is true exactly on the
continuation's tokens: never on the system prompt, the user turn, BOS/CLS/SEP or template tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import torch

from shoggoth.core.errors import BadInput

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


Template = Literal["auto", "chat", "plain"]


def stored_template(value: object) -> Template:
    """The template a harvest recorded, as prompts are built again: plain stays plain, and
    everything else is the model's own choice (a chat template when it has one)."""
    return "plain" if value == "plain" else "auto"


SEPARATOR = "\n\n"
EMPTY_SYSTEM = "(empty system message)"
"""A system prompt that stands for a system turn with no text. An empty prompt means no system
turn at all, and some chat templates then insert their own default (SmolLM2's: "You are a
helpful AI assistant named SmolLM, trained by Hugging Face"); this one keeps the turn, empty,
so that the template adds nothing. Plain prompts treat both alike: no text."""


@dataclass(frozen=True)
class Prompt:
    """One tokenized prompt."""

    input_ids: list[int]
    mask: list[bool]
    """True exactly on the continuation's tokens."""
    template: str
    """'chat' or 'plain': how the parts were joined."""

    @property
    def continuation_ids(self) -> list[int]:
        return [i for i, m in zip(self.input_ids, self.mask, strict=True) if m]


def uses_chat_template(tokenizer: PreTrainedTokenizerBase, template: Template = "auto") -> bool:
    """Whether prompts for this tokenizer are built with its chat template."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has:
        raise BadInput("template 'chat': this model's tokenizer has no chat template")
    if template not in ("auto", "chat", "plain"):
        raise BadInput(f"template '{template}': expected auto, chat or plain")
    return has and template != "plain"


def _render_chat(
    tokenizer: PreTrainedTokenizerBase,
    system: str,
    user: str,
    continuation: str,
    empty_system: bool = False,
) -> tuple[str, int]:
    """The chat-formatted text and the character offset where the continuation starts in it
    (with `empty_system`, a system turn with no text)."""
    from jinja2 import TemplateError

    def render(msgs: list[dict[str, str]], **kw: Any) -> str:
        return cast("str", tokenizer.apply_chat_template(msgs, tokenize=False, **kw))

    msgs = ([{"role": "system", "content": system}] if system or empty_system else []) + [
        {"role": "user", "content": user}
    ]
    try:
        prefix = render(msgs, add_generation_prompt=True)
        full = render(msgs + [{"role": "assistant", "content": continuation}])
    except TemplateError:
        # Some templates (Gemma's) refuse a system role: fold the persona into the user turn.
        msgs = [{"role": "user", "content": SEPARATOR.join(p for p in (system, user) if p)}]
        prefix = render(msgs, add_generation_prompt=True)
        full = render(msgs + [{"role": "assistant", "content": continuation}])
    start = full.find(continuation, len(prefix)) if full.startswith(prefix) else -1
    if start < 0:
        start = full.rfind(continuation)
    if start < 0:
        raise BadInput(
            "continuation: the model's chat template does not reproduce it verbatim "
            "(it may trim or rewrite assistant text); use template 'plain'"
        )
    return full, start


def common_prefix(sequences: Sequence[Sequence[int]], limit: int) -> int:
    """How many leading tokens every sequence shares, at most `limit`."""
    n, first = max(limit, 0), sequences[0]
    for seq in sequences[1:]:
        k = 0
        while k < n and seq[k] == first[k]:
            k += 1
        n = k
    return n


def special_wrapping(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after a single sequence ([CLS] … [SEP])."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    return [], []


def special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Ids never measured: BOS/EOS/CLS/SEP/PAD/MASK and template tokens. [UNK] is not among
    them: it stands for real text the vocabulary lacks."""
    return set(tokenizer.all_special_ids) - {getattr(tokenizer, "unk_token_id", None)}


def non_special(tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the positions in `ids` that hold no special token (see special_ids)."""
    specials = torch.tensor(sorted(special_ids(tokenizer)), dtype=ids.dtype, device=ids.device)
    return ~torch.isin(ids, specials)


def _tokenize_span(
    tokenizer: PreTrainedTokenizerBase, text: str, start: int, end: int, add_special: bool
) -> tuple[list[int], list[bool]]:
    """Token ids of `text` and a mask of the tokens made from characters [start, end)."""
    special = special_ids(tokenizer)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        if not any(s < start < e or s < end < e for s, e in offsets):
            mask = [
                start <= s and e <= end and s < e and i not in special
                for i, (s, e) in zip(ids, offsets, strict=True)
            ]
            return ids, mask
    # A token straddles the boundary (or offsets are unavailable): tokenize the parts
    # separately, so the boundary is exact and the continuation's tokens do not depend on
    # the prefix.
    parts = [
        tokenizer(t, add_special_tokens=False)["input_ids"]
        for t in (text[:start], text[start:end], text[end:])
    ]
    head, tail = special_wrapping(tokenizer) if add_special else ([], [])
    ids = head + parts[0] + parts[1] + parts[2] + tail
    mask = (
        [False] * (len(head) + len(parts[0]))
        + [i not in special for i in parts[1]]
        + [False] * (len(parts[2]) + len(tail))
    )
    return ids, mask


def check_continuation(continuation: str | None) -> None:
    """BadInput when there is no text to measure (checked before a model loads, and again when
    a prompt is built)."""
    if not continuation or not continuation.strip():
        raise BadInput("continuation: is empty, there is nothing to measure")


def build_prompt(
    tokenizer: PreTrainedTokenizerBase,
    system: str | None,
    user: str | None,
    continuation: str,
    *,
    template: Template = "auto",
    prepend_bos: bool = False,
) -> Prompt:
    """Tokenize (system, user, continuation) and mark the continuation's tokens.

    `system`: empty or None for no system turn, EMPTY_SYSTEM for an empty one.
    `template`: "auto" uses the tokenizer's chat template when it has one, "plain" never does.
    `prepend_bos`: put the BOS token first in plain prompts when the tokenizer does not add it
    itself (what TransformerLens does for causal LMs). Raises BadInput for an empty continuation.
    """
    check_continuation(continuation)
    empty_system = system == EMPTY_SYSTEM
    system, user = "" if empty_system else system or "", user or ""
    if uses_chat_template(tokenizer, template):
        text, start = _render_chat(tokenizer, system, user, continuation, empty_system)
        ids, mask = _tokenize_span(tokenizer, text, start, start + len(continuation), False)
        kind = "chat"
    else:
        prefix = SEPARATOR.join(p for p in (system, user) if p)
        prefix = prefix + SEPARATOR if prefix else ""
        text = prefix + continuation
        ids, mask = _tokenize_span(tokenizer, text, len(prefix), len(text), True)
        bos = getattr(tokenizer, "bos_token_id", None)
        if prepend_bos and bos is not None and (not ids or ids[0] != bos):
            ids, mask = [bos] + ids, [False] + mask
        kind = "plain"
    if not any(mask):
        raise BadInput(f"continuation {continuation!r}: produces no tokens to measure")
    return Prompt(ids, mask, kind)


@dataclass
class Batch:
    """Padded prompts, ready for the model."""

    input_ids: torch.Tensor
    """[batch, seq] token ids (padding positions hold the pad id)."""
    attention_mask: torch.Tensor
    """[batch, seq] 1 on real tokens, 0 on padding."""
    continuation_mask: torch.Tensor
    """[batch, seq] bool, true exactly on continuation tokens."""

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.continuation_mask.to(device),
        )


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id used for padding: the pad token, else EOS, else 0 (masked out either way)."""
    for tid in (tokenizer.pad_token_id, getattr(tokenizer, "eos_token_id", None)):
        if tid is not None:
            return int(tid)
    return 0


def collate(
    prompts: Sequence[Prompt], pad_token_id: int, padding_side: Literal["left", "right"] = "right"
) -> Batch:
    """Pad prompts to one length on the given side."""
    if not prompts:
        raise BadInput("prompts: the batch is empty")
    if padding_side not in ("left", "right"):
        raise BadInput(f"padding side '{padding_side}': expected left or right")
    width = max(len(p.input_ids) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(prompts), width), dtype=torch.long)
    cont = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, p in enumerate(prompts):
        n = len(p.input_ids)
        cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
        ids[row, cols] = torch.tensor(p.input_ids, dtype=torch.long)
        attn[row, cols] = 1
        cont[row, cols] = torch.tensor(p.mask, dtype=torch.bool)
    return Batch(ids, attn, cont)


def build_batch(
    tokenizer: PreTrainedTokenizerBase,
    rows: Iterable[tuple[str | None, str | None, str]],
    *,
    template: Template = "auto",
    prepend_bos: bool = False,
    padding_side: Literal["left", "right"] | None = None,
) -> Batch:
    """Build and pad (system, user, continuation) rows; padding side defaults to the tokenizer's."""
    prompts = [
        build_prompt(tokenizer, s, u, c, template=template, prepend_bos=prepend_bos)
        for s, u, c in rows
    ]
    side = padding_side or getattr(tokenizer, "padding_side", "right") or "right"
    return collate(prompts, pad_id(tokenizer), side)
