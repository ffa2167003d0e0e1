"""The layout of a harvest for labelling: personas (non-controls first), their prompts, items and
topics, matched and baseline controls, and the per-document activation rows sorted by feature."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import pandas as pd

from shoggoth.core.errors import BadInput


@dataclass
class LabelDesign:
    """Index of the documents. A prompt is one (persona, paraphrase): the unit of replication."""

    personas: list[str]
    """Non-control personas first (the first n_main), then the controls."""
    n_main: int
    family: dict[str, str]
    items: list[str]
    topic_of_item: np.ndarray
    """Integer topic of each item (each item its own topic when no topics are given)."""
    persona_of_doc: np.ndarray
    item_of_doc: np.ndarray
    prompt_of_doc: np.ndarray
    persona_of_prompt: np.ndarray
    """Prompts are sorted by persona, so the main personas' prompts come first."""
    para_of_prompt: np.ndarray
    docs_per_prompt: np.ndarray
    cell_docs: np.ndarray
    """[persona, item] number of documents (paraphrases)."""
    matched: list[list[int]]
    """For each main persona: its mention/negation controls (control_of names it)."""
    baseline: list[int]
    """Controls about no persona (no control_of): no system prompt, neutral text, …"""
    notes: list[str] = field(default_factory=list)
    """What cannot be computed on this battery, and why (one line each)."""

    @property
    def n_main_prompts(self) -> int:
        return int((self.persona_of_prompt < self.n_main).sum())

    @property
    def prompts_per_persona(self) -> np.ndarray:
        return np.bincount(self.persona_of_prompt, minlength=len(self.personas))


def _check_columns(frame: pd.DataFrame, name: str, columns: tuple[str, ...]) -> None:
    for col in columns:
        if col not in frame.columns:
            raise BadInput(f"{name}: missing column '{col}'")


def _controls(pers: pd.DataFrame, names: list[str], n_main: int) -> tuple[list, list]:
    """Matched controls of each main persona, and the baseline controls. `control_of` may list
    several personas, comma-separated (a split persona's halves share its controls)."""
    index = {p: i for i, p in enumerate(names)}
    matched: list[list[int]] = [[] for _ in range(n_main)]
    baseline = []
    of = pers.set_index("persona")["control_of"] if "control_of" in pers.columns else {}
    of = {k: v for k, v in dict(of).items() if isinstance(v, str) and v}
    for c in range(n_main, len(names)):
        targets = of.get(names[c])
        if targets is None:
            # A battery that uses no control_of at all may still name its matched controls the
            # built-in way: control_mention_<persona>, control_negated_<persona>.
            named = (
                None
                if of
                else re.fullmatch(
                    r"control_(?:mention|mentions|negated|negation|not)_(.+)", names[c]
                )
            )
            if named is None or index.get(named.group(1), n_main) >= n_main:
                baseline.append(c)
                continue
            targets = named.group(1)
        for target in str(targets).split(","):
            if index.get(target, n_main) < n_main:
                matched[index[target]].append(c)
    return matched, baseline


def build_design(
    documents: pd.DataFrame, personas: pd.DataFrame, topics: dict[str, str] | None = None
) -> tuple[LabelDesign, pd.DataFrame]:
    """The battery's layout and the distinct documents (persona, paraphrase, item_id) it indexes."""
    _check_columns(personas, "personas", ("persona", "family", "is_control"))
    _check_columns(documents, "documents", ("persona", "paraphrase", "item_id"))
    pers = personas.drop_duplicates("persona")
    pers = pers.assign(persona=pers["persona"].astype(str))
    docs = (
        documents[["persona", "paraphrase", "item_id"]]
        .astype({"persona": str, "item_id": str})
        .drop_duplicates()
        .reset_index(drop=True)
    )
    unknown = set(docs["persona"]) - set(pers["persona"])
    if unknown:
        raise BadInput(f"documents: persona '{sorted(unknown)[0]}' is not in personas")
    present = set(docs["persona"])
    flags = dict(zip(pers["persona"], pers["is_control"].astype(bool), strict=True))
    main = [p for p in pers["persona"] if not flags[p] and p in present]
    ctrl = [p for p in pers["persona"] if flags[p] and p in present]
    names = main + ctrl
    notes = []
    missing = [p for p in pers["persona"] if p not in present]
    if missing:
        notes.append(
            f"personas without documents are left out: {', '.join(missing[:5])}"
            + (" …" if len(missing) > 5 else "")
        )
    j_idx = docs["paraphrase"].to_numpy().astype(np.int64)
    if len(j_idx) and j_idx.min() < 0:
        raise BadInput("documents: paraphrase must be >= 0")
    items = sorted(set(docs["item_id"]))
    p_idx = docs["persona"].map({p: i for i, p in enumerate(names)}).to_numpy()
    i_idx = docs["item_id"].map({it: i for i, it in enumerate(items)}).to_numpy()
    n_para = int(j_idx.max()) + 1 if len(j_idx) else 1
    key = p_idx * n_para + j_idx
    prompt_keys, prompt_of_doc = np.unique(key, return_inverse=True)
    cells = np.zeros((len(names), len(items)), dtype=np.int64)
    np.add.at(cells, (p_idx, i_idx), 1)
    topic_names = [str((topics or {}).get(it, it)) for it in items]
    _, topic_of_item = np.unique(topic_names, return_inverse=True)
    matched, baseline = _controls(pers, names, len(main))
    families = dict(zip(pers["persona"], pers["family"], strict=True))
    layout = LabelDesign(
        names,
        len(main),
        families,
        items,
        topic_of_item,
        p_idx,
        i_idx,
        prompt_of_doc,
        prompt_keys // n_para,
        prompt_keys % n_para,
        np.bincount(prompt_of_doc, minlength=len(prompt_keys)),
        cells,
        matched,
        baseline,
        notes,
    )
    _note_gaps(layout)
    return layout, docs


def _note_gaps(layout: LabelDesign) -> None:
    """One line for each thing this battery cannot support."""
    n_main, counts = layout.n_main, layout.prompts_per_persona
    unmatched = [layout.personas[k] for k in range(n_main) if not layout.matched[k]]
    if unmatched:
        layout.notes.append(
            f"{len(unmatched)} of {n_main} personas have no mention/negation control "
            f"({', '.join(unmatched[:4])}{' …' if len(unmatched) > 4 else ''}): a feature of "
            "theirs cannot be told mask from concept, so it is labelled mask-or-concept, never "
            "mask-specific"
        )
    single = [layout.personas[k] for k in range(n_main) if counts[k] < 2]
    if single:
        layout.notes.append(
            f"personas with one prompt ({', '.join(single[:4])}{' …' if len(single) > 4 else ''}"
            "): whether a feature follows the persona or that one wording cannot be measured, "
            "so they get no persona label"
        )
    if n_main >= 2 and layout.n_main_prompts - n_main < 1:
        layout.notes.append(
            "no persona has two prompts: the persona test (prompts as replicates) "
            "cannot be computed, so no feature gets a persona label or "
            "shared-modulated"
        )
    if not layout.baseline:
        layout.notes.append(
            "no baseline control (one about no persona): mask-general cannot be "
            "told from shared, and no_mask_ratio is empty"
        )
    full = layout.cell_docs[:n_main] > 0
    if n_main and not full.all():
        layout.notes.append(
            f"the personas do not all share the same items ({int(full.sum())} of "
            f"{full.size} persona-item cells): comparisons use the shared items "
            "where it matters, and the persona means use what each has"
        )


def _codes(values: pd.Series, names: list[str]) -> np.ndarray:
    """Index of each value in `names` (-1 when absent), via the categories when categorical."""
    position = {n: i for i, n in enumerate(names)}
    cat = values.astype("category")
    lookup = np.array([position.get(str(c), -1) for c in cat.cat.categories] + [-1])
    return cast(
        "np.ndarray", lookup[cat.cat.codes.to_numpy()]
    )  # code -1 (missing) picks the trailing -1


def doc_index(frame: pd.DataFrame, docs: pd.DataFrame) -> np.ndarray:
    """Position in `docs` of each row's (persona, paraphrase, item_id); -1 when absent.

    Works on category codes, so millions of rows are never turned into Python strings.
    """
    names = [str(n) for n in dict.fromkeys(docs["persona"])]
    items = [str(i) for i in dict.fromkeys(docs["item_id"])]
    n_para = int(docs["paraphrase"].max()) + 1 if len(docs) else 1
    table = np.full((len(names), n_para, len(items)), -1, dtype=np.int64)
    table[
        _codes(docs["persona"], names),
        docs["paraphrase"].to_numpy(),
        _codes(docs["item_id"], items),
    ] = np.arange(len(docs))
    p, i = _codes(frame["persona"], names), _codes(frame["item_id"], items)
    j = frame["paraphrase"].to_numpy().astype(np.int64)
    ok = (p >= 0) & (i >= 0) & (j >= 0) & (j < n_para)
    out = np.full(len(frame), -1, dtype=np.int64)
    out[ok] = table[p[ok], j[ok], i[ok]]
    return out


def doc_rows(
    doc_features: pd.DataFrame, docs: pd.DataFrame, n_features: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(feature, document index, value) of every non-zero row, sorted by feature."""
    _check_columns(
        doc_features, "doc_features", ("persona", "paraphrase", "item_id", "feature", "mean_act")
    )
    values = doc_features["mean_act"].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise BadInput(f"doc_features: mean_act has {int(bad.sum())} NaN or infinite values")
    if (values < 0).any():
        raise BadInput("doc_features: mean_act must be >= 0 (SAE activations)")
    feats = doc_features["feature"].to_numpy().astype(np.int64)
    if len(feats) and (feats.min() < 0 or feats.max() >= n_features):
        raise BadInput(f"doc_features: feature out of range 0..{n_features - 1}")
    doc = doc_index(doc_features, docs)
    if (doc < 0).any():
        raise BadInput("doc_features: a row refers to a document not in documents")
    keep = values > 0
    order = np.argsort(feats[keep], kind="stable")
    return feats[keep][order], doc[keep][order], values[keep][order]
