"""The one read API of a feature database: named queries that `shoggoth search`, the explorer
and the SQL examples use, so that no caller writes SQL against the tables. Every result that
names a feature carries its label (a manual label wins over the automatic one).

`Dictionary` is one SAE of a database opened read-only (or read through a cursor the caller
owns); the functions below it take one.
"""

from __future__ import annotations

import functools
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd

from shoggoth.core.atomic import file_sha256
from shoggoth.core.errors import BadInput
from shoggoth.index.labels.rules import LabelConfig
from shoggoth.index.store.database import choose_sae, connect, faiss_dir, require_shoggoth, tables

MASK_FEATURES_SQL = """
SELECT l.feature, l.label, f.top_share, f.set_ratio, f.q_value
FROM feature_labels l JOIN features f USING (sae_id, feature)
WHERE l.sae_id = ? AND l.label IN ('mask-specific', 'persona-concept', 'mask-or-concept',
                                   'mask-family')
  AND (l.top_persona = ? OR list_contains(string_split(l.family_set, ','), ?))
ORDER BY l.label = 'mask-family', l.label, f.set_ratio DESC LIMIT ?"""
"""A persona's own features (mask-specific, persona-concept, mask-or-concept, then mask-family;
labels in force), by how far the persona stands apart (set_ratio); parameters: sae_id, persona,
persona, limit."""


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def cached_sha256(path: Path) -> str:
    """A file's sha256, hashed once per (path, size, modification time) in this process."""
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


class Dictionary:
    """A read-only view of one SAE in a feature database: labels, FAISS, persona vectors."""

    def __init__(self, db: Path, sae: str | None = None, con: Any = None) -> None:
        """Opens `db` read-only, or reads through `con` (a cursor the caller owns)."""
        if con is None and not db.is_file():
            raise BadInput(f"--db {db}: no such file")
        self.db = db
        self.owned = con is None
        self.con = connect(db, read_only=True) if con is None else con
        require_shoggoth(self.con, db)
        self.sae_id, self.row = choose_sae(self.con, db, sae)
        self.tables = tables(self.con)
        self.labelled = has_table(self.con, "feature_labels")

    def close(self) -> None:
        if self.owned:
            self.con.close()

    def labels(self, features: list[int]) -> dict[int, dict[str, Any]]:
        """label, top_persona and density of each feature (label 'unlabelled' before
        `shoggoth label`)."""
        named = names(self.con, self.sae_id, features)
        if not self.labelled:
            return {f: {"label": "unlabelled", "top_persona": None, "density": None,
                        "name": named.get(f)} for f in features}
        rows = self.con.execute("""
            SELECT l.feature, l.label, coalesce(l.top_persona, l.family_set), f.density
            FROM feature_labels l JOIN features f USING (sae_id, feature)
            WHERE l.sae_id = ? AND l.feature IN (SELECT unnest(?::INTEGER[]))""",
                                [self.sae_id, features]).fetchall()
        found = {f: {"label": lab, "top_persona": top, "density": dens}
                 for f, lab, top, dens in rows}
        return {f: {**found.get(f, {"label": "unlabelled", "top_persona": None,
                                   "density": None}), "name": named.get(f)}
                for f in features}

    def check_feature(self, feature: int) -> None:
        if not 0 <= feature < self.row["d_sae"]:
            raise BadInput(f"--feature {feature}: out of range (the SAE '{self.sae_id}' has "
                           f"{self.row['d_sae']:,} features, 0 to {self.row['d_sae'] - 1})")

    def faiss_index(self, name: str = "decoder") -> Any:
        import faiss

        row = None
        if "faiss_indexes" in self.tables:
            row = self.con.execute("SELECT * FROM faiss_indexes WHERE sae_id = ? AND name = ?",
                                   [self.sae_id, name]).fetchdf()
        path = None if row is None or row.empty else self.file(row["path"].iloc[0])
        if path is None or not path.is_file():
            raise BadInput(f"--db {self.db}: no {name} index for '{self.sae_id}'; run "
                           "`shoggoth index` first")
        expected = row["sha256"].iloc[0] if row is not None and "sha256" in row else None
        if expected is not None and cached_sha256(path) != expected:
            raise BadInput(f"--db {self.db}: the {name} index {path} is not the one this database "
                           f"was indexed with (its sha256 differs); run `shoggoth index --db "
                           f"{self.db}` again")
        return faiss.read_index(str(path))

    def file(self, stored: str) -> Path:
        """A path stored by `shoggoth index`, resolved against the database's FAISS folder."""
        return faiss_dir(self.db) / stored

    def persona_prompts(self, persona: str) -> list[str]:
        """A persona's system prompts, by paraphrase."""
        return prompts_of(self.con, persona)["prompt"].tolist()

    def check_persona(self, persona: str) -> None:
        names = persona_names(self.con)
        if persona not in names:
            raise BadInput(f"--persona {persona}: not in this database's battery (it has "
                           f"{', '.join(names)})")


def similar(d: Dictionary, feature: int, k: int, index: Any = None) -> list[dict[str, Any]]:
    """The k features whose decoder directions are nearest (cosine) to `feature`'s (`index`:
    the decoder FAISS index, when the caller holds it already)."""
    d.check_feature(feature)
    index = index if index is not None else d.faiss_index("decoder")
    query = index.reconstruct(feature).reshape(1, -1)
    sims, ids = index.search(query, k + 1)
    pairs = [(int(i), float(s)) for i, s in zip(ids[0], sims[0], strict=True)
             if i != feature and i >= 0][:k]
    labels = d.labels([i for i, _ in pairs])
    return [{"feature": i, "cosine": round(s, 4), **labels[i]} for i, s in pairs]


def describe(d: Dictionary, feature: int, k: int) -> dict[str, Any]:
    """A feature's label, its deciding statistics and its top contexts."""
    d.check_feature(feature)
    out: dict[str, Any] = {"feature": feature, **d.labels([feature])[feature]}
    named = feature_name(d.con, d.sae_id, feature)
    if named:
        out.update(handle=named["handle"], explanation=named["explanation"],
                   explainer=named["explainer"], detection=named["detection"],
                   fuzzing=named["fuzzing"])
    if "features" in d.tables:
        cur = d.con.execute("SELECT * FROM features WHERE sae_id = ? AND feature = ?",
                            [d.sae_id, feature])
        row = cur.fetchone()
        if row is not None:
            stats = dict(zip([c[0] for c in cur.description], row, strict=True))
            out["statistics"] = {key: stats[key] for key in (
                "label", "n_docs_firing", "fire_frac_personas",
                "top_share", "k_eff", "q_value", "top_ratio", "paraphrase_margin",
                "control_ratio", "no_mask_ratio", "ratio_ci_high", "shared_power", "density",
                "mean_act", "max_act")}
    if "examples" in d.tables:
        out["contexts"] = [{"rank": r, "value": v, "persona": p, "item_id": i, "context": c}
                           for r, v, p, i, c in d.con.execute(
            "SELECT rank, value, persona, item_id, context FROM example_contexts(?, ?) "
            "WHERE kind = 'top' ORDER BY rank LIMIT ?", [d.sae_id, feature, k]).fetchall()]
    return out


def by_name(d: Dictionary, text: str, k: int) -> list[dict[str, Any]]:
    """The features whose handle, preferred persona or explanation contains `text` (any case),
    the most distinctive handles first (their best term's score)."""
    if not text.strip():
        raise BadInput("--name: is empty")
    if not has_table(d.con, "feature_names"):
        raise BadInput(f"--db {d.db}: no feature handles for '{d.sae_id}'; run "
                       "`shoggoth index` first")
    cur = d.con.execute("""
        SELECT n.feature, n.name, n.label, n.explanation, n.detection, n.fuzzing
        FROM feature_names n JOIN feature_handles h USING (sae_id, feature)
        WHERE n.sae_id = $sae AND (n.name ILIKE $pattern ESCAPE '\\'
                                   OR n.explanation ILIKE $pattern ESCAPE '\\')
        ORDER BY h.best_score DESC, n.feature LIMIT $k""",
                        {"sae": d.sae_id, "pattern": f"%{like_escape(text.strip())}%", "k": k})
    return [dict(zip([c[0] for c in cur.description], row, strict=True))
            for row in cur.fetchall()]


def like_escape(text: str) -> str:
    """`text` matched literally by LIKE/ILIKE ... ESCAPE '\\'."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def by_persona(d: Dictionary, persona: str, k: int) -> dict[str, Any]:
    """The features nearest the persona vector, and the persona's mask-specific (and
    mask-family) features, strongest first."""
    d.check_persona(persona)
    if "persona_features" not in d.tables:
        raise BadInput(f"--db {d.db}: no persona vectors for '{d.sae_id}'; run "
                       "`shoggoth index` first")
    nearest = d.con.execute(
        "SELECT feature, cosine FROM persona_features WHERE sae_id = ? AND persona = ? "
        "ORDER BY rank LIMIT ?", [d.sae_id, persona, k]).fetchall()
    norm = d.con.execute("SELECT norm, relative_norm FROM persona_vectors WHERE sae_id = ? AND "
                         "persona = ?", [d.sae_id, persona]).fetchone()
    specific: list[tuple[Any, ...]] = []
    if "features" in d.tables:
        specific = d.con.execute(MASK_FEATURES_SQL, [d.sae_id, persona, persona, k]).fetchall()
    labels = d.labels([f for f, _ in nearest])
    specific_names = names(d.con, d.sae_id, [f for f, *_ in specific])
    return {
        "persona": persona,
        "vector_norm": None if norm is None else round(norm[0], 4),
        "relative_norm": None if norm is None else round(norm[1], 4),
        "nearest": [{"feature": f, "cosine": round(float(c), 4), **labels[f]}
                    for f, c in nearest],
        "mask_specific": [{"feature": f, "name": specific_names.get(f), "label": lab,
                           "top_share": share, "set_ratio": ratio, "q_value": q}
                          for f, lab, share, ratio, q in specific],
    }




# --- named queries for the explorer: each takes a connection (or cursor) and returns a frame ---

LABELLED_SQL = """
SELECT f.* EXCLUDE (label), l.label, f.label AS auto_label, l.manual_label, l.note, p.family
FROM features f JOIN feature_labels l USING (sae_id, feature)
LEFT JOIN personas p ON p.persona::VARCHAR = f.top_persona
WHERE f.sae_id = ?"""
"""Features' statistics with the label in force (manual over automatic) and the automatic one."""


def _if_table(con: Any, table: str, sql: str, params: Any) -> pd.DataFrame:
    """The query's rows, or an empty frame when `table` is not there yet (before the command
    that writes it has run)."""
    return con.execute(sql, params).df() if has_table(con, table) else pd.DataFrame()


def has_table(con: Any, name: str) -> bool:
    """Whether the database has a table or view called `name`."""
    return bool(con.execute(
        "SELECT count(*) FROM (SELECT 1 FROM duckdb_tables() WHERE table_name = $n UNION ALL "
        "SELECT 1 FROM duckdb_views() WHERE view_name = $n)", {"n": name}).fetchone()[0])


def names(con: Any, sae: str, features: list[int]) -> dict[int, str]:
    """Each of `features`' name: its handle, plus the persona it prefers when its label says so
    (`feature_names`; empty before `shoggoth index`)."""
    if not has_table(con, "feature_names"):
        return {}
    rows = con.execute("SELECT feature, name FROM feature_names WHERE sae_id = ? AND "
                       "feature IN (SELECT unnest(?::INTEGER[]))",
                       [sae, [int(f) for f in features]]).fetchall()
    return {int(f): n for f, n in rows}


def with_names(con: Any, sae: str, frame: pd.DataFrame, column: str = "feature",
               explained: bool = False) -> pd.DataFrame:
    """`frame` with a `name` column right after its feature column (`column`); with
    `explained`, also each feature's explanation and its detection and fuzzing scores."""
    if frame.empty or column not in frame.columns:
        return frame
    found = names(con, sae, frame[column].dropna().astype(int).unique().tolist())
    out = frame.copy()
    named = out[column].map(lambda f: found.get(int(f)) if pd.notna(f) else None)
    out.insert(out.columns.get_loc(column) + 1, "name", named)
    if explained and has_table(con, "feature_explanations"):
        scores = con.execute("SELECT feature AS _f, explanation, detection, fuzzing FROM "
                             "feature_explanations WHERE sae_id = ?", [sae]).df()
        out = out.merge(scores, how="left", left_on=column, right_on="_f").drop(columns="_f")
    return out


def feature_name(con: Any, sae: str, feature: int) -> dict[str, Any]:
    """One feature's handle, preferred persona, name and explanation with its scores (each None
    when not computed)."""
    if not has_table(con, "feature_names"):
        return {}
    cur = con.execute("SELECT * EXCLUDE (sae_id) FROM feature_names WHERE sae_id = ? AND "
                      "feature = ?", [sae, feature])
    row = cur.fetchone()
    return {} if row is None else dict(zip([c[0] for c in cur.description], row, strict=True))


def explanations(con: Any, sae: str) -> pd.DataFrame:
    """The stored explanations with their names and scores: feature, name, explanation,
    explainer, scorer, detection, detection_n, fuzzing, fuzzing_n (empty before `explain`)."""
    if not has_table(con, "feature_explanations"):
        return pd.DataFrame()
    return con.execute("""
        SELECT e.feature, n.name, e.explanation, e.explainer, e.scorer, e.detection,
               e.detection_n, e.fuzzing, e.fuzzing_n
        FROM feature_explanations e LEFT JOIN feature_names n USING (sae_id, feature)
        WHERE e.sae_id = ? ORDER BY e.feature""", [sae]).df()


def feature_map(con: Any, sae: str, name: str) -> pd.DataFrame:
    """A stored 2-D map (`decoder` or `persona_profile`) with each point's name, label and
    personas: feature, x, y, method, name, label, top_persona, argmax_persona (empty before
    `shoggoth index`)."""
    if not has_table(con, "feature_maps"):
        return pd.DataFrame()
    labelled = has_table(con, "features")
    return con.execute(f"""
        SELECT m.feature, m.x, m.y, m.method, n.name,
               {"coalesce(l.label, 'unlabelled')" if labelled else "'unlabelled'"} AS label,
               {"coalesce(l.top_persona, l.family_set)" if labelled else "NULL"} AS top_persona,
               {"f.argmax_persona" if labelled else "NULL"} AS argmax_persona
        FROM feature_maps m
        LEFT JOIN feature_names n USING (sae_id, feature)
        {"LEFT JOIN feature_labels l USING (sae_id, feature) "
         "LEFT JOIN features f USING (sae_id, feature)" if labelled else ""}
        WHERE m.sae_id = ? AND m.map = ? ORDER BY m.feature""", [sae, name]).df()


def saes(con: Any) -> pd.DataFrame:
    """Every SAE of the database (the `saes` table), by sae_id."""
    return con.execute("SELECT * FROM saes ORDER BY sae_id").df()


def sae_overview(con: Any) -> pd.DataFrame:
    """The SAEs with their training metrics (from each SAE directory's shoggoth.json, where it
    is still there)."""
    frame = con.execute("SELECT sae_id, model, hook, architecture, d_in, d_sae, value_decimals, "
                        "logit_effects, path FROM saes ORDER BY sae_id").df()
    metrics = []
    for path in frame.pop("path"):
        meta = Path(path or "") / "shoggoth.json"
        ev = json.loads(meta.read_text()).get("evaluation") or {} if meta.is_file() else {}
        metrics.append({k: ev.get(k) for k in ("explained_variance", "l0", "dead_fraction")})
    return pd.concat([frame, pd.DataFrame(metrics, index=frame.index)], axis=1)


def harvest_counts(con: Any, sae: str) -> dict[str, int]:
    """Documents, answer tokens and stored activations of one SAE's harvest."""
    docs, tokens = con.execute("SELECT count(*), coalesce(sum(n_tokens), 0) FROM documents "
                               "WHERE sae_id = ?", [sae]).fetchone()
    acts = con.execute("SELECT count(*) FROM activations WHERE sae_id = ?", [sae]).fetchone()[0]
    return {"documents": int(docs), "tokens": int(tokens), "activations": int(acts)}


def persona_table(con: Any) -> pd.DataFrame:
    """The battery's personas with their family, control flags and number of prompts."""
    return con.execute("""
        SELECT p.persona::VARCHAR AS persona, p.family, p.is_control, p.control_of,
               count(pp.paraphrase) AS prompts, p.description
        FROM personas p LEFT JOIN persona_prompts pp USING (persona)
        GROUP BY p.persona, p.family, p.is_control, p.control_of, p.description
        ORDER BY p.persona""").df()


def persona_names(con: Any) -> list[str]:
    """The battery's persona names, in battery order."""
    return [r[0] for r in con.execute(
        "SELECT persona::VARCHAR FROM personas ORDER BY persona").fetchall()]


def prompts_of(con: Any, persona: str) -> pd.DataFrame:
    """A persona's prompts: paraphrase, prompt."""
    return con.execute("SELECT paraphrase, prompt FROM persona_prompts WHERE persona = ? "
                       "ORDER BY paraphrase", [persona]).df()


def labelled_features(con: Any, sae: str, feature: int | None = None) -> pd.DataFrame:
    """Every feature's (or one feature's) statistics and labels; empty before `label`."""
    if not has_table(con, "features"):
        return pd.DataFrame()
    if feature is not None:
        return with_names(con, sae,
                          con.execute(LABELLED_SQL + " AND f.feature = ?", [sae, feature]).df(),
                          explained=True)
    return with_names(con, sae, con.execute(LABELLED_SQL + " ORDER BY f.feature", [sae]).df(),
                      explained=True)


def _label_run(con: Any, sae: str) -> dict[str, Any]:
    """The config saved by the label run whose labels are stored for `sae` ({} if none)."""
    if not has_table(con, "runs"):
        return {}
    row = con.execute(
        "SELECT config_json FROM runs WHERE command = 'label' AND "
        "json_extract_string(config_json, '$.sae_id') = ? ORDER BY started_at DESC LIMIT 1",
        [sae]).fetchone()
    return json.loads(row[0]).get("config", {}) if row else {}


def label_thresholds(con: Any, sae: str) -> LabelConfig:
    """The thresholds of the label run whose labels are stored for `sae` (the defaults when
    no run recorded them)."""
    stored = _label_run(con, sae)
    names = {f.name for f in fields(LabelConfig)}
    return LabelConfig(**{k: v for k, v in stored.items() if k in names})


def calibration(con: Any, sae: str) -> pd.DataFrame:
    """The label run's calibration counts, one row per run and label (empty before `label`)."""
    return _if_table(con, "calibration",
                     "SELECT run, description, n_live, label, n FROM calibration "
                     "WHERE sae_id = ? ORDER BY run, label", [sae])


def label_fdr(con: Any, sae: str) -> pd.DataFrame:
    """Per label: real count, mean count under prompt reassignment, count in the split run,
    and the estimated false-discovery rate (persona labels only; empty before `label`)."""
    return _if_table(con, "label_fdr",
                     "SELECT label, n_real, n_null, n_split, fdr FROM label_fdr "
                     "WHERE sae_id = ?", [sae])


def layer_probe(con: Any, sae: str) -> pd.DataFrame:
    """Where the persona lives by layer (empty before `shoggoth layers`)."""
    return _if_table(con, "layer_probe", "SELECT * EXCLUDE (sae_id) FROM layer_probe "
                     "WHERE sae_id = ? ORDER BY layer", [sae])


def label_notes(con: Any, sae: str) -> list[str]:
    """What the last label run said its battery could not support."""
    return list(_label_run(con, sae).get("notes", []))


def persona_means(con: Any, sae: str, feature: int) -> pd.DataFrame:
    """A feature's mean activation per persona over documents (zeros included), with the
    half-width of its 95% normal-approximation confidence interval."""
    return con.execute("""
        WITH n AS (SELECT persona, count(*) AS docs FROM documents WHERE sae_id = $sae
                   GROUP BY ALL),
             s AS (SELECT persona, sum(mean_act) AS s1, sum(mean_act * mean_act) AS s2
                   FROM doc_features WHERE sae_id = $sae AND feature = $f GROUP BY ALL)
        SELECT n.persona::VARCHAR AS persona, p.family, p.is_control,
               coalesce(s1, 0) / docs AS mean,
               1.96 * sqrt(greatest(coalesce(s2, 0) / docs - pow(coalesce(s1, 0) / docs, 2), 0)
                           / docs) AS half
        FROM n LEFT JOIN s USING (persona) JOIN personas p USING (persona)
        ORDER BY n.persona""", {"sae": sae, "f": feature}).df()


def top_context_tokens(con: Any, sae: str, feature: int, width: int = 8) -> pd.DataFrame:
    """The tokens around each top example of a feature (the contexts `example_contexts` joins
    into text), one row per token with the feature's activation there: rank, fire_value,
    persona, paraphrase, item_id, fire_pos, pos, token, value."""
    return _if_table(con, "examples", """
        WITH e AS (SELECT * FROM examples WHERE sae_id = $sae AND feature = $f AND kind = 'top'),
             a AS (SELECT persona::VARCHAR AS persona, paraphrase, item_id::VARCHAR AS item_id,
                          pos, value FROM activations WHERE sae_id = $sae AND feature = $f)
        SELECT e.rank, e.value AS fire_value, e.persona::VARCHAR AS persona, e.paraphrase,
               e.item_id::VARCHAR AS item_id, e.pos AS fire_pos, t.pos, t.token, a.value
        FROM e JOIN tokens t ON t.sae_id = e.sae_id AND t.item_id = e.item_id
             AND t.pos BETWEEN e.pos - $w AND e.pos + $w
        LEFT JOIN a ON a.persona = e.persona AND a.paraphrase = e.paraphrase
             AND a.item_id = e.item_id AND a.pos = t.pos
        ORDER BY e.rank, t.pos""", {"sae": sae, "f": feature, "w": width})


def interval_samples(con: Any, sae: str, feature: int) -> pd.DataFrame:
    """The interval samples of a feature with their contexts (the `example_contexts` macro)."""
    return _if_table(con, "examples",
                     "SELECT kind, value, persona, item_id, bin_lo, bin_hi, context "
                     "FROM example_contexts(?, ?) WHERE kind <> 'top'", [sae, feature])


def histogram(con: Any, sae: str, feature: int) -> pd.DataFrame:
    """A feature's activation histogram over its firing tokens: bin, lo, hi, count."""
    return _if_table(con, "feature_histograms",
                     "SELECT bin, lo, hi, count FROM feature_histograms WHERE sae_id = ? AND "
                     "feature = ? ORDER BY bin", [sae, feature])


def feature_logit_effects(con: Any, sae: str, feature: int) -> pd.DataFrame:
    """A feature's promoted and suppressed tokens: sign, rank, token, value."""
    return _if_table(con, "logit_effects",
                     "SELECT sign, rank, token, value FROM logit_effects WHERE sae_id = ? AND "
                     "feature = ? ORDER BY sign, rank", [sae, feature])


NEIGHBOUR_TABLES = ("neighbors", "profile_neighbors")


def feature_neighbours(con: Any, sae: str, feature: int, table: str) -> pd.DataFrame:
    """A feature's stored neighbours (`table`: by decoder direction or by persona profile)
    with their labels: neighbor, cosine, label."""
    if table not in NEIGHBOUR_TABLES:
        raise ValueError(f"no neighbour table {table!r}")
    if not has_table(con, table):
        return pd.DataFrame()
    labels = "feature_labels" if has_table(con, "feature_labels") else None
    join = (f"LEFT JOIN {labels} l ON l.sae_id = n.sae_id AND l.feature = n.neighbor"
            if labels else "")
    label = "l.label" if labels else "NULL"
    return with_names(con, sae, con.execute(
        f"SELECT n.neighbor, n.cosine, {label} AS label FROM {table} n {join} "
        "WHERE n.sae_id = ? AND n.feature = ? ORDER BY n.rank", [sae, feature]).df(), "neighbor")


def manual_labels(con: Any, sae: str, feature: int) -> pd.DataFrame:
    """The manual labels saved for a feature, newest first."""
    return _if_table(con, "annotations",
                     "SELECT created_at, label, note, author FROM annotations WHERE sae_id = ? "
                     "AND feature = ? ORDER BY created_at DESC", [sae, feature])


def mask_features(con: Any, sae: str, persona: str, limit: int) -> pd.DataFrame:
    """A persona's own features (labels in force; see MASK_FEATURES_SQL), strongest first."""
    return with_names(con, sae, con.execute(MASK_FEATURES_SQL,
                                            [sae, persona, persona, limit]).df())


def suppressed_features(con: Any, sae: str, persona: str, limit: int) -> pd.DataFrame:
    """Live features whose mean under `persona` falls furthest below the other personas'."""
    return con.execute("""
        SELECT fp.feature, fp.delta_vs_rest, l.label FROM feature_personas fp
        JOIN feature_labels l USING (sae_id, feature)
        WHERE fp.sae_id = ? AND fp.persona = ? AND fp.delta_vs_rest < 0
        ORDER BY fp.delta_vs_rest LIMIT ?""", [sae, persona, limit]).df().pipe(
        lambda f: with_names(con, sae, f))


def persona_vector(con: Any, sae: str, persona: str) -> pd.DataFrame:
    """The persona vector's norm, relative norm and token count (empty before `index`)."""
    return _if_table(con, "persona_vectors",
                     "SELECT norm, relative_norm, n_tokens FROM persona_vectors WHERE "
                     "sae_id = ? AND persona = ?", [sae, persona])


def persona_vector_features(con: Any, sae: str, persona: str) -> pd.DataFrame:
    """The decoder directions nearest a persona vector, with their labels."""
    labels = has_table(con, "feature_labels")
    return con.execute(f"""
        SELECT pf.feature, pf.cosine, {'l.label' if labels else 'NULL'} AS label
        FROM persona_features pf
        {'LEFT JOIN feature_labels l USING (sae_id, feature)' if labels else ''}
        WHERE pf.sae_id = ? AND pf.persona = ? ORDER BY pf.rank""", [sae, persona]).df().pipe(
        lambda f: with_names(con, sae, f))


def feature_effects(con: Any, sae: str, feature: int) -> pd.DataFrame:
    """A feature's causal measures per persona (empty before `shoggoth effects` or when it was
    not measured): persona, measure, estimate, ci_low, ci_high, n, role."""
    return _if_table(con, "feature_effects",
                     "SELECT persona, measure, estimate, ci_low, ci_high, n, role "
                     "FROM feature_effects WHERE sae_id = ? AND feature = ? "
                     "ORDER BY measure, persona", [sae, feature])


def persona_shifts(con: Any, sae: str) -> pd.DataFrame:
    """Each persona's shift of the answer's log-probability against no persona (mean over items
    of the summed per-token change, with its interval)."""
    return _if_table(con, "persona_shifts", "SELECT * EXCLUDE (sae_id) FROM persona_shifts "
                     "WHERE sae_id = ? ORDER BY persona", [sae])


def mediation_summary(con: Any, sae: str) -> pd.DataFrame:
    """Per measured feature: its role, label and best persona's mediated fraction with its
    interval, and its steering toward that persona (empty before `shoggoth effects`)."""
    labels = ("(SELECT feature, label FROM feature_labels WHERE sae_id = $sae)"
              if has_table(con, "feature_labels") else "(SELECT NULL::INTEGER AS feature, "
              "NULL::VARCHAR AS label)")
    return _if_table(con, "feature_effects", f"""
        WITH m AS (SELECT *, row_number() OVER (PARTITION BY feature ORDER BY estimate DESC
                                                NULLS LAST, persona) AS r
                   FROM feature_effects WHERE sae_id = $sae AND measure = 'mediated')
        SELECT m.feature, m.role, l.label, m.persona, m.estimate AS mediated, m.ci_low,
               m.ci_high, s.estimate AS steer_toward, s.ci_low AS steer_low,
               s.ci_high AS steer_high
        FROM m LEFT JOIN feature_effects s ON s.sae_id = $sae AND s.feature = m.feature
             AND s.persona = m.persona AND s.measure = 'steer_toward'
        LEFT JOIN {labels} l ON l.feature = m.feature
        WHERE m.r = 1 ORDER BY m.role, m.estimate DESC""", {"sae": sae}).pipe(
        lambda f: with_names(con, sae, f))


TYPICAL_SQL = """
WITH per AS (
  SELECT df.feature, df.persona, sum(df.mean_act * d.n_tokens) / sum(df.n_fire) AS firing,
         sum(df.mean_act) AS total
  FROM doc_features df JOIN documents d USING (sae_id, persona, paraphrase, item_id)
  JOIN personas p USING (persona)
  WHERE df.sae_id = $sae AND NOT p.is_control {only}
  GROUP BY df.feature, df.persona)
SELECT feature, arg_max(firing, total) AS typical FROM per GROUP BY feature ORDER BY feature"""


def typical_activations(con: Any, sae: str, feature: int | None = None) -> dict[int, float]:
    """Per feature: its mean activation on the answer tokens where it fires, under the persona
    where its mean activation is highest (what steering adds; absent: it never fired under a
    persona)."""
    only = "" if feature is None else "AND df.feature = $f"
    params: dict[str, Any] = {"sae": sae} | ({} if feature is None else {"f": feature})
    return {int(f): float(v) for f, v in
            con.execute(TYPICAL_SQL.format(only=only), params).fetchall()}


def answer_sets(con: Any) -> pd.DataFrame:
    """The finished answer sets (`shoggoth generate`), with their model and settings."""
    return _if_table(con, "answer_sets", "SELECT * EXCLUDE (run_id, status) FROM answer_sets "
                     "WHERE status = 'finished' ORDER BY answer_set", [])


def persona_answers(con: Any, answer_set: str, persona: str) -> pd.DataFrame:
    """A persona's own answers beside the battery's neutral ones: item_id, paraphrase, question,
    neutral, own, stop_reason."""
    return _if_table(con, "answers", """
        SELECT a.item_id, a.paraphrase, i.question, i.answer AS neutral, a.text AS own,
               a.stop_reason
        FROM answers a JOIN items i ON i.item_id::VARCHAR = a.item_id
        WHERE a.answer_set = ? AND a.persona = ? ORDER BY a.item_id, a.paraphrase""",
                     [answer_set, persona])


def grid_summary(con: Any, sae: str) -> pd.DataFrame:
    """Per answer set and grid label: features, and the estimated FDR of the effect labels."""
    return _if_table(con, "grid_features", """
        SELECT g.answer_set, g.neutral, g.grid_label AS label, count(*) AS features,
               any_value(r.n_null) AS n_null, any_value(r.fdr) AS fdr
        FROM grid_features g LEFT JOIN grid_fdr r ON r.sae_id = g.sae_id
             AND r.answer_set = g.answer_set AND r.neutral = g.neutral AND r.label = g.grid_label
        WHERE g.sae_id = ? GROUP BY ALL ORDER BY g.answer_set, g.neutral, features DESC""",
                     [sae])


def grid_feature(con: Any, sae: str, feature: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A feature's grid label and tests per answer set, and its per-persona cells and effects
    (both empty before `shoggoth grid`)."""
    where = "WHERE sae_id = ? AND feature = ?"
    return (_if_table(con, "grid_features", f"SELECT * EXCLUDE (sae_id) FROM grid_features "
                      f"{where} ORDER BY answer_set, neutral", [sae, feature]),
            _if_table(con, "grid_effects", f"SELECT * EXCLUDE (sae_id, feature) FROM "
                      f"grid_effects {where} ORDER BY answer_set, neutral, persona",
                      [sae, feature]))


def grid_runs(con: Any, sae: str) -> pd.DataFrame:
    """The (answer_set, neutral) pairs `shoggoth grid` has analysed for this SAE."""
    return _if_table(con, "grid_fdr", "SELECT DISTINCT answer_set, neutral FROM grid_fdr "
                     "WHERE sae_id = ? ORDER BY ALL", [sae])


def persona_content_features(con: Any, sae: str, answer_set: str, neutral: str, persona: str,
                             limit: int) -> pd.DataFrame:
    """The features the persona's own answers move most against the neutral ones (its content
    effect, in log units, largest |effect| / interval first), both directions, with the grid
    label and the persona label."""
    labels = has_table(con, "feature_labels")
    return _if_table(con, "grid_effects", f"""
        SELECT e.feature, e.content, e.content_low, e.content_high, e.in_action,
               e.neutral_text, g.grid_label, {'l.label' if labels else 'NULL'} AS label
        FROM grid_effects e JOIN grid_features g USING (sae_id, answer_set, neutral, feature)
        {'LEFT JOIN feature_labels l USING (sae_id, feature)' if labels else ''}
        WHERE e.sae_id = ? AND e.answer_set = ? AND e.neutral = ? AND e.persona = ?
              AND (e.content_low > 0 OR e.content_high < 0)
        ORDER BY abs(e.content) / greatest(e.content_high - e.content_low, 1e-9) DESC
        LIMIT ?""", [sae, answer_set, neutral, persona, limit]).pipe(
        lambda f: with_names(con, sae, f))
