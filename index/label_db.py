"""`shoggoth label`: label every feature of a harvested SAE, with calibration runs, into the
database (features, feature_personas, calibration), in one transaction."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from core.config import config_metadata, option
from core.errors import BadInput
from core.versions import library_versions
from index.database import (
    WAIT,
    check_writable,
    choose_sae,
    connect,
    insert_frame,
    require_shoggoth,
    transaction,
)
from index.labels import LabelConfig, label_features, shuffled_within_items, split_persona
from index.schema import create_label_tables


@dataclass
class LabelRunConfig(LabelConfig):
    """`shoggoth label`: label the features of a harvested SAE."""

    db: Path | None = option(required="a database from `shoggoth harvest`")
    """The feature database (from `shoggoth harvest`)."""
    sae: str | None = None
    """The SAE to label (its sae_id; default: the only one in the database)."""


def _read(con: Any, sae_id: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    # ENUM columns arrive as pandas categoricals: millions of rows, no Python strings.
    doc_features = con.execute(
        "SELECT persona, paraphrase, item_id, feature, mean_act FROM doc_features "
        "WHERE sae_id = ?", [sae_id]).df()
    documents = con.execute(
        "SELECT persona::VARCHAR AS persona, paraphrase, item_id::VARCHAR AS item_id "
        "FROM documents WHERE sae_id = ?", [sae_id]).df()
    personas = con.execute("SELECT persona::VARCHAR AS persona, family, is_control "
                           "FROM personas ORDER BY enum_code(personas.persona)").df()
    return doc_features, documents, personas


def _counts(run: str, description: str, table: pd.DataFrame, only: list[str] | None = None
            ) -> dict[str, Any]:
    specific = table["label"] == "mask-specific"
    if only is not None:
        specific &= table["top_persona"].isin(only)
    return {"run": run, "description": description,
            "n_live": int((table["n_docs_firing"] > 0).sum()),
            "n_mask_specific": int(specific.sum()),
            "n_mask_family": int((table["label"] == "mask-family").sum()),
            "n_shared": int((table["label"] == "shared").sum()),
            "n_shared_modulated": int((table["label"] == "shared-modulated").sum())}


def label_database(cfg: LabelRunConfig) -> dict[str, Any]:
    """Label one SAE's features; returns the tables written (as DataFrames) and the counts."""
    if not cfg.db.is_file():
        raise BadInput(f"--db {cfg.db}: no such file")
    check_writable(cfg.db)  # before the work, not after it
    con = connect(cfg.db, read_only=True, wait=WAIT)
    try:
        require_shoggoth(con, cfg.db)
        sae_id, sae_row = choose_sae(con, cfg.db, cfg.sae)
        doc_features, documents, personas = _read(con, sae_id)
        extra = con.execute(
            "SELECT feature, max(max_act) AS max_act FROM doc_features WHERE sae_id = ? "
            "GROUP BY feature", [sae_id]).df()
    finally:
        con.close()
    thresholds = LabelConfig(**{f.name: getattr(cfg, f.name) for f in fields(LabelConfig)})
    n = sae_row["d_sae"]
    real = label_features(doc_features, documents, personas, n, thresholds)
    calibration = [_counts("real", "the harvest as it is", real)]
    shuffled = label_features(shuffled_within_items(doc_features, documents, personas,
                                                    cfg.seed), documents, personas, n,
                              thresholds)
    calibration.append(_counts("shuffled", "persona labels permuted within each item",
                               shuffled))
    main = personas[~personas["is_control"]]
    paras = documents.groupby("persona")["paraphrase"].nunique()
    target = max(main["persona"], key=lambda p: (paras.get(p, 0), -list(main["persona"]).index(p)))
    split_df, split_docs, split_personas, fake = split_persona(doc_features, documents, personas,
                                                               target)
    split = label_features(split_df, split_docs, split_personas, n, thresholds)
    calibration.append(_counts(f"split:{target}", f"{target}'s paraphrases split into two fake "
                               "personas; counts mask-specific features of the fakes", split,
                               fake))

    n_docs = len(documents)
    features = real.merge(extra, on="feature", how="left")
    sums = doc_features.groupby("feature")["mean_act"].sum()
    features["density"] = features["n_docs_firing"] / max(n_docs, 1)
    features["mean_act"] = features["feature"].map(sums).fillna(0.0) / max(n_docs, 1)
    features["max_act"] = features["max_act"].fillna(0.0)
    features.insert(0, "sae_id", sae_id)
    calib = pd.DataFrame(calibration)
    calib.insert(0, "sae_id", sae_id)
    write(cfg.db, sae_id, features, calib, config_metadata(cfg))
    return {"sae_id": sae_id, "features": features, "calibration": calib,
            "config": asdict(thresholds)}


PERSONA_SQL = """
INSERT INTO feature_personas
WITH nd AS (SELECT persona, count(*) AS n FROM documents WHERE sae_id = $sae GROUP BY persona),
s AS (SELECT feature, persona, sum(mean_act) AS total, count(*) AS fired
      FROM doc_features WHERE sae_id = $sae GROUP BY feature, persona),
main AS (SELECT persona FROM personas WHERE NOT is_control),
rest AS (SELECT s.feature, sum(s.total) AS total FROM s JOIN main USING (persona)
         GROUP BY s.feature),
main_docs AS (SELECT sum(n) AS n FROM nd JOIN main USING (persona))
SELECT $sae, s.feature, s.persona::VARCHAR, s.total / nd.n, s.fired / nd.n,
       s.total / nd.n - (r.total - CASE WHEN m.persona IS NULL THEN 0 ELSE s.total END)
         / (md.n - CASE WHEN m.persona IS NULL THEN 0 ELSE nd.n END)
FROM s JOIN nd USING (persona) JOIN rest r USING (feature) CROSS JOIN main_docs md
LEFT JOIN main m USING (persona)
ORDER BY s.feature, s.persona
"""


def write(db: Path, sae_id: str, features: pd.DataFrame, calibration: pd.DataFrame,
          config: dict[str, Any]) -> None:
    """Replace this SAE's labels in one transaction (with a `runs` record); annotations are
    never touched."""
    con = connect(db, wait=WAIT)
    try:
        with transaction(con):
            con.execute("INSERT INTO runs VALUES (?, 'label', ?, ?, now(), now(), 'finished')",
                        [uuid.uuid4().hex[:12], json.dumps({"identity": None, "config": config,
                                                            "sae_id": sae_id}),
                         json.dumps(library_versions())])
            create_label_tables(con)
            for table in ("features", "feature_personas", "calibration"):
                con.execute(f"DELETE FROM {table} WHERE sae_id = ?", [sae_id])
            con.register("labelled", features)
            con.execute("INSERT INTO features BY NAME SELECT * FROM labelled")
            con.unregister("labelled")
            insert_frame(con, "calibration", calibration)
            con.execute(PERSONA_SQL, {"sae": sae_id})
    finally:
        con.close()
