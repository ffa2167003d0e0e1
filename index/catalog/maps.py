"""2-D maps of the features, computed by `shoggoth index` and stored in `feature_maps`: one of
the decoder directions (cosine) and one of the persona profiles (each feature's vector of
per-persona means, cosine), so that features that write the same direction, or prefer the same
personas, sit together.

UMAP (umap-learn) lays them out from the k nearest neighbours the FAISS index already finds,
seeded, so a rebuild draws the same map. Below `UMAP_FROM` points the map is the first two
principal components instead: UMAP's compilation costs ~10 s per process, and a few hundred
points need no manifold learning to be read.
"""

from __future__ import annotations

import warnings
from typing import Literal, cast

import numpy as np

from shoggoth.index.catalog import similarity

MapMethod = Literal["auto", "umap", "pca"]
UMAP_FROM = 1000
"""`auto` uses UMAP from this many points, PCA below."""


def pca_layout(x: np.ndarray, seed: int = 0, sample: int = 20_000) -> np.ndarray:
    """[n, 2]: unit rows projected on their first two principal components (fitted on a seeded
    sample of at most `sample` rows)."""
    u = similarity.unit_rows(x).astype(np.float64)
    u = u - u.mean(axis=0)
    rows = np.random.default_rng(seed).choice(len(u), min(len(u), sample), replace=False)
    _, _, vt = np.linalg.svd(u[rows], full_matrices=False)
    return cast("np.ndarray", (u @ vt[:2].T).astype(np.float32))


def umap_layout(
    x: np.ndarray,
    neighbors: int = 15,
    seed: int = 0,
    knn: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """[n, 2]: UMAP (cosine) of `x` on its k nearest neighbours: `knn` (each row's other
    nearest rows and their cosines, as `similarity.neighbours` gives them) when the caller has
    them already, else from a FAISS index built here."""
    import umap

    k = max(2, min(neighbors, len(x) - 1))
    if knn is not None and knn[0].shape[1] >= k - 1:
        ids, cos = knn[0][:, : k - 1], knn[1][:, : k - 1]
    else:
        ids, cos = similarity.neighbours(similarity.build(x), x, k - 1)
    knn_ids = np.concatenate([np.arange(len(x))[:, None], ids], axis=1).astype(np.int64)
    knn_dist = np.concatenate([np.zeros((len(x), 1)), np.clip(1.0 - cos, 0.0, 2.0)], axis=1).astype(
        np.float32
    )
    with warnings.catch_warnings():  # "no search index for transform()": none is needed
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(
            n_neighbors=k,
            metric="cosine",
            random_state=seed,
            precomputed_knn=(knn_ids, knn_dist, None),
        )
        return cast("np.ndarray", reducer.fit_transform(similarity.unit_rows(x)).astype(np.float32))


def layout(
    x: np.ndarray,
    method: MapMethod = "auto",
    neighbors: int = 15,
    seed: int = 0,
    knn: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, str]:
    """([n, 2] coordinates, the method used)."""
    if method == "pca" or (method == "auto" and len(x) < UMAP_FROM) or len(x) < 4:
        return pca_layout(x, seed), "pca"
    return umap_layout(x, neighbors, seed, knn), "umap"
