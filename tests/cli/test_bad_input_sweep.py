"""Bad input to every command with many inputs (effects, steer, generate,
grid, layers, explain, export, search in every mode, harvest --ray, train --ddp/--shards and
several SAEs, train --target difference): bad flag values, bad YAML values, bad files (missing,
empty, not UTF-8, wrong shape, duplicated ids), a database of another kind or without the tables
a command needs. Each is one `error:` line naming the input, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from helpers import snapshot

from shoggoth import cli


@pytest.fixture(scope="module")
def files(tmp_path_factory, labelled_db):
    """A folder of bad inputs beside a copy of a labelled database."""
    folder = tmp_path_factory.mktemp("sweep")
    db = folder / "db.duckdb"
    db.write_bytes(labelled_db.read_bytes())
    (folder / "empty.yaml").write_text("")
    (folder / "latin1.yaml").write_bytes(b"db: caf\xe9\n")
    (folder / "list.yaml").write_text("- a\n- b\n")
    (folder / "text.duckdb").write_text("not a database\n")
    duckdb.connect(str(folder / "empty.duckdb")).close()
    con = duckdb.connect(str(folder / "foreign.duckdb"))
    con.execute("CREATE TABLE t (x INT)")
    con.close()
    (folder / "dup-personas.yaml").write_text(
        "personas:\n  - {name: a, family: f, prompts: [x]}\n  - {name: a, family: f, "
        "prompts: [y]}\n"
    )
    (folder / "dup-items.jsonl").write_text(
        '{"item_id": "i", "topic": "t", "question": "q", "answer": "a"}\n'
        '{"item_id": "i", "topic": "t", "question": "q2", "answer": "a2"}\n'
    )
    (folder / "shape.jsonl").write_text('["not", "an", "object"]\n')
    return folder


def cases(f: Path) -> list[tuple[list, str]]:
    db = f / "db.duckdb"
    return [
        # effects
        (["effects", "--db", db, "--features", "x"], "--features"),
        (["effects", "--db", db, "--features", "5-2"], "--features"),
        (["effects", "--db", db, "--top", "0"], "--top"),
        (["effects", "--db", db, "--confidence", "1.5"], "--confidence"),
        (["effects", "--db", db, "--bootstrap", "-1"], "--bootstrap"),
        (["effects", "--db", db, "--labels", "no-such-label"], "--labels"),
        (["effects", "--db", f / "missing.duckdb"], "missing.duckdb"),
        (["effects", "--db", f / "text.duckdb"], "text.duckdb"),
        (["effects", "--db", f / "foreign.duckdb"], "foreign.duckdb"),
        (["effects", "--config", f / "latin1.yaml"], "not UTF-8"),
        (["effects", "--config", f / "list.yaml"], "expected a mapping"),
        (["effects", "--db", db, "--seed", "-3"], "--seed"),
        # steer
        (["steer", "--db", db, "--feature", "-1", "--prompt", "hi"], "--feature"),
        (["steer", "--db", db, "--feature", "1"], "--prompt"),
        (
            ["steer", "--db", db, "--feature", "1", "--prompt", "hi", "--max-tokens", "0"],
            "--max-tokens",
        ),
        (
            ["steer", "--db", db, "--feature", "1", "--prompt", "hi", "--temperature", "-1"],
            "--temperature",
        ),
        (["steer", "--db", f / "empty.duckdb", "--feature", "1", "--prompt", "hi"], "empty.duckdb"),
        # generate
        (["generate", "--db", db, "--max-tokens", "0"], "--max-tokens"),
        (["generate", "--db", db, "--batch", "0"], "--batch"),
        (["generate", "--db", db, "--temperature", "nan"], "--temperature"),
        (["generate", "--db", f / "missing.duckdb"], "missing.duckdb"),
        (["generate", "--config", f / "empty.yaml"], "--db"),
        # grid
        (["grid", "--db", db, "--alpha", "0"], "--alpha"),
        (["grid", "--db", db, "--calibration", "-1"], "--calibration"),
        (["grid", "--db", db, "--neutral", "nope"], "--neutral"),
        (["grid", "--db", f / "foreign.duckdb"], "foreign.duckdb"),
        # layers
        (["layers", "--db", db, "--layers", "x"], "--layers"),
        (["layers", "--db", db, "--folds", "1"], "--folds"),
        (["layers", "--db", f / "empty.duckdb"], "empty.duckdb"),
        # explain
        (["explain", "--db", db, "--features", "a-b"], "--features"),
        (["explain", "--db", db, "--timeout", "-1"], "--timeout"),
        (["effects", "--db", db, "--confidence", "0.3"], "--confidence"),
        (["label", "--db", db, "--bootstrap", "5"], "--bootstrap"),
        (["explain", "--db", db, "--concurrency", "0"], "--concurrency"),
        (["explain", "--db", f / "text.duckdb"], "text.duckdb"),
        # export
        (
            ["export", "--db", db, "--parquet", f / "pq", "--row-group-size", "1"],
            "--row-group-size",
        ),
        (["export", "--db", f / "text.duckdb", "--parquet", f / "pq2"], "text.duckdb"),
        (["export", "--parquet", f / "pq3", "--views-only", "--location", " "], "--location"),
        # search, every mode
        (["search", "--db", db], "search: give"),
        (["search", "--db", db, "--text", "hi", "--name", "x"], "give one of them"),
        (["search", "--db", db, "--similar"], "--similar"),
        (["search", "feature", "--db", db, "--feature", "999999"], "999999"),
        (["search", "similar", "--db", db, "--feature", "-1"], "--feature -1"),
        (["search", "persona", "--db", db, "--persona", "nobody"], "nobody"),
        (["search", "text", "--db", db], "text: required"),
        (["search", "--db", db, "--name", "x", "--persona", "pirate"], "give one of them"),
        (["search", "--db", db, "--top", "0", "--name", "x"], "--top"),
        (["search", "name", "--db", f / "empty.duckdb", "x"], "empty.duckdb"),
        # harvest --ray, several SAEs
        (
            ["harvest", "--db", f / "h.duckdb", "--sae-dir", f, "--ray", "local", "--shard", "0/2"],
            "--shard",
        ),
        (
            ["harvest", "--db", f / "h.duckdb", "--sae-dir", f / "nope", "--sae-dir", f / "nope2"],
            "nope",
        ),
        (
            [
                "harvest",
                "--db",
                f / "h.duckdb",
                "--sae-dir",
                f,
                "--personas",
                f / "dup-personas.yaml",
            ],
            "duplicate persona",
        ),
        (
            ["harvest", "--db", f / "h.duckdb", "--sae-dir", f, "--items", f / "dup-items.jsonl"],
            "i",
        ),
        (
            ["harvest", "--db", f / "h.duckdb", "--sae-dir", f, "--items", f / "shape.jsonl"],
            "shape.jsonl",
        ),
        (
            ["harvest", "--db", f / "h.duckdb", "--sae-dir", f, "--personas", f / "empty.yaml"],
            "empty.yaml",
        ),
        # train: --ddp, --shards, several SAEs
        (["train", "--ddp", "--out", f / "t"], "--ddp"),
        (["train", "--shards", "3", "--batch-tokens", "1000", "--out", f / "t"], "--shards"),
        (["train", "--shards", "0", "--out", f / "t"], "--shards"),
        (["train", "--d-sae", "8", "--d-sae", "0", "--out", f / "t"], "--d-sae"),
        (
            ["train", "--model", "minilm", "--layer", "1", "--layer", "-2", "--out", f / "t"],
            "--layer",
        ),
        (["train", "--k", "64", "--d-sae", "32", "--out", f / "t"], "--k"),
        # train --target difference
        (["train", "--target", "banana", "--out", f / "t"], "--target"),
        (
            ["train", "--target", "difference", "--pair-tokens", "0", "--out", f / "t"],
            "--pair-tokens",
        ),
        (
            ["train", "--target", "difference", "--personas", f / "missing.yaml", "--out", f / "t"],
            "missing.yaml",
        ),
        (
            [
                "train",
                "--target",
                "difference",
                "--personas",
                f / "dup-personas.yaml",
                "--out",
                f / "t",
            ],
            "duplicate persona",
        ),
        (
            ["train", "--target", "difference", "--personas", f / "empty.yaml", "--out", f / "t"],
            "empty.yaml",
        ),
        (
            [
                "train",
                "--model",
                "minilm",
                "--target",
                "difference",
                "--context-size",
                "3",
                "--out",
                f / "t",
            ],
            "--context-size 3",
        ),
    ]


def test_every_bad_input_is_one_line_and_writes_nothing(capfd, files):
    before = snapshot(files)
    failures = []
    for argv, words in cases(files):
        capfd.readouterr()
        code = cli.main([str(a) for a in argv])
        _, err = capfd.readouterr()
        ok = code == 2 and err.startswith("error: ") and err.count("\n") == 1 and words in err
        if not ok:
            failures.append(f"{' '.join(map(str, argv))} → exit {code}: {err.strip()[-300:]}")
    assert failures == [], "\n".join(failures)
    assert snapshot(files) == before
