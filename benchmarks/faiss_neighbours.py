"""FAISS neighbours among 1M x 768 decoder rows: `index.similarity` (HNSW above --exact-max,
efSearch raised until recall@10 >= 0.95) against exact search and brute-force numpy.

The data stands in for a decoder: real SAE decoders are not isotropic noise. Features split
into families of related directions, families into coarser ones, and so on (feature splitting
across dictionary sizes). Three kinds, `--data`:

- `tree` (default): every row is the sum of one random direction per level of a tree
  (--levels 6, --branching 8, equal weight per level, 66% of the norm) plus noise (34%). Two
  rows that share k levels have cosine ~0.11 k, so similarity is graded at every scale, as it is
  among real features.
- `families`: two levels only, 64 rows per parent and 8 per group: siblings at cosine ~0.7,
  cousins ~0.45, and the 15,625 parents of 1M rows nearly orthogonal to one another. Graph
  search gets no signal until it reaches the right parent.
- `random`: isotropic Gaussian rows, the worst case for any approximate index: every row is
  nearly equidistant from every other and the 10 "nearest" are noise.

The script prints the median cosine of the 1st and 10th exact neighbour, so the regime is
visible.

Prints build time, p50/p95 latency of one feature's 10 neighbours (single queries, as the
explorer asks them), recall@10 against exact search on the same queries, and the p50 of exact
FAISS flat search and of brute-force numpy (matrix-vector product + argpartition), with ratios.

    python -m benchmarks.faiss_neighbours [--n 1000000] [--data tree|families|random]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import faiss
import numpy as np

from shoggoth.index.catalog.similarity import (
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    build,
    recall_per_query,
    unit_rows,
)


def decoder_like(
    n: int, d: int, kind: str, levels: int = 6, branching: int = 8, seed: int = 0
) -> np.ndarray:
    rng = np.random.default_rng(seed)

    def directions(m: int) -> np.ndarray:
        return unit_rows(rng.standard_normal((m, d), dtype=np.float32))

    if kind == "tree":
        nodes = [directions(branching ** (level + 1)) for level in range(levels)]
        leaf = rng.integers(0, branching**levels, n)
        w_level, w_noise = np.sqrt(0.66 / levels), np.sqrt(0.34)
    elif kind == "families":
        parents = directions(max(1, n // 64))
        n_groups = max(1, n // 8)
        groups = parents[rng.integers(0, len(parents), n_groups)] + 0.8 * directions(n_groups)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 65_536):
        e = min(n, s + 65_536)
        noise = directions(e - s)
        if kind == "random":
            x[s:e] = noise
        elif kind == "families":
            x[s:e] = groups[rng.integers(0, n_groups, e - s)] + 0.8 * noise
        else:
            x[s:e] = w_noise * noise
            for level, dirs in enumerate(nodes):
                x[s:e] += w_level * dirs[leaf[s:e] // branching ** (levels - 1 - level)]
    return unit_rows(x)


def ms(
    fn: Callable[[np.ndarray], np.ndarray], queries: np.ndarray
) -> tuple[list[float], list[np.ndarray]]:
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(fn(q))
        times.append((time.perf_counter() - t) * 1000)
    return times, found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--data", choices=["tree", "families", "random"], default="tree")
    ap.add_argument("--levels", type=int, default=6)
    ap.add_argument("--branching", type=int, default=8)
    ap.add_argument(
        "--ef-construction",
        type=int,
        default=HNSW_EF_CONSTRUCTION,
        help="HNSW build beam (default: what `shoggoth index` uses)",
    )
    ap.add_argument(
        "--queries",
        type=int,
        default=1000,
        help="held-out rows for HNSW latency and recall (exact timings use fewer)",
    )
    args = ap.parse_args()
    print(f"{args.n:,} x {args.d} {args.data} rows, {faiss.omp_get_max_threads()} threads")
    x = decoder_like(args.n, args.d, args.data, args.levels, args.branching)
    t = time.perf_counter()
    built = build(x, exact_max=0, ef_construction=args.ef_construction)
    print(
        f"HNSW build (M={HNSW_M}, efConstruction={args.ef_construction}) + recall calibration: "
        f"{time.perf_counter() - t:.0f} s; efSearch {built.ef_search}, build-time recall@10 "
        f"{built.recall_at_10:.3f}"
    )
    rng = np.random.default_rng(1)
    ids = rng.choice(args.n, args.queries, replace=False)
    queries = x[ids]
    flat = faiss.IndexFlatIP(args.d)
    flat.add(x)

    def hnsw(q: np.ndarray) -> np.ndarray:
        return built.index.search(q[None], 11)[1][0]

    def exact(q: np.ndarray) -> np.ndarray:
        return flat.search(q[None], 11)[1][0]

    def numpy_brute(q: np.ndarray) -> np.ndarray:
        sims = x @ q
        top = np.argpartition(-sims, 11)[:11]
        return top[np.argsort(-sims[top])]

    t_h, got = ms(hnsw, queries)
    _, truth = flat.search(queries, 11)  # batched: the reference, not a timing
    t_f, flat_rows = ms(exact, queries[:50])
    t_b, brute = ms(numpy_brute, queries[:20])
    cos = np.array(
        [queries[i] @ x[[j for j in row if j != ids[i]][:10]].T for i, row in enumerate(truth)]
    )
    print(
        f"exact neighbours: median cosine {np.median(cos[:, 0]):.2f} (1st), "
        f"{np.median(cos[:, 9]):.2f} (10th)"
    )

    recall = recall_per_query(np.array(got), truth, ids).mean()
    assert (recall_per_query(np.array(brute), truth[:20], ids[:20]) == 1).all()
    assert (recall_per_query(np.array(flat_rows), truth[:50], ids[:50]) == 1).all()
    p50 = statistics.median(t_h)
    met = p50 <= 5 and recall >= 0.95
    print(
        f"HNSW: p50 {p50:.2f} ms, p95 {np.percentile(t_h, 95):.2f} ms, recall@10 "
        f"{recall:.3f} (goal <= 5 ms at >= 0.95: {'met' if met else 'MISSED'})"
    )
    print(
        f"exact FAISS flat (50 queries): p50 {statistics.median(t_f):.1f} ms; numpy brute force "
        f"(20 queries): p50 {statistics.median(t_b):.1f} ms"
    )
    print(
        f"ratio exact flat / HNSW: {statistics.median(t_f) / p50:.1f}x; numpy brute force / "
        f"HNSW: {statistics.median(t_b) / p50:.1f}x"
    )


if __name__ == "__main__":
    main()
