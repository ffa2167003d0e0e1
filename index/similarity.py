"""FAISS similarity over feature directions: exact inner-product search up to a size, HNSW above
it (with its recall@10 measured against exact search), saved beside the database."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import write_atomic

# Graph degree and build beam for HNSW, from benchmarks/faiss_neighbours.py at 1M x 768: on
# `families` data efConstruction 40 built in 457 s but needed efSearch 2048 (20 ms a query); 80
# took 911 s and needed efSearch 64 (0.9 ms). Query latency is what the explorer waits on; the
# build runs once.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80


@dataclass
class BuiltIndex:
    """A FAISS index over unit vectors, and how well it finds the exact neighbours."""

    index: Any
    kind: str
    """'flat' (exact IndexFlatIP) or 'hnsw' (IndexHNSWFlat, inner product)."""
    recall_at_10: float
    """Recall of the 10 nearest neighbours against exact search (1.0 for flat)."""
    ef_search: int | None


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32 and contiguous."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def recall_per_query(got: np.ndarray, truth: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Each query's share of its exact neighbours that `got` found, leaving out the query row
    itself (as `neighbours` does)."""
    def others(row: np.ndarray, i: int) -> set[int]:
        return {int(j) for j in row if j != i}

    return np.array([len(others(a, i) & others(b, i)) / len(others(b, i))
                     for a, b, i in zip(got, truth, ids, strict=True)])


def build(vectors: np.ndarray, exact_max: int = 100_000, target_recall: float = 0.95,
          sample: int = 1000, seed: int = 0, max_ef: int = 4096, m: int = HNSW_M,
          ef_construction: int = HNSW_EF_CONSTRUCTION) -> BuiltIndex:
    """Index unit `vectors` for cosine search: exact up to `exact_max` rows, otherwise HNSW with
    efSearch doubled until the lower 95% bound of recall@10 on `sample` rows (their neighbours
    other than themselves) reaches `target_recall`. Where no efSearch up to `max_ef` reaches it
    (near-isotropic directions, where the graph has nothing to follow), the exact index is
    returned instead: it is then both exact and no slower."""
    import faiss

    x = unit_rows(vectors)
    n, d = x.shape
    if n <= exact_max:
        flat = faiss.IndexFlatIP(d)
        flat.add(x)
        return BuiltIndex(flat, "flat", 1.0, None)
    hnsw = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = ef_construction
    hnsw.add(x)
    rng = np.random.default_rng(seed)
    ids = rng.choice(n, min(sample, n), replace=False)
    queries = x[ids]
    exact = faiss.IndexFlatIP(d)
    exact.add(x)
    _, truth = exact.search(queries, 11)

    ef = 16
    while ef <= max_ef:
        hnsw.hnsw.efSearch = ef
        _, got = hnsw.search(queries, 11)
        per_query = recall_per_query(got, truth, ids)
        recall = float(per_query.mean())
        # the sample's recall is an estimate: ask its lower 95% bound to reach the target, so
        # that queries outside the sample reach it too
        if recall - 1.96 * per_query.std() / np.sqrt(len(per_query)) >= target_recall:
            break
        ef *= 2
    else:
        return BuiltIndex(exact, "flat", 1.0, None)
    return BuiltIndex(hnsw, "hnsw", recall, hnsw.hnsw.efSearch)


def neighbours(built: BuiltIndex, vectors: np.ndarray, k: int = 10,
               batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other rows of every row: (indices [n, k], cosines [n, k])."""
    x = unit_rows(vectors)
    ids, sims = [], []
    for s in range(0, len(x), batch):
        sim, idx = built.index.search(x[s : s + batch], k + 1)
        for row, (i_row, s_row) in enumerate(zip(idx, sim, strict=True)):
            keep = i_row != s + row  # drop the row itself
            ids.append(i_row[keep][:k])
            sims.append(s_row[keep][:k])
    return np.array(ids), np.array(sims)


def save(index: Any, path: Path) -> None:
    """Write a FAISS index atomically (temporary file, then rename)."""
    import faiss

    write_atomic(path, lambda tmp: faiss.write_index(index, tmp))
