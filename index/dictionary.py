"""`shoggoth index`: turn a harvest into a feature dictionary — examples, histograms, FAISS
neighbours by decoder direction and by persona profile, and logit effects.

The database is rebuilt aside and renamed over the old one, so readers keep the old file during
a rebuild and a kill -9 leaves it intact. FAISS files live in `<db>.faiss/` beside it.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from index import similarity
from index.database import (
    choose_sae,
    connect,
    insert_frame,
    load_harvest_sae,
    remove,
    require_shoggoth,
    tables,
    transaction,
)
from index.schema import create_index_tables
from sae.errors import BadInput

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
class IndexConfig:
    """`shoggoth index`: build the feature dictionary of a harvested SAE."""

    db: Path | None = None
    """The feature database (from `shoggoth harvest`; labels from `shoggoth label` are used
    when present)."""
    sae: str | None = None
    """The SAE (its sae_id; default: the only one in the database)."""
    top: int = 20
    """Top-activating examples kept per feature."""
    bins: int = 10
    """Equal-width activation intervals sampled per feature."""
    per_bin: int = 5
    """Examples sampled from each interval."""
    histogram_bins: int = 50
    """Bins of each feature's activation histogram."""
    neighbors: int = 10
    """Nearest features stored per feature."""
    exact_max: int = 100_000
    """Exact FAISS search up to this many features; HNSW above it."""
    logit_top: int = 10
    """Promoted and suppressed tokens stored per feature."""
    persona_top: int = 20
    """Decoder directions listed per persona vector."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N."""


def logit_effects(model: Any, w_dec: np.ndarray, top: int, batch: int = 1024) -> pd.DataFrame:
    """Top promoted/suppressed tokens of each decoder direction through the unembedding."""
    import torch

    w_u = model.bridge.original_model.get_output_embeddings().weight  # [vocab, d]
    w_u = w_u.detach().float().cpu()
    dec = torch.from_numpy(w_dec).float()
    tokens = model.tokenizer.convert_ids_to_tokens(list(range(w_u.shape[0])))
    rows = []
    for s in range(0, len(dec), batch):
        logits = dec[s : s + batch] @ w_u.T
        for sign, largest in (("promoted", True), ("suppressed", False)):
            vals, ids = torch.topk(logits, top, dim=1, largest=largest)
            for r in range(len(ids)):
                for rank, (tid, val) in enumerate(zip(ids[r].tolist(), vals[r].tolist(),
                                                      strict=True), 1):
                    rows.append((s + r, sign, rank, tid, str(tokens[tid]), val))
    return pd.DataFrame(rows, columns=["feature", "sign", "rank", "token_id", "token", "value"])


def faiss_dir(db: Path) -> Path:
    return db.parent / f"{db.name}.faiss"


def build_dictionary(cfg: IndexConfig, log: Any = print) -> dict[str, Any]:
    """Build (or rebuild) one SAE's dictionary tables and FAISS indexes; returns a summary."""
    from sae.models import load_model

    if cfg.db is None:
        raise BadInput("--db: required (a database from `shoggoth harvest`)")
    if not cfg.db.is_file():
        raise BadInput(f"--db {cfg.db}: no such file")
    for name in ("top", "bins", "per_bin", "histogram_bins", "neighbors", "logit_top",
                 "persona_top"):
        if getattr(cfg, name) < 1:
            raise BadInput(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be >= 1")
    started = time.time()
    con = connect(cfg.db, read_only=True)
    try:
        require_shoggoth(con, cfg.db)
        sae_id, row = choose_sae(con, cfg.db, cfg.sae)
        profiles = None
        residuals = read_residual_sums(con, sae_id)
        if "feature_personas" in tables(con):
            profiles = con.execute("SELECT feature, persona, mean_act FROM feature_personas "
                                   "WHERE sae_id = ?", [sae_id]).df()
    finally:
        con.close()
    sae = load_harvest_sae(cfg.db, sae_id, row, cfg.device)
    w_dec = sae.W_dec.detach().float().cpu().numpy()
    if w_dec.shape != (row["d_sae"], row["d_in"]):
        raise BadInput(f"--db {cfg.db}: the SAE at {row['path']} no longer matches '{sae_id}' "
                       f"(decoder {w_dec.shape})")

    log("decoder neighbours (FAISS)")
    decoder = similarity.build(w_dec, cfg.exact_max)
    dec_ids, dec_cos = similarity.neighbours(decoder, w_dec, cfg.neighbors)
    indexes = [("decoder", decoder, w_dec.shape)]
    prof_rows = None
    if profiles is not None and len(profiles):
        names = sorted(profiles["persona"].unique())
        matrix = np.zeros((row["d_sae"], len(names)), dtype=np.float32)
        matrix[profiles["feature"].to_numpy(),
               pd.Categorical(profiles["persona"], categories=names).codes] = profiles["mean_act"]
        profile = similarity.build(matrix, cfg.exact_max)
        prof_ids, prof_cos = similarity.neighbours(profile, matrix, min(cfg.neighbors,
                                                                        row["d_sae"] - 1))
        prof_rows = _neighbour_frame(prof_ids, prof_cos)
        indexes.append(("persona_profile", profile, matrix.shape))

    vectors = persona_vectors(residuals) if residuals is not None else None
    vector_rows = feature_rows = None
    if vectors is not None:
        log("persona vectors")
        vector_path = faiss_dir(cfg.db) / f"{sae_id}.persona_vectors.npy"
        vector_rows = vectors["table"].assign(path=str(vector_path))[
            ["persona", "row", "path", "is_control", "n_tokens", "norm", "relative_norm"]]
        feature_rows = nearest_features(decoder, vectors, min(cfg.persona_top, row["d_sae"]))

    effects, note = None, "skipped: the model is not a causal LM (an encoder's LM head is not " \
                          "part of its checkpoint)"
    # The weights are loaded only when there is an unembedding to read.
    if load_model(row["model"], cfg.device, load_weights=False).is_causal:
        model = load_model(row["model"], cfg.device)
        if model.bridge.original_model.get_output_embeddings() is not None:
            log("logit effects")
            effects = logit_effects(model, w_dec, cfg.logit_top)
            note = "computed: decoder direction · unembedding (no final norm)"

    partial = cfg.db.parent / f".{cfg.db.name}.index.partial"
    remove(partial)
    fold = connect(cfg.db)  # fails if another process writes it; folds any WAL into the file
    fold.execute("CHECKPOINT")
    fold.close()
    shutil.copyfile(cfg.db, partial)
    try:
        con = connect(partial)
        try:
            with transaction(con):
                create_index_tables(con)
                for table in ("examples", "feature_histograms", "neighbors",
                              "profile_neighbors", "logit_effects", "faiss_indexes",
                              "persona_vectors", "persona_features"):
                    con.execute(f"DELETE FROM {table} WHERE sae_id = ?", [sae_id])
                log("examples and histograms")
                con.execute(EXAMPLES_SQL, {"sae": sae_id, "top": cfg.top, "bins": cfg.bins,
                                           "per_bin": cfg.per_bin})
                con.execute(HISTOGRAM_SQL, {"sae": sae_id, "bins": cfg.histogram_bins})
                for table, frame in (("neighbors", _neighbour_frame(dec_ids, dec_cos)),
                                     ("profile_neighbors", prof_rows),
                                     ("logit_effects", effects),
                                     ("persona_vectors", vector_rows),
                                     ("persona_features", feature_rows)):
                    if frame is not None:
                        insert_frame(con, table, frame, [sae_id])
                for name, built, shape in indexes:
                    target = faiss_dir(cfg.db) / f"{sae_id}.{name}.faiss"
                    similarity.save(built.index, target)
                    con.execute("INSERT INTO faiss_indexes VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                [sae_id, name, str(target), built.kind, shape[0], shape[1],
                                 built.recall_at_10, built.ef_search])
                if vectors is not None:
                    save_npy(vectors["vectors"], vector_path)
                con.execute("UPDATE saes SET logit_effects = ? WHERE sae_id = ?",
                            [note, sae_id])
            con.execute("CHECKPOINT")
        finally:
            con.close()
        os.replace(partial, cfg.db)  # readers of the old file keep it until they close
    finally:
        remove(partial)
    return {"sae_id": sae_id, "features": row["d_sae"], "decoder_index": decoder.kind,
            "recall_at_10": decoder.recall_at_10, "logit_effects": note,
            "profiles": prof_rows is not None,
            "persona_vectors": 0 if vectors is None else len(vectors["table"]),
            "seconds": round(time.time() - started, 1)}


def _neighbour_frame(ids: np.ndarray, cos: np.ndarray) -> pd.DataFrame:
    n, k = ids.shape
    return pd.DataFrame({"feature": np.repeat(np.arange(n), k).astype(np.int32),
                         "rank": np.tile(np.arange(1, k + 1), n).astype(np.int32),
                         "neighbor": ids.reshape(-1).astype(np.int32),
                         "cosine": cos.reshape(-1).astype(np.float32)})


def read_residual_sums(con: Any, sae_id: str) -> pd.DataFrame | None:
    """Each batch's summed residual activations, token count and persona (None when there are
    no rows)."""
    rows = con.execute("""
        SELECT r.persona::VARCHAR AS persona, p.is_control, r.n_tokens, r.residual_sum
        FROM residual_sums r JOIN personas p USING (persona)
        WHERE r.sae_id = ? ORDER BY r.persona, r.paraphrase, r.item_id""", [sae_id]).df()
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
    table = pd.DataFrame({"persona": names, "row": np.arange(len(names), dtype=np.int32),
                          "is_control": control.astype(bool),
                          "n_tokens": n_tokens.astype(np.int64), "norm": norms,
                          "relative_norm": norms / max(float(np.linalg.norm(baseline)), 1e-12)})
    return {"vectors": vectors, "table": table}


def nearest_features(decoder: similarity.BuiltIndex, vectors: dict[str, Any],
                     k: int) -> pd.DataFrame:
    """The k decoder directions nearest (cosine) to each non-zero persona vector."""
    table = vectors["table"]
    keep = (table["norm"] > 0).to_numpy()
    sims, ids = decoder.index.search(similarity.unit_rows(vectors["vectors"][keep]), k)
    names = table["persona"].to_numpy()[keep]
    return pd.DataFrame({"persona": np.repeat(names, k),
                         "rank": np.tile(np.arange(1, k + 1), len(names)).astype(np.int32),
                         "feature": ids.reshape(-1).astype(np.int32),
                         "cosine": sims.reshape(-1).astype(np.float32)})


def save_npy(array: np.ndarray, path: Path) -> None:
    """Write a .npy file atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)
