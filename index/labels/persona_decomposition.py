"""The persona signal and each mask's decomposition, as `shoggoth label` stores them
(persona_signal, persona_decomposition): read from the harvest's document shifts, the labels just
made, and the dictionary's decoder (read from its weights file, checked against the harvest's
hash). The statistics are in decompose.py and core/signal.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shoggoth.core.atomic import file_sha256
from shoggoth.core.signal import signal_fraction, weak_signal_note
from shoggoth.index.labels.decompose import PARTS, decompose, part_of_features
from shoggoth.index.labels.stats import stratified_weights
from shoggoth.index.store.read import has_table

WEIGHTS = "sae_weights.safetensors"


def read_shifts(con: Any, sae_id: str) -> pd.DataFrame:
    """The harvest's document shifts (empty for a harvest made before they were stored)."""
    if not has_table(con, "document_shifts"):
        return pd.DataFrame()
    return con.execute(
        "SELECT persona::VARCHAR AS persona, paraphrase, item_id::VARCHAR AS item_id, shift, "
        "shift_hat FROM document_shifts WHERE sae_id = ? ORDER BY persona, paraphrase, item_id",
        [sae_id]).df()


def read_decoder(row: dict[str, Any]) -> tuple[np.ndarray | None, str | None]:
    """(W_dec [d_sae, d_in], None), or (None, why not) when the SAE's folder is gone or its
    weights are not the ones harvested."""
    path = Path(str(row.get("path") or "")) / WEIGHTS
    if not path.is_file():
        return None, f"the SAE's weights ({path}) are gone"
    if row.get("weights_sha256") and file_sha256(path) != row["weights_sha256"]:
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
        rows.append({"persona": name, "n_docs": len(group), "shift_norm": norm2 ** 0.5,
                     "carried": float(v @ vh) / norm2 if norm2 > 0 else None,
                     "_v": v, "_vh": vh})
    return pd.DataFrame(rows)


def overall(signal: pd.DataFrame) -> float:
    """Σ_k ⟨v_k, v̂_k⟩ / Σ_k |v_k|² over the personas."""
    if signal.empty:
        return float("nan")
    return signal_fraction(np.stack(signal["_v"].to_numpy()), np.stack(signal["_vh"].to_numpy()))


def _item_means(rows: pd.DataFrame, items: list[str], column: str) -> np.ndarray:
    """[items, d]: the mean of a vector column over each item's documents."""
    return np.stack([np.stack(rows.loc[rows["item_id"] == i, column].to_numpy()).mean(axis=0)
                     for i in items]).astype(np.float64)


def _activation_means(doc_features: pd.DataFrame, persona: str, items: list[str],
                      n_docs: pd.Series, d_sae: int) -> np.ndarray:
    """[items, d_sae]: each feature's mean activation over the persona's documents of each item
    (documents where it is silent count as 0)."""
    rows = doc_features[doc_features["persona"].astype(str) == persona]
    out = np.zeros((len(items), d_sae))
    where = {item: n for n, item in enumerate(items)}
    item = rows["item_id"].astype(str).map(where)
    ok = item.notna().to_numpy()
    np.add.at(out, (item[ok].astype(int).to_numpy(), rows["feature"].to_numpy()[ok]),
              rows["mean_act"].to_numpy()[ok])
    counts = np.array([n_docs.get((persona, i), 1) for i in items], dtype=np.float64)
    return out / counts[:, None]


def decomposition(shifts: pd.DataFrame, doc_features: pd.DataFrame, documents: pd.DataFrame,
                  personas: pd.DataFrame, features: pd.DataFrame, w_dec: np.ndarray,
                  kind: str, reference_persona: str | None, topics: dict[str, str],
                  bootstrap: int, confidence: float, seed: int) -> pd.DataFrame:
    """One row per non-control persona and part (decompose.PARTS): its share of the persona's
    shift, with an item-bootstrap interval. A residual SAE's feature activity is the persona's
    minus the reference persona's on the same item."""
    main = personas.loc[~personas["is_control"].astype(bool), "persona"].tolist()
    items = sorted(set(shifts["item_id"]))
    n_docs = documents.groupby(["persona", "item_id"]).size()
    labels = features.set_index("feature").reindex(range(len(w_dec)))
    labels["label"] = labels["label"].fillna("dead")
    weights = stratified_weights(np.array([topics.get(i, "") for i in items]), bootstrap, seed)
    base = (_activation_means(doc_features, reference_persona, items, n_docs, len(w_dec))
            if kind != "difference" and reference_persona is not None else None)
    rows = []
    for persona in main:
        mine = shifts[shifts["persona"] == persona]
        if mine.empty:
            continue
        shift = _item_means(mine, items, "shift")
        acts = _activation_means(doc_features, persona, items, n_docs, len(w_dec))
        if base is not None:
            acts = acts - base
        part = part_of_features(labels.reset_index(), persona)
        parts = np.stack([(acts * (part == g)) @ w_dec for g in range(len(PARTS) - 1)])
        d = decompose(shift, parts, weights, confidence)
        for g, name in enumerate(PARTS):
            rows.append({"persona": persona, "part": name, "share": d.share[g],
                         "ci_low": d.low[g], "ci_high": d.high[g], "n_items": d.n_items})
    return pd.DataFrame(rows)


def reference_persona(personas: pd.DataFrame, prompts: pd.DataFrame,
                      reference: str | None) -> str | None:
    """The battery's persona whose every prompt is the reference (its documents are the
    reference documents), if there is one."""
    if reference is None:
        return None
    for name, group in prompts.groupby("persona"):
        if set(group["prompt"]) == {reference}:
            return str(name)
    return None


def read_prompts(con: Any) -> pd.DataFrame:
    return con.execute("SELECT persona::VARCHAR AS persona, prompt FROM persona_prompts").df()


def persona_tables(shifts: pd.DataFrame, prompts: pd.DataFrame, row: dict[str, Any],
                   doc_features: pd.DataFrame,
                   documents: pd.DataFrame, personas: pd.DataFrame, features: pd.DataFrame,
                   topics: dict[str, str], bootstrap: int, confidence: float, seed: int,
                   notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """(persona_signal rows, persona_decomposition rows, the dictionary's persona signal); a
    note for what could not be computed, and for a dictionary that carries under half."""
    if shifts.empty:
        notes.append("this harvest stores no document shifts (made by an earlier version): "
                     "harvest again for the persona signal and the decomposition")
        return pd.DataFrame(), pd.DataFrame(), float("nan")
    signal = persona_signal(shifts, personas)
    fraction = overall(signal)
    weak = weak_signal_note(fraction)
    if weak:
        notes.append(weak)
    kind = row.get("kind") or "residual"
    ref = reference_persona(personas, prompts, row.get("reference"))
    w_dec, why = read_decoder(row)
    parts = pd.DataFrame()
    if w_dec is None:
        notes.append(f"no persona decomposition: {why}")
    elif kind != "difference" and ref is None:
        notes.append("no persona decomposition: a residual SAE's needs the reference "
                     f"({row.get('reference')!r}) among the battery's personas")
    else:
        parts = decomposition(shifts, doc_features, documents, personas, features, w_dec, kind,
                              ref, topics, bootstrap, confidence, seed)
    return signal.drop(columns=["_v", "_vh"], errors="ignore"), parts, fraction
