"""`shoggoth label`: label every feature of a harvested SAE, with calibration runs and the
estimated false-discovery rate of every label, into the database (features, feature_personas,
calibration, label_fdr), in one transaction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from shoggoth.core.config import config_metadata, option
from shoggoth.core.printing import Format
from shoggoth.index.labels.frames import HarvestFrames, Resampling
from shoggoth.index.labels.nulls import false_persona_labels, reassign_prompts, split_personas
from shoggoth.index.labels.persona_decomposition import (
    persona_tables,
    read_prompts,
    read_shifts,
)
from shoggoth.index.labels.rules import LABELS, PERSONA_LABELS, LabelConfig, label_features
from shoggoth.index.store.connection import Connection
from shoggoth.index.store.database import (
    WAIT,
    connect,
    record_run,
    replace_rows,
    transaction,
)
from shoggoth.index.store.derived import refresh_causal
from shoggoth.index.store.read import step_database
from shoggoth.index.store.sae_record import SaeRecord
from shoggoth.index.store.schema import PERSONA_TABLES, create_label_tables

FDR_LABELS = (*PERSONA_LABELS, "shared-modulated")
"""Labels that claim a persona effect: each gets an estimated false-discovery rate."""


@dataclass
class LabelRunConfig(LabelConfig):
    """`shoggoth label`: label the features of a harvested SAE."""

    db: Path = option(required="a database from `shoggoth harvest`")
    """The feature database (from `shoggoth harvest`)."""
    sae: str | None = None
    """The SAE to label (its sae_id; default: the only one in the database)."""
    calibration_seeds: int = option(3, min=1, max=100)
    """Prompt-reassignment calibration runs (each a full labelling of shuffled prompts)."""
    assistant: str | None = None
    """The persona the assistant axis starts from (its shift minus the personas' mean; default:
    the control with no system turn, the template's default assistant)."""
    format: Format = "table"
    """table (for reading) or json (for scripts)."""


def read_frames(con: Connection, record: SaeRecord) -> HarvestFrames:
    """The SAE's harvest as the labeller reads it."""
    sae_id = record.sae_id
    # ENUM columns arrive as pandas categoricals: millions of rows, no Python strings.
    doc_features = con.execute(
        "SELECT persona, paraphrase, item_id, feature, mean_act FROM doc_features WHERE sae_id = ?",
        [sae_id],
    ).df()
    documents = con.execute(
        "SELECT persona::VARCHAR AS persona, paraphrase, item_id::VARCHAR AS item_id "
        "FROM documents WHERE sae_id = ?",
        [sae_id],
    ).df()
    personas = con.execute(
        "SELECT persona::VARCHAR AS persona, family, is_control, control_of "
        "FROM personas ORDER BY enum_code(personas.persona)"
    ).df()
    topics = dict(con.execute("SELECT item_id::VARCHAR, topic FROM items").fetchall())
    return HarvestFrames(
        doc_features,
        documents,
        personas,
        topics,
        record.d_sae,
        read_shifts(con, sae_id),
        read_prompts(con),
    )


def _counts(
    run: str, description: str, table: pd.DataFrame, wrong: pd.Series | None = None
) -> pd.DataFrame:
    """One row per label: how many features of this run got it (in a split run, persona labels
    count only where they tell a persona's halves apart)."""
    labels = (
        table["label"]
        if wrong is None
        else table["label"].where(wrong | ~table["label"].isin(PERSONA_LABELS), "split-consistent")
    )
    counts = labels.value_counts()
    return pd.DataFrame(
        {
            "run": run,
            "description": description,
            "n_live": int((table["n_docs_firing"] > 0).sum()),
            "label": list(LABELS),
            "n": [int(counts.get(lab, 0)) for lab in LABELS],
        }
    )


def calibrate(
    frames: HarvestFrames, cfg: LabelConfig, seeds: int, notes: list[str]
) -> pd.DataFrame:
    """The calibration runs' label counts: prompts reassigned to random persona slots (one run
    per seed) and every persona's paraphrases split in two (where it has 4 or more)."""
    doc_features, documents, personas = frames.doc_features, frames.documents, frames.personas
    n, topics = frames.n_features, frames.topics
    rows = []
    for s in range(seeds):
        df, docs = reassign_prompts(doc_features, documents, personas, cfg.seed + 1000 + s)
        table = label_features(df, docs, personas, n, cfg, topics)
        rows.append(
            _counts(
                f"reassigned:{s}",
                "the non-control prompts reassigned to random "
                "persona slots, each with all its documents",
                table,
            )
        )
    paras = documents.groupby("persona")["paraphrase"].nunique()
    main = personas.loc[~personas["is_control"].astype(bool), "persona"]
    if (paras.reindex(main).fillna(0) >= 4).any():
        df, docs, pers, origin = split_personas(doc_features, documents, personas)
        table = label_features(df, docs, pers, n, cfg, topics)
        rows.append(
            _counts(
                "split",
                "every persona's paraphrases split into two fake personas; "
                "persona labels that tell the halves apart",
                table,
                false_persona_labels(table, origin),
            )
        )
    else:
        notes.append(
            "the split calibration needs a persona with 4 or more paraphrases (two "
            "per half); this harvest has fewer, so only the reassignment runs count"
        )
    return pd.concat(rows, ignore_index=True)


def fdr_table(real: pd.DataFrame, calibration: pd.DataFrame) -> pd.DataFrame:
    """Per label: the real count, the mean count under reassignment, the split count and the
    estimated false-discovery rate (null count / real count) for the labels that claim a persona
    effect: the persona labels (the larger of the two nulls) and shared-modulated (reassignment
    only: splitting a persona keeps its modulation, so the split run is no null for it)."""
    counts = real["label"].value_counts()
    reassigned = calibration[calibration["run"].str.startswith("reassigned")]
    null = reassigned.groupby("label")["n"].mean()
    split = calibration[calibration["run"] == "split"].set_index("label")["n"]
    out = []
    for lab in LABELS:
        n_real = int(counts.get(lab, 0))
        n_null = float(null.get(lab, 0.0))
        n_split = split.get(lab) if lab in PERSONA_LABELS else None
        worst = max(n_null, float(n_split) if n_split is not None else 0.0)
        fdr = (
            (min(1.0, worst / n_real) if n_real else (0.0 if worst == 0 else 1.0))
            if lab in FDR_LABELS
            else None
        )
        out.append(
            {
                "label": lab,
                "n_real": n_real,
                "n_null": n_null,
                "n_split": None if n_split is None else int(n_split),
                "fdr": fdr,
            }
        )
    return pd.DataFrame(out)


@dataclass(frozen=True)
class LabelResult:
    """What `shoggoth label` wrote, as its printers read it."""

    sae_id: str
    """The SAE labelled."""
    features: pd.DataFrame
    """The `features` rows: every feature's label and statistics."""
    calibration: pd.DataFrame
    """The `calibration` rows: each label's count in the real run and every null run."""
    fdr: pd.DataFrame
    """The `label_fdr` rows: each label's count, null counts and estimated FDR."""
    notes: list[str]
    """What this battery or harvest could not support, one line each."""
    thresholds: LabelConfig
    """The labelling rules' settings."""
    persona_signal: float
    """The share of the personas' shifts this dictionary carries (NaN: not measured)."""
    signal: pd.DataFrame
    """The `persona_signal` rows, per persona."""
    decomposition: pd.DataFrame
    """The `persona_decomposition` rows: each persona's shift cut by activation pattern."""
    space: pd.DataFrame
    """The `persona_space` rows: the dictionary-free persona space."""
    axes: pd.DataFrame
    """The `persona_space_axes` rows."""

    def as_json(self) -> dict[str, object]:
        """The `--format json` output."""
        return {
            "sae_id": self.sae_id,
            "features": len(self.features),
            "labels": self.features["label"].value_counts().to_dict(),
            "fdr": self.fdr,
            "notes": self.notes,
            "config": asdict(self.thresholds),
            "persona_signal": self.persona_signal,
            "decomposition": self.decomposition,
            "persona_space": self.space,
            "persona_space_axes": self.axes,
        }


def label_database(cfg: LabelRunConfig) -> LabelResult:
    """Label one SAE's features and store them; returns what was written."""
    with step_database(cfg.db, cfg.sae) as (con, record):
        sae_id = record.sae_id
        frames = read_frames(con, record)
        extra = con.execute(
            "SELECT feature, max(max_act) AS max_act FROM doc_features WHERE sae_id = ? "
            "GROUP BY feature",
            [sae_id],
        ).df()
    thresholds = LabelConfig(**{f.name: getattr(cfg, f.name) for f in fields(LabelConfig)})
    doc_features, documents = frames.doc_features, frames.documents
    real = label_features(
        doc_features, documents, frames.personas, frames.n_features, thresholds, frames.topics
    )
    notes = list(real.attrs.get("notes", []))
    calib = pd.concat(
        [
            _counts("real", "the harvest as it is", real),
            calibrate(frames, thresholds, cfg.calibration_seeds, notes),
        ],
        ignore_index=True,
    )
    fdr = fdr_table(real, calib)
    n_docs = len(documents)
    features = real.merge(extra, on="feature", how="left")
    sums = doc_features.groupby("feature")["mean_act"].sum()
    features["density"] = features["n_docs_firing"] / max(n_docs, 1)
    features["mean_act"] = features["feature"].map(sums).fillna(0.0) / max(n_docs, 1)
    features["max_act"] = features["max_act"].fillna(0.0)
    features.insert(0, "sae_id", sae_id)
    calib.insert(0, "sae_id", sae_id)
    fdr.insert(0, "sae_id", sae_id)
    persona = persona_tables(
        frames,
        record,
        real,
        Resampling(cfg.bootstrap, cfg.confidence, cfg.seed),
        notes,
        cfg.assistant,
    )
    persona_frames = {
        "persona_signal": persona.signal,
        "persona_space": persona.space,
        "persona_space_axes": persona.axes,
        "persona_decomposition": persona.decompositions.pattern,
        "persona_label_shares": persona.decompositions.labels,
        "persona_own_features": persona.decompositions.own,
    }
    for frame in persona_frames.values():
        if not frame.empty:
            frame.insert(0, "sae_id", sae_id)
    metadata = {**config_metadata(cfg), "notes": notes}
    write(cfg.db, sae_id, features, calib, fdr, metadata, persona_frames)
    return LabelResult(
        sae_id,
        features,
        calib,
        fdr,
        notes,
        thresholds,
        persona.fraction,
        persona.signal,
        persona.decompositions.pattern,
        persona.space,
        persona.axes,
    )


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


def write(
    db: Path,
    sae_id: str,
    features: pd.DataFrame,
    calibration: pd.DataFrame,
    fdr: pd.DataFrame,
    config: dict[str, Any],
    persona: dict[str, pd.DataFrame] | None = None,
) -> None:
    """Replace this SAE's labels in one transaction (with a `runs` record); annotations are
    never touched."""
    con = connect(db, wait=WAIT)
    try:
        with transaction(con):
            record_run(con, "label", sae_id, config)
            create_label_tables(con)
            for table, frame in (
                ("features", features),
                ("calibration", calibration),
                ("label_fdr", fdr),
            ):
                replace_rows(con, table, sae_id, frame)
            for table in PERSONA_TABLES:  # (a table is emptied when nothing was made)
                con.execute(f"DELETE FROM {table} WHERE sae_id = ?", [sae_id])
                frame = (persona or {}).get(table)
                if frame is not None and not frame.empty:
                    replace_rows(con, table, sae_id, frame)
            con.execute("DELETE FROM feature_personas WHERE sae_id = ?", [sae_id])
            con.execute(PERSONA_SQL, {"sae": sae_id})
            refresh_causal(con, sae_id)  # the new rows keep the effects already measured
    finally:
        con.close()
