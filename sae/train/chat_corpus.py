"""Chat corpora: datasets whose rows hold a conversation, a list of chat messages
(`[{"role": "user" | "assistant" | "system", "content": str}, …]`: UltraChat's and tulu's
`messages`, lmsys-chat's `conversation`), rendered in the model's own chat template instead of
read as text.

A conversation with a system turn of its own is rendered as it is. One without wears the
training personas the way the built-in chat corpus (chitchat.py) does: conversation i runs under
`system_of(i)`, a training persona's prompt for half of them, no system turn for a quarter and
an empty one for the rest. A difference dictionary (paired.py) trains on the conversations
without a system turn, each under a training persona and under the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shoggoth.battery.personas import Persona
from shoggoth.core.errors import BadInput, first_line, shown
from shoggoth.sae.train.chitchat import Message, render_messages, system_of

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")
DEFAULT_COLUMN = "text"
"""--text-column's default: where it is absent, a chat column below is looked for."""
CHAT_COLUMNS = ("messages", "conversation")
"""The columns chat corpora keep their conversations in (UltraChat, tulu: messages; lmsys-chat:
conversation)."""


@dataclass(frozen=True)
class Conversation:
    """One row of a chat corpus."""

    messages: list[Message]
    """Its messages in order, as the chat template takes them (its own system turns
    included)."""
    source: str
    """The file or dataset it was read from, as messages name it."""
    row: int
    """Where it is in `source`: the line of a .jsonl file, the row (from 1) otherwise."""
    unit: str = "row"
    """What `row` counts: 'line' or 'row'."""

    @property
    def where(self) -> str:
        """The conversation as a message names it."""
        return f"dataset '{self.source}' {self.unit} {self.row}"

    @property
    def has_system(self) -> bool:
        """Whether the corpus gave it a system turn (then no persona is put on it)."""
        return any(m["role"] == "system" for m in self.messages)


Piece = list[str] | Conversation
"""What a difference dictionary's pairs are made of (paired.make_pairs): a chitchat piece's
turns (speakers alternating as user and assistant), or a chat corpus's conversation."""


def chat_column(
    text_column: str, columns: Collection[str], holds_lists: Callable[[str], bool]
) -> str | None:
    """The column to read conversations from, or None to read text from `text_column`: the
    text column itself when its values are lists, else (for the default 'text', when there is
    none) the first of CHAT_COLUMNS whose values are lists."""
    if text_column in columns:
        return text_column if holds_lists(text_column) else None
    if text_column == DEFAULT_COLUMN:
        for name in CHAT_COLUMNS:
            if name in columns and holds_lists(name):
                return name
    return None


def conversation_of(value: object, source: str, row: int, unit: str = "row") -> Conversation | None:
    """The conversation a chat column's value holds (None for an empty or missing one);
    BadInput naming the dataset, the row and the problem for anything else."""
    if value is None or (isinstance(value, list) and not value):
        return None
    where = f"dataset '{source}' {unit} {row}"
    if not isinstance(value, list):
        raise BadInput(f"{where}: not a list of chat messages ({type(value).__name__})")
    messages: list[Message] = []
    for j, m in enumerate(value, 1):
        if not (
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
        ):
            raise BadInput(
                f"{where}: message {j} is not a {{role, content}} object with text "
                f"values: {shown(m)}"
            )
        if m["role"] not in ROLES:
            raise BadInput(
                f"{where}: message {j} has unknown role {shown(m['role'])} "
                f"(expected {', '.join(ROLES)})"
            )
        messages.append({"role": m["role"], "content": m["content"]})
    return Conversation(messages, source, row, unit)


def require_template(tokenizer: PreTrainedTokenizerBase, dataset: str, model: str) -> None:
    """BadInput when `tokenizer` cannot render a chat corpus: it has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        name = model or getattr(tokenizer, "name_or_path", "") or "(no tokenizer)"
        raise BadInput(
            f"dataset '{dataset}': holds chat conversations, and model '{name}' has "
            "no chat template to render them in"
        )


def render_conversation(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation, system: str | None
) -> str:
    """`conversation` in `tokenizer`'s chat template: as it is when it has a system turn of its
    own, under `system` (chitchat.render's convention: None no system turn, "" an empty one)
    otherwise. BadInput naming the row when the template refuses it."""
    from jinja2 import TemplateError

    try:
        if conversation.has_system:
            return str(tokenizer.apply_chat_template(conversation.messages, tokenize=False))
        return render_messages(tokenizer, system, conversation.messages)
    except TemplateError as e:
        raise BadInput(
            f"{conversation.where}: the model's chat template refuses it: {first_line(e)}"
        ) from None


def persona_system(conversation: Conversation, i: int, personas: list[Persona]) -> str | None:
    """The system prompt conversation i of a chat corpus runs under (chitchat.system_of), None
    when it has its own."""
    return None if conversation.has_system else system_of(i, personas)
