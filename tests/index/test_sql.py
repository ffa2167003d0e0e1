"""`shoggoth sql`: every documented query on a real harvested and labelled database, the output
formats, and the sandbox (no files, no ATTACH, no extensions, no writes without --write)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from shoggoth import cli
from shoggoth.index.labels.rules import LABELS

QUERIES = Path(__file__).parents[2] / "docs" / "queries.sql"


def named_queries() -> dict[str, str]:
    parts = re.split(r"^-- name: (\w+)\n", QUERIES.read_text(), flags=re.M)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


@pytest.fixture(scope="module")
def labelled(indexed_db) -> Path:
    """Harvested, labelled and indexed (the queries name features through feature_names)."""
    return indexed_db


def sql(capfd, db: Path, query: str, *flags: str) -> tuple[int, str, str]:
    code = cli.main(["sql", "--db", str(db), *flags, "--", query])  # may start with --
    out, err = capfd.readouterr()
    return code, out, err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_documented_query_runs(capfd, labelled):
    queries = named_queries()
    assert {
        "persona_label_counts",
        "mask_specific_of_persona",
        "shared_by_every_persona",
        "calibration",
        "label_fdr",
        "mask_general",
        "features_named",
    } <= set(queries)
    results = {}
    for name, query in queries.items():
        code, out, err = sql(capfd, labelled, query, "--format", "json")
        assert code == 0, (name, err)
        results[name] = json.loads(out)
    con = duckdb.connect(str(labelled), read_only=True)
    want = con.execute("SELECT count(*) FROM features WHERE argmax_persona IS NOT NULL").fetchone()[
        0
    ]
    assert sum(r["features"] for r in results["persona_label_counts"]) == want > 0
    n_shared = con.execute("SELECT count(*) FROM features WHERE label = 'shared'").fetchone()[0]
    assert len(results["shared_by_every_persona"]) == min(n_shared, 50)
    assert {r["run"] for r in results["calibration"]} == {
        "real",
        "reassigned:0",
        "reassigned:1",
        "reassigned:2",
    }
    assert {r["label"] for r in results["label_fdr"]} == set(LABELS)
    top = results["persona_mean_of_feature"]
    assert top and top == sorted(top, key=lambda r: -r["mean_act"])
    con.close()


def test_mask_specific_query_shows_contexts(capfd, labelled, tmp_path):
    # Mark one live feature as the villain's in a copy, so the context query has rows to show.
    db = tmp_path / "copy.duckdb"
    db.write_bytes(labelled.read_bytes())
    con = duckdb.connect(str(db))
    feature = con.execute(
        "SELECT feature FROM features WHERE n_docs_firing > 0 ORDER BY density DESC LIMIT 1"
    ).fetchone()[0]
    con.execute(
        "UPDATE features SET label = 'mask-specific', top_persona = 'villain' WHERE feature = ?",
        [feature],
    )
    con.close()
    code, out, err = sql(capfd, db, named_queries()["mask_specific_of_persona"], "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["rank"] for r in rows] == [1, 2, 3] and {r["feature"] for r in rows} == {feature}
    assert all(r["context"].count("[[") == 1 for r in rows)
    assert rows[0]["value"] >= rows[1]["value"] >= rows[2]["value"]


def test_formats(capfd, labelled, tmp_path):
    query = "SELECT label, count(*) AS n FROM features GROUP BY label ORDER BY label"
    code, out, _ = sql(capfd, labelled, query, "--format", "csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert code == 0 and rows[0] == ["label", "n"] and sum(int(r[1]) for r in rows[1:]) == 64
    code, out, _ = sql(capfd, labelled, query)
    assert code == 0 and "label" in out and "rows" in out
    target = tmp_path / "out.parquet"
    code, _, err = sql(capfd, labelled, query, "--format", "parquet", "--out", str(target))
    assert code == 0, err
    assert pq.read_table(target).column_names == ["label", "n"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]  # no temp file left


@pytest.mark.parametrize(
    "query, words",
    [
        ("SELECT * FROM read_csv('/etc/passwd')", "refused"),
        ("SELECT * FROM read_text('/etc/hostname')", "refused"),
        ("COPY (SELECT 1) TO '{tmp}/leak.csv'", "refused"),
        ("ATTACH '{tmp}/other.duckdb' AS other", "refused"),
        ("INSTALL httpfs", "refused"),
        ("LOAD httpfs", "sql:"),
        ("SET enable_external_access = true", "sql:"),
        ("DELETE FROM features", "--write"),
        ("DROP TABLE activations", "--write"),
        ("SELEC nonsense", "sql:"),
    ],
)
def test_sql_sandbox(capfd, labelled, tmp_path, query, words):
    before = digest(labelled)
    code, out, err = sql(capfd, labelled, query.replace("{tmp}", str(tmp_path)))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
    assert digest(labelled) == before
    assert list(tmp_path.iterdir()) == []


def test_write_needs_the_flag_and_stays_sandboxed(capfd, labelled, tmp_path):
    db = tmp_path / "w.duckdb"
    db.write_bytes(labelled.read_bytes())
    code, _, err = sql(
        capfd,
        db,
        "INSERT INTO annotations (sae_id, feature, label) VALUES ('tiny-sae', 1, 'shared')",
        "--write",
    )
    assert code == 0, err
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM annotations").fetchone()[0] == 1
    con.close()
    code, _, err = sql(capfd, db, f"COPY features TO '{tmp_path}/x.csv'", "--write")
    assert code == 2 and "refused" in err and not (tmp_path / "x.csv").exists()


CROSS = "SELECT count(*) FROM activations a, activations b, activations c"


def test_a_query_past_its_timeout_is_stopped(capfd, labelled):
    import time

    started = time.monotonic()
    code, _, err = sql(capfd, labelled, CROSS, "--timeout", "1")
    assert (
        code == 2
        and err
        == "error: sql: stopped after 1 s (--timeout); narrow the query or raise --timeout\n"
    )
    assert time.monotonic() - started < 10


def test_a_query_past_its_memory_limit_fails_in_one_line(capfd, labelled):
    code, _, err = sql(
        capfd,
        labelled,
        "SELECT list(range(20000000)) AS x",
        "--memory-limit",
        "20MB",
        "--timeout",
        "120",
    )
    assert code == 2 and err.count("\n") == 1 and "--memory-limit" in err, err
    code, _, err = sql(capfd, labelled, "SELECT 1", "--memory-limit", "lots")
    assert code == 2 and "--memory-limit lots: expected a size" in err
    # Too little even to open the database (it reads its views first): one line too.
    code, _, err = sql(capfd, labelled, "SELECT 1", "--memory-limit", "1KB")
    assert code == 2 and err.count("\n") == 1, err
    assert "--memory-limit 1KB: too little to open" in err, err


def test_ctrl_c_stops_a_query_within_a_second(labelled):
    import signal
    import subprocess
    import sys
    import time

    from helpers import default_sigint

    exe = Path(sys.executable).with_name("shoggoth")
    started = time.monotonic()  # start-up, timed by a query that returns at once
    subprocess.run(
        [str(exe), "sql", "--db", str(labelled), "SELECT 1"], check=True, capture_output=True
    )
    start_up = time.monotonic() - started
    proc = subprocess.Popen(
        [str(exe), "sql", "--db", str(labelled), "--timeout", "0", CROSS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    time.sleep(start_up + 2)  # well inside the query
    assert proc.poll() is None
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 1.5, err
    assert proc.returncode == 130 and err.strip() == "interrupted", err
