"""Label throughput: `index.labels.label_features` at full scale.

65,536 features, about 300 distinct features firing per document (feature popularity follows a
power law, as in real SAEs; 20 features per persona are planted persona-specific), on one of two
batteries:

- `legacy`: the battery of the previous labeller's figure (20 personas + 4 controls × 5
  paraphrases × 240 items = 28,800 documents), for a like-for-like comparison;
- `builtin`: the shape of today's built-in battery (18 personas × 5 prompts and 40 controls with
  their prompts: 226 prompts × 240 items in 12 topics = 54,240 documents).

Prints the time and the peak memory (RSS) of labelling, median of --repeats, and with
--calibrate the time of the calibration runs `shoggoth label` adds (3 prompt reassignments and
the split). Goal: within 2× of the previous labeller on `legacy`, <= 4 GB.

    python -m benchmarks.label_throughput [--battery legacy|builtin] [--features 65536]
        [--per-doc 300] [--repeats 3] [--calibrate]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from typing import Any

import numpy as np
import pandas as pd

from shoggoth.battery.personas import load_items, load_personas
from shoggoth.index.labels.frames import HarvestFrames
from shoggoth.index.labels.rules import LabelConfig, label_features
from shoggoth.index.labels.run import calibrate


def battery(kind: str) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """(personas, documents, topics) of the legacy or the built-in battery's shape."""
    if kind == "legacy":
        names = [f"persona{i:02d}" for i in range(20)] + [f"control{i}" for i in range(4)]
        personas = pd.DataFrame(
            {
                "persona": names,
                "family": [f"f{i // 4}" for i in range(24)],
                "is_control": [n.startswith("control") for n in names],
                "control_of": None,
            }
        )
        prompts = [(p, j) for p in names for j in range(5)]
        items = [f"item{i:03d}" for i in range(240)]
        topics = {it: f"topic{i % 12}" for i, it in enumerate(items)}
    else:
        loaded = load_personas()
        personas = pd.DataFrame(
            {
                "persona": [p.name for p in loaded],
                "family": [p.family for p in loaded],
                "is_control": [p.is_control for p in loaded],
                "control_of": [p.control_of for p in loaded],
            }
        )
        prompts = [(p.name, j) for p in loaded for j in range(len(p.prompts))]
        topics = {i.item_id: i.topic for i in load_items()}
        items = list(topics)
    docs = pd.DataFrame(
        [(p, j, it) for p, j in prompts for it in items],
        columns=["persona", "paraphrase", "item_id"],
    )
    return personas, docs, topics


def synthetic(n_features: int, per_doc: int, kind: str, seed: int = 0) -> tuple[Any, ...]:
    rng = np.random.default_rng(seed)
    personas, docs, topics = battery(kind)
    main = personas.loc[~personas["is_control"], "persona"].tolist()
    popularity = 1.0 / np.arange(1, n_features + 1) ** 0.8
    popularity /= popularity.sum()
    planted = rng.choice(n_features, 20 * len(main), replace=False)  # persona-specific
    index = {p: k for k, p in enumerate(main)}
    feats, doc_idx = [], []
    for d, persona in enumerate(docs["persona"]):
        f = np.unique(rng.choice(n_features, per_doc, p=popularity))
        if persona in index:
            k = index[persona]
            f = np.union1d(f, planted[k * 20 : (k + 1) * 20])
        feats.append(f)
        doc_idx.append(np.full(len(f), d))
    feats_a, doc_a = np.concatenate(feats), np.concatenate(doc_idx)
    frame = pd.DataFrame(
        {
            "persona": pd.Categorical(docs["persona"].to_numpy()[doc_a]),
            "paraphrase": docs["paraphrase"].to_numpy()[doc_a],
            "item_id": pd.Categorical(docs["item_id"].to_numpy()[doc_a]),
            "feature": feats_a.astype(np.int32),
            "mean_act": rng.gamma(2, 0.3, len(feats_a)).astype(np.float32),
        }
    )
    return frame, docs, personas, topics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=65_536)
    ap.add_argument("--per-doc", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--battery", choices=["legacy", "builtin"], default="legacy")
    ap.add_argument("--calibrate", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    frame, docs, personas, topics = synthetic(args.features, args.per_doc, args.battery)
    gen = time.perf_counter() - t0
    rss_input = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = label_features(frame, docs, personas, args.features, topics=topics)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    per_doc = len(frame) / len(docs)
    n_prompts = len(docs[["persona", "paraphrase"]].drop_duplicates())
    print(
        f"{args.battery} battery: {args.features:,} features × {len(personas)} personas and "
        f"controls, {n_prompts} prompts × 240 items: "
        f"{len(docs):,} documents, {len(frame):,} doc_features rows "
        f"({per_doc:.0f} features per document; generated in {gen:.0f} s)"
    )
    print(
        f"label_features: median {statistics.median(times):.1f} s over {args.repeats} runs "
        f"({', '.join(f'{t:.1f}' for t in times)})"
    )
    print(
        f"peak RSS: {peak:.2f} GB (of which {rss_input:.2f} GB before labelling: Python, "
        "libraries and the input frames); goal <= 4 GB"
    )
    print("labels:", out["label"].value_counts().to_dict())
    if args.calibrate:
        t0 = time.perf_counter()
        frames = HarvestFrames(frame, docs, personas, topics, args.features)
        calib = calibrate(frames, LabelConfig(), 3, [])
        print(
            f"calibration (3 prompt reassignments + split): {time.perf_counter() - t0:.1f} s; "
            f"runs: {', '.join(calib['run'].unique())}"
        )


if __name__ == "__main__":
    main()
