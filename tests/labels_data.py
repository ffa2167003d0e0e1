"""Synthetic per-document activations with planted truth, for the label tests and benchmark."""

from __future__ import annotations

import numpy as np
import pandas as pd

KINDS = ("dead", "rare", "mask-specific", "mask-family", "shared", "shared-modulated", "noise")


def personas_frame(n_families: int = 4, per_family: int = 3, n_controls: int = 2) -> pd.DataFrame:
    rows = [(f"p{f}_{m}", f"fam{f}", False) for f in range(n_families) for m in range(per_family)]
    rows += [(f"control_{c}", "control", True) for c in range(n_controls)]
    return pd.DataFrame(rows, columns=["persona", "family", "is_control"])


def documents_frame(personas: pd.DataFrame, n_items: int, n_para: int) -> pd.DataFrame:
    return pd.DataFrame([(p, j, f"item{i:03d}") for p in personas["persona"]
                         for j in range(n_para) for i in range(n_items)],
                        columns=["persona", "paraphrase", "item_id"])


def planted(seed: int = 0, per_kind: int = 20, n_items: int = 40, n_para: int = 3,
            null: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame,
                                          dict[int, tuple[str, object]]]:
    """(doc_features, documents, personas, truth): `truth[feature] = (kind, persona or family)`.

    Every feature also has sparse background noise in every persona. "noise" features fire in
    2.5% of documents whatever the persona: too few to show a difference or an equivalence, so
    their right label is `unclear`. With `null`, every feature fires in 30% of documents whatever
    the persona (no persona effect at all).
    """
    rng = np.random.default_rng(seed)
    personas = personas_frame()
    docs = documents_frame(personas, n_items, n_para)
    main = personas[~personas["is_control"]]
    names = list(main["persona"])
    families = {f: list(g["persona"]) for f, g in main.groupby("family")}
    n = len(docs)
    persona = docs["persona"].to_numpy()
    item_effect = rng.gamma(4, 0.25, n_items)  # items differ in how strongly features fire
    item = docs["item_id"].str[4:].astype(int).to_numpy()
    rows, truth = [], {}
    kinds = ["noise"] * (per_kind * len(KINDS)) if null else \
        [k for k in KINDS for _ in range(per_kind)]
    for feature, kind in enumerate(kinds):
        value = np.zeros(n)
        target = None
        if kind == "rare":
            hit = rng.choice(n, size=rng.integers(3, 12), replace=False)
            value[hit] = rng.gamma(2, 0.5, len(hit))
        elif kind == "mask-specific":
            target = names[feature % len(names)]
            on = persona == target
            value[on] = rng.gamma(6, 0.2, on.sum()) * item_effect[item[on]]
        elif kind == "mask-family":
            target = sorted(families)[feature % len(families)]
            on = np.isin(persona, families[target])
            value[on] = rng.gamma(6, 0.2, on.sum()) * item_effect[item[on]]
        elif kind == "shared":
            value = rng.gamma(40, 0.025, n) * item_effect[item]
        elif kind == "shared-modulated":
            boost = {p: (3.0 if i % 2 else 1.0) for i, p in enumerate(names)}
            scale = np.array([boost.get(p, 1.0) for p in persona])
            value = rng.gamma(40, 0.025, n) * item_effect[item] * scale
        elif kind == "noise":  # no persona effect; too sparse to show equivalence
            fire = rng.random(n) < (0.3 if null else 0.025)
            value[fire] = rng.gamma(2, 0.5, fire.sum()) * item_effect[item[fire]]
        if kind not in ("dead", "rare") and not null:
            background = (rng.random(n) < 0.01) & (value == 0)
            value[background] = rng.gamma(1, 0.05, background.sum())
        truth[feature] = (kind, target)
        fired = np.flatnonzero(value > 0)
        rows.append(pd.DataFrame({"persona": persona[fired],
                                  "paraphrase": docs["paraphrase"].to_numpy()[fired],
                                  "item_id": docs["item_id"].to_numpy()[fired],
                                  "feature": feature, "mean_act": value[fired]}))
    return pd.concat(rows, ignore_index=True), docs, personas, truth
