"""The persona battery: personas with paraphrased system prompts, and shared items.

The built-in battery lives in `shoggoth/battery/data/` (personas.yaml, items.jsonl); users
replace it with their own files in the same format (docs/battery.md). Loading validates
everything up front and reports the first problem as one line naming the file (and line) and
what is wrong.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

from shoggoth.core.errors import BadInput, shown
from shoggoth.core.text import BoundedLoader, jsonl_rows, load_yaml

BATTERY_DIR = Path(__file__).parent / "data"
NAME = re.compile(r"[a-z0-9][a-z0-9_\-]*")
PERSONA_FIELDS = {"name", "family", "description", "prompts", "is_control", "control_of"}
ITEM_FIELDS = {"item_id", "topic", "question", "answer"}


@dataclass(frozen=True)
class Persona:
    """A persona (or a control) and its paraphrased system prompts."""

    name: str
    family: str
    description: str
    prompts: tuple[str, ...]
    """Paraphrases of the system prompt; one empty string means no system prompt at all."""
    is_control: bool = False
    control_of: str | None = None
    """For mention/negation controls: the persona they mention or negate."""


@dataclass(frozen=True)
class Item:
    """A shared item: a user question and the fixed assistant answer measured under every
    persona."""

    item_id: str
    topic: str
    question: str
    answer: str


class _LineLoader(BoundedLoader):
    """A YAML loader that remembers the line where each mapping starts (key `__line__`)."""


def _mapping_with_line(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    return cast("dict[str, Any]", mapping)


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_with_line)


def load_personas(path: Path | None = None) -> list[Persona]:
    """Personas from a YAML file (default: the built-in battery), validated."""
    path = path or BATTERY_DIR / "personas.yaml"
    if not path.is_file():
        raise BadInput(f"{path}: personas file does not exist")
    data = load_yaml(path, "--personas", _LineLoader)
    entries = data.get("personas") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise BadInput(f"{path}: expected a top-level 'personas:' list")
    personas: list[Persona] = []
    seen: dict[str, int] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise BadInput(f"{path}: each persona must be a mapping with name, family and prompts")
        line = entry.pop("__line__")
        where = f"{path} line {line}"
        unknown = set(entry) - PERSONA_FIELDS
        if unknown:
            raise BadInput(f"{where}: unknown field '{sorted(unknown)[0]}'")
        name = entry.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise BadInput(
                f"{where}: persona name {shown(name)}: use lowercase letters, digits, _, -"
            )
        if name in seen:
            raise BadInput(f"{where}: duplicate persona '{name}' (first at line {seen[name]})")
        seen[name] = line
        family = entry.get("family")
        if not isinstance(family, str) or not family.strip():
            raise BadInput(f"{where}: persona '{name}' has no family")
        is_control = entry.get("is_control", False)
        if not isinstance(is_control, bool):
            raise BadInput(
                f"{where}: persona '{name}': is_control must be true or false, got "
                f"{shown(is_control)}"
            )
        prompts = entry.get("prompts")
        if not isinstance(prompts, list) or not prompts:
            raise BadInput(f"{where}: persona '{name}' has no prompts")
        if not all(isinstance(p, str) for p in prompts):
            raise BadInput(f"{where}: persona '{name}': every prompt must be text")
        if any(not p.strip() for p in prompts) and not (is_control and prompts == [""]):
            raise BadInput(
                f"{where}: persona '{name}' has an empty prompt (only a control may "
                "have the single empty prompt that means 'no system prompt')"
            )
        if len(set(prompts)) != len(prompts):
            raise BadInput(f"{where}: persona '{name}' repeats a prompt")
        personas.append(
            Persona(
                name,
                family.strip(),
                str(entry.get("description") or ""),
                tuple(prompts),
                is_control,
                _control_of(entry.get("control_of"), where, name),
            )
        )
    names = {p.name for p in personas}
    for p in personas:
        for target in (p.control_of or "").split(",") if p.control_of else []:
            if target not in names:
                raise BadInput(
                    f"{path} line {seen[p.name]}: control '{p.name}' refers to "
                    f"unknown persona '{target}'"
                )
    if not any(not p.is_control for p in personas):
        raise BadInput(f"{path}: holds only controls; at least one persona is needed")
    return personas


def _control_of(value: Any, where: str, name: str) -> str | None:
    """`control_of` as stored: one persona name, or several comma-separated (given in YAML as
    a name, a comma-separated text or a list of names)."""
    if value is None:
        return None
    names = value if isinstance(value, list) else [value] if isinstance(value, str) else None
    if names is None or not names or not all(isinstance(n, str) for n in names):
        raise BadInput(
            f"{where}: persona '{name}': control_of must be a persona name or a list "
            f"of them, got {shown(value)}"
        )
    parts = [part.strip() for n in names for part in n.split(",")]
    if not all(parts):
        raise BadInput(f"{where}: persona '{name}': control_of holds an empty name")
    return ",".join(parts)


def load_items(path: Path | None = None) -> list[Item]:
    """Shared items from a JSONL file (default: the built-in battery), validated."""
    path = path or BATTERY_DIR / "items.jsonl"
    if not path.is_file():
        raise BadInput(f"{path}: items file does not exist")
    items: list[Item] = []
    seen: dict[str, int] = {}
    for n, row in jsonl_rows(path):
        missing = ITEM_FIELDS - set(row)
        if missing:
            raise BadInput(f"{path} line {n}: missing field '{sorted(missing)[0]}'")
        unknown = set(row) - ITEM_FIELDS
        if unknown:
            raise BadInput(f"{path} line {n}: unknown field '{sorted(unknown)[0]}'")
        for key in ITEM_FIELDS:
            if not isinstance(row[key], str) or not row[key].strip():
                raise BadInput(f"{path} line {n}: empty {key}")
        if row["item_id"] in seen:
            raise BadInput(
                f"{path} line {n}: duplicate item_id '{row['item_id']}' "
                f"(first at line {seen[row['item_id']]})"
            )
        seen[row["item_id"]] = n
        items.append(Item(row["item_id"], row["topic"], row["question"], row["answer"]))
    if not items:
        raise BadInput(f"{path}: holds no items")
    return items


def subset_personas(personas: list[Persona], paraphrases: int | None) -> list[Persona]:
    """Each persona and control with only its first `paraphrases` prompts (None: all)."""
    if paraphrases is None:
        return personas
    return [dataclasses.replace(p, prompts=p.prompts[:paraphrases]) for p in personas]


def subset_items(items: list[Item], per_topic: int | None) -> list[Item]:
    """The first `per_topic` items of each topic, in file order (None: all)."""
    if per_topic is None:
        return items
    seen: dict[str, int] = {}
    kept = []
    for item in items:
        seen[item.topic] = seen.get(item.topic, 0) + 1
        if seen[item.topic] <= per_topic:
            kept.append(item)
    return kept


def baseline_persona(personas: list[Persona], db: Path) -> Persona:
    """The no-persona control: a control whose prompts are all empty."""
    empty = [p for p in personas if p.is_control and all(not t for t in p.prompts)]
    if not empty:
        raise BadInput(
            f"--db {db}: the battery has no no-persona control (a control persona "
            "with an empty prompt), so no persona's shift can be measured"
        )
    return next((p for p in empty if p.name == "control_none"), empty[0])
