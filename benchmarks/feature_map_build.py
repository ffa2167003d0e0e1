"""The feature maps `shoggoth index` stores, at 65k features: UMAP (umap-learn, cosine) of the
decoder directions from their FAISS neighbours, against the PCA projection it replaces.

Decoder-like data as in faiss_neighbours.py (`tree`: directions graded at every scale, the way
related features split), 65,536 × 768 by default. Times, in one run: the FAISS index and the
k nearest neighbours (which `index` computes anyway for its `neighbors` table), the UMAP layout
on them, and the PCA; then a check that the map keeps neighbourhoods: the share of each
sampled feature's 10 nearest points on the map that are among its 10 nearest in the full
space (trustworthiness@10), for both layouts.

    python -m benchmarks.feature_map_build [--n 65536] [--d 768] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks.faiss_neighbours import decoder_like
from shoggoth.index.catalog import similarity
from shoggoth.index.catalog.maps import pca_layout, umap_layout


def kept_neighbours(x: np.ndarray, xy: np.ndarray, sample: int = 2000, k: int = 10) -> float:
    """Mean share of a sampled point's k nearest on the map that are among its k nearest in
    the full space (cosine)."""
    import faiss

    rng = np.random.default_rng(1)
    rows = rng.choice(len(x), min(sample, len(x)), replace=False)
    u = similarity.unit_rows(x)
    full = faiss.IndexFlatIP(u.shape[1])
    full.add(u)
    _, true = full.search(u[rows], k + 1)
    flat = faiss.IndexFlatL2(2)
    flat.add(np.ascontiguousarray(xy, dtype=np.float32))
    _, got = flat.search(np.ascontiguousarray(xy[rows], dtype=np.float32), k + 1)
    return float(
        np.mean([len(set(t[1:]) & set(g[1:])) / k for t, g in zip(true, got, strict=True)])
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=65_536)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    x = decoder_like(args.n, args.d, "tree")
    times: dict[str, list[float]] = {
        "faiss index + 15 neighbours": [],
        "umap layout": [],
        "pca layout": [],
    }
    for r in range(args.repeats):
        t = time.perf_counter()
        built = similarity.build(x)
        knn = similarity.neighbours(built, x, 14)
        times["faiss index + 15 neighbours"].append(time.perf_counter() - t)
        t = time.perf_counter()
        xy_umap = umap_layout(x, 15, seed=r, knn=knn)
        times["umap layout"].append(time.perf_counter() - t)
        t = time.perf_counter()
        xy_pca = pca_layout(x)
        times["pca layout"].append(time.perf_counter() - t)
    print(f"{args.n:,} × {args.d} decoder-like directions, medians of {args.repeats} run(s)")
    for what, ts in times.items():
        print(f"  {what:28s}: {statistics.median(ts):7.1f} s")
    print(
        f"  neighbours kept on the map (10 nearest, 2,000 sampled): UMAP "
        f"{kept_neighbours(x, xy_umap):.2f}, PCA {kept_neighbours(x, xy_pca):.2f}"
    )


if __name__ == "__main__":
    main()
