"""The reads of the tables `shoggoth index` writes (examples, histograms, neighbours, logit
effects, maps, persona vectors), and the searches over them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from shoggoth.core.errors import BadInput
from shoggoth.index.labels.queries import MASK_FEATURES_SQL
from shoggoth.index.store.connection import Connection
from shoggoth.index.store.read import (
    SaeView,
    feature_name,
    has_table,
    if_table,
    names,
    with_names,
)

if TYPE_CHECKING:
    import faiss


def similar(
    d: SaeView, feature: int, k: int, index: faiss.Index | None = None
) -> list[dict[str, Any]]:
    """The k features whose decoder directions are nearest (cosine) to `feature`'s (`index`:
    the decoder FAISS index, when the caller holds it already)."""
    d.check_feature(feature)
    index = index if index is not None else d.faiss_index("decoder")
    query = index.reconstruct(feature).reshape(1, -1)
    sims, ids = index.search(query, k + 1)
    pairs = [
        (int(i), float(s)) for i, s in zip(ids[0], sims[0], strict=True) if i != feature and i >= 0
    ][:k]
    labels = d.labels([i for i, _ in pairs])
    return [{"feature": i, "cosine": round(s, 4), **labels[i]} for i, s in pairs]


@dataclass(frozen=True)
class FeatureNaming:
    """A feature's `feature_names` row, as `search feature` shows it."""

    handle: str | None
    """Its handle (the terms that tell it apart)."""
    explanation: str | None
    """Its explanation (None: not explained)."""
    explainer: str | None
    """The model that wrote the explanation."""
    detection: float | None
    """The explanation's detection score (AUC; None: not scored)."""
    fuzzing: float | None
    """The explanation's fuzzing score (AUC; None: not scored)."""


@dataclass(frozen=True)
class FeatureDescription:
    """One feature: its label, name, explanation, deciding statistics and top contexts."""

    feature: int
    """The feature."""
    label: str
    """Its label in force ('unlabelled' before `shoggoth label`)."""
    top_persona: str | None
    """The persona (or family of personas) its label names."""
    density: float | None
    """The share of documents it fires in (None before `shoggoth label`)."""
    name: str | None
    """Its name: handle and preferred persona (None before `shoggoth index`)."""
    naming: FeatureNaming | None
    """Its `feature_names` row (None before `shoggoth index`)."""
    statistics: dict[str, object] | None
    """The statistics its label rests on (None: not labelled)."""
    contexts: list[dict[str, object]] | None
    """Its top contexts: rank, value, persona, item_id, context (None before `shoggoth index`)."""

    def as_json(self) -> dict[str, object]:
        """As plain data, each part only where it is known."""
        out: dict[str, object] = {
            "feature": self.feature,
            "label": self.label,
            "top_persona": self.top_persona,
            "density": self.density,
            "name": self.name,
        }
        if self.naming is not None:
            out.update(asdict(self.naming))
        if self.statistics is not None:
            out["statistics"] = self.statistics
        if self.contexts is not None:
            out["contexts"] = self.contexts
        return out


def describe(d: SaeView, feature: int, k: int) -> FeatureDescription:
    """A feature's label, its deciding statistics and its top contexts."""
    d.check_feature(feature)
    labels = d.labels([feature])[feature]
    named = feature_name(d.con, d.sae_id, feature)
    naming: FeatureNaming | None = None
    if named:
        naming = FeatureNaming(
            named["handle"],
            named["explanation"],
            named["explainer"],
            named["detection"],
            named["fuzzing"],
        )
    statistics: dict[str, object] | None = None
    contexts: list[dict[str, object]] | None = None
    if "features" in d.tables:
        cur = d.con.execute(
            "SELECT * FROM features WHERE sae_id = ? AND feature = ?", [d.sae_id, feature]
        )
        row = cur.fetchone()
        if row is not None:
            stats = dict(zip([c[0] for c in cur.description], row, strict=True))
            statistics = {
                key: stats[key]
                for key in (
                    "label",
                    "n_docs_firing",
                    "fire_frac_personas",
                    "top_share",
                    "k_eff",
                    "q_value",
                    "top_ratio",
                    "paraphrase_margin",
                    "control_ratio",
                    "no_mask_ratio",
                    "ratio_ci_high",
                    "shared_power",
                    "density",
                    "mean_act",
                    "max_act",
                )
            }
    if "examples" in d.tables:
        contexts = [
            {"rank": r, "value": v, "persona": p, "item_id": i, "context": c}
            for r, v, p, i, c in d.con.execute(
                "SELECT rank, value, persona, item_id, context FROM example_contexts(?, ?) "
                "WHERE kind = 'top' ORDER BY rank LIMIT ?",
                [d.sae_id, feature, k],
            ).fetchall()
        ]
    return FeatureDescription(
        feature,
        labels["label"],
        labels["top_persona"],
        labels["density"],
        labels["name"],
        naming,
        statistics,
        contexts,
    )


def by_name(d: SaeView, text: str, k: int) -> list[dict[str, Any]]:
    """The features whose handle, preferred persona or explanation contains `text` (any case),
    the most distinctive handles first (their best term's score)."""
    if not text.strip():
        raise BadInput("--name: is empty")
    if not has_table(d.con, "feature_names"):
        raise BadInput(
            f"--db {d.db}: no feature handles for '{d.sae_id}'; run `shoggoth index` first"
        )
    cur = d.con.execute(
        """
        SELECT n.feature, n.name, n.label, n.explanation, n.detection, n.fuzzing
        FROM feature_names n JOIN feature_handles h USING (sae_id, feature)
        WHERE n.sae_id = $sae AND (n.name ILIKE $pattern ESCAPE '\\'
                                   OR n.explanation ILIKE $pattern ESCAPE '\\')
        ORDER BY h.best_score DESC, n.feature LIMIT $k""",
        {"sae": d.sae_id, "pattern": f"%{like_escape(text.strip())}%", "k": k},
    )
    return [dict(zip([c[0] for c in cur.description], row, strict=True)) for row in cur.fetchall()]


def like_escape(text: str) -> str:
    """`text` matched literally by LIKE/ILIKE ... ESCAPE '\\'."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class PersonaFeatures:
    """A persona's features: those nearest its persona vector, and its own."""

    persona: str
    """The persona."""
    vector_norm: float | None
    """Its persona vector's length (None before `shoggoth index`)."""
    relative_norm: float | None
    """That length over the length of the non-control personas' mean."""
    nearest: list[dict[str, object]]
    """The features nearest the vector: feature, cosine, label, top_persona, density, name."""
    mask_specific: list[dict[str, object]]
    """Its own features: feature, name, label, top_share, set_ratio, q_value."""

    def as_json(self) -> dict[str, object]:
        """As plain data."""
        return {
            "persona": self.persona,
            "vector_norm": self.vector_norm,
            "relative_norm": self.relative_norm,
            "nearest": self.nearest,
            "mask_specific": self.mask_specific,
        }


def by_persona(d: SaeView, persona: str, k: int) -> PersonaFeatures:
    """The features nearest the persona vector, and the persona's mask-specific (and
    mask-family) features, strongest first."""
    d.check_persona(persona)
    if "persona_features" not in d.tables:
        raise BadInput(
            f"--db {d.db}: no persona vectors for '{d.sae_id}'; run `shoggoth index` first"
        )
    nearest = d.con.execute(
        "SELECT feature, cosine FROM persona_features WHERE sae_id = ? AND persona = ? "
        "ORDER BY rank LIMIT ?",
        [d.sae_id, persona, k],
    ).fetchall()
    norm = d.con.execute(
        "SELECT norm, relative_norm FROM persona_vectors WHERE sae_id = ? AND persona = ?",
        [d.sae_id, persona],
    ).fetchone()
    specific: list[tuple[Any, ...]] = []
    if "features" in d.tables:
        specific = d.con.execute(MASK_FEATURES_SQL, [d.sae_id, persona, persona, k]).fetchall()
    labels = d.labels([f for f, _ in nearest])
    specific_names = names(d.con, d.sae_id, [f for f, *_ in specific])
    return PersonaFeatures(
        persona,
        None if norm is None else round(norm[0], 4),
        None if norm is None else round(norm[1], 4),
        [{"feature": f, "cosine": round(float(c), 4), **labels[f]} for f, c in nearest],
        [
            {
                "feature": f,
                "name": specific_names.get(f),
                "label": lab,
                "top_share": share,
                "set_ratio": ratio,
                "q_value": q,
            }
            for f, lab, share, ratio, q in specific
        ],
    )


def feature_map(con: Connection, sae_id: str, name: str) -> pd.DataFrame:
    """A stored 2-D map (`decoder` or `persona_profile`) with each point's name, label and
    personas: feature, x, y, method, name, label, top_persona, argmax_persona (empty before
    `shoggoth index`)."""
    if not has_table(con, "feature_maps"):
        return pd.DataFrame()
    labelled = has_table(con, "features")
    return con.execute(
        f"""
        SELECT m.feature, m.x, m.y, m.method, n.name,
               {"coalesce(l.label, 'unlabelled')" if labelled else "'unlabelled'"} AS label,
               {"coalesce(l.top_persona, l.family_set)" if labelled else "NULL"} AS top_persona,
               {"f.argmax_persona" if labelled else "NULL"} AS argmax_persona
        FROM feature_maps m
        LEFT JOIN feature_names n USING (sae_id, feature)
        {
            "LEFT JOIN feature_labels l USING (sae_id, feature) "
            "LEFT JOIN features f USING (sae_id, feature)"
            if labelled
            else ""
        }
        WHERE m.sae_id = ? AND m.map = ? ORDER BY m.feature""",
        [sae_id, name],
    ).df()


def top_context_tokens(con: Connection, sae_id: str, feature: int, width: int = 8) -> pd.DataFrame:
    """The tokens around each top example of a feature (the contexts `example_contexts` joins
    into text), one row per token with the feature's activation there: rank, fire_value,
    persona, paraphrase, item_id, fire_pos, pos, token, value."""
    return if_table(
        con,
        "examples",
        """
        WITH e AS (SELECT * FROM examples WHERE sae_id = $sae AND feature = $f AND kind = 'top'),
             a AS (SELECT persona::VARCHAR AS persona, paraphrase, item_id::VARCHAR AS item_id,
                          pos, value FROM activations WHERE sae_id = $sae AND feature = $f)
        SELECT e.rank, e.value AS fire_value, e.persona::VARCHAR AS persona, e.paraphrase,
               e.item_id::VARCHAR AS item_id, e.pos AS fire_pos, t.pos, t.token, a.value
        FROM e JOIN tokens t ON t.sae_id = e.sae_id AND t.item_id = e.item_id
             AND t.pos BETWEEN e.pos - $w AND e.pos + $w
        LEFT JOIN a ON a.persona = e.persona AND a.paraphrase = e.paraphrase
             AND a.item_id = e.item_id AND a.pos = t.pos
        ORDER BY e.rank, t.pos""",
        {"sae": sae_id, "f": feature, "w": width},
    )


def interval_samples(con: Connection, sae_id: str, feature: int) -> pd.DataFrame:
    """The interval samples of a feature with their contexts (the `example_contexts` macro)."""
    return if_table(
        con,
        "examples",
        "SELECT kind, value, persona, item_id, bin_lo, bin_hi, context "
        "FROM example_contexts(?, ?) WHERE kind <> 'top'",
        [sae_id, feature],
    )


def histogram(con: Connection, sae_id: str, feature: int) -> pd.DataFrame:
    """A feature's activation histogram over its firing tokens: bin, lo, hi, count."""
    return if_table(
        con,
        "feature_histograms",
        "SELECT bin, lo, hi, count FROM feature_histograms WHERE sae_id = ? AND "
        "feature = ? ORDER BY bin",
        [sae_id, feature],
    )


def feature_logit_effects(con: Connection, sae_id: str, feature: int) -> pd.DataFrame:
    """A feature's promoted and suppressed tokens: sign, rank, token, value."""
    return if_table(
        con,
        "logit_effects",
        "SELECT sign, rank, token, value FROM logit_effects WHERE sae_id = ? AND "
        "feature = ? ORDER BY sign, rank",
        [sae_id, feature],
    )


NEIGHBOUR_TABLES = ("neighbors", "profile_neighbors")


def feature_neighbours(con: Connection, sae_id: str, feature: int, table: str) -> pd.DataFrame:
    """A feature's stored neighbours (`table`: by decoder direction or by persona profile)
    with their labels: neighbor, cosine, label."""
    if table not in NEIGHBOUR_TABLES:
        raise ValueError(f"no neighbour table {table!r}")
    if not has_table(con, table):
        return pd.DataFrame()
    labels = "feature_labels" if has_table(con, "feature_labels") else None
    join = (
        f"LEFT JOIN {labels} l ON l.sae_id = n.sae_id AND l.feature = n.neighbor" if labels else ""
    )
    label = "l.label" if labels else "NULL"
    return with_names(
        con,
        sae_id,
        con.execute(
            f"SELECT n.neighbor, n.cosine, {label} AS label FROM {table} n {join} "
            "WHERE n.sae_id = ? AND n.feature = ? ORDER BY n.rank",
            [sae_id, feature],
        ).df(),
        "neighbor",
    )


def suppressed_features(con: Connection, sae_id: str, persona: str, limit: int) -> pd.DataFrame:
    """Live features whose mean under `persona` falls furthest below the other personas'."""
    return (
        con.execute(
            """
        SELECT fp.feature, fp.delta_vs_rest, l.label FROM feature_personas fp
        JOIN feature_labels l USING (sae_id, feature)
        WHERE fp.sae_id = ? AND fp.persona = ? AND fp.delta_vs_rest < 0
        ORDER BY fp.delta_vs_rest LIMIT ?""",
            [sae_id, persona, limit],
        )
        .df()
        .pipe(lambda f: with_names(con, sae_id, f))
    )


def persona_vector(con: Connection, sae_id: str, persona: str) -> pd.DataFrame:
    """The persona vector's norm, relative norm and token count (empty before `index`)."""
    return if_table(
        con,
        "persona_vectors",
        "SELECT norm, relative_norm, n_tokens FROM persona_vectors WHERE "
        "sae_id = ? AND persona = ?",
        [sae_id, persona],
    )


def persona_vector_features(con: Connection, sae_id: str, persona: str) -> pd.DataFrame:
    """The decoder directions nearest a persona vector, with their labels."""
    labels = has_table(con, "feature_labels")
    return (
        con.execute(
            f"""
        SELECT pf.feature, pf.cosine, {"l.label" if labels else "NULL"} AS label
        FROM persona_features pf
        {"LEFT JOIN feature_labels l USING (sae_id, feature)" if labels else ""}
        WHERE pf.sae_id = ? AND pf.persona = ? ORDER BY pf.rank""",
            [sae_id, persona],
        )
        .df()
        .pipe(lambda f: with_names(con, sae_id, f))
    )
