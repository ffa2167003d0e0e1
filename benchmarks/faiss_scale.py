"""Similarity at millions of features: `index.similarity.build_ivf` (inverted file, 8-bit scalar
codes, built in checkpointed chunks) on decoder-like directions (benchmarks/faiss_neighbours.py,
`tree` data), against exact search on held-out queries, in one run.

    python -m benchmarks.faiss_scale [--n 2000000] [--d 768] [--queries 200]

Prints the build time (training, adding), the index's memory (its serialized size, and the
process's peak RSS), recall@10 of held-out queries (directions not in the index) against exact
search, p50/p95 of one query's 10 neighbours, and the extrapolation to 10M features.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from benchmarks.faiss_neighbours import decoder_like
from shoggoth.index.catalog.similarity import build_ivf, unit_rows


def write_data(folder: Path, n: int, queries: int, d: int) -> None:
    rows = unit_rows(decoder_like(n + queries, d, "tree"))
    np.save(folder / "x.npy", rows[:n])
    np.save(folder / "held.npy", rows[n:])


def exact_top10(x: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Exact 10 nearest rows of each query, 500k rows at a time."""
    best_s = np.full((len(queries), 10), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 10), dtype=np.int64)
    for s in range(0, len(x), 500_000):
        flat = faiss.IndexFlatIP(x.shape[1])
        flat.add(np.ascontiguousarray(x[s : s + 500_000]))
        sim, idx = flat.search(queries, 10)
        both_s, both_i = np.hstack([best_s, sim]), np.hstack([best_i, idx + s])
        order = np.argsort(-both_s, axis=1, kind="stable")[:, :10]
        best_s, best_i = np.take_along_axis(both_s, order, 1), np.take_along_axis(both_i, order, 1)
    return best_i


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # The directions go to disk and are read back as a memory map, as a decoder of 10M
        # features would be: the build reads them a chunk at a time.
        # Generated in a child process, so that this one's peak RSS is the build's own.
        child = multiprocessing.get_context("spawn").Process(
            target=write_data, args=(Path(tmp), args.n, args.queries, args.d)
        )
        child.start()
        child.join()
        x = np.load(Path(tmp) / "x.npy", mmap_mode="r")
        held = np.load(Path(tmp) / "held.npy")
        print(
            f"{args.n:,} × {args.d} decoder-like directions ({x.nbytes / 1e9:.1f} GB float32, "
            f"memory-mapped), {args.queries} held-out queries, "
            f"{faiss.omp_get_max_threads()} threads"
        )
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        built = build_ivf(x, checkpoint=Path(tmp) / "ivf.faiss")
        build_s = time.perf_counter() - t
        truth = exact_top10(x, held)
    index = built.index
    size = len(faiss.serialize_index(index))
    print(
        f"build (train, add in checkpointed chunks, tune nprobe): {build_s:.0f} s · "
        f"{index.nlist} lists · nprobe {built.ef_search} · index {size / 1e9:.2f} GB "
        f"({size / args.n:.0f} bytes per feature) · peak RSS of the build "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB (from "
        f"{before / 1e6:.1f} GB; pages of the memory-mapped input count while resident)"
    )
    _, got = index.search(held, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth, strict=True)])
    lat = []
    for q in held:
        t = time.perf_counter()
        index.search(q[None], 10)
        lat.append((time.perf_counter() - t) * 1000)
    p50, p95 = statistics.median(lat), float(np.percentile(lat, 95))
    print(
        f"held-out recall@10 {recall:.3f} (goal >= 0.95: {'met' if recall >= 0.95 else 'MISSED'})"
        f" · one query p50 {p50:.2f} ms, p95 {p95:.2f} ms (goal p50 <= 5 ms: "
        f"{'met' if p50 <= 5 else 'MISSED'})"
    )
    scale = 10_000_000 / args.n
    print(
        f"extrapolated to 10M × {args.d}: index {size * scale / 1e9:.1f} GB, build "
        f"~{build_s * scale / 60:.0f} min; lists grow as √N, so at the same nprobe a query "
        f"scans √{scale:.0f} = {scale**0.5:.1f}× the codes: p50 ~{p50 * scale**0.5:.1f} ms "
        "(or raise the list count and keep nprobe)"
    )


if __name__ == "__main__":
    main()
