"""Labelling SAE features as mask-specific, mask-family, shared, … from per-document activations.

`label_features` is a pure function of pandas DataFrames (no database), so the statistics can be
tested on planted data. The unit of analysis is the document (persona × paraphrase × item); the
paraphrases of a persona are averaged per item, and items are the blocks of every paired
comparison. Every formula is in docs/labels.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from core.config import Config, option
from core.errors import BadInput

LABELS = ("dead", "rare", "mask-specific", "mask-family", "shared", "shared-modulated", "unclear")


@dataclass
class LabelConfig(Config):
    """Thresholds of `shoggoth label` (defaults from docs/labels.md)."""

    alpha: float = option(0.05, above=0, max=1)
    """False discovery rate: a feature differs across personas when its BH q-value is below."""
    min_docs: int = option(20, min=1)
    """rare: the feature fires in fewer documents than this."""
    specific_share: float = option(0.5, min=0, max=1)
    """mask-specific: the top persona's share of the summed persona means is at least this."""
    specific_k_eff: float = option(2.0, min=1)
    """mask-specific: the effective number of personas (exp of the shares' entropy) is at most."""
    specific_auroc: float = option(0.8, min=0, max=1)
    """mask-specific: AUROC of the top persona's documents against the rest, at least."""
    specific_stability: float = option(0.8, min=0, max=1)
    """mask-specific: fraction of leave-one-paraphrase-out splits keeping the top persona."""
    specific_control_ratio: float = option(0.2, min=0)
    """mask-specific: mean under the controls / the top persona's mean, at most."""
    family_fraction: float = option(1 / 3, above=0, max=1)
    """mask-family: 2 < K_eff <= this fraction of the number of personas."""
    shared_fire_frac: float = option(0.9, min=0, max=1)
    """shared / shared-modulated: fires under at least this fraction of the personas."""
    persona_fire_rate: float = option(0.05, min=0, max=1)
    """A feature fires under a persona when it fires in at least this fraction of its
    documents."""
    shared_entropy: float = option(0.9, min=0, max=1)
    """shared: normalised entropy of the persona shares, at least."""
    shared_ratio_bound: float = option(1.5, min=1)
    """shared: the bootstrap upper bound of max/min persona mean is at most this."""
    bootstrap: int = option(200, min=1, max=100_000)
    """Bootstrap resamples of the items for the max/min ratio's upper bound."""
    confidence: float = option(0.95, above=0, below=1)
    """Level of that one-sided upper bound."""
    chunk: int = option(2048, min=1)
    """Features processed at once (bounds memory)."""
    seed: int = 0
    """Seed of the bootstrap."""


@dataclass
class _Grid:
    """Index of the documents: personas (non-controls first), items, paraphrases."""

    personas: list[str]
    n_main: int
    """Number of non-control personas (the first n_main of `personas`)."""
    family: dict[str, str]
    items: list[str]
    persona_of_doc: np.ndarray
    item_of_doc: np.ndarray
    para_of_doc: np.ndarray
    cell_docs: np.ndarray
    """[persona, item] number of documents (paraphrases)."""
    para_docs: np.ndarray
    """[persona, paraphrase] number of documents."""


def _grid(documents: pd.DataFrame, personas: pd.DataFrame) -> tuple[_Grid, pd.DataFrame]:
    for col in ("persona", "family", "is_control"):
        if col not in personas.columns:
            raise BadInput(f"personas: missing column '{col}'")
    for col in ("persona", "paraphrase", "item_id"):
        if col not in documents.columns:
            raise BadInput(f"documents: missing column '{col}'")
    pers = personas.drop_duplicates("persona")
    pers = pers.assign(persona=pers["persona"].astype(str))
    main = [p for p, c in zip(pers["persona"], pers["is_control"], strict=True) if not c]
    ctrl = [p for p, c in zip(pers["persona"], pers["is_control"], strict=True) if c]
    names = main + ctrl
    docs = documents[["persona", "paraphrase", "item_id"]].astype(
        {"persona": str, "item_id": str}).drop_duplicates().reset_index(drop=True)
    unknown = set(docs["persona"]) - set(names)
    if unknown:
        raise BadInput(f"documents: persona '{sorted(unknown)[0]}' is not in personas")
    items = sorted(set(docs["item_id"]))
    p_idx = docs["persona"].map({p: i for i, p in enumerate(names)}).to_numpy()
    i_idx = docs["item_id"].map({it: i for i, it in enumerate(items)}).to_numpy()
    j_idx = docs["paraphrase"].to_numpy().astype(np.int64)
    if len(j_idx) and j_idx.min() < 0:
        raise BadInput("documents: paraphrase must be >= 0")
    cells = np.zeros((len(names), len(items)), dtype=np.int64)
    np.add.at(cells, (p_idx, i_idx), 1)
    paras = np.zeros((len(names), int(j_idx.max()) + 1 if len(j_idx) else 1), dtype=np.int64)
    np.add.at(paras, (p_idx, j_idx), 1)
    grid = _Grid(names, len(main), dict(zip(pers["persona"], pers["family"], strict=True)),
                 items, p_idx, i_idx, j_idx, cells, paras)
    return grid, docs


def _codes(values: pd.Series, names: list[str]) -> np.ndarray:
    """Index of each value in `names` (-1 when absent), via the categories when categorical."""
    position = {n: i for i, n in enumerate(names)}
    cat = values.astype("category")
    lookup = np.array([position.get(str(c), -1) for c in cat.cat.categories] + [-1])
    return lookup[cat.cat.codes.to_numpy()]  # code -1 (missing) picks the trailing -1


def doc_index(frame: pd.DataFrame, docs: pd.DataFrame) -> np.ndarray:
    """Position in `docs` of each row's (persona, paraphrase, item_id); -1 when absent.

    Works on category codes, so millions of rows are never turned into Python strings.
    """
    names = [str(n) for n in dict.fromkeys(docs["persona"])]
    items = [str(i) for i in dict.fromkeys(docs["item_id"])]
    n_para = int(docs["paraphrase"].max()) + 1 if len(docs) else 1
    table = np.full((len(names), n_para, len(items)), -1, dtype=np.int64)
    table[_codes(docs["persona"], names), docs["paraphrase"].to_numpy(),
          _codes(docs["item_id"], items)] = np.arange(len(docs))
    p, i = _codes(frame["persona"], names), _codes(frame["item_id"], items)
    j = frame["paraphrase"].to_numpy().astype(np.int64)
    ok = (p >= 0) & (i >= 0) & (j >= 0) & (j < n_para)
    out = np.full(len(frame), -1, dtype=np.int64)
    out[ok] = table[p[ok], j[ok], i[ok]]
    return out


def _doc_rows(doc_features: pd.DataFrame, docs: pd.DataFrame,
              n_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(feature, document index, value) of every non-zero row, sorted by feature."""
    for col in ("persona", "paraphrase", "item_id", "feature", "mean_act"):
        if col not in doc_features.columns:
            raise BadInput(f"doc_features: missing column '{col}'")
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


def _friedman(x: np.ndarray) -> np.ndarray:
    """Tie-corrected Friedman p-values; x is [features, personas, items] (complete blocks).

    Q = (k-1) Σ_k (R_k - n(k+1)/2)² / Σ_ik (r_ik - (k+1)/2)², the form that stays exact with
    ties; all-tied features get p = 1.
    """
    f, k, n = x.shape
    if k < 2 or n < 1:
        return np.full(f, np.nan)
    ranks = stats.rankdata(x, axis=1)
    centre = (k + 1) / 2
    num = ((ranks.sum(axis=2) - n * centre) ** 2).sum(axis=1)
    den = ((ranks - centre) ** 2).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(den > 0, (k - 1) * num / den, 0.0)
    return np.where(den > 0, stats.chi2.sf(q, k - 1), 1.0)


def _auroc(top_vals: np.ndarray, n_top: int, rest_vals: np.ndarray, n_rest: int) -> float:
    """P(top document > other document) + ½ P(tie), zeros included, from the non-zero values."""
    if n_top == 0 or n_rest == 0:
        return float("nan")
    rest = np.sort(rest_vals)
    zeros_rest = n_rest - len(rest)
    below = zeros_rest + np.searchsorted(rest, top_vals, "left")
    equal = np.searchsorted(rest, top_vals, "right") - np.searchsorted(rest, top_vals, "left")
    wins = (below + 0.5 * equal).sum() + (n_top - len(top_vals)) * 0.5 * zeros_rest
    return float(wins / (n_top * n_rest))


def label_features(doc_features: pd.DataFrame, documents: pd.DataFrame, personas: pd.DataFrame,
                   n_features: int, config: LabelConfig | None = None) -> pd.DataFrame:
    """One row per feature 0..n_features-1 with its label and the statistics behind it."""
    cfg = config or LabelConfig()
    if n_features < 1:
        raise BadInput(f"n_features {n_features}: must be at least 1")
    grid, docs = _grid(documents, personas)
    feat, doc, val = _doc_rows(doc_features, docs, n_features)
    k_main = grid.n_main
    complete = (grid.cell_docs[:k_main] > 0).all(axis=0)
    rng = np.random.default_rng(cfg.seed)
    n_c = int(complete.sum())
    boot = rng.multinomial(n_c, np.full(n_c, 1 / n_c), size=cfg.bootstrap) if n_c else None
    ctx = _Context(cfg, grid, feat, doc, val, np.searchsorted(feat, np.arange(n_features + 1)),
                   complete, grid.cell_docs.sum(axis=1), boot)
    out = [_chunk(ctx, start, min(n_features, start + cfg.chunk))
           for start in range(0, n_features, cfg.chunk)]
    table = pd.concat(out, ignore_index=True)
    p = table["p_value"].to_numpy()
    q = np.full_like(p, np.nan)
    tested = np.isfinite(p)
    if tested.any():
        q[tested] = multipletests(p[tested], method="fdr_bh")[1]
    table["q_value"] = q
    labels, tops, families = _labels(cfg, table, k_main)
    table["label"] = labels
    table["top_persona"] = pd.Series(tops, dtype=object)
    table["family_set"] = pd.Series(families, dtype=object)
    return table[COLUMNS]


COLUMNS = ["feature", "label", "top_persona", "family_set", "argmax_persona", "n_docs_firing",
           "fire_frac_personas", "top_share", "k_eff", "norm_entropy", "auroc", "p_value",
           "q_value", "max_min_ratio", "ratio_ci_high", "control_ratio", "paraphrase_stability",
           "ranked_personas"]


@dataclass
class _Context:
    """What every chunk of features shares: the grid, the document rows sorted by feature, the
    complete items and the bootstrap weights."""

    cfg: LabelConfig
    grid: _Grid
    feat: np.ndarray
    doc: np.ndarray
    val: np.ndarray
    bounds: np.ndarray
    """Row range of each feature in feat/doc/val."""
    complete: np.ndarray
    """Items every non-control persona has documents for (the Friedman blocks)."""
    docs_per_persona: np.ndarray
    boot: np.ndarray | None
    """Bootstrap multiplicities of the complete items [resamples, items]."""


@dataclass
class _Chunk:
    """One chunk's document rows (feature index local to the chunk) and cell means."""

    f_loc: np.ndarray
    pk: np.ndarray
    jj: np.ndarray
    v: np.ndarray
    a: np.ndarray
    """[feature, persona, item]: the paraphrase-average of the document means."""


def _chunk_rows(ctx: _Context, start: int, stop: int) -> _Chunk:
    grid, n_f = ctx.grid, stop - start
    n_all, n_items = len(grid.personas), len(grid.items)
    lo, hi = ctx.bounds[start], ctx.bounds[stop]
    f_loc, d, v = ctx.feat[lo:hi] - start, ctx.doc[lo:hi], ctx.val[lo:hi]
    pk, ii, jj = grid.persona_of_doc[d], grid.item_of_doc[d], grid.para_of_doc[d]
    w = v / grid.cell_docs[pk, ii]
    a = np.bincount((f_loc * n_all + pk) * n_items + ii, weights=w,
                    minlength=n_f * n_all * n_items).reshape(n_f, n_all, n_items)
    return _Chunk(f_loc, pk, jj, v, a)


def _stability(grid: _Grid, c: _Chunk, n_f: int, top: np.ndarray) -> np.ndarray:
    """Leave-one-paraphrase-out: the share of paraphrases without which the top persona stays
    on top."""
    k_main, n_all = grid.n_main, len(grid.personas)
    paras = grid.para_docs[:k_main]
    by_para = np.bincount((c.f_loc * n_all + c.pk) * paras.shape[1] + c.jj, weights=c.v,
                          minlength=n_f * n_all * paras.shape[1]).reshape(n_f, n_all, -1)
    by_para = by_para[:, :k_main]
    tot_docs = paras.sum(axis=1)
    stable = np.zeros(n_f)
    for j in range(paras.shape[1]):
        left = tot_docs - paras[:, j]
        use = np.where(left > 0, left, tot_docs)
        removed = np.where(left > 0, by_para[:, :, j], 0.0)
        loo = (by_para.sum(axis=2) - removed) / np.maximum(use, 1)
        stable += np.argmax(loo, axis=1) == top
    return stable / paras.shape[1]


def _ratio_bound(ctx: _Context, c: _Chunk, maybe: np.ndarray) -> np.ndarray:
    """The bootstrap (over items) upper bound of max/min persona mean, for the features that
    may be shared (`maybe`); NaN for the others."""
    ratio_hi = np.full(len(maybe), np.nan)
    if ctx.boot is not None and maybe.any():
        sub = c.a[maybe][:, :ctx.grid.n_main][:, :, ctx.complete]
        means = np.einsum("fki,bi->fkb", sub, ctx.boot)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = means.max(axis=1) / means.min(axis=1)
        ratios = np.where(np.isnan(ratios), np.inf, ratios)
        ratio_hi[maybe] = np.quantile(ratios, ctx.cfg.confidence, axis=1, method="higher")
    return ratio_hi


def _aurocs(ctx: _Context, c: _Chunk, live: np.ndarray, top: np.ndarray) -> np.ndarray:
    """AUROC of the top persona's documents against the other non-control personas'."""
    k_main = ctx.grid.n_main
    auroc = np.full(len(live), np.nan)
    main_docs = int(ctx.docs_per_persona[:k_main].sum())
    for f in np.flatnonzero(live):
        s, e = np.searchsorted(c.f_loc, [f, f + 1])
        fp, fv = c.pk[s:e], c.v[s:e]
        is_top = fp == top[f]
        rest = (fp < k_main) & ~is_top
        n_top = int(ctx.docs_per_persona[top[f]])
        auroc[f] = _auroc(fv[is_top], n_top, fv[rest], main_docs - n_top)
    return auroc


def _chunk(ctx: _Context, start: int, stop: int) -> pd.DataFrame:
    """The statistics of features start..stop-1 (labels are decided after BH, over all)."""
    cfg, grid, n_f = ctx.cfg, ctx.grid, stop - start
    k_main, n_all = grid.n_main, len(grid.personas)
    c = _chunk_rows(ctx, start, stop)
    a, present = c.a, grid.cell_docs > 0
    n_present = np.maximum(present.sum(axis=1), 1)
    mu_all = a.sum(axis=2) / n_present  # [feature, persona], items a persona lacks left out
    mu = mu_all[:, :k_main]
    fired_docs = np.bincount(c.f_loc * n_all + c.pk, minlength=n_f * n_all).reshape(n_f, n_all)
    fire_rate = fired_docs / np.maximum(ctx.docs_per_persona, 1)
    fires = fire_rate[:, :k_main] >= cfg.persona_fire_rate
    total = mu.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = mu / total[:, None]
        ent = -np.where(share > 0, share * np.log(share), 0.0).sum(axis=1)
        k_eff = np.exp(ent)
        norm_ent = ent / np.log(k_main) if k_main > 1 else np.full(n_f, np.nan)
        top = np.argmax(mu, axis=1) if k_main else np.zeros(n_f, dtype=np.int64)
        top_mu = mu[np.arange(n_f), top] if k_main else np.zeros(n_f)
        ctrl = a[:, k_main:, :].sum(axis=(1, 2)) / max(int(present[k_main:].sum()), 1)
        control_ratio = np.where(top_mu > 0, ctrl / top_mu, np.nan) if n_all > k_main else \
            np.zeros(n_f)
        max_min = mu.max(axis=1) / mu.min(axis=1) if k_main else np.full(n_f, np.nan)
    live = total > 0
    p = _friedman(a[:, :k_main][:, :, ctx.complete]) if k_main > 1 else np.full(n_f, np.nan)
    maybe = live & (fires.mean(axis=1) >= cfg.shared_fire_frac) if k_main else live & False
    ranked = [",".join(grid.personas[k] for k in np.argsort(-mu[f], kind="stable")
                       if mu[f, k] > 0) for f in range(n_f)]
    return pd.DataFrame({
        "feature": np.arange(start, stop),
        "argmax_persona": [grid.personas[t] if lv else None for t, lv in zip(top, live,
                                                                            strict=True)],
        "n_docs_firing": np.bincount(c.f_loc, minlength=n_f),
        "fire_frac_personas": fires.mean(axis=1) if k_main else np.zeros(n_f),
        "top_share": np.where(live, share.max(axis=1) if k_main else np.nan, np.nan),
        "k_eff": np.where(live, k_eff, np.nan),
        "norm_entropy": np.where(live, norm_ent, np.nan),
        "auroc": _aurocs(ctx, c, live, top),
        "p_value": np.where(live, p, np.nan),
        "max_min_ratio": np.where(live, max_min, np.nan),
        "ratio_ci_high": _ratio_bound(ctx, c, maybe),
        "control_ratio": np.where(live, control_ratio, np.nan),
        "paraphrase_stability": np.where(live, _stability(grid, c, n_f, top), np.nan),
        "ranked_personas": ranked,
    })


def _labels(cfg: LabelConfig, t: pd.DataFrame, k_main: int) -> tuple[list, list, list]:
    """The label of each feature, in order of precedence, with top_persona / family_set."""
    labels, tops, families = [], [], []
    for row in t.itertuples(index=False):
        top, family = None, None
        significant = bool(row.q_value < cfg.alpha) if np.isfinite(row.q_value) else False
        broad = row.fire_frac_personas >= cfg.shared_fire_frac
        if row.n_docs_firing == 0:
            label = "dead"
        elif row.n_docs_firing < cfg.min_docs:
            label = "rare"
        elif k_main < 2:
            label = "unclear"  # one persona: nothing to compare
        elif (significant and row.top_share >= cfg.specific_share
              and row.k_eff <= cfg.specific_k_eff and row.auroc >= cfg.specific_auroc
              and row.paraphrase_stability >= cfg.specific_stability
              and row.control_ratio <= cfg.specific_control_ratio):
            label, top = "mask-specific", row.argmax_persona
        elif significant and cfg.specific_k_eff < row.k_eff <= cfg.family_fraction * k_main:
            label = "mask-family"
            family = ",".join(row.ranked_personas.split(",")[: int(round(row.k_eff))])
        elif (broad and row.norm_entropy >= cfg.shared_entropy
              and row.ratio_ci_high <= cfg.shared_ratio_bound):
            label = "shared"
        elif broad and significant:
            label = "shared-modulated"
        else:
            label = "unclear"
        labels.append(label)
        tops.append(top)
        families.append(family)
    return labels, tops, families


def shuffled_within_items(doc_features: pd.DataFrame, documents: pd.DataFrame,
                          personas: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """doc_features with the non-control persona labels (persona, paraphrase) permuted among each
    item's documents: any persona effect is destroyed, item effects are kept."""
    rng = np.random.default_rng(seed)
    controls = set(personas.loc[personas["is_control"].astype(bool), "persona"].astype(str))
    docs = documents[["persona", "paraphrase", "item_id"]].astype(
        {"persona": str, "item_id": str}).drop_duplicates().reset_index(drop=True)
    source = np.arange(len(docs))
    main = ~docs["persona"].isin(controls).to_numpy()
    for idx in docs[main].groupby("item_id").indices.values():
        rows = np.flatnonzero(main)[idx]
        source[rows] = rows[rng.permutation(len(rows))]
    where = source[doc_index(doc_features, docs)]
    return pd.DataFrame({
        "persona": pd.Categorical(docs["persona"].to_numpy()[where]),
        "paraphrase": docs["paraphrase"].to_numpy()[where],
        "item_id": pd.Categorical(docs["item_id"].to_numpy()[where]),
        "feature": doc_features["feature"].to_numpy(),
        "mean_act": doc_features["mean_act"].to_numpy()})


def split_persona(doc_features: pd.DataFrame, documents: pd.DataFrame, personas: pd.DataFrame,
                  persona: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """The data with one persona's paraphrases split into two fake personas (first half, second
    half); returns doc_features, documents, personas and the two fake names."""
    n_para = int(documents.loc[documents["persona"].astype(str) == persona, "paraphrase"].max()) + 1
    half = (n_para + 1) // 2
    fake = [f"{persona}__a", f"{persona}__b"]

    def rename(df: pd.DataFrame) -> pd.DataFrame:
        names = pd.Categorical(df["persona"])
        cats = [str(c) for c in names.categories]
        codes = names.codes.copy()
        mine = codes == (cats.index(persona) if persona in cats else -2)
        para = df["paraphrase"].to_numpy()
        second = mine & (para >= half)
        codes[mine & ~second] = len(cats)
        codes[second] = len(cats) + 1
        out = df.copy()
        out["persona"] = pd.Categorical.from_codes(codes, [*cats, *fake])
        out["paraphrase"] = np.where(second, para - half, para).astype(para.dtype)
        return out

    row = personas[personas["persona"].astype(str) == persona].iloc[0]
    pers = personas[personas["persona"].astype(str) != persona].astype({"persona": str})
    extra = pd.DataFrame([{"persona": name, "family": row["family"], "is_control": False}
                          for name in fake])
    pers = pd.concat([extra, pers[["persona", "family", "is_control"]]], ignore_index=True)
    return rename(doc_features), rename(documents), pers, fake
