"""docs/schema.md and the code agree: every table, column and type, in a real DuckDB file."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from shoggoth.battery.personas import load_items, load_personas
from shoggoth.index.effects.store import EFFECT_TABLES, create_effect_tables
from shoggoth.index.layers.store import create_probe_tables
from shoggoth.index.store.schema import (
    GRID_TABLES,
    INDEX_TABLES,
    LABEL_TABLES,
    TABLES,
    create_grid_tables,
    create_index_tables,
    create_label_tables,
    create_schema,
)

DOC = Path(__file__).parents[2] / "docs" / "schema.md"


def documented() -> dict[str, list[tuple[str, str]]]:
    """{table: [(column, type)]} from the '## table' sections' markdown tables."""
    out: dict[str, list[tuple[str, str]]] = {}
    table = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            table = line[3:].strip()
            out[table] = []
        m = re.match(r"\| (\w+) \| ([\w\[\]]+) \|", line)
        if table and m and m.group(1) != "column":
            out[table].append((m.group(1), m.group(2)))
    return out


def actual(tmp_path: Path) -> dict[str, list[tuple[str, str]]]:
    personas, items = load_personas(), load_items()
    con = duckdb.connect(str(tmp_path / "schema.duckdb"))
    create_schema(con, personas, items)
    create_label_tables(con)
    create_index_tables(con)
    create_probe_tables(con)
    create_effect_tables(con)
    create_grid_tables(con)
    enums = {
        "ENUM(" + ", ".join(f"'{p.name}'" for p in personas) + ")": "persona_name",
        "ENUM(" + ", ".join(f"'{i.item_id}'" for i in items) + ")": "item_name",
    }
    out: dict[str, list[tuple[str, str]]] = {}
    for table, column, dtype in con.execute(
        "SELECT table_name, column_name, data_type FROM duckdb_columns() "
        "WHERE schema_name = 'main' AND NOT internal ORDER BY table_name, column_index"
    ).fetchall():
        out.setdefault(table, []).append((column, enums.get(dtype, dtype)))
    con.close()
    return out


def test_schema_doc_matches_the_database(tmp_path):
    doc, db = documented(), actual(tmp_path)
    assert (
        sorted(doc)
        == sorted(db)
        == sorted(
            [
                *TABLES,
                *LABEL_TABLES,
                *INDEX_TABLES,
                *EFFECT_TABLES,
                *GRID_TABLES,
                "feature_labels",
                "feature_names",
                "layer_probe",
            ]
        )
    )
    for table in db:
        assert doc[table] == db[table], table


def test_contract_columns_are_present(tmp_path):
    db = actual(tmp_path)
    contract = {
        "saes": "sae_id model hook architecture d_in d_sae path",
        "personas": "persona family description is_control",
        "persona_prompts": "persona paraphrase prompt",
        "items": "item_id topic question answer",
        "tokens": "item_id pos token_id token",
        "documents": "persona paraphrase item_id n_tokens",
        "activations": "sae_id persona paraphrase item_id pos feature value",
        "doc_features": "sae_id persona paraphrase item_id feature mean_act max_act n_fire",
        "runs": "run_id command config_json versions_json started_at finished_at status",
    }
    for table, columns in contract.items():
        assert set(columns.split()) <= {c for c, _ in db[table]}, table
