"""The inverted-file tier of `index.similarity` (millions of features): recall against exact
search, and a build killed between chunks resumes from its checkpoint to the same index."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from shoggoth.index.catalog.similarity import build, build_ivf, recall_per_query, unit_rows


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Directions in families (what decoders look like), not isotropic noise."""
    rng = np.random.default_rng(seed)
    parents = rng.standard_normal((n // 50, d))
    return unit_rows(parents[rng.integers(0, len(parents), n)] + 0.6 * rng.standard_normal((n, d)))


def test_ivf_reaches_the_recall_target_and_build_picks_it_above_hnsw_max():
    x = clustered(40_000, 48)
    built = build(x, exact_max=1_000, hnsw_max=20_000)
    assert built.kind == "ivf-sq8" and built.recall_at_10 >= 0.95
    assert built.ef_search == built.index.nprobe < built.index.nlist
    ids = np.random.default_rng(1).choice(len(x), 300, replace=False)
    exact = faiss.IndexFlatIP(48)
    exact.add(x)
    _, truth = exact.search(x[ids], 11)
    _, got = built.index.search(x[ids], 11)
    assert recall_per_query(got, truth, ids).mean() >= 0.93  # fresh queries, same target


def test_a_killed_build_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    x = clustered(30_000, 32, seed=2)
    whole = build_ivf(x, chunk=8_000)
    path = tmp_path / "ivf.faiss"
    real, calls = faiss.IndexIVFScalarQuantizer.add, []

    def flaky(self, rows):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, rows)

    monkeypatch.setattr(faiss.IndexIVFScalarQuantizer, "add", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_ivf(x, checkpoint=path, chunk=8_000)
    assert faiss.read_index(str(path)).ntotal == 16_000
    monkeypatch.setattr(faiss.IndexIVFScalarQuantizer, "add", real)
    resumed = build_ivf(x, checkpoint=path, chunk=8_000)
    assert resumed.index.ntotal == len(x)
    assert (
        faiss.serialize_index(resumed.index).tobytes()
        == faiss.serialize_index(whole.index).tobytes()
    )
