"""`shoggoth export`: a real database to Hive-partitioned Parquet and a DuckDB file of views;
every documented query gives the same rows on both, the layout is partitioned and sorted, the
views move with the files, the sandbox still holds, and bad input or an interruption leaves the
last good export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from test_sql import named_queries

import shoggoth.index.store.export
from shoggoth import cli
from shoggoth.index.store.sql import SqlConfig, run_sql


@pytest.fixture(scope="module")
def exported(indexed_db, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "parquet"
    assert cli.main(["export", "--db", str(indexed_db), "--parquet", str(out)]) == 0
    return indexed_db, out


def rows(db: Path, query: str) -> list[tuple]:
    _, result, _ = run_sql(SqlConfig(db=db, query=[query], timeout=0))
    return sorted(result, key=repr)


def test_documented_queries_and_tables_match_the_native_file(exported):
    db, out = exported
    views = out / "shoggoth.duckdb"
    for name, query in named_queries().items():
        assert rows(views, query) == rows(db, query), name
    with duckdb.connect(str(db), read_only=True) as con:
        tables = [r[0] for r in con.execute("SHOW TABLES").fetchall()]
    assert {"activations", "doc_features", "features", "examples"} <= set(tables)
    for table in tables:
        query = f"SELECT * FROM {table}"
        assert rows(views, query) == rows(db, query), table
    # The documented example_contexts macro and feature_labels view work on the views too.
    assert rows(views, "SELECT * FROM example_contexts((SELECT min(sae_id) FROM saes), 3)") == rows(
        db, "SELECT * FROM example_contexts((SELECT min(sae_id) FROM saes), 3)"
    )


def test_layout_is_hive_partitioned_and_sorted_by_feature(exported):
    db, out = exported
    with duckdb.connect(str(db), read_only=True) as con:
        personas = {
            r[0]
            for r in con.execute("SELECT DISTINCT persona::VARCHAR FROM activations").fetchall()
        }
        sae = con.execute("SELECT sae_id FROM saes").fetchone()[0]
    folders = {p.name for p in (out / "activations" / f"sae_id={sae}").iterdir()}
    assert folders == {f"persona={p}" for p in personas}
    for f in (out / "activations").rglob("*.parquet"):
        feature = pq.read_table(f, columns=["feature"]).column("feature").to_pylist()
        assert feature == sorted(feature)
    manifest = json.loads((out / "EXPORT.json").read_text())
    assert manifest["rows"]["activations"] > 0


def test_views_move_with_the_files_and_the_sandbox_holds(exported, tmp_path, capfd):
    _, out = exported
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)
    assert cli.main(["export", "--parquet", str(moved), "--views-only"]) == 0
    want = rows(out / "shoggoth.duckdb", "SELECT count(*), sum(value) FROM activations")
    shutil.rmtree(moved / "doc_features")  # the moved views read the moved files only
    assert rows(moved / "shoggoth.duckdb", "SELECT count(*), sum(value) FROM activations") == want
    capfd.readouterr()
    for query in (
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_parquet('{out}/features.parquet')",
    ):
        assert cli.main(["sql", "--db", str(moved / "shoggoth.duckdb"), query]) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:"), err


def test_bad_input_and_interruptions_keep_the_last_export(exported, tmp_path, capfd, monkeypatch):
    db, out = exported
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    capfd.readouterr()
    for args, words in (
        (["--db", str(db), "--parquet", str(out)], "--overwrite"),
        (["--parquet", str(tmp_path / "none"), "--views-only"], "not a shoggoth export"),
        (["--parquet", str(tmp_path / "x")], "--db"),
        (["--db", str(tmp_path / "no.duckdb"), "--parquet", str(tmp_path / "y")], "no such file"),
    ):
        assert cli.main(["export", *args]) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    real, calls = shoggoth.index.store.export.copy_table, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(shoggoth.index.store.export, "copy_table", flaky)
    assert cli.main(["export", "--db", str(db), "--parquet", str(out), "--overwrite"]) == 130
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert not list(out.parent.glob(f".{out.name}.partial-*"))
    assert rows(out / "shoggoth.duckdb", "SELECT count(*) FROM features") == rows(
        db, "SELECT count(*) FROM features"
    )


def test_views_have_the_tables_columns_and_types(exported):
    """With the partition columns in the files too, each view still reads one column of each
    name: the table's columns, in its order, with its types (ENUMs as text)."""
    db, out = exported
    with (
        duckdb.connect(str(db), read_only=True) as con,
        duckdb.connect(str(out / "shoggoth.duckdb"), read_only=True) as views,
    ):
        for (table,) in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'"
        ).fetchall():
            want = [
                (c, "VARCHAR" if t.startswith("ENUM") else t)
                for c, t, *_ in con.execute(f"DESCRIBE {table}").fetchall()
            ]
            assert [tuple(r[:2]) for r in views.execute(f"DESCRIBE {table}").fetchall()] == want, (
                table
            )
    for f in (out / "activations").rglob("*.parquet"):
        assert {"sae_id", "persona"} <= set(pq.read_schema(f).names)


@pytest.mark.slow
def test_datasets_loads_every_table_whole(exported, tmp_path):
    """README.md is a Hugging Face dataset card whose `configs:` list every table;
    `datasets.load_dataset(DIR, table)` gives every column of the table (the partition columns
    too, with their values) and the row count DuckDB has."""
    import datasets
    import yaml

    db, out = exported
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    configs = {
        c["config_name"]: c["data_files"] for c in yaml.safe_load(text.split("---\n")[1])["configs"]
    }
    with duckdb.connect(str(db), read_only=True) as con:
        tables = sorted(
            r[0]
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'"
            ).fetchall()
        )
        assert sorted(configs) == tables
        for table in tables:
            columns = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
            count = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            assert f"| {table} | {count:,} |" in text, table
            if not count:  # datasets cannot load a split with no rows ("corresponds to no data")
                continue
            ds = datasets.load_dataset(
                str(out), table, split="train", cache_dir=str(tmp_path / "hf")
            )
            assert ds.column_names == columns, table
            assert len(ds) == count, table
            if table == "activations":
                want = dict(
                    con.execute(
                        "SELECT persona::VARCHAR || '/' || sae_id, count(*) "
                        "FROM activations GROUP BY ALL"
                    ).fetchall()
                )
                got = ds.to_pandas().groupby(["persona", "sae_id"]).size()
                assert {f"{p}/{s}": n for (p, s), n in got.items()} == want
    assert "shoggoth sql --db DIR/shoggoth.duckdb" in text
