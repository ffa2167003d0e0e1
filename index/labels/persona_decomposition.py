"""The persona signal and each mask's decomposition, as `shoggoth label` stores them
(persona_signal, persona_decomposition): read from the harvest's document shifts, the labels just
made, and the dictionary's decoder (read from its weights file, checked against the harvest's
hash). The statistics are in decompose.py and core/signal.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shoggoth.core.atomic import file_sha256
from shoggoth.core.signal import signal_fraction, weak_signal_note
from shoggoth.index.labels.decompose import (
    PARTS,
    PATTERN_PARTS,
    Decomposition,
    decompose,
    own_features,
    part_of_features,
)
from shoggoth.index.labels.frames import HarvestFrames, Resampling
from shoggoth.index.labels.persona_space import Shifts, estimate
from shoggoth.index.labels.stats import stratified_weights
from shoggoth.index.store.connection import Connection
from shoggoth.index.store.read import has_table
from shoggoth.index.store.sae_record import SaeRecord

WEIGHTS = "sae_weights.safetensors"


def read_shifts(con: Connection, sae_id: str) -> pd.DataFrame:
    """The harvest's document shifts (empty for a harvest made before they were stored)."""
    if not has_table(con, "document_shifts"):
        return pd.DataFrame()
    return con.execute(
        "SELECT persona::VARCHAR AS persona, paraphrase, item_id::VARCHAR AS item_id, shift, "
        "shift_hat FROM document_shifts WHERE sae_id = ? ORDER BY persona, paraphrase, item_id",
        [sae_id],
    ).df()


def read_decoder(record: SaeRecord) -> tuple[np.ndarray | None, str | None]:
    """(W_dec [d_sae, d_in], None), or (None, why not) when the SAE's folder is gone or its
    weights are not the ones harvested."""
    path = Path(record.path or "") / WEIGHTS
    if not path.is_file():
        return None, f"the SAE's weights ({path}) are gone"
    if record.weights_sha256 and file_sha256(path) != record.weights_sha256:
        return None, f"the SAE's weights ({path}) changed since the harvest"
    from safetensors.numpy import load_file

    return load_file(str(path))["W_dec"].astype(np.float64), None


def persona_signal(shifts: pd.DataFrame, personas: pd.DataFrame) -> pd.DataFrame:
    """Per non-control persona: its documents, |v_k| and the share of it the dictionary
    carries, ⟨v_k, v̂_k⟩ / |v_k|²."""
    main = set(personas.loc[~personas["is_control"].astype(bool), "persona"])
    rows = []
    for name, group in shifts[shifts["persona"].isin(main)].groupby("persona", sort=True):
        v = np.stack(group["shift"].to_numpy()).astype(np.float64).mean(axis=0)
        vh = np.stack(group["shift_hat"].to_numpy()).astype(np.float64).mean(axis=0)
        norm2 = float(v @ v)
        rows.append(
            {
                "persona": name,
                "n_docs": len(group),
                "shift_norm": norm2**0.5,
                "carried": float(v @ vh) / norm2 if norm2 > 0 else None,
                "_v": v,
                "_vh": vh,
            }
        )
    return pd.DataFrame(rows)


def overall(signal: pd.DataFrame) -> float:
    """Σ_k ⟨v_k, v̂_k⟩ / Σ_k |v_k|² over the personas."""
    if signal.empty:
        return float("nan")
    return signal_fraction(np.stack(signal["_v"].to_numpy()), np.stack(signal["_vh"].to_numpy()))


def _item_means(rows: pd.DataFrame, items: list[str], column: str) -> np.ndarray:
    """[items, d]: the mean of a vector column over each item's documents."""
    return np.stack(
        [np.stack(rows.loc[rows["item_id"] == i, column].to_numpy()).mean(axis=0) for i in items]
    ).astype(np.float64)


def _activation_means(
    doc_features: pd.DataFrame, persona: str, items: list[str], n_docs: pd.Series, d_sae: int
) -> np.ndarray:
    """[items, d_sae]: each feature's mean activation over the persona's documents of each item
    (documents where it is silent count as 0)."""
    rows = doc_features[doc_features["persona"].astype(str) == persona]
    out = np.zeros((len(items), d_sae))
    where = {item: n for n, item in enumerate(items)}
    item = rows["item_id"].astype(str).map(where)
    ok = item.notna().to_numpy()
    np.add.at(
        out,
        (item[ok].astype(int).to_numpy(), rows["feature"].to_numpy()[ok]),
        rows["mean_act"].to_numpy()[ok],
    )
    counts = np.array([n_docs.get((persona, i), 1) for i in items], dtype=np.float64)
    return out / counts[:, None]


OWN_FEATURES_PER_PERSONA = 20
"""Features listed per persona in persona_own_features (those carrying most of its own
modulation)."""


@dataclass(frozen=True)
class Decompositions:
    """What `decomposition` finds, one frame per table (empty frames when nothing was made)."""

    pattern: pd.DataFrame
    """persona_decomposition rows: persona, part (PATTERN_PARTS), share, ci_low, ci_high,
    n_items."""
    labels: pd.DataFrame
    """persona_label_shares rows: the same cut by label (decompose.PARTS)."""
    own: pd.DataFrame
    """persona_own_features rows: persona, rank, feature, share, modulation, label."""


def decomposition(
    frames: HarvestFrames,
    features: pd.DataFrame,
    w_dec: np.ndarray,
    kind: str,
    reference_persona: str | None,
    resampling: Resampling,
) -> Decompositions:
    """Each non-control persona's shift cut two ways, with item-bootstrap intervals: by
    activation pattern (the common pattern, its own modulation in its own features and in the
    rest, the error) and by label (decompose.PARTS); and the features that carry most of its own
    modulation. A residual SAE's feature activity is the persona's minus the reference
    persona's on the same item."""
    shifts, doc_features, documents = frames.shifts, frames.doc_features, frames.documents
    personas, topics, confidence = frames.personas, frames.topics, resampling.confidence
    main = personas.loc[~personas["is_control"].astype(bool), "persona"].tolist()
    main = [p for p in main if (shifts["persona"] == p).any()]
    items = sorted(set(shifts["item_id"]))
    n_docs = documents.groupby(["persona", "item_id"]).size()
    labels = features.set_index("feature").reindex(range(len(w_dec)))
    labels["label"] = labels["label"].fillna("dead")
    labels = labels.reset_index()
    weights = stratified_weights(
        np.array([topics.get(i, "") for i in items]), resampling.bootstrap, resampling.seed
    )
    base = (
        _activation_means(doc_features, reference_persona, items, n_docs, len(w_dec))
        if kind != "difference" and reference_persona is not None
        else None
    )
    acts = {}
    for persona in main:
        acts[persona] = _activation_means(doc_features, persona, items, n_docs, len(w_dec))
        if base is not None:
            acts[persona] -= base
    common = np.mean(list(acts.values()), axis=0) if acts else None  # [items, d_sae]
    pattern, by_label, own_rows = [], [], []
    for persona in main:
        shift = _item_means(shifts[shifts["persona"] == persona], items, "shift")
        part = part_of_features(labels, persona)
        parts = np.stack([(acts[persona] * (part == g)) @ w_dec for g in range(len(PARTS) - 1)])
        d = decompose(shift, parts, weights, confidence)
        by_label += _rows(persona, PARTS, d)
        own = own_features(labels, persona)
        modulation = acts[persona] - common
        cut = np.stack([common @ w_dec, (modulation * own) @ w_dec, (modulation * ~own) @ w_dec])
        d = decompose(shift, cut, weights, confidence)
        pattern += _rows(persona, PATTERN_PARTS, d)
        own_rows += _top_modulation(
            persona, shift.mean(axis=0), modulation.mean(axis=0), w_dec, labels
        )
    return Decompositions(pd.DataFrame(pattern), pd.DataFrame(by_label), pd.DataFrame(own_rows))


def _rows(persona: str, names: tuple[str, ...], d: Decomposition) -> list[dict[str, Any]]:
    return [
        {
            "persona": persona,
            "part": name,
            "share": d.share[g],
            "ci_low": d.low[g],
            "ci_high": d.high[g],
            "n_items": d.n_items,
        }
        for g, name in enumerate(names)
    ]


def _top_modulation(
    persona: str, v: np.ndarray, modulation: np.ndarray, w_dec: np.ndarray, labels: pd.DataFrame
) -> list[dict[str, Any]]:
    """The features whose own modulation carries most of the persona's shift: each one's share
    <v, m_f d_f> / |v|^2 (its part of own_features + own_modulation), largest |share| first."""
    norm2 = float(v @ v)
    if norm2 <= 0:
        return []
    share = modulation * (w_dec @ v) / norm2
    top = np.argsort(-np.abs(share), kind="stable")[:OWN_FEATURES_PER_PERSONA]
    return [
        {
            "persona": persona,
            "rank": rank + 1,
            "feature": int(f),
            "share": float(share[f]),
            "modulation": float(modulation[f]),
            "label": str(labels["label"].iloc[f]),
        }
        for rank, f in enumerate(top)
        if share[f] != 0
    ]


def reference_persona(
    personas: pd.DataFrame, prompts: pd.DataFrame, reference: str | None
) -> str | None:
    """The battery's persona whose every prompt is the reference (its documents are the
    reference documents), if there is one."""
    if reference is None:
        return None
    for name, group in prompts.groupby("persona"):
        if set(group["prompt"]) == {reference}:
            return str(name)
    return None


def read_prompts(con: Connection) -> pd.DataFrame:
    return con.execute("SELECT persona::VARCHAR AS persona, prompt FROM persona_prompts").df()


def persona_shifts(
    shifts: pd.DataFrame,
    personas: pd.DataFrame,
    prompts: pd.DataFrame,
    assistant: str | None,
    reference: str | None = None,
) -> tuple[Shifts, list[str]]:
    """The document shifts as `persona_space.Shifts` (personas first, then controls), and the
    items in order. `assistant`: the persona the assistant axis starts from (default: the
    control whose prompts are all empty, i.e. no system turn; no axis when its documents are
    the reference documents, as a base model's empty prefix is). `reference`: the battery's
    persona whose documents are the reference (its shift is zero by construction: it is not
    one of the plain controls)."""
    items = sorted(set(shifts["item_id"]))
    table = personas.set_index("persona")
    present = [p for p in table.index if (shifts["persona"] == p).any()]
    order = sorted(present, key=lambda p: (bool(table.loc[p, "is_control"]), p))
    where = {i: n for n, i in enumerate(items)}
    units = sorted(
        {
            (order.index(p), int(j))
            for p, j in zip(shifts["persona"], shifts["paraphrase"], strict=True)
            if p in order
        }
    )
    unit_of = {u: n for n, u in enumerate(units)}
    x = np.full((len(units), len(items), len(shifts["shift"].iloc[0])), np.nan)
    for persona, j, item, shift in zip(
        shifts["persona"], shifts["paraphrase"], shifts["item_id"], shifts["shift"], strict=True
    ):
        if persona in order:
            x[unit_of[order.index(persona), int(j)], where[item]] = shift
    empty = {str(p) for p, g in prompts.groupby("persona") if all(not t for t in g["prompt"])}
    if assistant is None:
        axis_name = next(
            (p for p in order if p in empty and bool(table.loc[p, "is_control"])), None
        )
        if axis_name is not None and _is_reference(
            x, [unit_of[u] for u in units if u[0] == order.index(axis_name)]
        ):
            # No system turn renders as the reference itself (a base model's empty prefix):
            # the model has no default mask, and an axis from it would be minus the mean.
            axis_name = None
    else:
        axis_name = assistant if assistant in order else None
    control_of = table["control_of"] if "control_of" in table else pd.Series(dtype=object)
    return Shifts(
        x=x,
        unit_persona=np.array([u[0] for u in units]),
        personas=order,
        is_main=np.array([not bool(table.loc[p, "is_control"]) for p in order]),
        is_plain_control=np.array(
            [
                bool(table.loc[p, "is_control"])
                and p != reference
                and _names_nobody(control_of.get(p))
                for p in order
            ]
        ),
        axis=None if axis_name is None else order.index(axis_name),
    ), items


def _is_reference(x: np.ndarray, rows: list[int]) -> bool:
    """Whether the documents in `rows` of x [units, items, d] have no shift at all (they render
    exactly as the reference documents): every norm under 1e-4 of the median document's."""
    norms = np.linalg.norm(np.nan_to_num(x), axis=-1)
    scale = float(np.median(norms[norms > 0])) if (norms > 0).any() else 0.0
    return bool(rows) and bool((norms[rows] <= 1e-4 * scale).all())


def _names_nobody(control_of: object) -> bool:
    """Whether a control's `control_of` is empty (NULL reads back as None or NaN)."""
    return (
        control_of is None
        or (isinstance(control_of, float) and np.isnan(control_of))
        or not str(control_of).strip()
    )


def space_tables(
    shifts: Shifts, n_items: int, weights: np.ndarray, confidence: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(persona_space rows, persona_space_axes rows) with item-bootstrap intervals."""
    e = estimate(shifts, weights, confidence)
    pt = e.point
    n_pc = pt.scores.shape[1]
    rows = []
    for k, persona in enumerate(shifts.personas):
        row: dict[str, Any] = {
            "persona": persona,
            "is_control": not bool(shifts.is_main[k]),
            "n_wordings": int((shifts.unit_persona == k).sum()),
            "n_items": n_items,
        }
        for name, column in (
            ("norm", "norm"),
            ("common_share", "common_share"),
            ("control_share", "control_share"),
            ("reproducibility", "reproducibility"),
        ):
            row[column] = float(getattr(pt, name)[k])
            row[f"{column}_ci_low"] = float(e.low[name][k])
            row[f"{column}_ci_high"] = float(e.high[name][k])
        row["remainder_share"] = 1.0 - row["common_share"]
        row["remainder_share_ci_low"] = 1.0 - row["common_share_ci_high"]
        row["remainder_share_ci_high"] = 1.0 - row["common_share_ci_low"]
        row["reproducibility_null"] = float(pt.reproducibility_null[k])
        for c in range(3):
            row[f"pc{c + 1}"] = float(pt.scores[k, c]) if c < n_pc else None
        row["pc1_ci_low"] = float(e.low["scores"][k, 0]) if n_pc else None
        row["pc1_ci_high"] = float(e.high["scores"][k, 0]) if n_pc else None
        rows.append(row)
    axes = [
        {
            "axis": f"PC{c + 1}",
            "variance_share": float(pt.variance_share[c]),
            "ci_low": float(e.low["variance_share"][c]),
            "ci_high": float(e.high["variance_share"][c]),
            "cosine_pc1": 1.0 if c == 0 else 0.0,
            "cosine_common": float(pt.components_common_cosine[c]),
            "norm_ratio": None,
            "axis_persona": None,
        }
        for c in range(n_pc)
    ]
    axes.append(
        {
            "axis": "controls",
            "variance_share": None,
            "ci_low": None,
            "ci_high": None,
            "cosine_pc1": None,
            "cosine_common": pt.control_common_cosine,
            "norm_ratio": pt.control_norm_ratio,
            "axis_persona": None,
        }
    )
    if shifts.axis is not None:
        axes.append(
            {
                "axis": "assistant",
                "variance_share": None,
                "ci_low": None,
                "ci_high": None,
                "cosine_pc1": pt.axis_pc1_cosine,
                "cosine_common": pt.axis_common_cosine,
                "norm_ratio": pt.axis_norm_ratio,
                "axis_persona": shifts.personas[shifts.axis],
            }
        )
    return pd.DataFrame(rows), pd.DataFrame(axes)


@dataclass(frozen=True)
class PersonaTables:
    """What `label` stores about the personas beside the feature labels."""

    signal: pd.DataFrame
    """persona_signal rows."""
    decompositions: Decompositions
    """persona_decomposition, persona_label_shares and persona_own_features rows."""
    space: pd.DataFrame
    """persona_space rows (without a dictionary)."""
    axes: pd.DataFrame
    """persona_space_axes rows."""
    fraction: float
    """The dictionary's persona signal, Σ⟨v, v̂⟩ / Σ|v|² (NaN without shifts)."""


NO_DECOMPOSITION = Decompositions(pd.DataFrame(), pd.DataFrame(), pd.DataFrame())


def persona_tables(
    frames: HarvestFrames,
    record: SaeRecord,
    features: pd.DataFrame,
    resampling: Resampling,
    notes: list[str],
    assistant: str | None = None,
) -> PersonaTables:
    """The persona signal, the decompositions and the persona space; a note for what could
    not be computed, for a dictionary that carries under half, and where the dictionary's
    common share and the dictionary-free one disagree beyond their intervals."""
    shifts, personas, prompts = frames.shifts, frames.personas, frames.prompts
    if shifts.empty:
        notes.append(
            "this harvest stores no document shifts (made by an earlier version): "
            "harvest again for the persona signal, the space and the decomposition"
        )
        return PersonaTables(
            pd.DataFrame(), NO_DECOMPOSITION, pd.DataFrame(), pd.DataFrame(), float("nan")
        )
    signal = persona_signal(shifts, personas)
    fraction = overall(signal)
    weak = weak_signal_note(fraction)
    if weak:
        notes.append(weak)
    kind = record.kind
    ref = reference_persona(personas, prompts, record.reference)
    arrays, items = persona_shifts(shifts, personas, prompts, assistant, ref)
    weights = stratified_weights(
        np.array([frames.topics.get(i, "") for i in items]),
        resampling.bootstrap,
        resampling.seed,
    )
    space, axes = space_tables(arrays, len(items), weights, resampling.confidence)
    w_dec, why = read_decoder(record)
    parts = NO_DECOMPOSITION
    if w_dec is None:
        notes.append(f"no persona decomposition: {why}")
    elif kind != "difference" and ref is None:
        notes.append(
            "no persona decomposition: a residual SAE's needs the reference "
            f"({record.reference!r}) among the battery's personas"
        )
    else:
        parts = decomposition(frames, features, w_dec, kind, ref, resampling)
        disagreement = common_disagreement(parts.pattern, space)
        if disagreement:
            notes.append(disagreement)
    return PersonaTables(
        signal.drop(columns=["_v", "_vh"], errors="ignore"), parts, space, axes, fraction
    )


def common_disagreement(pattern: pd.DataFrame, space: pd.DataFrame) -> str | None:
    """A note naming the personas whose common share through the dictionary and without it
    disagree by more than their intervals (None when none do)."""
    if pattern.empty or space.empty:
        return None
    mine = pattern[pattern["part"] == "common"].set_index("persona")
    free = space.set_index("persona")
    apart = [
        p
        for p in mine.index
        if p in free.index
        and (
            mine.loc[p, "ci_low"] > free.loc[p, "common_share_ci_high"]
            or mine.loc[p, "ci_high"] < free.loc[p, "common_share_ci_low"]
        )
    ]
    if not apart:
        return None
    median_dict = float(mine["share"].median())
    median_free = float(free.loc[free.index.isin(mine.index), "common_share"].median())
    return (
        f"the dictionary's common pattern carries a median {median_dict:.2f} of a persona's "
        f"shift where the shifts alone put {median_free:.2f} along the common direction; "
        f"they disagree beyond their intervals for {len(apart)} of {len(mine)} personas "
        f"({', '.join(apart[:5])}{', …' if len(apart) > 5 else ''})"
    )
