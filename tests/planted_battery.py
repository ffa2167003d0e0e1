"""A planted battery shaped like the built-in one, with the ways real models break a labeller.

18 personas in 6 families, 5 paraphrases each; every persona has a mention and a negation control
(2 paraphrases each); 4 baseline controls (no prompt, empty, neutral, random words); 240 items in
12 topics. Activations are heavy-tailed (log-normal magnitudes) with item and topic effects, a
background firing rate, and optionally a random effect per prompt (wording) on every feature.

Kinds of feature (`truth[feature] = (kind, target)`) and the label each should get:
mask-specific (one persona); mention (the persona *and* its mention and negation controls:
persona-concept); mention-weak (the same, with the controls firing at 0.3× the persona's rate);
single-paraphrase (one wording of one persona); two-persona and family (mask-family);
prompt-length (firing grows with the system prompt's length); controls-only; shared (all
equal); shared-1.3 (personas spread within a factor 1.3); shared-one-1.3 (one persona at 1.3×
the rest: inside the equivalence bound of 1.5, so shared is right); shared-1.6 (one persona at
1.6× the rest: outside it, so shared is wrong); shared-modulated (half the personas 3×);
dense-modulated (every persona and control fires it, one persona 2.5× as strongly: the shape of
a difference dictionary's shared features, which is shared-modulated, not mask-specific);
mask-general (every persona, not the baseline controls); noise (no persona effect: sparse, or
dense); rare and dead.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KINDS = (
    "dead",
    "rare",
    "mask-specific",
    "mention",
    "mention-weak",
    "single-paraphrase",
    "two-persona",
    "family",
    "prompt-length",
    "controls-only",
    "shared",
    "shared-1.3",
    "shared-1.6",
    "shared-modulated",
    "dense-modulated",
    "mask-general",
    "noise-sparse",
    "noise-dense",
    "shared-one-1.3",
)
EXPECTED = {
    "dead": "dead",
    "rare": "rare",
    "mask-specific": "mask-specific",
    "mention": "persona-concept",
    "mention-weak": "persona-concept",
    "two-persona": "mask-family",
    "family": "mask-family",
    "shared": "shared",
    "shared-modulated": "shared-modulated",
    "dense-modulated": "shared-modulated",
    "mask-general": "mask-general",
}
"""The label each kind should get, where one is right (others: anything but a persona label)."""
MASK_LABELS = ("mask-specific", "mask-family", "mask-or-concept")
"""Labels that claim a mask."""


def battery(
    n_families: int = 6,
    per_family: int = 3,
    n_para: int = 5,
    ctrl_para: int = 2,
    n_items: int = 240,
    n_topics: int = 12,
    matched: bool = True,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str], np.ndarray]:
    """(personas, documents, topics, prompt length of each document)."""
    rng = np.random.default_rng(seed)
    rows, prompts = [], []
    main = [f"p{f}_{m}" for f in range(n_families) for m in range(per_family)]
    for name in main:
        rows.append((name, f"fam{name[1 : name.index('_')]}", False, None))
        prompts += [(name, j) for j in range(n_para)]
    for name in main if matched else []:
        for kind in ("mention", "negated"):
            rows.append((f"control_{kind}_{name}", "control", True, name))
            prompts += [(f"control_{kind}_{name}", j) for j in range(ctrl_para)]
    for name, n in (
        ("control_none", 1),
        ("control_empty", 1),
        ("control_neutral", n_para),
        ("control_random", n_para),
    ):
        rows.append((name, "control", True, None))
        prompts += [(name, j) for j in range(n)]
    personas = pd.DataFrame(rows, columns=["persona", "family", "is_control", "control_of"])
    items = [f"item{i:03d}" for i in range(n_items)]
    topics = {it: f"topic{i % n_topics}" for i, it in enumerate(items)}
    length = {p: float(rng.uniform(30, 130)) for p in prompts}
    docs = pd.DataFrame(
        [(p, j, it) for p, j in prompts for it in items],
        columns=["persona", "paraphrase", "item_id"],
    )
    lengths = np.array([length[(p, j)] for p, j in prompts]).repeat(n_items)
    return personas, docs, topics, lengths


def planted(
    seed: int = 0,
    per_kind: int = 20,
    background: float = 0.014,
    wording: float = 0.15,
    null: bool = False,
    matched: bool = True,
    n_items: int = 240,
    kinds: tuple[str, ...] = KINDS,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, str], dict[int, tuple[str, object]]]:
    """(doc_features, documents, personas, topics, truth). `wording`: each prompt multiplies
    each feature by a factor uniform in 1 ± wording; `null`: every feature is a noise feature."""
    rng = np.random.default_rng(seed)
    personas, docs, topics, lengths = battery(n_items=n_items, matched=matched, seed=seed)
    main = personas.loc[~personas["is_control"], "persona"].tolist()
    families = personas[~personas["is_control"]].groupby("family")["persona"].apply(list)
    persona = docs["persona"].to_numpy()
    prompt = pd.factorize(docs["persona"] + "/" + docs["paraphrase"].astype(str))[0]
    item = docs["item_id"].str[4:].astype(int).to_numpy()
    topic = np.array([int(topics[f"item{i:03d}"][5:]) for i in range(n_items)])
    item_eff = rng.gamma(4, 0.25, n_items) * rng.gamma(6, 1 / 6, topic.max() + 1)[topic]
    kinds = (
        ["noise-sparse", "noise-dense"] * per_kind * 4
        if null
        else [k for k in kinds for _ in range(per_kind)]
    )
    truth = {}
    hits, features, values = [], [], []
    # Per document, computed once (not per feature): which are baseline controls.
    text = persona.astype(str)
    baseline = (
        np.char.startswith(text, "control_")
        & ~np.char.startswith(text, "control_mention")
        & ~np.char.startswith(text, "control_negated")
    )
    for feature, kind in enumerate(kinds):
        rate, scale, target = _plant(
            rng, kind, feature, persona, docs, main, families, lengths, baseline
        )
        fire = rng.random(len(docs)) < rate
        effect = rng.uniform(1 - wording, 1 + wording, prompt.max() + 1)[prompt]
        value = np.where(
            fire, scale * item_eff[item] * effect * rng.lognormal(0, 0.8, len(docs)), 0.0
        )
        if kind not in ("dead", "rare"):
            bg = (rng.random(len(docs)) < background) & (value == 0)
            value[bg] = rng.gamma(1, 0.3, bg.sum()) * item_eff[item[bg]]
        truth[feature] = (kind, target)
        hit = np.flatnonzero(value > 0)
        hits.append(hit)
        features.append(np.full(len(hit), feature))
        values.append(value[hit])
    # One frame from every feature's rows (built once: per feature it took most of the time).
    hit = np.concatenate(hits)
    frame = pd.DataFrame(
        {
            "persona": persona[hit],
            "paraphrase": docs["paraphrase"].to_numpy()[hit],
            "item_id": docs["item_id"].to_numpy()[hit],
            "feature": np.concatenate(features),
            "mean_act": np.concatenate(values),
        }
    )
    frame["persona"] = pd.Categorical(frame["persona"])
    return frame, docs, personas, topics, truth


def _plant(
    rng: np.random.Generator,
    kind: str,
    feature: int,
    persona: np.ndarray,
    docs: pd.DataFrame,
    main: list[str],
    families: pd.Series,
    lengths: np.ndarray,
    baseline: np.ndarray,
) -> tuple[np.ndarray, np.ndarray | float, object]:
    """(firing rate per document, magnitude scale, target) of one planted feature.
    `baseline`: which documents are under a baseline control (not a mention or negation)."""
    n = len(persona)
    rate, scale, target = np.zeros(n), 1.0, None
    if kind == "rare":
        rate[rng.choice(n, size=int(rng.integers(3, 12)), replace=False)] = 1.0
    elif kind in ("mask-specific", "mention", "mention-weak"):
        target = main[feature % len(main)]
        on = persona == target
        mentions = np.isin(persona, [f"control_mention_{target}", f"control_negated_{target}"])
        if kind == "mention":
            on |= mentions
        rate[on] = rng.uniform(0.3, 0.7)
        if kind == "mention-weak":
            rate[mentions] = 0.3 * rate[on].max()
    elif kind == "single-paraphrase":
        target = main[feature % len(main)]
        rate[(persona == target) & (docs["paraphrase"].to_numpy() == feature % 5)] = 0.6
    elif kind in ("two-persona", "family"):
        if kind == "family":
            target = sorted(families.index)[feature % len(families)]
            members = families[target]
        else:
            members = list(rng.choice(main, 2, replace=False))
            target = ",".join(sorted(members))
        rate[np.isin(persona, members)] = rng.uniform(0.3, 0.7)
    elif kind == "prompt-length":
        rate = 0.02 + 0.5 * (lengths - 30) / 100
    elif kind == "controls-only":
        rate[baseline] = 0.5
    elif kind.startswith("shared") or kind in ("dense-modulated", "mask-general", "noise-dense"):
        rate[:] = 0.6 if kind != "noise-dense" else 0.3
        mult = np.ones(n)
        if kind == "shared-1.3":  # every persona within a factor 1.3 of every other
            for p in main:
                mult[persona == p] = rng.uniform(1.0, 1.3)
        elif kind in ("shared-1.6", "shared-one-1.3"):  # one persona at 1.6x (1.3x) the others
            target = main[feature % len(main)]
            mult[persona == target] = 1.6 if kind == "shared-1.6" else 1.3
        elif kind == "dense-modulated":  # everyone fires it, one persona 2.5x as strongly
            target = main[feature % len(main)]
            mult[persona == target] = 2.5
        elif kind == "shared-modulated":
            mult[np.isin(persona, main[::2])] = 3.0
        elif kind == "mask-general":
            rate[baseline] = 0.02
        scale = mult
    elif kind == "noise-sparse":
        rate[:] = 0.03
    return rate, scale, target


NO_EFFECT = ("noise-sparse", "noise-dense", "prompt-length", "controls-only")


def score(out: pd.DataFrame, truth: dict[int, tuple[str, object]]) -> dict[str, float]:
    """The issue's targets measured on one labelling of planted data."""
    kind = out["feature"].map(lambda f: truth[f][0])
    target = out["feature"].map(lambda f: truth[f][1])
    label = out["label"]
    masked = label.isin(MASK_LABELS)
    specific = label == "mask-specific"
    right = specific & (kind == "mask-specific") & (out["top_persona"] == target)

    def share(kinds: tuple[str, ...], hit: pd.Series) -> float:
        sel = kind.isin(kinds)
        return float(hit[sel].mean()) if sel.any() else float("nan")

    shared = label.isin(["shared", "mask-general"])
    return {
        "mask-specific recall": float(right.sum() / max((kind == "mask-specific").sum(), 1)),
        "mask-specific precision": float(right.sum() / max(specific.sum(), 1)),
        "mention given a mask label": share(("mention", "mention-weak"), masked),
        "single-paraphrase given a mask label": share(("single-paraphrase",), masked),
        "no-effect given a mask label": share(NO_EFFECT, masked),
        "two-persona and family labelled mask-family": share(
            ("two-persona", "family"), label == "mask-family"
        ),
        "one persona at 1.6x labelled shared": share(("shared-1.6",), shared),
        "dense-modulated labelled mask-specific": share(("dense-modulated",), specific),
        "within 1.3x labelled shared": share(("shared-1.3",), shared),
        "one persona at 1.3x labelled shared": share(("shared-one-1.3",), shared),
        "equal labelled shared": share(("shared",), shared),
    }
