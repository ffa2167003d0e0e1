"""Calibration data: the same harvest rearranged so that no persona label can be true.

- `reassign_prompts`: every non-control prompt (persona, paraphrase) moves, with all its
  documents, to a random persona slot. Each wording keeps its own effect, so a labeller that
  mistakes wording effects (or single prompts) for personas is caught; real persona effects are
  scattered over random slots.
- `split_personas`: every persona's paraphrases are split into two fake personas (the first
  half, the second half). A feature that tells the halves apart tells wordings apart.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from shoggoth.index.labels.rules import PERSONA_LABELS


def _prompt_keys(frame: pd.DataFrame, names: list[str], n_para: int) -> np.ndarray:
    """persona index (in `names`) × n_para + paraphrase of each row; -1 for other personas.
    Works on category codes: millions of rows, no Python strings."""
    cat = pd.Categorical(frame["persona"])
    pos = {n: i for i, n in enumerate(names)}
    lookup = np.array([pos.get(str(c), -1) for c in cat.categories] + [-1], dtype=np.int64)
    codes = lookup[cat.codes]
    return np.where(codes >= 0, codes * n_para + frame["paraphrase"].to_numpy(), -1)


def _relabel(
    frame: pd.DataFrame, keys: np.ndarray, new_keys: np.ndarray, names: list[str], n_para: int
) -> pd.DataFrame:
    """Rows with a prompt key move to the prompt new_keys[key] (a persona of `names`)."""
    out = frame.copy()
    moved = np.where(keys >= 0, new_keys[np.where(keys >= 0, keys, 0)], -1)
    keep = moved >= 0
    cat = pd.Categorical(frame["persona"])
    everyone = list(dict.fromkeys([str(c) for c in cat.categories] + list(names)))
    pos = {n: i for i, n in enumerate(everyone)}
    codes = np.array([pos[str(c)] for c in cat.categories], dtype=np.int64)[cat.codes]
    target = np.array([pos[n] for n in names], dtype=np.int64)
    codes[keep] = target[moved[keep] // n_para]
    out["persona"] = pd.Categorical.from_codes(codes, everyone).remove_unused_categories()
    para = out["paraphrase"].to_numpy().copy()
    para[keep] = moved[keep] % n_para
    out["paraphrase"] = para.astype(frame["paraphrase"].dtype)
    return out


def reassign_prompts(
    doc_features: pd.DataFrame, documents: pd.DataFrame, personas: pd.DataFrame, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(doc_features, documents) with the non-control prompts permuted among the non-control
    prompt slots; controls stay where they are."""
    main = personas.loc[~personas["is_control"].astype(bool), "persona"].astype(str).tolist()
    n_para = int(documents["paraphrase"].max()) + 1
    slots = np.unique(_prompt_keys(documents, main, n_para))
    slots = slots[slots >= 0]
    new_keys = np.full(len(main) * n_para, -1, dtype=np.int64)
    new_keys[slots] = slots[np.random.default_rng(seed).permutation(len(slots))]
    out = []
    for frame in (doc_features, documents):
        keys = _prompt_keys(frame, main, n_para)
        out.append(_relabel(frame, keys, new_keys, main, n_para))
    return out[0], out[1]


def split_personas(
    doc_features: pd.DataFrame, documents: pd.DataFrame, personas: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """The data with every persona of 2+ paraphrases split into `P__a` (first half of its
    paraphrases) and `P__b`; returns doc_features, documents, personas and fake → persona.
    Controls of P become controls of both halves."""
    pers = personas.astype({"persona": str}).copy()
    if "control_of" not in pers.columns:
        pers["control_of"] = None
    main = pers.loc[~pers["is_control"].astype(bool), "persona"].tolist()
    n_para = int(documents["paraphrase"].max()) + 1
    per = (
        documents.assign(persona=documents["persona"].astype(str))
        .groupby("persona")["paraphrase"]
        .unique()
    )
    names, origin, rows, new_keys = [], {}, [], np.full(len(main) * n_para, -1, dtype=np.int64)
    for i, p in enumerate(main):
        paras = np.sort(per.get(p, np.array([], dtype=np.int64)))
        row = pers.loc[pers["persona"] == p].iloc[0]
        if len(paras) < 2:
            names.append(p)
            rows.append(row.to_dict())
            for j, para in enumerate(paras):
                new_keys[i * n_para + para] = (len(names) - 1) * n_para + j
            continue
        half = (len(paras) + 1) // 2
        for suffix, part in (("__a", paras[:half]), ("__b", paras[half:])):
            names.append(p + suffix)
            origin[p + suffix] = p
            rows.append({**row.to_dict(), "persona": p + suffix})
            for j, para in enumerate(part):
                new_keys[i * n_para + para] = (len(names) - 1) * n_para + j
    split = {p for p in origin.values()}
    controls = pers[pers["is_control"].astype(bool)].copy()
    controls["control_of"] = [
        ",".join(f"{t}__a,{t}__b" if t in split else t for t in str(of).split(","))
        if isinstance(of, str) and of
        else of
        for of in controls["control_of"]
    ]
    new_pers = pd.concat([pd.DataFrame(rows), controls], ignore_index=True)
    # Keys index the old main personas; the new names are written through `names`.
    out = []
    for frame in (doc_features, documents):
        keys = _prompt_keys(frame, main, n_para)
        out.append(_relabel(frame, keys, new_keys, names, n_para))
    return out[0], out[1], new_pers, origin


def false_persona_labels(table: pd.DataFrame, origin: dict[str, str]) -> pd.Series:
    """In a split run: persona labels that tell a persona's two halves apart (a label on one
    half alone, or a family holding one half without the other)."""

    def wrong(row: pd.Series) -> bool:
        if isinstance(row["top_persona"], str):
            return row["top_persona"] in origin
        members = set(str(row["family_set"]).split(","))
        return any(
            m in origin and f"{origin[m]}__{'b' if m.endswith('__a') else 'a'}" not in members
            for m in members
        )

    out = pd.Series(False, index=table.index)
    claims = table["label"].isin(PERSONA_LABELS)
    if claims.any():  # only the few persona labels need the row-wise check
        out[claims] = table[claims].apply(wrong, axis=1).astype(bool)
    return out
