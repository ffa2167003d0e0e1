"""The harvest grid: persona × paraphrase × item, cut into fixed batches ("units").

Batches never depend on where a run (or a shard) started, so a resumed or sharded harvest stores
exactly the rows of an uninterrupted one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shoggoth.battery.personas import Persona
from shoggoth.core.errors import BadInput

SHARD = re.compile(r"(\d+)/(\d+)")


@dataclass(frozen=True)
class Unit:
    """One batch of the grid: one persona paraphrase and some items."""

    persona: int
    paraphrase: int
    items: tuple[int, ...]


def parse_shard(shard: str | None) -> tuple[int, int]:
    """(I, N) from "I/N"; (0, 1) for no shard."""
    if shard is None:
        return 0, 1
    m = SHARD.fullmatch(shard.strip())
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise BadInput(f"--shard {shard}: expected I/N with 0 <= I < N, e.g. 0/4")
    return int(m.group(1)), int(m.group(2))


def shard_units(units: list[Unit], shard: tuple[int, int]) -> list[Unit]:
    """The contiguous slice of `units` that shard (I, N) harvests."""
    i, n = shard
    return units[i * len(units) // n : (i + 1) * len(units) // n]


def count_units(personas: list[Persona], n_items: int, batch_size: int) -> int:
    """How many units `grid_units` makes (without tokenizing anything)."""
    return sum(len(p.prompts) for p in personas) * -(-n_items // batch_size)


def grid_units(personas: list[Persona], lengths: list[int], batch_size: int) -> list[Unit]:
    """Every batch of the grid, in the order they are harvested. Items are ordered by prompt
    length so that a batch pads little; every persona paraphrase uses the same batches."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [tuple(order[s : s + batch_size]) for s in range(0, len(order), batch_size)]
    return [
        Unit(p, j, b)
        for p, persona in enumerate(personas)
        for j in range(len(persona.prompts))
        for b in batches
    ]
