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
    assert rows(views, "SELECT * FROM example_contexts((SELECT min(sae_id) FROM saes), 3)") == \
        rows(db, "SELECT * FROM example_contexts((SELECT min(sae_id) FROM saes), 3)")


def test_layout_is_hive_partitioned_and_sorted_by_feature(exported):
    db, out = exported
    with duckdb.connect(str(db), read_only=True) as con:
        personas = {r[0] for r in con.execute("SELECT DISTINCT persona::VARCHAR FROM "
                                              "activations").fetchall()}
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
    for query in ("SELECT * FROM read_csv('/etc/passwd')",
                  f"SELECT * FROM read_parquet('{out}/features.parquet')"):
        assert cli.main(["sql", "--db", str(moved / "shoggoth.duckdb"), query]) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:"), err


def test_bad_input_and_interruptions_keep_the_last_export(exported, tmp_path, capfd,
                                                          monkeypatch):
    db, out = exported
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    capfd.readouterr()
    for args, words in ((["--db", str(db), "--parquet", str(out)], "--overwrite"),
                        (["--parquet", str(tmp_path / "none"), "--views-only"],
                         "not a shoggoth export"),
                        (["--parquet", str(tmp_path / "x")], "--db"),
                        (["--db", str(tmp_path / "no.duckdb"), "--parquet",
                          str(tmp_path / "y")], "no such file")):
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
    assert rows(out / "shoggoth.duckdb", "SELECT count(*) FROM features") == \
        rows(db, "SELECT count(*) FROM features")
