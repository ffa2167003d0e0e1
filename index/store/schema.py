"""The feature database's schema: the contract tables that `shoggoth harvest` fills.

docs/schema.md documents every table and column; tests/index/test_schema.py keeps the two in step.
Persona and item names are ENUM types (`persona_name`, `item_name`) made from the battery: they
read and compare as text but are stored as small integers, which DuckDB run-length encodes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import duckdb

from shoggoth.battery.personas import Item, Persona
from shoggoth.index.store.connection import Connection

# 64 KiB blocks: the activations table's compressed column segments fill them with less slack
# than DuckDB's default 256 KiB (3.8 vs 4.4 bytes per activation, measured on MiniLM).
BLOCK_SIZE = 65_536

TABLES: dict[str, str] = {
    "runs": """
        run_id VARCHAR PRIMARY KEY, command VARCHAR NOT NULL, config_json JSON,
        versions_json JSON, started_at TIMESTAMP, finished_at TIMESTAMP, status VARCHAR""",
    "saes": """
        sae_id VARCHAR PRIMARY KEY, model VARCHAR NOT NULL, hook VARCHAR NOT NULL,
        architecture VARCHAR, d_in INTEGER NOT NULL, d_sae INTEGER NOT NULL, path VARCHAR,
        weights_sha256 VARCHAR, model_source VARCHAR, template VARCHAR,
        value_decimals INTEGER, prefix_cache BOOLEAN, run_id VARCHAR, logit_effects VARCHAR,
        kind VARCHAR, reference VARCHAR, release VARCHAR, sae_lens_id VARCHAR,
        neuronpedia_id VARCHAR""",
    "personas": """
        persona persona_name PRIMARY KEY, family VARCHAR NOT NULL, description VARCHAR,
        is_control BOOLEAN NOT NULL, control_of VARCHAR""",
    "persona_prompts": """
        persona persona_name NOT NULL, paraphrase SMALLINT NOT NULL, prompt VARCHAR NOT NULL,
        PRIMARY KEY (persona, paraphrase)""",
    "items": """
        item_id item_name PRIMARY KEY, topic VARCHAR NOT NULL, question VARCHAR NOT NULL,
        answer VARCHAR NOT NULL""",
    "tokens": """
        sae_id VARCHAR NOT NULL, item_id item_name NOT NULL, pos INTEGER NOT NULL,
        token_id INTEGER NOT NULL, token VARCHAR NOT NULL, PRIMARY KEY (sae_id, item_id, pos)""",
    "documents": """
        sae_id VARCHAR NOT NULL, persona persona_name NOT NULL, paraphrase SMALLINT NOT NULL,
        item_id item_name NOT NULL, n_tokens INTEGER NOT NULL""",
    "activations": """
        sae_id VARCHAR NOT NULL, persona persona_name NOT NULL, paraphrase SMALLINT NOT NULL,
        item_id item_name NOT NULL, pos INTEGER NOT NULL, feature INTEGER NOT NULL,
        value FLOAT NOT NULL""",
    "doc_features": """
        sae_id VARCHAR NOT NULL, persona persona_name NOT NULL, paraphrase SMALLINT NOT NULL,
        item_id item_name NOT NULL, feature INTEGER NOT NULL, mean_act FLOAT NOT NULL,
        max_act FLOAT NOT NULL, n_fire INTEGER NOT NULL""",
    "residual_sums": """
        sae_id VARCHAR NOT NULL, persona persona_name NOT NULL, paraphrase SMALLINT NOT NULL,
        item_id item_name NOT NULL, n_tokens INTEGER NOT NULL, residual_sum DOUBLE[] NOT NULL""",
    "document_shifts": """
        sae_id VARCHAR NOT NULL, persona persona_name NOT NULL, paraphrase SMALLINT NOT NULL,
        item_id item_name NOT NULL, shift FLOAT[] NOT NULL, shift_hat FLOAT[] NOT NULL""",
}
"""Table name → column definitions. Bulk tables carry no primary key: each harvest batch is
written once, in one transaction, so uniqueness holds by construction (and is tested)."""

LABEL_TABLES: dict[str, str] = {
    "features": """
        sae_id VARCHAR NOT NULL, feature INTEGER NOT NULL, label VARCHAR NOT NULL,
        top_persona VARCHAR, family_set VARCHAR, battery_family VARCHAR, argmax_persona VARCHAR,
        n_docs_firing INTEGER NOT NULL, fire_frac_personas DOUBLE, top_share DOUBLE,
        k_eff DOUBLE, norm_entropy DOUBLE, f_stat DOUBLE, p_value DOUBLE, q_value DOUBLE,
        top_ratio DOUBLE, paraphrase_margin DOUBLE, set_size INTEGER, set_ratio DOUBLE,
        set_margin DOUBLE, control_ratio DOUBLE, control_margin DOUBLE, no_mask_ratio DOUBLE,
        max_min_ratio DOUBLE, rest_ratio DOUBLE,
        ratio_ci_high DOUBLE, shared_power DOUBLE, ranked_personas VARCHAR, density DOUBLE,
        mean_act DOUBLE, max_act DOUBLE, causal VARCHAR, mediated DOUBLE,
        mediated_persona VARCHAR, PRIMARY KEY (sae_id, feature)""",
    "feature_personas": """
        sae_id VARCHAR NOT NULL, feature INTEGER NOT NULL, persona VARCHAR NOT NULL,
        mean_act DOUBLE NOT NULL, fire_rate DOUBLE NOT NULL, delta_vs_rest DOUBLE,
        PRIMARY KEY (sae_id, feature, persona)""",
    "calibration": """
        sae_id VARCHAR NOT NULL, run VARCHAR NOT NULL, description VARCHAR, n_live INTEGER,
        label VARCHAR NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (sae_id, run, label)""",
    "label_fdr": """
        sae_id VARCHAR NOT NULL, label VARCHAR NOT NULL, n_real INTEGER NOT NULL,
        n_null DOUBLE NOT NULL, n_split INTEGER, fdr DOUBLE, PRIMARY KEY (sae_id, label)""",
    "persona_signal": """
        sae_id VARCHAR NOT NULL, persona VARCHAR NOT NULL, n_docs INTEGER NOT NULL,
        shift_norm DOUBLE NOT NULL, carried DOUBLE, PRIMARY KEY (sae_id, persona)""",
    "persona_decomposition": """
        sae_id VARCHAR NOT NULL, persona VARCHAR NOT NULL, part VARCHAR NOT NULL,
        share DOUBLE, ci_low DOUBLE, ci_high DOUBLE, n_items INTEGER NOT NULL,
        PRIMARY KEY (sae_id, persona, part)""",
    "persona_label_shares": """
        sae_id VARCHAR NOT NULL, persona VARCHAR NOT NULL, part VARCHAR NOT NULL,
        share DOUBLE, ci_low DOUBLE, ci_high DOUBLE, n_items INTEGER NOT NULL,
        PRIMARY KEY (sae_id, persona, part)""",
    "persona_own_features": """
        sae_id VARCHAR NOT NULL, persona VARCHAR NOT NULL, rank INTEGER NOT NULL,
        feature INTEGER NOT NULL, share DOUBLE NOT NULL, modulation DOUBLE NOT NULL,
        label VARCHAR NOT NULL, PRIMARY KEY (sae_id, persona, rank)""",
    "persona_space": """
        sae_id VARCHAR NOT NULL, persona VARCHAR NOT NULL, is_control BOOLEAN NOT NULL,
        n_wordings INTEGER NOT NULL, n_items INTEGER NOT NULL,
        norm DOUBLE, norm_ci_low DOUBLE, norm_ci_high DOUBLE,
        common_share DOUBLE, common_share_ci_low DOUBLE, common_share_ci_high DOUBLE,
        control_share DOUBLE, control_share_ci_low DOUBLE, control_share_ci_high DOUBLE,
        remainder_share DOUBLE, remainder_share_ci_low DOUBLE, remainder_share_ci_high DOUBLE,
        reproducibility DOUBLE, reproducibility_ci_low DOUBLE, reproducibility_ci_high DOUBLE,
        reproducibility_null DOUBLE, pc1 DOUBLE, pc1_ci_low DOUBLE, pc1_ci_high DOUBLE,
        pc2 DOUBLE, pc3 DOUBLE, PRIMARY KEY (sae_id, persona)""",
    "persona_space_axes": """
        sae_id VARCHAR NOT NULL, axis VARCHAR NOT NULL, variance_share DOUBLE, ci_low DOUBLE,
        ci_high DOUBLE, cosine_pc1 DOUBLE, cosine_common DOUBLE, norm_ratio DOUBLE,
        axis_persona VARCHAR, PRIMARY KEY (sae_id, axis)""",
    "annotations": """
        sae_id VARCHAR NOT NULL, feature INTEGER NOT NULL, label VARCHAR, note VARCHAR,
        author VARCHAR, created_at TIMESTAMP DEFAULT current_timestamp""",
}
"""Written by `shoggoth label` (created when first needed); `annotations` holds manual labels and
is never written by label."""

CAUSAL_COLUMNS = (("causal", "VARCHAR"), ("mediated", "DOUBLE"), ("mediated_persona", "VARCHAR"))
"""The features table's causal summary, filled by `shoggoth effects` (NULL: not measured)."""

NEIGHBOR_COLUMNS = """
        sae_id VARCHAR NOT NULL, feature INTEGER NOT NULL, rank INTEGER NOT NULL,
        neighbor INTEGER NOT NULL, cosine FLOAT NOT NULL"""

INDEX_TABLES: dict[str, str] = {
    "examples": """
        sae_id VARCHAR NOT NULL, feature INTEGER NOT NULL, kind VARCHAR NOT NULL,
        rank INTEGER NOT NULL, persona VARCHAR NOT NULL, paraphrase SMALLINT NOT NULL,
        item_id VARCHAR NOT NULL, pos INTEGER NOT NULL, value FLOAT NOT NULL, bin_lo FLOAT,
        bin_hi FLOAT""",
    "feature_histograms": """
        sae_id VARCHAR NOT NULL, feature INTEGER NOT NULL, bin INTEGER NOT NULL,
        lo FLOAT NOT NULL, hi FLOAT NOT NULL, count INTEGER NOT NULL""",
    "neighbors": NEIGHBOR_COLUMNS,
    "profile_neighbors": NEIGHBOR_COLUMNS,
    "logit_effects": """
        sae_id VARCHAR NOT NULL, feature INTEGER NOT NULL, sign VARCHAR NOT NULL,
        rank INTEGER NOT NULL, token_id INTEGER NOT NULL, token VARCHAR NOT NULL,
        value FLOAT NOT NULL""",
    "faiss_indexes": """
        sae_id VARCHAR NOT NULL, name VARCHAR NOT NULL, path VARCHAR NOT NULL,
        kind VARCHAR NOT NULL, n INTEGER NOT NULL, d INTEGER NOT NULL, recall_at_10 DOUBLE,
        ef_search INTEGER, sha256 VARCHAR, PRIMARY KEY (sae_id, name)""",
    "persona_vectors": """
        sae_id VARCHAR NOT NULL, persona VARCHAR NOT NULL, row INTEGER NOT NULL,
        path VARCHAR NOT NULL, is_control BOOLEAN NOT NULL, n_tokens BIGINT NOT NULL,
        norm DOUBLE NOT NULL, relative_norm DOUBLE, PRIMARY KEY (sae_id, persona)""",
    "persona_features": """
        sae_id VARCHAR NOT NULL, persona VARCHAR NOT NULL, rank INTEGER NOT NULL,
        feature INTEGER NOT NULL, cosine FLOAT NOT NULL""",
    "feature_handles": """
        sae_id VARCHAR NOT NULL, feature INTEGER NOT NULL, handle VARCHAR NOT NULL,
        terms VARCHAR[] NOT NULL, scores DOUBLE[] NOT NULL, shares DOUBLE[] NOT NULL,
        best_score DOUBLE NOT NULL, PRIMARY KEY (sae_id, feature)""",
    "feature_maps": """
        sae_id VARCHAR NOT NULL, feature INTEGER NOT NULL, map VARCHAR NOT NULL,
        method VARCHAR NOT NULL, x FLOAT NOT NULL, y FLOAT NOT NULL""",
    "feature_explanations": """
        sae_id VARCHAR NOT NULL, feature INTEGER NOT NULL, explanation VARCHAR NOT NULL,
        explainer VARCHAR NOT NULL, scorer VARCHAR NOT NULL,
        detection DOUBLE, detection_n INTEGER NOT NULL, detection_hits INTEGER[] NOT NULL,
        fuzzing DOUBLE, fuzzing_n INTEGER NOT NULL, fuzzing_hits INTEGER[] NOT NULL,
        n_shown INTEGER NOT NULL, settings_json JSON NOT NULL, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (sae_id, feature)""",
}
"""Written by `shoggoth index` (created when first needed; `shoggoth explain` fills
feature_explanations)."""

GRID_TABLES: dict[str, str] = {
    "answer_sets": """
        answer_set VARCHAR PRIMARY KEY, model VARCHAR NOT NULL, template VARCHAR NOT NULL,
        max_tokens INTEGER NOT NULL, temperature DOUBLE NOT NULL, seed INTEGER NOT NULL,
        run_id VARCHAR NOT NULL, status VARCHAR NOT NULL""",
    "answers": """
        answer_set VARCHAR NOT NULL, persona VARCHAR NOT NULL, paraphrase SMALLINT NOT NULL,
        item_id VARCHAR NOT NULL, text VARCHAR NOT NULL, n_tokens INTEGER NOT NULL,
        stop_reason VARCHAR NOT NULL, PRIMARY KEY (answer_set, persona, paraphrase, item_id)""",
    "grid_documents": """
        sae_id VARCHAR NOT NULL, answer_set VARCHAR NOT NULL, neutral VARCHAR NOT NULL,
        doc INTEGER NOT NULL,
        cell VARCHAR NOT NULL, context VARCHAR NOT NULL, context_paraphrase SMALLINT NOT NULL,
        text_persona VARCHAR, text_paraphrase SMALLINT, item_id VARCHAR NOT NULL,
        persona VARCHAR, paraphrase SMALLINT, n_tokens INTEGER NOT NULL,
        PRIMARY KEY (sae_id, answer_set, neutral, doc)""",
    "grid_doc_features": """
        sae_id VARCHAR NOT NULL, answer_set VARCHAR NOT NULL, neutral VARCHAR NOT NULL,
        doc INTEGER NOT NULL,
        feature INTEGER NOT NULL, mean_act FLOAT NOT NULL, max_act FLOAT NOT NULL,
        n_fire INTEGER NOT NULL""",
    "grid_features": """
        sae_id VARCHAR NOT NULL, answer_set VARCHAR NOT NULL, neutral VARCHAR NOT NULL,
        feature INTEGER NOT NULL,
        grid_label VARCHAR NOT NULL, n_docs_firing INTEGER NOT NULL,
        context_t DOUBLE, context_p DOUBLE, context_q DOUBLE, context_persona VARCHAR,
        content_t DOUBLE, content_p DOUBLE, content_q DOUBLE, content_persona VARCHAR,
        interaction_t DOUBLE, interaction_p DOUBLE, interaction_q DOUBLE,
        interaction_persona VARCHAR, action_ratio_high DOUBLE, action_power DOUBLE,
        PRIMARY KEY (sae_id, answer_set, neutral, feature)""",
    "grid_effects": """
        sae_id VARCHAR NOT NULL, answer_set VARCHAR NOT NULL, neutral VARCHAR NOT NULL,
        feature INTEGER NOT NULL,
        persona VARCHAR NOT NULL, n_prompts INTEGER NOT NULL, in_action DOUBLE NOT NULL,
        neutral_text DOUBLE NOT NULL, text_only DOUBLE NOT NULL, baseline DOUBLE NOT NULL,
        context DOUBLE NOT NULL, context_low DOUBLE, context_high DOUBLE,
        content DOUBLE NOT NULL, content_low DOUBLE, content_high DOUBLE,
        interaction DOUBLE NOT NULL, interaction_low DOUBLE, interaction_high DOUBLE,
        PRIMARY KEY (sae_id, answer_set, neutral, feature, persona)""",
    "grid_fdr": """
        sae_id VARCHAR NOT NULL, answer_set VARCHAR NOT NULL, neutral VARCHAR NOT NULL,
        label VARCHAR NOT NULL,
        n_real INTEGER NOT NULL, n_null DOUBLE, fdr DOUBLE,
        PRIMARY KEY (sae_id, answer_set, neutral, label)""",
}
"""Written by `shoggoth generate` (answer_sets, answers) and `shoggoth grid` (the rest),
created when first needed."""


def create_grid_tables(con: Connection) -> None:
    """The tables of the context × content grid (if missing)."""
    for table, columns in GRID_TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")


EXAMPLE_CONTEXTS_MACRO = """
CREATE OR REPLACE MACRO example_contexts(sae, feat, width := 8) AS TABLE
SELECT * FROM (
    SELECT e.kind, e.rank, round(e.value::DOUBLE, 4) AS value, e.persona, e.paraphrase, e.item_id,
           e.pos, round(e.bin_lo::DOUBLE, 4) AS bin_lo, round(e.bin_hi::DOUBLE, 4) AS bin_hi,
           string_agg(CASE WHEN t.pos = e.pos THEN '[[' || t.token || ']]' ELSE t.token END,
                      ' ' ORDER BY t.pos) AS context
    FROM examples e
    JOIN tokens t ON t.sae_id = e.sae_id AND t.item_id = e.item_id
         AND t.pos BETWEEN e.pos - width AND e.pos + width
    WHERE e.sae_id = sae AND e.feature = feat
    GROUP BY ALL)
ORDER BY kind <> 'top', bin_lo DESC NULLS FIRST, rank
"""
"""The examples of one feature with their token context, the firing token in [[ ]]: top
examples first, then the intervals from the highest down."""


def create_index_tables(con: Connection) -> None:
    """The tables `shoggoth index` writes, and the example_contexts macro (if missing)."""
    con.execute("ALTER TABLE saes ADD COLUMN IF NOT EXISTS logit_effects VARCHAR")
    for table, columns in INDEX_TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
    # The FAISS file's hash, checked when it is read, proves it belongs to this database.
    con.execute("ALTER TABLE faiss_indexes ADD COLUMN IF NOT EXISTS sha256 VARCHAR")
    con.execute(EXAMPLE_CONTEXTS_MACRO)
    create_names_view(con)


def create_names_view(
    con: duckdb.DuckDBPyConnection, temp: bool = False, have: set[str] | None = None
) -> None:
    """`feature_names`: each feature's handle, the persona it prefers when its label says so,
    and its scored explanation when `shoggoth explain` wrote one (built from the tables there
    are; every command that writes one of them calls this). `temp`: a temporary view, for one
    connection only (see `define_own_views`); `have`: the tables it may read (default: every
    table and view of the database)."""
    if have is None:
        have = {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            ).fetchall()
        }
    if not {"feature_handles", "feature_explanations"} <= have:
        return
    labels = {"features", "annotations"} <= have
    persona = (
        "CASE WHEN l.label IN ('mask-specific', 'persona-concept', 'mask-or-concept') "
        "THEN l.top_persona WHEN l.label = 'mask-family' THEN l.family_set END"
        if labels
        else "NULL::VARCHAR"
    )
    con.execute(f"""
CREATE OR REPLACE {"TEMP " if temp else ""}VIEW feature_names AS
SELECT h.sae_id, h.feature, h.handle, {persona} AS persona,
       h.handle || coalesce(' · ' || ({persona}), '') AS name,
       {"l.label" if labels else "NULL::VARCHAR"} AS label,
       e.explanation, e.explainer, e.detection, e.detection_n, e.fuzzing, e.fuzzing_n, h.terms
FROM feature_handles h
{"LEFT JOIN feature_labels l USING (sae_id, feature)" if labels else ""}
LEFT JOIN feature_explanations e USING (sae_id, feature)
""")


def _base_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The tables (not views) in the connection's own main schema."""
    return {
        r[0]
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND "
            "schema_name = 'main'"
        ).fetchall()
    }


def define_own_views(con: duckdb.DuckDBPyConnection, have: set[str] | None = None) -> None:
    """shoggoth's views and macro (feature_labels, feature_names, example_contexts) as
    temporary objects of this connection, from shoggoth's own definitions: they win over any
    object of the same name the file holds, so what the file says never changes their rows.
    Each is defined when the tables it reads are there (`have`: those it may read; default:
    the file's own tables, never its views)."""
    have = _base_tables(con) if have is None else have
    if {"features", "annotations"} <= have:
        con.execute(FEATURE_LABELS_VIEW.replace("OR REPLACE VIEW", "OR REPLACE TEMP VIEW", 1))
    if {"examples", "tokens"} <= have:
        con.execute(EXAMPLE_CONTEXTS_MACRO.replace("OR REPLACE MACRO", "OR REPLACE TEMP MACRO", 1))
    create_names_view(con, temp=True, have=have)


def columns_of(definitions: str) -> list[str]:
    """The column names in a table's definitions (as TABLES holds them)."""
    parts = re.split(r",(?![^()]*\))", definitions)
    return [p.split()[0] for p in parts if p.strip() and not p.strip().startswith("PRIMARY")]


SAES_COLUMNS: tuple[str, ...] = tuple(columns_of(TABLES["saes"]))
"""The columns a `saes` row may have (a merge copies no other)."""


KNOWN_TABLES: frozenset[str] = frozenset(
    {
        *TABLES,
        *LABEL_TABLES,
        *INDEX_TABLES,
        *GRID_TABLES,
        "feature_effects",
        "persona_shifts",
        "persona_composition",
        "layer_probe",
    }
)
"""Every table a shoggoth command writes (the effects' and layers' tables are defined beside
their commands; tests/index/test_schema.py checks this list against a database every command
wrote)."""


FEATURE_LABELS_VIEW = """
CREATE OR REPLACE VIEW feature_labels AS
SELECT f.sae_id, f.feature, coalesce(a.label, f.label) AS label, f.label AS auto_label,
       a.label AS manual_label, a.note, f.top_persona, f.family_set
FROM features f
LEFT JOIN (SELECT sae_id, feature, arg_max(label, created_at) AS label,
                  arg_max(note, created_at) AS note
           FROM annotations WHERE label IS NOT NULL GROUP BY ALL) a USING (sae_id, feature)
"""


def stale_label_tables(con: Connection) -> list[str]:
    """Label tables written by an older labeller (they lack a column today's has): derived
    data from a method that no longer exists."""
    stale = []
    for table, marker in (("features", "set_margin"), ("calibration", "label")):
        have = _column_names(con, table)
        if have and marker not in have:
            stale.append(table)
    for table in PERSONA_TABLES:  # (wholly derived: any other set of columns is an old one)
        have = _column_names(con, table)
        if have and have != set(columns_of(LABEL_TABLES[table])):
            stale.append(table)
    return stale


PERSONA_TABLES = (
    "persona_signal",
    "persona_space",
    "persona_space_axes",
    "persona_decomposition",
    "persona_label_shares",
    "persona_own_features",
)
"""The tables `label` fills about the personas, beside the feature labels."""


def _column_names(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
            "AND table_schema = current_schema()",
            [table],
        ).fetchall()
    }


def create_label_tables(con: Connection) -> None:
    """The tables `shoggoth label` writes, and the feature_labels view (if missing). Stale
    label tables (`stale_label_tables`) are replaced; the annotations are kept."""
    for table in stale_label_tables(con):
        con.execute("DROP VIEW IF EXISTS main.feature_labels")  # not the temporary one
        con.execute(f"DROP TABLE {table}")
    for table, columns in LABEL_TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
    add_feature_columns(con)
    con.execute(FEATURE_LABELS_VIEW)
    create_names_view(con)


def add_feature_columns(con: Connection) -> None:
    """Columns a features table written before they existed lacks (control_margin, the causal
    summary)."""
    for column, kind in (("control_margin", "DOUBLE"), ("rest_ratio", "DOUBLE"), *CAUSAL_COLUMNS):
        con.execute(f"ALTER TABLE features ADD COLUMN IF NOT EXISTS {column} {kind}")


# The order rows are kept in, which is also what makes merged shards equal one run.
ORDER: dict[str, str] = {
    "tokens": "sae_id, item_id, pos",
    "documents": "sae_id, persona, paraphrase, item_id",
    "activations": "sae_id, persona, paraphrase, item_id, pos, feature",
    "doc_features": "sae_id, persona, paraphrase, item_id, feature",
    "residual_sums": "sae_id, persona, paraphrase, item_id",
    "document_shifts": "sae_id, persona, paraphrase, item_id",
}
BATTERY_TABLES = ("personas", "persona_prompts", "items")
HARVEST_TABLES = (
    "tokens",
    "documents",
    "activations",
    "doc_features",
    "residual_sums",
    "document_shifts",
)


CONTRACT_COLUMNS = (
    ("saes", "kind", "VARCHAR"),
    ("saes", "reference", "VARCHAR"),
    ("saes", "release", "VARCHAR"),
    ("saes", "sae_lens_id", "VARCHAR"),
    ("saes", "neuronpedia_id", "VARCHAR"),
)
"""Contract columns a database written before them lacks (NULL there: a residual SAE, not
imported from sae-lens)."""


def upgrade_contract(con: Connection) -> None:
    """Add to a database written by an earlier version the contract columns and harvest tables
    it lacks (its rows keep NULL / no rows there)."""
    for table, column, kind in CONTRACT_COLUMNS:
        con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
    for table in HARVEST_TABLES:
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({TABLES[table]})")


def catalog_has_table(con: duckdb.DuckDBPyConnection, catalog: str, table: str) -> bool:
    """Whether attached database `catalog` holds `table`."""
    row = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND table_name = ?",
        [catalog, table],
    ).fetchone()
    return bool(row and row[0])


def quote(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def create_schema(con: Connection, personas: Sequence[Persona], items: Sequence[Item]) -> None:
    """Create the ENUM types, every contract table, and fill the battery tables."""
    names = ", ".join(quote(p.name) for p in personas)
    ids = ", ".join(quote(i.item_id) for i in items)
    con.execute(f"CREATE TYPE persona_name AS ENUM ({names})")
    con.execute(f"CREATE TYPE item_name AS ENUM ({ids})")
    for table, columns in TABLES.items():
        con.execute(f"CREATE TABLE {table} ({columns})")
    con.executemany(
        "INSERT INTO personas VALUES (?, ?, ?, ?, ?)",
        [(p.name, p.family, p.description, p.is_control, p.control_of) for p in personas],
    )
    con.executemany(
        "INSERT INTO persona_prompts VALUES (?, ?, ?)",
        [(p.name, j, text) for p in personas for j, text in enumerate(p.prompts)],
    )
    con.executemany(
        "INSERT INTO items VALUES (?, ?, ?, ?)",
        [(i.item_id, i.topic, i.question, i.answer) for i in items],
    )


def battery_rows(con: Connection, catalog: str | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """The battery tables' rows as sorted text tuples (for comparing batteries)."""
    prefix = f"{catalog}." if catalog else ""
    return {
        t: sorted(con.execute(f"SELECT * FROM {prefix}{t}").fetchall(), key=repr)
        for t in BATTERY_TABLES
    }


def battery_of(personas: Sequence[Persona], items: Sequence[Item]) -> dict[str, list[tuple]]:
    """The rows `battery_rows` reads back from a database holding this battery."""
    rows: dict[str, list[tuple[Any, ...]]] = {
        "personas": [
            (p.name, p.family, p.description, p.is_control, p.control_of) for p in personas
        ],
        "persona_prompts": [(p.name, j, t) for p in personas for j, t in enumerate(p.prompts)],
        "items": [(i.item_id, i.topic, i.question, i.answer) for i in items],
    }
    return {t: sorted(r, key=repr) for t, r in rows.items()}


def read_battery(con: Connection, catalog: str | None = None) -> tuple[list[Persona], list[Item]]:
    """The battery stored in a database, personas and items in their ENUM order."""
    prefix = f"{catalog}." if catalog else ""
    prompts: dict[str, list[str]] = {}
    for name, text in con.execute(
        f"SELECT persona::VARCHAR, prompt FROM {prefix}persona_prompts ORDER BY persona, paraphrase"
    ).fetchall():
        prompts.setdefault(name, []).append(text)
    personas = [
        Persona(
            name, family, description or "", tuple(prompts.get(name, ())), is_control, control_of
        )
        for name, family, description, is_control, control_of in con.execute(
            f"SELECT persona::VARCHAR, family, description, is_control, control_of "
            f"FROM {prefix}personas ORDER BY persona"
        ).fetchall()
    ]
    items = [
        Item(*row)
        for row in con.execute(
            f"SELECT item_id::VARCHAR, topic, question, answer FROM {prefix}items ORDER BY item_id"
        ).fetchall()
    ]
    return personas, items
