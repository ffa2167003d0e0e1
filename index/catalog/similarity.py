"""FAISS similarity over feature directions: exact inner-product search up to a size, HNSW above
it, and for millions of features an inverted file over 8-bit scalar-quantised vectors (one byte
per dimension: 10M features × 768 dimensions fit in 7.7 GB), each with its recall@10 measured
against exact search, saved beside the database."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from shoggoth.core.atomic import write_atomic

if TYPE_CHECKING:
    import faiss


# Graph degree and build beam for HNSW, from benchmarks/faiss_neighbours.py at 1M x 768: on
# `families` data efConstruction 40 built in 457 s but needed efSearch 2048 (20 ms a query); 80
# took 911 s and needed efSearch 64 (0.9 ms). Query latency is what the explorer waits on; the
# build runs once.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80


@dataclass
class BuiltIndex:
    """A FAISS index over unit vectors, and how well it finds the exact neighbours."""

    index: faiss.Index
    kind: str
    """'flat' (exact IndexFlatIP), 'hnsw' (IndexHNSWFlat, inner product) or 'ivf-sq8'
    (IndexIVFScalarQuantizer, 8 bits per dimension)."""
    recall_at_10: float
    """Recall of the 10 nearest neighbours against exact search (1.0 for flat)."""
    ef_search: int | None
    """HNSW's efSearch, or the inverted file's nprobe (lists searched per query)."""


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32 and contiguous."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return cast("np.ndarray", np.divide(x, norms, out=np.zeros_like(x), where=norms > 0))


def recall_per_query(got: np.ndarray, truth: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Each query's share of its exact neighbours that `got` found, leaving out the query row
    itself (as `neighbours` does)."""

    def others(row: np.ndarray, i: int) -> set[int]:
        return {int(j) for j in row if j != i}

    return np.array(
        [
            len(others(a, i) & others(b, i)) / len(others(b, i))
            for a, b, i in zip(got, truth, ids, strict=True)
        ]
    )


def sample_truth(
    x: np.ndarray, sample: int, seed: int, rows: int = 1_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """Rows drawn at random (ids) and their exact 11 nearest rows (themselves included), by
    exact search over `rows` at a time, each chunk scaled to unit length as it is read (so `x`
    may be a memory map larger than memory)."""
    import faiss

    ids = np.sort(np.random.default_rng(seed).choice(len(x), min(sample, len(x)), replace=False))
    queries = unit_rows(x[ids])
    best_s = np.full((len(ids), 11), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(ids), 11), dtype=np.int64)
    for s in range(0, len(x), rows):
        part = faiss.IndexFlatIP(x.shape[1])
        part.add(unit_rows(x[s : s + rows]))
        sim, idx = part.search(queries, 11)
        both_s, both_i = np.hstack([best_s, sim]), np.hstack([best_i, idx + s])
        order = np.argsort(-both_s, axis=1, kind="stable")[:, :11]
        best_s = np.take_along_axis(both_s, order, 1)
        best_i = np.take_along_axis(both_i, order, 1)
    return ids, best_i


def tune(
    index: faiss.Index,
    queries: np.ndarray,
    truth: np.ndarray,
    ids: np.ndarray,
    set_knob: Any,
    target: float,
    start: int,
    limit: int,
) -> tuple[int, float] | None:
    """Double a search knob (efSearch, nprobe) from `start` until the lower 95% bound of
    recall@10 on the sample reaches `target`; (knob, recall), or None when `limit` does not."""
    knob = start
    while knob <= limit:
        set_knob(knob)
        _, got = index.search(queries, 11)
        per_query = recall_per_query(got, truth, ids)
        recall = float(per_query.mean())
        # the sample's recall is an estimate: ask its lower 95% bound to reach the target, so
        # that queries outside the sample reach it too
        if recall - 1.96 * per_query.std() / np.sqrt(len(per_query)) >= target:
            return knob, recall
        knob *= 2
    return None


def build_ivf(
    vectors: np.ndarray,
    checkpoint: Path | None = None,
    target_recall: float = 0.95,
    sample: int = 1000,
    seed: int = 0,
    chunk: int = 250_000,
    train_rows: int = 65_536,
) -> BuiltIndex:
    """An inverted file (√N·2 lists, flat coarse quantiser, 8-bit scalar codes) over the rows of
    `vectors` scaled to unit length, nprobe doubled until recall@10 reaches `target_recall`.
    Rows are read `chunk` at a time, so `vectors` may be a memory map larger than memory. With
    `checkpoint`, the trained index and every chunk added are saved there atomically, and a
    build that finds a checkpoint continues from it: a killed build loses one chunk at most."""
    import faiss

    n, d = vectors.shape
    index = faiss.read_index(str(checkpoint)) if checkpoint and checkpoint.is_file() else None
    if index is None or index.d != d or index.ntotal > n:
        nlist = int(2 ** round(np.log2(max(16.0, 2 * np.sqrt(n)))))
        index = faiss.IndexIVFScalarQuantizer(
            faiss.IndexFlatIP(d),
            d,
            nlist,
            faiss.ScalarQuantizer.QT_8bit,
            faiss.METRIC_INNER_PRODUCT,
        )
        rng = np.random.default_rng(seed)
        index.train(
            unit_rows(
                vectors[np.sort(rng.choice(n, min(n, max(train_rows, 40 * nlist)), replace=False))]
            )
        )
        if checkpoint:
            save(index, checkpoint)
    nlist = int(faiss.extract_index_ivf(index).nlist)  # (a resumed index says its own)
    while index.ntotal < n:
        index.add(unit_rows(vectors[index.ntotal : index.ntotal + chunk]))
        if checkpoint:
            save(index, checkpoint)
    ids, truth = sample_truth(vectors, sample, seed)
    tuned = tune(
        index,
        unit_rows(vectors[ids]),
        truth,
        ids,
        lambda k: setattr(index, "nprobe", k),
        target_recall,
        8,
        nlist,
    )
    if tuned is None:
        return BuiltIndex(index, "ivf-sq8", float("nan"), nlist)
    return BuiltIndex(index, "ivf-sq8", tuned[1], tuned[0])


def build(
    vectors: np.ndarray,
    exact_max: int = 100_000,
    target_recall: float = 0.95,
    sample: int = 1000,
    seed: int = 0,
    max_ef: int = 4096,
    m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
    hnsw_max: int = 2_000_000,
) -> BuiltIndex:
    """Index unit `vectors` for cosine search: exact up to `exact_max` rows, an inverted file
    (`build_ivf`) above `hnsw_max`, otherwise HNSW with efSearch doubled until the lower 95%
    bound of recall@10 on `sample` rows (their neighbours other than themselves) reaches
    `target_recall`. Where no efSearch up to `max_ef` reaches it
    (near-isotropic directions, where the graph has nothing to follow), the exact index is
    returned instead: it is then both exact and no slower."""
    import faiss

    x = unit_rows(vectors)
    n, d = x.shape
    if n > hnsw_max:  # HNSW keeps every vector in float32 plus its graph: too big from here
        return build_ivf(x, target_recall=target_recall, sample=sample, seed=seed)
    if n <= exact_max:
        flat = faiss.IndexFlatIP(d)
        flat.add(x)
        return BuiltIndex(flat, "flat", 1.0, None)
    hnsw = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = ef_construction
    hnsw.add(x)
    ids, truth = sample_truth(x, sample, seed)
    tuned = tune(
        hnsw,
        x[ids],
        truth,
        ids,
        lambda k: setattr(hnsw.hnsw, "efSearch", k),
        target_recall,
        16,
        max_ef,
    )
    if tuned is None:
        exact = faiss.IndexFlatIP(d)
        exact.add(x)
        return BuiltIndex(exact, "flat", 1.0, None)
    return BuiltIndex(hnsw, "hnsw", tuned[1], tuned[0])


def neighbours(
    built: BuiltIndex, vectors: np.ndarray, k: int = 10, batch: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
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


def save(index: faiss.Index, path: Path) -> None:
    """Write a FAISS index atomically (temporary file, then rename)."""
    import faiss

    write_atomic(path, lambda tmp: faiss.write_index(index, tmp))
