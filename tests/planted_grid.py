"""A planted context × content grid: per-document activations with known context-only,
content-only, interaction, shared and null features, for testing `analyse_grid` on data whose
answer is known.

Every persona prompt has its own wording effect on every feature (mean zero over prompts), and
every item its own level, so a test that took items or documents for replicates would find
effects in the null features; only the prompt-level test stays calibrated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

KINDS = ("context", "content", "interaction", "shared", "null", "wording")


@dataclass
class PlantedGrid:
    documents: pd.DataFrame
    doc_features: pd.DataFrame
    truth: dict[int, tuple[str, str | None]]
    """feature → (kind, the persona it is planted on)."""
    n_features: int


def _cell(kind: str, persona_hit: bool, cell: str) -> float:
    """The planted multiplier of a cell (a: in_action, b: neutral_text, c: text_only,
    d: baseline)."""
    if not persona_hit:
        return 1.0
    lift = {
        "context": ("in_action", "neutral_text"),
        "content": ("in_action", "text_only"),
        "interaction": ("in_action",),
    }.get(kind, ())
    return 4.0 if cell in lift else 1.0


def make_planted_grid(
    n_personas: int = 6,
    prompts: int = 3,
    items: int = 12,
    topics: int = 4,
    per_kind: int = 4,
    wording: float = 0.5,
    seed: int = 0,
) -> PlantedGrid:
    """per_kind features of each kind; `wording`: the SD of each prompt's log wording effect."""
    rng = np.random.default_rng(seed)
    personas = [f"p{k}" for k in range(n_personas)]
    item_ids = [f"t{i % topics}-{i:02d}" for i in range(items)]
    kinds = [kind for kind in KINDS for _ in range(per_kind)]
    n_f = len(kinds)
    truth = {
        f: (kind, personas[f % n_personas] if kind in KINDS[:3] else None)
        for f, kind in enumerate(kinds)
    }
    level = rng.lognormal(0, 0.3, (n_f, items))
    word = rng.normal(0, wording, (n_f, n_personas, prompts))
    word[[f for f, k in enumerate(kinds) if k != "wording"]] *= 0.3
    docs, values = [], []

    def add(cell: str, persona: str | None, j: int | None, i: int, mult: np.ndarray) -> None:
        docs.append({"cell": cell, "persona": persona, "paraphrase": j, "item_id": item_ids[i]})
        noise = rng.lognormal(0, 0.15, n_f)
        values.append(level[:, i] * mult * noise)

    for i in range(items):
        add("baseline", None, None, i, np.ones(n_f))
    for k, name in enumerate(personas):
        for j in range(prompts):
            for i in range(items):
                for cell in ("in_action", "neutral_text", "text_only"):
                    mult = np.array(
                        [_cell(kinds[f], truth[f][1] == name, cell) for f in range(n_f)]
                    )
                    if cell != "text_only":  # the prompt's wording acts where it is the context
                        mult = mult * np.exp(word[:, k, j])
                    add(cell, name, j, i, mult)
    v = np.array(values)
    d, f = np.nonzero(v > 0)
    frame = pd.DataFrame({"doc": d, "feature": f, "mean_act": v[d, f]})
    return PlantedGrid(pd.DataFrame(docs), frame, truth, n_f)
