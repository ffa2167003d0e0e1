"""The labeller against issue 16's targets, on the planted battery of tests/planted_battery.py.

Four conditions (background firing 0.05% or 1.4%; wording effects ±15% on or off), --seeds
planted batteries each (18 personas × 5 prompts, matched mention/negation controls, 240 items in
12 topics, --per-kind features of each planted kind). For each condition, the median over seeds
of: mask-specific recall and precision (right persona), the share of mention-driven,
single-paraphrase and no-effect features given a mask label, mask-family recall, how often a
feature with one persona at 1.6× (and one with one persona at 1.3×, inside the bound; one with
every persona within 1.3×; an equal one) is labelled shared, and
the share of live features given a persona label once the prompts are reassigned to random
personas (2 reassignments per battery). Then the KS test of the p-values under the null battery
and under reassignment (one feature per kind, pooled over 25 reassignments).

    python -m benchmarks.label_targets [--seeds 3] [--per-kind 20] [--shared-point-ratio 1.25]

(--shared-point-ratio 1.5, the bound itself, shows the labeller without its point-estimate rule.)
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
from scipy import stats

from shoggoth.index.labels.nulls import reassign_prompts
from shoggoth.index.labels.rules import PERSONA_LABELS, LabelConfig, label_features
from tests.planted_battery import planted, score

TARGETS = {
    "mask-specific recall": ">= 0.8",
    "mask-specific precision": ">= 0.9",
    "mention given a mask label": "<= 0.05",
    "single-paraphrase given a mask label": "<= 0.05",
    "no-effect given a mask label": "<= 0.05",
    "two-persona and family labelled mask-family": "",
    "one persona at 1.6x labelled shared": "0",
    "one persona at 1.6x labelled shared, worst seed": "0",
    "one persona at 1.3x labelled shared": "",
    "within 1.3x labelled shared": ">= 0.5",
    "equal labelled shared": "",
    "reassigned: live features given a persona label": "<= 0.01",
}


def condition(
    background: float, wording: float, seeds: int, per_kind: int, config: LabelConfig
) -> dict[str, float]:
    runs = []
    for seed in range(seeds):
        df, docs, personas, topics, truth = planted(seed, per_kind, background, wording)
        out = label_features(df, docs, personas, len(truth), config, topics=topics)
        s = score(out, truth)
        live = out["n_docs_firing"] > 0
        shares = []
        for r in range(2):
            rdf, rdocs = reassign_prompts(df, docs, personas, 100 + r)
            null = label_features(rdf, rdocs, personas, len(truth), config, topics=topics)
            shares.append(float(null.loc[live, "label"].isin(PERSONA_LABELS).mean()))
        s["reassigned: live features given a persona label"] = max(shares)
        runs.append(s)
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out["one persona at 1.6x labelled shared, worst seed"] = max(
        r["one persona at 1.6x labelled shared"] for r in runs
    )
    return out


def uniformity() -> tuple[float, float]:
    """KS p-values of the persona test under the null battery and under reassignment."""
    df, docs, personas, topics, truth = planted(11, per_kind=10, null=True)
    null_p = label_features(df, docs, personas, len(truth), topics=topics)["p_value"].dropna()
    df, docs, personas, topics, truth = planted(12, per_kind=1)
    pooled = []
    for seed in range(25):
        rdf, rdocs = reassign_prompts(df, docs, personas, seed)
        pooled.append(label_features(rdf, rdocs, personas, len(truth), topics=topics)["p_value"])
    return (
        float(stats.kstest(null_p, "uniform").pvalue),
        float(stats.kstest(pd.concat(pooled).dropna(), "uniform").pvalue),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--per-kind", type=int, default=20)
    ap.add_argument("--shared-point-ratio", type=float, default=LabelConfig().shared_point_ratio)
    args = ap.parse_args()
    config = LabelConfig(shared_point_ratio=args.shared_point_ratio)
    started = time.time()
    conditions = [(bg, w) for bg in (0.0005, 0.014) for w in (0.0, 0.15)]
    results = {c: condition(*c, args.seeds, args.per_kind, config) for c in conditions}
    heads = [f"bg {100 * bg:g}%, wording {'±15%' if w else 'off'}" for bg, w in conditions]
    print(
        f"{'measure (median of ' + str(args.seeds) + ' seeds)':56s}{'target':>9s}"
        + "".join(f"{h:>26s}" for h in heads)
    )
    for key, target in TARGETS.items():
        print(f"{key:56s}{target:>9s}" + "".join(f"{results[c][key]:26.3f}" for c in conditions))
    null_ks, reassigned_ks = uniformity()
    print(
        f"KS p-value of the persona test's p-values: null battery {null_ks:.3f}, "
        f"reassigned prompts {reassigned_ks:.3f} (uniform: > 0.01)"
    )
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
