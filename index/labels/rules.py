"""Labelling SAE features as mask-specific, persona-concept, mask-family, shared, … from
per-document activations.

`label_features` is a pure function of pandas DataFrames (no database), so the statistics can be
tested on planted data. The replicate of a persona is its *prompt* (one paraphrase of its system
prompt), not the item: 240 answers under five wordings are five observations of the persona's
effect, not 240. Every rule and its reason is in docs/labels.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from shoggoth.core.config import BOOTSTRAP, CONFIDENCE, SEED_MAX, Config, option
from shoggoth.core.errors import BadInput
from shoggoth.index.labels.design import LabelDesign, build_design, doc_index, doc_rows
from shoggoth.index.labels.stats import (
    bh_qvalues,
    contrast,
    equivalence,
    item_bootstrap,
    permutation_design,
    persona_test,
    stratified_weights,
)

__all__ = ["COLUMNS", "LABELS", "PERSONA_LABELS", "LabelConfig", "doc_index", "label_features"]

LABELS = (
    "dead",
    "rare",
    "mask-specific",
    "persona-concept",
    "mask-or-concept",
    "mask-family",
    "mask-general",
    "shared",
    "shared-modulated",
    "unclear",
)
PERSONA_LABELS = ("mask-specific", "persona-concept", "mask-or-concept", "mask-family")
"""Labels that claim a feature belongs to some personas (their false-discovery rate is
estimated by the calibration runs)."""


@dataclass
class Thresholds(Config):
    """The thresholds `shoggoth label` and `shoggoth grid` share, declared once: the same name
    means the same rule in both (docs/labels.md, docs/grid.md)."""

    alpha: float = option(0.05, above=0, max=1)
    """False discovery rate of the tests: an effect is found when its BH q-value over the
    features is below this."""
    log_floor: float = option(0.05, above=0)
    """The tests use log(mean + this × the feature's mean over all documents)."""
    persona_fire_rate: float = option(0.05, min=0, max=1)
    """A feature fires under a persona when it fires in at least this fraction of its
    documents."""
    shared_fire_frac: float = option(0.9, min=0, max=1)
    """shared (in the grid: shared-in-action): fires under at least this fraction of the
    personas."""
    shared_ratio_bound: float = option(1.5, above=1)
    """shared: the upper confidence bound of every persona's mean / the others' mean is at most
    this."""
    confidence: float = option(0.95, **CONFIDENCE)
    """Level of that one-sided bound (and of the grid's intervals)."""
    bootstrap: int = option(200, **BOOTSTRAP)
    """Resamples of the items (within topics) in the equivalence bound and intervals."""
    chunk: int = option(1024, min=1)
    """Features processed at once (bounds memory)."""
    seed: int = option(0, min=0, max=SEED_MAX)
    """Seed of the permutations, the bootstrap and the calibration's shuffles."""


@dataclass
class LabelConfig(Thresholds):
    """Thresholds of `shoggoth label` (defaults and their reasons: docs/labels.md)."""

    min_docs: int = option(20, min=1)
    """rare: the feature fires in fewer documents than this."""
    permutations: int = option(500, min=19, max=100_000)
    """Random relabellings of the prompts' personas behind each p-value."""
    contrast: float = option(2.0, min=1)
    """mask-specific / mask-family: the set's weakest persona mean is at least this multiple of
    the strongest other persona's (and, for a mask, of its own mention/negation controls)."""
    family_fraction: float = option(1 / 3, above=0, max=1)
    """mask-family: at most this fraction of the personas."""
    no_mask_ratio: float = option(0.5, min=0)
    """mask-general: the baseline controls' mean / the personas' mean is at most this."""
    own_share: float = option(0.5, above=0, max=1)
    """mask-specific / mask-family: the set's share of the feature's activity over the personas
    (its means' sum / every persona's) is at least this: most of the activity is the set's, not
    one persona's stronger firing of a feature every persona fires (that is shared-modulated)."""
    shared_point_ratio: float = option(1.25, above=1)
    """shared: beside the bound, every persona's mean / the others' mean is at most this (the
    point estimate), so that a persona clearly stronger is never called shared."""


COLUMNS = [
    "feature",
    "label",
    "top_persona",
    "family_set",
    "battery_family",
    "argmax_persona",
    "n_docs_firing",
    "fire_frac_personas",
    "top_share",
    "k_eff",
    "norm_entropy",
    "f_stat",
    "p_value",
    "q_value",
    "top_ratio",
    "paraphrase_margin",
    "set_size",
    "set_ratio",
    "set_margin",
    "control_ratio",
    "control_margin",
    "no_mask_ratio",
    "max_min_ratio",
    "rest_ratio",
    "ratio_ci_high",
    "shared_power",
    "ranked_personas",
]


@dataclass
class _Context:
    """What every chunk of features shares."""

    cfg: LabelConfig
    layout: LabelDesign
    feat: np.ndarray
    doc: np.ndarray
    val: np.ndarray
    bounds: np.ndarray
    """Row range of each feature in feat/doc/val."""
    average: np.ndarray
    """[prompt, persona]: 1/n_k where the prompt is persona k's (prompt means → persona means)."""
    starts: np.ndarray
    """First prompt of every persona (prompts are sorted by persona, main personas first)."""
    design: np.ndarray
    weights: np.ndarray
    docs_per_persona: np.ndarray


def label_features(
    doc_features: pd.DataFrame,
    documents: pd.DataFrame,
    personas: pd.DataFrame,
    n_features: int,
    config: LabelConfig | None = None,
    topics: dict[str, str] | None = None,
) -> pd.DataFrame:
    """One row per feature 0..n_features-1 with its label and the statistics behind it.

    personas: persona, family, is_control and optionally control_of (the persona a
    mention/negation control is about). topics: item_id → topic, for the item bootstrap.
    `table.attrs["notes"]` lists what this battery cannot support, one line each.
    """
    cfg = config or LabelConfig()
    if n_features < 1:
        raise BadInput(f"n_features {n_features}: must be at least 1")
    layout, docs = build_design(documents, personas, topics)
    feat, doc, val = doc_rows(doc_features, docs, n_features)
    n_prompts, n_all = len(layout.persona_of_prompt), len(layout.personas)
    average = np.zeros((n_prompts, n_all))
    counts = layout.prompts_per_persona
    average[np.arange(n_prompts), layout.persona_of_prompt] = 1.0 / counts[layout.persona_of_prompt]
    main_prompts = layout.persona_of_prompt[: layout.n_main_prompts]
    ctx = _Context(
        cfg,
        layout,
        feat,
        doc,
        val,
        np.searchsorted(feat, np.arange(n_features + 1)),
        average,
        np.searchsorted(layout.persona_of_prompt, np.arange(n_all)),
        permutation_design(main_prompts, layout.n_main, cfg.permutations, cfg.seed),
        stratified_weights(layout.topic_of_item, cfg.bootstrap, cfg.seed + 1),
        layout.cell_docs.sum(axis=1),
    )
    table = pd.concat(
        [_chunk(ctx, s, min(n_features, s + cfg.chunk)) for s in range(0, n_features, cfg.chunk)],
        ignore_index=True,
    )
    table["q_value"] = bh_qvalues(table["p_value"].to_numpy())
    _label(cfg, layout, table)
    out = table[COLUMNS].copy()
    out.attrs["notes"] = list(layout.notes)
    return out


def _prompt_means(ctx: _Context, start: int, stop: int) -> tuple[np.ndarray, ...]:
    """(rows of the chunk: local feature, persona, item, value; prompt means [f, prompt])."""
    layout, n_f = ctx.layout, stop - start
    lo, hi = ctx.bounds[start], ctx.bounds[stop]
    f_loc, d, v = ctx.feat[lo:hi] - start, ctx.doc[lo:hi], ctx.val[lo:hi]
    pr = layout.prompt_of_doc[d]
    n_p = len(layout.persona_of_prompt)
    m = np.bincount(
        f_loc * n_p + pr, weights=v / layout.docs_per_prompt[pr], minlength=n_f * n_p
    ).reshape(n_f, n_p)
    return f_loc, layout.persona_of_doc[d], layout.item_of_doc[d], v, m


def _chunk(ctx: _Context, start: int, stop: int) -> pd.DataFrame:
    """The statistics of features start..stop-1 (labels are decided after BH, over all)."""
    cfg, layout, n_f = ctx.cfg, ctx.layout, stop - start
    k, n_all, n_mp = layout.n_main, len(layout.personas), layout.n_main_prompts
    f_loc, pk, ii, v, m = _prompt_means(ctx, start, stop)
    mu_all = m @ ctx.average
    mu, mm = mu_all[:, :k], m[:, :n_mp]
    n_docs = np.bincount(f_loc, minlength=n_f)
    fired = np.bincount(f_loc * n_all + pk, minlength=n_f * n_all).reshape(n_f, n_all)
    fires = fired[:, :k] / np.maximum(ctx.docs_per_persona[:k], 1) >= cfg.persona_fire_rate
    broad = fires.mean(axis=1) >= cfg.shared_fire_frac if k else np.zeros(n_f, bool)
    testable = n_docs >= cfg.min_docs
    live = n_docs > 0
    out = _descriptive(mu, live, layout.personas)
    out["feature"] = np.arange(start, stop)
    out["n_docs_firing"] = n_docs
    out["fire_frac_personas"] = fires.mean(axis=1) if k else np.zeros(n_f)
    out["argmax_persona"] = [
        layout.personas[t] if lv and k else None
        for t, lv in zip(np.argmax(mu, axis=1) if k else np.zeros(n_f, int), live, strict=True)
    ]
    f_stat, p = np.full(n_f, np.nan), np.full(n_f, np.nan)
    if k >= 2 and testable.any():
        f_stat[testable], p[testable] = persona_test(
            mm[testable], layout.persona_of_prompt[:n_mp], ctx.design, cfg.log_floor
        )
    out["f_stat"], out["p_value"] = f_stat, p
    # Each persona's weakest and best prompt mean (main personas' prompts come first).
    lo, hi = np.minimum.reduceat(m, ctx.starts, axis=1), np.maximum.reduceat(m, ctx.starts, axis=1)
    c = contrast(
        mu, lo[:, :k], hi[:, :k], cfg.contrast, max(1, int(np.floor(cfg.family_fraction * k)))
    )
    for name, values in (
        ("top_ratio", c.top_ratio),
        ("paraphrase_margin", c.top_margin),
        ("set_ratio", c.set_ratio),
        ("set_margin", c.set_margin),
    ):
        out[name] = np.where(live, values, np.nan)
    out["set_size"] = c.set_size
    ctrl_mu = _matched_means(layout, mu_all)
    for name, values in (
        ("order", c.order),
        ("mu", mu),
        ("control_mu", ctrl_mu),
        ("lo", lo),
        ("hi", hi),
    ):
        out[name] = list(values)  # per feature, for the few that _label decides on
    top = c.order[:, 0] if k else np.zeros(n_f, int)
    out["control_margin"] = np.where(live, _top_control_margins(layout, lo, hi, top), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        top_mu = mu[np.arange(n_f), top] if k else np.zeros(n_f)
        ctrl = ctrl_mu[np.arange(n_f), top] if k else top_mu
        out["control_ratio"] = np.where(live, ctrl / top_mu, np.nan)
        base = mu_all[:, layout.baseline].mean(axis=1) if layout.baseline else np.full(n_f, np.nan)
        out["no_mask_ratio"] = np.where(live, base / mu.mean(axis=1), np.nan)
    high, power = _shared_bound(
        ctx, m, mu, testable & broad & (mm > 0).all(axis=1), (f_loc, pk, ii, v)
    )
    out["ratio_ci_high"], out["shared_power"] = high, power
    out["broad"] = broad
    return out


def _descriptive(mu: np.ndarray, live: np.ndarray, names: list[str]) -> pd.DataFrame:
    """Shares, entropy and max/min of the persona means: what the rules do not use, but a reader
    wants."""
    n_f, k = mu.shape
    total = mu.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = mu / total[:, None]
        ent = -np.where(share > 0, share * np.log(share), 0.0).sum(axis=1)
        norm = ent / np.log(k) if k > 1 else np.full(n_f, np.nan)
        max_min = mu.max(axis=1) / mu.min(axis=1) if k else np.full(n_f, np.nan)
        rest = (total[:, None] - mu) / (k - 1) if k > 1 else np.full_like(mu, np.nan)
        rest_ratio = (mu / rest).max(axis=1) if k > 1 else np.full(n_f, np.nan)
    ranked = [
        ",".join(names[j] for j in np.argsort(-mu[f], kind="stable") if mu[f, j] > 0)
        for f in range(n_f)
    ]
    return pd.DataFrame(
        {
            "top_share": np.where(live, share.max(axis=1) if k else np.nan, np.nan),
            "k_eff": np.where(live, np.exp(ent), np.nan),
            "norm_entropy": np.where(live, norm, np.nan),
            "max_min_ratio": np.where(live, max_min, np.nan),
            "rest_ratio": np.where(live, rest_ratio, np.nan),
            "ranked_personas": ranked,
        }
    )


def control_margins(
    layout: LabelDesign, lo: np.ndarray, hi: np.ndarray, members: list[int]
) -> np.ndarray:
    """lo, hi: [rows, persona] weakest and best prompt means. Per row: the members' matched
    controls against the other personas' matched controls, as the largest (over the members'
    controls) weakest-prompt mean / the best prompt mean among the controls matched to
    non-members (or, with none, the non-member personas' prompts). Above 1, every wording of a
    mention or negation of the members fires more than any other persona's mention or negation
    does: the feature reads the persona's concept. NaN without controls."""
    own = [c for j in members for c in layout.matched[j]]
    if not own:
        return np.full(len(lo), np.nan)
    chosen = set(members)
    others = [c for j in range(layout.n_main) if j not in chosen for c in layout.matched[j]]
    others = others or [j for j in range(layout.n_main) if j not in chosen]
    best = hi[:, others].max(axis=1) if others else np.zeros(len(lo))
    weakest = lo[:, own].max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(
            best > 0, weakest / np.where(best > 0, best, 1.0), np.where(weakest > 0, np.inf, np.nan)
        )


def _top_control_margins(
    layout: LabelDesign, lo: np.ndarray, hi: np.ndarray, top: np.ndarray
) -> np.ndarray:
    """control_margins of each feature's top persona."""
    out = np.full(len(top), np.nan)
    for k in np.unique(top) if layout.n_main else []:
        rows = np.flatnonzero(top == k)
        out[rows] = control_margins(layout, lo[rows], hi[rows], [int(k)])
    return out


def _matched_means(layout: LabelDesign, mu_all: np.ndarray) -> np.ndarray:
    """[feature, main persona]: the largest mean among the persona's own mention/negation
    controls (NaN for a persona without any)."""
    out = np.full((mu_all.shape[0], layout.n_main), np.nan)
    for k, controls in enumerate(layout.matched):
        if controls:
            out[:, k] = mu_all[:, controls].max(axis=1)
    return out


def _shared_bound(
    ctx: _Context, m: np.ndarray, mu: np.ndarray, cand: np.ndarray, rows: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """ratio_ci_high and shared_power for the candidates (broad, every prompt firing). The item
    bootstrap is run only where the prompt term alone leaves the bound under the limit: adding
    a variance can only raise it."""
    cfg, layout = ctx.cfg, ctx.layout
    n_f, k, n_mp = len(cand), layout.n_main, layout.n_main_prompts
    high, power = np.full(n_f, np.nan), np.full(n_f, np.nan)
    if k < 2 or not cand.any():
        return high, power
    idx = np.flatnonzero(cand)
    log_m = np.log(m[idx, :n_mp])
    main_prompts = layout.persona_of_prompt[:n_mp]
    high[idx], power[idx] = equivalence(
        mu[idx], log_m, main_prompts, None, cfg.shared_ratio_bound, cfg.confidence
    )
    close = idx[high[idx] <= cfg.shared_ratio_bound]
    if len(close):
        f_loc, pk, ii, v = rows
        pos = np.full(n_f, -1)
        pos[close] = np.arange(len(close))
        keep = (pos[f_loc] >= 0) & (pk < k)
        n_items = len(layout.items)
        a = np.bincount(
            (pos[f_loc[keep]] * k + pk[keep]) * n_items + ii[keep],
            weights=v[keep] / layout.cell_docs[pk[keep], ii[keep]],
            minlength=len(close) * k * n_items,
        ).reshape(len(close), k, n_items)
        ests = item_bootstrap(a, layout.cell_docs[:k] > 0, ctx.weights)
        high[close], power[close] = equivalence(
            mu[close],
            np.log(m[close, :n_mp]),
            main_prompts,
            ests,
            cfg.shared_ratio_bound,
            cfg.confidence,
        )
    return high, power


def _family_of(layout: LabelDesign, members: list[str]) -> str | None:
    """The battery family the set is (or is part of), else None."""
    families = {layout.family[p] for p in members}
    if len(families) != 1:
        return None
    fam = families.pop()
    whole = {p for p in layout.personas[: layout.n_main] if layout.family[p] == fam}
    return fam if whole == set(members) else f"part of {fam}"


def _label(cfg: LabelConfig, layout: LabelDesign, t: pd.DataFrame) -> None:
    """The label of each feature, in order of precedence (docs/labels.md), in place."""
    k = layout.n_main
    n_docs = t["n_docs_firing"].to_numpy()
    q = t["q_value"].to_numpy()
    sig = np.isfinite(q) & (q < cfg.alpha)
    broad = t["broad"].to_numpy()
    shared = (
        broad
        & (t["ratio_ci_high"].to_numpy() <= cfg.shared_ratio_bound)
        & (t["rest_ratio"].to_numpy() <= cfg.shared_point_ratio)
    )
    label = np.full(len(t), "unclear", dtype=object)
    label[shared] = "shared"
    general = shared & (t["no_mask_ratio"].to_numpy() <= cfg.no_mask_ratio)
    label[general] = "mask-general"
    label[broad & sig & ~shared] = "shared-modulated"
    top: list[str | None] = [None] * len(t)
    family: list[str | None] = [None] * len(t)
    battery: list[str | None] = [None] * len(t)
    single = layout.prompts_per_persona[:k] < 2
    size = t["set_size"].to_numpy()
    for f in map(int, np.flatnonzero(sig & (size > 0) & (n_docs >= cfg.min_docs) & (k >= 2))):
        members = t["order"].iat[f][: size[f]]
        if single[members].any():
            label[f] = "unclear"  # one wording: persona and wording cannot be told apart
            continue
        mu, ctrl = t["mu"].iat[f][members], t["control_mu"].iat[f][members]
        every = t["mu"].iat[f]
        if mu.sum() < cfg.own_share * every.sum():
            # Most of the activity is not the set's: modulated, not owned (docs/labels.md).
            label[f] = "shared-modulated" if broad[f] else "unclear"
            continue
        margin = control_margins(layout, t["lo"].iat[f][None], t["hi"].iat[f][None], list(members))[
            0
        ]
        with np.errstate(invalid="ignore"):
            concept = bool((ctrl >= mu / cfg.contrast).any()) or margin > 1
        names = [layout.personas[j] for j in members]
        if size[f] == 1:
            top[f] = names[0]
            label[f] = (
                "persona-concept"
                if concept
                else "mask-or-concept"
                if np.isnan(ctrl).all()
                else "mask-specific"
            )
        else:
            family[f], battery[f] = ",".join(names), _family_of(layout, names)
            label[f] = "persona-concept" if concept else "mask-family"
    label[(n_docs > 0) & (n_docs < cfg.min_docs)] = "rare"
    label[n_docs == 0] = "dead"
    if k < 2:
        label[n_docs >= cfg.min_docs] = "unclear"  # one persona: nothing to compare
    t["label"] = label
    for name, values in (("top_persona", top), ("family_set", family), ("battery_family", battery)):
        t[name] = pd.Series(values, index=t.index, dtype=object)
    t["set_size"] = np.where(size > 0, size, np.nan)
