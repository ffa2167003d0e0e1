"""The chat training corpus (`--dataset chitchat`): the Chit Chat Challenge conversations (PyPI
package `chitchat-dataset`, MIT: 7,168 human conversations, 258,145 utterances), rendered as
multi-turn chats in the model's own chat template, so that an SAE sees chat structure, turns and
system prompts.

Each conversation is cut into pieces of `TURNS` turns (a piece fits one training context, so its
system prompt is in view of every token); the two speakers alternate as user and assistant.
Piece i runs under: a training persona's prompt (i % 4 in 0, 1; `training_personas.yaml`, disjoint
from the battery), no system turn (i % 4 == 2: the template's default, if it has one), or an empty
system turn (i % 4 == 3). A model without a chat template gets plain text: the system prompt,
then the turns, separated by blank lines.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TypedDict

from shoggoth.battery.personas import BATTERY_DIR, Persona, load_personas
from shoggoth.core.cache import packaged_file
from shoggoth.sae.prompts import SEPARATOR

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CHITCHAT = "chitchat"
TURNS = 4
"""Turns per piece: about 60-120 tokens, one training context or less."""


def conversations() -> list[list[str]]:
    """The conversations in a fixed order (by id), each a list of turns: one speaker's
    consecutive messages joined."""
    path = packaged_file("chitchat_dataset", "dataset.json", f"--dataset {CHITCHAT}")
    data = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for key in sorted(data):
        turns = [
            " ".join(u["text"].strip() for u in message if str(u.get("text", "")).strip())
            for message in data[key]["messages"]
        ]
        turns = [t for t in turns if t]
        if len(turns) >= 2:
            out.append(turns)
    return out


def training_personas() -> list[Persona]:
    """The personas the chat corpus runs under (never the battery's)."""
    return load_personas(BATTERY_DIR / "training_personas.yaml")


def system_of(i: int, personas: list[Persona]) -> str | None:
    """Piece i's system prompt: a training persona's paraphrase, None (no system turn) or ""
    (an empty system turn)."""
    slot = i % 4
    if slot == 2:
        return None
    if slot == 3:
        return ""
    k = (i // 4) * 2 + slot
    persona = personas[k % len(personas)]
    return persona.prompts[(k // len(personas)) % len(persona.prompts)]


class Message(TypedDict):
    """One chat message, as a chat template takes it."""

    role: str
    content: str


def as_messages(turns: list[str]) -> list[Message]:
    """A piece's turns as chat messages: the speakers alternate as user and assistant."""
    return [
        {"role": "user" if j % 2 == 0 else "assistant", "content": t} for j, t in enumerate(turns)
    ]


def render_messages(
    tokenizer: PreTrainedTokenizerBase, system: str | None, messages: list[Message]
) -> str:
    """Chat messages under `system` (None: no system turn; "": an empty one) in `tokenizer`'s
    chat template. A template without a system role gets the prompt at the head of the first
    message instead."""
    from jinja2 import TemplateError

    head: list[Message] = [] if system is None else [{"role": "system", "content": system}]
    try:
        return str(tokenizer.apply_chat_template(head + messages, tokenize=False))
    except TemplateError:  # a template without a system role: the prompt opens the first turn
        if system:
            first = messages[0]
            messages = [
                {"role": first["role"], "content": SEPARATOR.join([system, first["content"]])},
                *messages[1:],
            ]
        return str(tokenizer.apply_chat_template(messages, tokenize=False))


def render(tokenizer: PreTrainedTokenizerBase, system: str | None, turns: list[str]) -> str:
    """One piece as text: in the chat template when the tokenizer has one, plain otherwise."""
    if not getattr(tokenizer, "chat_template", None):
        return SEPARATOR.join(([system] if system else []) + turns)
    return render_messages(tokenizer, system, as_messages(turns))


def pieces() -> list[list[str]]:
    """The corpus cut into pieces of TURNS turns, in a fixed order (what a difference dictionary
    trains on, each piece under a training persona and under the reference)."""
    return [
        turns[start : start + TURNS]
        for turns in conversations()
        for start in range(0, len(turns) - 1, TURNS)
    ]


def chat_texts(tokenizer: PreTrainedTokenizerBase, max_chars: int | None = None) -> list[str]:
    """The corpus as documents for `tokenizer`, in a fixed order, until `max_chars`."""
    personas = training_personas()
    docs: list[str] = []
    total = 0
    for turns in conversations():
        for start in range(0, len(turns) - 1, TURNS):
            piece = turns[start : start + TURNS]
            text = render(tokenizer, system_of(len(docs), personas), piece)
            docs.append(text)
            total += len(text)
            if max_chars is not None and total >= max_chars:
                return docs
    return docs
