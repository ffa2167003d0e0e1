"""The database side of `shoggoth index`: from a harvest and the SAE's decoder to the feature
dictionary — examples, histograms, FAISS neighbours by decoder direction and by persona profile,
persona vectors, and (given by the caller) logit effects.

The database is rebuilt aside and renamed over the old one, so readers keep the old file during
a rebuild and a kill -9 leaves it intact. FAISS and .npy files live in `<db>.faiss/`, in a new
folder per build (`<sae_id>.<build>/`) written before the database is renamed and referenced by
it with paths relative to `<db>.faiss/`: the rename publishes tables and files together,
and the folders no database refers to are removed afterwards (or by the next build).
"""

from __future__ import annotations

import glob
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shoggoth.core.atomic import file_sha256, write_atomic
from shoggoth.core.config import Config, option
from shoggoth.core.errors import BadInput
from shoggoth.core.names import check_sae_id
from shoggoth.core.printing import Format
from shoggoth.core.progress import Log
from shoggoth.index.catalog import maps as feature_map
from shoggoth.index.catalog import similarity
from shoggoth.index.catalog.handles import write_handles
from shoggoth.index.catalog.maps import MapMethod
from shoggoth.index.store.connection import Connection
from shoggoth.index.store.database import (
    WAIT,
    connect,
    faiss_dir,
    insert_frame,
    partial_beside,
    remove,
    replace_unless_changed,
    snapshot,
    tables,
    transaction,
    writing,
)
from shoggoth.index.store.read import step_database
from shoggoth.index.store.sae_record import SaeRecord
from shoggoth.index.store.schema import create_index_tables

EXAMPLES_SQL = """
INSERT INTO examples
WITH a AS (SELECT feature, persona, paraphrase, item_id, pos, value  -- ENUMs: narrow sort rows
           FROM activations WHERE sae_id = $sae),
top AS (
    SELECT feature, 'top' AS kind,
           row_number() OVER (PARTITION BY feature
                              ORDER BY value DESC, persona, paraphrase, item_id, pos) AS rank,
           persona, paraphrase, item_id, pos, value, NULL::FLOAT AS bin_lo, NULL::FLOAT AS bin_hi
    FROM a QUALIFY rank <= $top),
span AS (SELECT feature, min(value) AS lo, max(value) AS hi FROM a GROUP BY feature),
binned AS (
    SELECT a.*, s.lo, s.hi,
           least($bins - 1, floor((a.value - s.lo) / nullif(s.hi - s.lo, 0) * $bins))::INTEGER
               AS bin
    FROM a JOIN span s USING (feature)),
sampled AS (
    SELECT feature, 'interval ' || (coalesce(bin, 0) + 1) || '/' || $bins AS kind,
           row_number() OVER (PARTITION BY feature, bin
                              ORDER BY hash(persona, paraphrase, item_id, pos)) AS rank,
           persona, paraphrase, item_id, pos, value,
           lo + coalesce(bin, 0) * (hi - lo) / $bins AS bin_lo,
           lo + (coalesce(bin, 0) + 1) * (hi - lo) / $bins AS bin_hi
    FROM binned QUALIFY rank <= $per_bin)
SELECT $sae, * FROM top UNION ALL SELECT $sae, * FROM sampled
"""

HISTOGRAM_SQL = """
INSERT INTO feature_histograms
WITH a AS (SELECT feature, value FROM activations WHERE sae_id = $sae),
span AS (SELECT feature, min(value) AS lo, max(value) AS hi FROM a GROUP BY feature)
SELECT $sae, feature, bin, any_value(lo + bin * (hi - lo) / $bins),
       any_value(lo + (bin + 1) * (hi - lo) / $bins), count(*)
FROM (SELECT a.feature, s.lo, s.hi,
             coalesce(least($bins - 1, floor((a.value - s.lo) / nullif(s.hi - s.lo, 0) * $bins)),
                      0)::INTEGER AS bin
      FROM a JOIN span s USING (feature))
GROUP BY feature, bin
ORDER BY feature, bin
"""


@dataclass
class IndexConfig(Config):
    """`shoggoth index`: build the feature catalog of a harvested SAE."""

    db: Path = option(required="a database from `shoggoth harvest`")
    """The feature database (from `shoggoth harvest`; labels from `shoggoth label` are used
    when present)."""
    sae: str | None = None
    """The SAE (its sae_id; default: the only one in the database)."""
    top: int = option(20, min=1, max=100_000)
    """Top-activating examples kept per feature."""
    bins: int = option(10, min=1, max=10_000)
    """Equal-width activation intervals sampled per feature."""
    per_bin: int = option(5, min=1, max=100_000)
    """Examples sampled from each interval."""
    histogram_bins: int = option(50, min=1, max=10_000)
    """Bins of each feature's activation histogram."""
    neighbors: int = option(10, min=1)
    """Nearest features stored per feature."""
    exact_max: int = option(100_000, min=0)
    """Exact FAISS search up to this many features; HNSW above it."""
    logit_top: int = option(10, min=1, max=10_000)
    """Promoted and suppressed tokens stored per feature."""
    persona_top: int = option(20, min=1)
    """Decoder directions listed per persona vector."""
    map: MapMethod = "auto"
    """2-D maps of the decoder directions and the persona profiles: umap, pca, or auto (UMAP
    from 1,000 features, PCA below)."""
    map_neighbors: int = option(15, min=2, max=200)
    """Nearest neighbours UMAP lays each feature out from."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N."""
    device_map: str | None = None
    """Spread the model over several devices: auto, or a JSON file of module → device (see
    docs/models.md)."""
    max_memory: str | None = None
    """With --device-map: the most memory per device, e.g. 0=20GiB,1=20GiB,cpu=64GiB."""
    format: Format = "table"
    """table (for reading) or json (for scripts)."""


@dataclass
class Harvest:
    """What the dictionary is built from, read from the database before any work."""

    record: SaeRecord
    """The SAE's `saes` row."""
    residuals: pd.DataFrame | None
    profiles: pd.DataFrame | None
    """feature, persona, mean_act from `feature_personas` (None before `shoggoth label`)."""


@dataclass
class Built:
    """The dictionary's parts computed outside the database."""

    indexes: list[tuple[str, similarity.BuiltIndex, tuple[int, int]]]
    neighbours: pd.DataFrame
    profile_neighbours: pd.DataFrame | None
    vectors: dict[str, Any] | None
    persona_features: pd.DataFrame | None
    maps: pd.DataFrame
    """feature, map, method, x, y."""


def read_harvest(cfg: IndexConfig) -> Harvest:
    """The SAE to index (its saes row), its residual sums and its persona profiles."""
    with step_database(cfg.db, cfg.sae) as (con, record):
        sae_id = record.sae_id
        profiles = None
        residuals = read_residual_sums(con, sae_id)
        if "feature_personas" in tables(con):
            profiles = con.execute(
                "SELECT feature, persona, mean_act FROM feature_personas WHERE sae_id = ?", [sae_id]
            ).df()
    if cfg.neighbors >= record.d_sae:
        raise BadInput(
            f"--neighbors {cfg.neighbors}: must be less than the SAE's {record.d_sae:,} features"
        )
    return Harvest(record, residuals, profiles)


def build_parts(cfg: IndexConfig, harvest: Harvest, w_dec: np.ndarray, log: Log = print) -> Built:
    """FAISS over decoder directions and persona profiles, neighbours, persona vectors."""
    row = harvest.record
    if w_dec.shape != (row.d_sae, row.d_in):
        raise BadInput(
            f"--db {cfg.db}: the SAE at {row.path} no longer matches "
            f"'{row.sae_id}' (decoder {w_dec.shape})"
        )
    log("decoder neighbours (FAISS)")
    decoder = similarity.build(w_dec, cfg.exact_max)
    # One search serves the neighbours table and the map's layout.
    k = min(max(cfg.neighbors, cfg.map_neighbors - 1), row.d_sae - 1)
    knn = similarity.neighbours(decoder, w_dec, k)
    dec_ids, dec_cos = knn[0][:, : cfg.neighbors], knn[1][:, : cfg.neighbors]
    indexes = [("decoder", decoder, w_dec.shape)]
    prof_rows = None
    profiles = harvest.profiles
    if profiles is not None and len(profiles):
        names = sorted(profiles["persona"].unique())
        matrix = np.zeros((row.d_sae, len(names)), dtype=np.float32)
        matrix[
            profiles["feature"].to_numpy(),
            pd.Categorical(profiles["persona"], categories=names).codes,
        ] = profiles["mean_act"]
        profile = similarity.build(matrix, cfg.exact_max)
        prof_ids, prof_cos = similarity.neighbours(
            profile, matrix, min(cfg.neighbors, row.d_sae - 1)
        )
        prof_rows = _neighbour_frame(prof_ids, prof_cos)
        indexes.append(("persona_profile", profile, matrix.shape))
    vectors = persona_vectors(harvest.residuals) if harvest.residuals is not None else None
    feature_rows = None
    if vectors is not None:
        log("persona vectors")
        feature_rows = nearest_features(decoder, vectors, min(cfg.persona_top, row.d_sae))
    log("feature maps")
    maps = [
        map_frame(
            "decoder",
            np.arange(len(w_dec)),
            *feature_map.layout(w_dec, cfg.map, cfg.map_neighbors, knn=knn),
        )
    ]
    if prof_rows is not None:
        live = np.flatnonzero(np.abs(matrix).sum(axis=1) > 0)
        if len(live) >= 2:  # (only live profiles: a zero row has no direction)
            maps.append(
                map_frame(
                    "persona_profile",
                    live,
                    *feature_map.layout(matrix[live], cfg.map, cfg.map_neighbors),
                )
            )
    return Built(
        indexes,
        _neighbour_frame(dec_ids, dec_cos),
        prof_rows,
        vectors,
        feature_rows,
        pd.concat(maps, ignore_index=True),
    )


def map_frame(name: str, features: np.ndarray, xy: np.ndarray, method: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "feature": features.astype(np.int32),
            "map": name,
            "method": method,
            "x": xy[:, 0],
            "y": xy[:, 1],
        }
    )


def write_files(db: Path, sae_id: str, built: Built) -> tuple[Path, dict[str, str]]:
    """Write this build's FAISS indexes and persona vectors into a new folder in
    `faiss_dir(db)`; returns the folder and {name: path relative to faiss_dir(db)}."""
    folder = faiss_dir(db) / f"{sae_id}.{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True)
    paths = {}
    for name, index, _shape in built.indexes:
        similarity.save(index.index, folder / f"{name}.faiss")
        paths[name] = f"{folder.name}/{name}.faiss"
    if built.vectors is not None:
        save_npy(built.vectors["vectors"], folder / "persona_vectors.npy")
        paths["persona_vectors"] = f"{folder.name}/persona_vectors.npy"
    return folder, paths


def referenced_folders(db: Path) -> set[str]:
    """The build folders (names under `faiss_dir(db)`) the database refers to."""
    con = connect(db, read_only=True, wait=WAIT)
    try:
        if "faiss_indexes" not in tables(con):
            return set()
        return {
            Path(p).parent.name
            for (p,) in con.execute(
                "SELECT path FROM faiss_indexes UNION ALL SELECT path FROM persona_vectors"
            ).fetchall()
        }
    finally:
        con.close()


def remove_unreferenced(db: Path, sae_id: str, legacy: bool = False) -> None:
    """Delete `sae_id`'s build folders that the database does not refer to (earlier builds, or
    one a killed build left behind); with `legacy`, also the files of the flat layout earlier
    versions wrote (`<sae_id>.decoder.faiss`, …), once a new build is published."""
    check_sae_id(sae_id, f"--db {db}")  # (it names files: never a pattern or a path)
    keep = referenced_folders(db)
    folder = faiss_dir(db)
    for old in folder.glob(f"{glob.escape(sae_id)}.*"):
        if old.is_dir() and old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
        elif legacy and old.is_file():
            old.unlink()


def write_tables(
    con: Connection,
    cfg: IndexConfig,
    sae_id: str,
    built: Built,
    paths: dict[str, str],
    effects: pd.DataFrame | None,
    note: str,
    log: Log,
) -> None:
    """Replace `sae_id`'s dictionary tables, in one transaction on `con`."""
    with transaction(con):
        create_index_tables(con)
        for table in (
            "examples",
            "feature_histograms",
            "neighbors",
            "profile_neighbors",
            "logit_effects",
            "faiss_indexes",
            "persona_vectors",
            "persona_features",
            "feature_maps",
        ):
            con.execute(f"DELETE FROM {table} WHERE sae_id = ?", [sae_id])
        log("examples and histograms")
        con.execute(
            EXAMPLES_SQL, {"sae": sae_id, "top": cfg.top, "bins": cfg.bins, "per_bin": cfg.per_bin}
        )
        con.execute(HISTOGRAM_SQL, {"sae": sae_id, "bins": cfg.histogram_bins})
        log("handles")
        write_handles(con, sae_id)
        vector_rows = None
        if built.vectors is not None:
            vector_rows = built.vectors["table"].assign(path=paths["persona_vectors"])[
                ["persona", "row", "path", "is_control", "n_tokens", "norm", "relative_norm"]
            ]
        for table, frame in (
            ("neighbors", built.neighbours),
            ("profile_neighbors", built.profile_neighbours),
            ("logit_effects", effects),
            ("persona_vectors", vector_rows),
            ("persona_features", built.persona_features),
            ("feature_maps", built.maps),
        ):
            if frame is not None:
                insert_frame(con, table, frame, [sae_id])
        for name, index, shape in built.indexes:
            con.execute(
                "INSERT INTO faiss_indexes BY NAME SELECT ? AS sae_id, ? AS name, "
                "? AS path, ? AS kind, ? AS n, ? AS d, ? AS recall_at_10, "
                "? AS ef_search, ? AS sha256",
                [
                    sae_id,
                    name,
                    paths[name],
                    index.kind,
                    shape[0],
                    shape[1],
                    index.recall_at_10,
                    index.ef_search,
                    file_sha256(faiss_dir(cfg.db) / paths[name]),
                ],
            )
        con.execute("UPDATE saes SET logit_effects = ? WHERE sae_id = ?", [note, sae_id])


@dataclass(frozen=True)
class IndexResult:
    """What `shoggoth index` built, as its printer reads it."""

    sae_id: str
    """The SAE indexed."""
    features: int
    """Its features (all of them are indexed)."""
    decoder_index: str
    """The FAISS index over decoder directions: flat, hnsw or ivf-sq8."""
    recall_at_10: float
    """That index's recall of the 10 nearest neighbours against exact search."""
    logit_effects: str
    """How the logit effects were made, or why they were skipped."""
    profiles: bool
    """The persona profiles were indexed (False: not labelled yet)."""
    map: str
    """The method that laid out the feature map."""
    persona_vectors: int
    """The persona vectors stored."""
    seconds: float
    """The build's wall time (the model's part excluded)."""

    def as_json(self) -> dict[str, object]:
        """The `--format json` output."""
        return {
            "sae_id": self.sae_id,
            "features": self.features,
            "decoder_index": self.decoder_index,
            "recall_at_10": self.recall_at_10,
            "logit_effects": self.logit_effects,
            "profiles": self.profiles,
            "map": self.map,
            "persona_vectors": self.persona_vectors,
            "seconds": self.seconds,
        }


def build_catalog(
    cfg: IndexConfig,
    harvest: Harvest,
    w_dec: np.ndarray,
    effects: pd.DataFrame | None,
    note: str,
    log: Log = print,
) -> IndexResult:
    """Build (or rebuild) one SAE's dictionary tables and FAISS files from its decoder `w_dec`
    and logit `effects` (with `note` saying how they were made); returns a summary."""
    started = time.time()
    sae_id = harvest.record.sae_id
    built = build_parts(cfg, harvest, w_dec, log)
    with writing(cfg.db):  # (a build of the same SAE at once must not remove our folder)
        partial = partial_beside(cfg.db, "index")
        remove_unreferenced(cfg.db, sae_id)
        folder, paths = write_files(cfg.db, sae_id, built)
        published = False
        try:
            copied = snapshot(cfg.db, partial)
            con = connect(partial)
            try:
                write_tables(con, cfg, sae_id, built, paths, effects, note, log)
                con.execute("CHECKPOINT")
            finally:
                con.close()
            replace_unless_changed(partial, cfg.db, copied)  # publishes tables and files at once
            published = True
        finally:
            remove(partial)
            if not published:
                shutil.rmtree(folder, ignore_errors=True)
        remove_unreferenced(cfg.db, sae_id, legacy=True)
    decoder = built.indexes[0][1]
    return IndexResult(
        sae_id,
        harvest.record.d_sae,
        decoder.kind,
        decoder.recall_at_10,
        note,
        built.profile_neighbours is not None,
        str(built.maps["method"].iloc[0]),
        0 if built.vectors is None else len(built.vectors["table"]),
        round(time.time() - started, 1),
    )


def _neighbour_frame(ids: np.ndarray, cos: np.ndarray) -> pd.DataFrame:
    n, k = ids.shape
    return pd.DataFrame(
        {
            "feature": np.repeat(np.arange(n), k).astype(np.int32),
            "rank": np.tile(np.arange(1, k + 1), n).astype(np.int32),
            "neighbor": ids.reshape(-1).astype(np.int32),
            "cosine": cos.reshape(-1).astype(np.float32),
        }
    )


def read_residual_sums(con: Connection, sae_id: str) -> pd.DataFrame | None:
    """Each batch's summed residual activations, token count and persona (None when there are
    no rows)."""
    rows = con.execute(
        """
        SELECT r.persona::VARCHAR AS persona, p.is_control, r.n_tokens, r.residual_sum
        FROM residual_sums r JOIN personas p USING (persona)
        WHERE r.sae_id = ? ORDER BY r.persona, r.paraphrase, r.item_id""",
        [sae_id],
    ).df()
    return rows if len(rows) else None


def persona_vectors(sums: pd.DataFrame) -> dict[str, Any] | None:
    """Per persona: its mean residual activation minus the mean of the non-control personas'
    means (each weighted equally). None when there is no non-control persona."""
    names = list(dict.fromkeys(sums["persona"]))
    stacked = np.stack(sums["residual_sum"].to_numpy()).astype(np.float64)
    codes = pd.Categorical(sums["persona"], categories=names).codes
    total = np.zeros((len(names), stacked.shape[1]))
    np.add.at(total, codes, stacked)
    n_tokens = np.bincount(codes, weights=sums["n_tokens"], minlength=len(names))
    means = total / n_tokens[:, None]
    control = sums.groupby("persona", sort=False)["is_control"].first().reindex(names).to_numpy()
    if control.all():
        return None
    baseline = means[~control].mean(axis=0)
    vectors = (means - baseline).astype(np.float32)
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    table = pd.DataFrame(
        {
            "persona": names,
            "row": np.arange(len(names), dtype=np.int32),
            "is_control": control.astype(bool),
            "n_tokens": n_tokens.astype(np.int64),
            "norm": norms,
            "relative_norm": norms / max(float(np.linalg.norm(baseline)), 1e-12),
        }
    )
    return {"vectors": vectors, "table": table}


def nearest_features(
    decoder: similarity.BuiltIndex, vectors: dict[str, Any], k: int
) -> pd.DataFrame:
    """The k decoder directions nearest (cosine) to each non-zero persona vector."""
    table = vectors["table"]
    keep = (table["norm"] > 0).to_numpy()
    sims, ids = decoder.index.search(similarity.unit_rows(vectors["vectors"][keep]), k)
    names = table["persona"].to_numpy()[keep]
    return pd.DataFrame(
        {
            "persona": np.repeat(names, k),
            "rank": np.tile(np.arange(1, k + 1), len(names)).astype(np.int32),
            "feature": ids.reshape(-1).astype(np.int32),
            "cosine": sims.reshape(-1).astype(np.float32),
        }
    )


def save_npy(array: np.ndarray, path: Path) -> None:
    """Write a .npy file atomically (temporary file, then rename)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    write_atomic(path, write)
