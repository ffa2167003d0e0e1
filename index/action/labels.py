"""Labelling features on the context × content grid: which follow the persona's context, which
its way of speaking, which both (or only their combination), and which are shared by every mask
in action. A pure function of pandas DataFrames, like `index.labels`; docs/grid.md gives every
rule and its reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import numpy as np
import pandas as pd

from shoggoth.core.config import option
from shoggoth.core.errors import BadInput
from shoggoth.index.action.stats import EFFECTS, block_contrasts, effect_test, intervals, persona_se
from shoggoth.index.labels.rules import Thresholds
from shoggoth.index.labels.stats import equivalence, item_bootstrap, stratified_weights

GRID_LABELS = (
    "dead",
    "rare",
    "context",
    "content",
    "context+content",
    "context:content",
    "shared-in-action",
    "unclear",
)
GRID_EFFECT_LABELS = ("context", "content", "context+content", "context:content")
"""Labels that claim an effect (their false-discovery rate is estimated by calibration)."""
CELLS = ("in_action", "neutral_text", "text_only", "baseline")
"""a: own answer, persona prompt; b: neutral answer, persona prompt; c: own answer, no persona;
d: neutral answer, no persona."""


@dataclass
class GridLabelConfig(Thresholds):
    """Thresholds of the grid's labels: the labeller's (`Thresholds`), and the grid's own."""

    calibration: int = option(10, min=0, max=1000)
    """Null runs (each block's contexts and texts swapped at random) that estimate each label's
    false-discovery rate."""
    min_docs: int = option(10, min=1)
    """rare: the feature fires in fewer grid documents than this."""


@dataclass
class ActionDesign:
    """The grid's blocks: one persona prompt and one item, with its four documents."""

    personas: list[str]
    persona_of_prompt: np.ndarray
    prompt_keys: list[tuple[str, int]]
    items: list[str]
    docs: dict[str, np.ndarray]
    """cell → document row (position in the documents table) of every block."""
    prompt_of_block: np.ndarray
    item_of_block: np.ndarray
    n_docs: int
    notes: list[str] = field(default_factory=list)

    @property
    def average(self) -> np.ndarray:
        """[block, prompt]: the mean over each prompt's blocks."""
        out = np.zeros((len(self.prompt_of_block), len(self.prompt_keys)))
        counts = np.bincount(self.prompt_of_block, minlength=len(self.prompt_keys))
        out[np.arange(len(out)), self.prompt_of_block] = 1.0 / counts[self.prompt_of_block]
        return out

    @property
    def persona_average(self) -> np.ndarray:
        """[prompt, persona]: the mean over each persona's prompts."""
        out = np.zeros((len(self.prompt_keys), len(self.personas)))
        out[np.arange(len(out)), self.persona_of_prompt] = 1.0
        return cast("np.ndarray", out / out.sum(axis=0))


def build_layout(documents: pd.DataFrame) -> ActionDesign:
    """The blocks of a grid harvest: documents has cell, persona, paraphrase, item_id (persona
    and paraphrase empty for the baseline cell), one row per document."""
    for col in ("cell", "persona", "paraphrase", "item_id"):
        if col not in documents.columns:
            raise BadInput(f"grid documents: missing column '{col}'")
    bad = set(documents["cell"]) - set(CELLS)
    if bad:
        raise BadInput(f"grid documents: unknown cell '{sorted(bad)[0]}'")
    rows = documents.reset_index(drop=True)
    base = rows[rows["cell"] == "baseline"]
    base_of = dict(zip(base["item_id"].astype(str), base.index, strict=False))
    own = rows[rows["cell"] != "baseline"].copy()
    own["key"] = list(
        zip(
            own["persona"].astype(str),
            own["paraphrase"].astype(int),
            own["item_id"].astype(str),
            strict=True,
        )
    )
    by = {cell: dict(zip(g["key"], g.index, strict=False)) for cell, g in own.groupby("cell")}
    keys = sorted(set().union(*[set(v) for v in by.values()]) if by else set())
    full = [k for k in keys if all(k in by.get(c, {}) for c in CELLS[:3]) and k[2] in base_of]
    notes = []
    if len(full) < len(keys):
        notes.append(
            f"{len(keys) - len(full)} of {len(keys)} persona-prompt × item blocks lack "
            "a document (an empty answer, or a missing cell) and are left out"
        )
    if not full:
        raise BadInput(
            "grid documents: no complete block (own answer and neutral answer, each "
            "under the persona's prompt and under no persona)"
        )
    personas = sorted({k[0] for k in full})
    persona_index = {p: i for i, p in enumerate(personas)}
    prompt_keys = sorted({(k[0], k[1]) for k in full})  # by persona (sorted), then paraphrase
    prompt_index = {p: i for i, p in enumerate(prompt_keys)}
    items = sorted({k[2] for k in full})
    item_index = {it: i for i, it in enumerate(items)}
    persona_of_prompt = np.array([persona_index[p] for p, _ in prompt_keys])
    counts = np.bincount(persona_of_prompt, minlength=len(personas))
    single = [p for p, n in zip(personas, counts, strict=True) if n < 2]
    if len(single) == len(personas):
        notes.append(
            "no persona has two prompts with answers: the tests (prompts as "
            "replicates) cannot be computed, so no effect is labelled"
        )
    elif single:
        notes.append(f"personas with one prompt ({', '.join(single[:4])}): they add no replicate")
    docs = {c: np.array([by[c][k] for k in full]) for c in CELLS[:3]}
    docs["baseline"] = np.array([base_of[k[2]] for k in full])
    return ActionDesign(
        personas,
        persona_of_prompt,
        prompt_keys,
        items,
        docs,
        np.array([prompt_index[(k[0], k[1])] for k in full]),
        np.array([item_index[k[2]] for k in full]),
        len(rows),
        notes,
    )


@dataclass
class Chunked:
    """Per-feature tests, intervals and cell means, gathered chunk by chunk."""

    cells: dict[str, np.ndarray]
    """cell → [feature, prompt] prompt means of the activations."""
    t_stat: dict[str, np.ndarray]
    p: dict[str, np.ndarray]
    """effect → per-feature largest |t| and p-value (`effect_test` on the log contrasts)."""
    null_p: np.ndarray
    """[calibration run, effect, feature] p-values with every block's contexts and texts
    swapped at random (the same swaps for every feature)."""
    ci: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    """effect → (estimate, low, high) [feature, persona], in natural-log units."""
    n_docs_firing: np.ndarray
    broad: np.ndarray
    ratio_high: np.ndarray
    power: np.ndarray


class Dense:
    """Per-document activations sorted by feature once, handed out as dense [feature, doc]
    chunks."""

    def __init__(self, doc_features: pd.DataFrame, n_docs: int, n_features: int) -> None:
        feature = doc_features["feature"].to_numpy()
        order = np.argsort(feature, kind="stable")
        self.feature, self.n_docs = feature[order], n_docs
        self.doc = doc_features["doc"].to_numpy()[order]
        self.value = doc_features["mean_act"].to_numpy()[order]
        self.bounds = np.searchsorted(self.feature, np.arange(n_features + 1))

    def chunk(self, start: int, stop: int) -> np.ndarray:
        lo, hi = self.bounds[start], self.bounds[stop]
        out = np.zeros((stop - start, self.n_docs))
        out[self.feature[lo:hi] - start, self.doc[lo:hi]] = self.value[lo:hi]
        return out


def _boot_means(x: np.ndarray, lay: ActionDesign, weights: np.ndarray) -> np.ndarray:
    """[feature, persona, B]: persona means of the prompt means under each item resample."""
    k, b = len(lay.personas), weights.shape[1]
    out = np.zeros((x.shape[0], k, b))
    counts = np.bincount(lay.persona_of_prompt, minlength=k)
    for p in range(len(lay.prompt_keys)):
        blocks = np.flatnonzero(lay.prompt_of_block == p)
        w = weights[lay.item_of_block[blocks]]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, lay.persona_of_prompt[p]] += (x[:, blocks] @ w) / w.sum(0)
    return out / counts[None, :, None]


def log_cells(v: np.ndarray, lay: ActionDesign, log_floor: float) -> dict[str, np.ndarray]:
    """log(activation + c) of every block's four documents, c = log_floor × the feature's mean
    over the grid's documents (the labeller's transform: effects become ratios, and a feature's
    spread no longer grows with its level)."""
    c = log_floor * v.mean(axis=1, keepdims=True)
    y = np.log(v + np.where(c > 0, c, 1.0))
    return {cell: y[:, lay.docs[cell]] for cell in CELLS}


def gather(
    doc_features: pd.DataFrame, lay: ActionDesign, n_features: int, cfg: GridLabelConfig
) -> Chunked:
    """Tests, null tests, intervals, cell means and the shared-in-action bound, chunk by
    chunk."""
    avg, k, n_b = lay.average, len(lay.personas), len(lay.prompt_of_block)
    # Items are resampled together, not within topics: the noise that every prompt shares is
    # each item's (its neutral answer under no persona is one document), and resampling a few
    # items within each topic understates it.
    weights = stratified_weights(
        np.zeros(len(lay.items), dtype=np.int64), cfg.bootstrap, cfg.seed + 1
    )
    dense = Dense(doc_features, lay.n_docs, n_features)
    rng = np.random.default_rng(cfg.seed + 2)
    signs = rng.choice([-1.0, 1.0], size=(cfg.calibration, 2, n_b))
    out = Chunked(
        {c: np.zeros((n_features, len(lay.prompt_keys))) for c in CELLS},
        {e: np.full(n_features, np.nan) for e in EFFECTS},
        {e: np.full(n_features, np.nan) for e in EFFECTS},
        np.full((cfg.calibration, len(EFFECTS), n_features), np.nan),
        {
            e: (
                np.full((n_features, k), np.nan),
                np.full((n_features, k), np.nan),
                np.full((n_features, k), np.nan),
            )
            for e in EFFECTS
        },
        np.zeros(n_features, dtype=np.int64),
        np.zeros(n_features, dtype=bool),
        np.full(n_features, np.nan),
        np.full(n_features, np.nan),
    )
    action_docs = np.bincount(lay.persona_of_prompt[lay.prompt_of_block], minlength=k)
    for s in range(0, n_features, cfg.chunk):
        e = min(n_features, s + cfg.chunk)
        v = dense.chunk(s, e)
        out.n_docs_firing[s:e] = (v > 0).sum(axis=1)
        cells = {c: v[:, lay.docs[c]] for c in CELLS}
        for c, x in cells.items():
            out.cells[c][s:e] = x @ avg
        contrasts = block_contrasts(*log_cells(v, lay, cfg.log_floor).values())
        for i, (name, x) in enumerate(contrasts.items()):
            est, se, df, overall, se_all = persona_se(
                x @ avg, lay.persona_of_prompt, _boot_means(x, lay, weights)
            )
            out.t_stat[name][s:e], out.p[name][s:e] = effect_test(est, se, df, overall, se_all)
            low, high = intervals(est, se, df, cfg.confidence)
            for target, part in zip(out.ci[name], (est, low, high), strict=True):
                target[s:e] = part
            for r in range(cfg.calibration):  # context, content, interaction flips
                y = x * (signs[r, 0], signs[r, 1], signs[r, 0] * signs[r, 1])[i]
                null = persona_se(y @ avg, lay.persona_of_prompt, _boot_means(y, lay, weights))
                out.null_p[r, i, s:e] = effect_test(*null)[1]
        fired = np.zeros((e - s, k))
        np.add.at(fired.T, lay.persona_of_prompt[lay.prompt_of_block], (cells["in_action"] > 0).T)
        out.broad[s:e] = (fired / action_docs >= cfg.persona_fire_rate).mean(
            axis=1
        ) >= cfg.shared_fire_frac
        out.ratio_high[s:e], out.power[s:e] = _action_bound(
            cells["in_action"], out.cells["in_action"][s:e], lay, out.broad[s:e], weights, cfg
        )
    return out


def _action_bound(
    a: np.ndarray,
    m_a: np.ndarray,
    lay: ActionDesign,
    broad: np.ndarray,
    weights: np.ndarray,
    cfg: GridLabelConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """The labeller's equivalence bound on the in-action means across personas (candidates:
    broad, every prompt mean above 0)."""
    n_f, k = len(a), len(lay.personas)
    high, power = np.full(n_f, np.nan), np.full(n_f, np.nan)
    cand = np.flatnonzero(broad & (m_a > 0).all(axis=1))
    if k < 2 or len(lay.prompt_keys) - k < 1 or not len(cand):
        return high, power
    mu = m_a[cand] @ lay.persona_average
    cells = np.zeros((len(cand), k, len(lay.items)))
    count = np.zeros((k, len(lay.items)))
    pk = lay.persona_of_prompt[lay.prompt_of_block]
    np.add.at(cells.transpose(1, 2, 0), (pk, lay.item_of_block), a[cand].T)
    np.add.at(count, (pk, lay.item_of_block), 1)
    cells /= np.maximum(count, 1)[None]
    ests = item_bootstrap(cells, count > 0, weights)
    high[cand], power[cand] = equivalence(
        mu, np.log(m_a[cand]), lay.persona_of_prompt, ests, cfg.shared_ratio_bound, cfg.confidence
    )
    return high, power
