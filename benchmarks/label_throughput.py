"""Label throughput: `index.labels.label_features` at full scale.

65,536 features × 24 personas (20 + 4 controls) × 5 paraphrases × 240 items = 28,800 documents,
about 300 distinct features firing per document (feature popularity follows a power law, as in
real SAEs; a few hundred features are planted persona-specific). Prints the time and the peak
memory (RSS) of one labelling run, median of --repeats. Goal: <= 60 s and <= 4 GB on 2 cores.

    python benchmarks/label_throughput.py [--features 65536] [--per-doc 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index.labels import label_features  # noqa: E402


def synthetic(n_features: int, per_doc: int, seed: int = 0) -> tuple[pd.DataFrame, ...]:
    rng = np.random.default_rng(seed)
    names = [f"persona{i:02d}" for i in range(20)] + [f"control{i}" for i in range(4)]
    personas = pd.DataFrame({"persona": names, "family": [f"f{i // 4}" for i in range(24)],
                             "is_control": [n.startswith("control") for n in names]})
    docs = pd.DataFrame([(p, j, f"item{i:03d}") for p in names for j in range(5)
                         for i in range(240)], columns=["persona", "paraphrase", "item_id"])
    popularity = 1.0 / np.arange(1, n_features + 1) ** 0.8
    popularity /= popularity.sum()
    planted = rng.choice(n_features, 400, replace=False)  # persona-specific features
    feats, doc_idx = [], []
    for d in range(len(docs)):
        f = np.unique(rng.choice(n_features, per_doc, p=popularity))
        p = names.index(docs["persona"].iat[d])
        if p < 20:
            f = np.union1d(f, planted[p * 20 : (p + 1) * 20])
        feats.append(f)
        doc_idx.append(np.full(len(f), d))
    feats_a, doc_a = np.concatenate(feats), np.concatenate(doc_idx)
    frame = pd.DataFrame({"persona": docs["persona"].to_numpy()[doc_a],
                          "paraphrase": docs["paraphrase"].to_numpy()[doc_a],
                          "item_id": docs["item_id"].to_numpy()[doc_a],
                          "feature": feats_a.astype(np.int32),
                          "mean_act": rng.gamma(2, 0.3, len(feats_a)).astype(np.float32)})
    return frame, docs, personas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=65_536)
    ap.add_argument("--per-doc", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    t0 = time.perf_counter()
    frame, docs, personas = synthetic(args.features, args.per_doc)
    gen = time.perf_counter() - t0
    rss_input = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = label_features(frame, docs, personas, args.features)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    per_doc = len(frame) / len(docs)
    print(f"{args.features:,} features × {len(personas)} personas × 5 paraphrases × 240 items: "
          f"{len(docs):,} documents, {len(frame):,} doc_features rows "
          f"({per_doc:.0f} features per document; generated in {gen:.0f} s)")
    print(f"label_features: median {statistics.median(times):.1f} s over {args.repeats} runs "
          f"({', '.join(f'{t:.1f}' for t in times)}); goal <= 60 s")
    print(f"peak RSS: {peak:.2f} GB (of which {rss_input:.2f} GB before labelling: Python, "
          "libraries and the input frames); goal <= 4 GB")
    print("labels:", out["label"].value_counts().to_dict())


if __name__ == "__main__":
    main()
