"""Reliability round 4: two of every writer at once on one database (harvest, label, index,
effects, grid, merge, export). Each either completes or is refused in one line; a command that
exits 0 has its work in the database at the end. Two harvests once published through one fixed
partial file: one exited 0 and its harvest was not in the database."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from helpers import battery, copy_db

EXE = Path(sys.executable).with_name("shoggoth")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def together(*argvs: list[str]) -> list[tuple[int, str]]:
    """Start every command at once; (exit code, stderr) of each. Each exits 0, or 2 with one
    `error:` line and no traceback."""
    procs = [
        subprocess.Popen(
            [str(EXE), *map(str, argv)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for argv in argvs
    ]
    done = []
    for argv, proc in zip(argvs, procs, strict=True):
        _, err = proc.communicate(timeout=900)
        assert proc.returncode in (0, 2), (argv, proc.returncode, err[-2000:])
        assert "Traceback" not in err, (argv, err[-2000:])
        if proc.returncode == 2:
            lines = err.strip().splitlines()
            assert lines[-1].startswith("error: "), (argv, err[-2000:])
            assert sum(line.startswith("error: ") for line in lines) == 1, (argv, err[-2000:])
        done.append((proc.returncode, err))
    return done


def rows(db: Path, query: str, params: list | None = None) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(query, params or []).fetchall()


def leftovers(folder: Path, db: Path) -> list[str]:
    """Files beside `db` that a finished command should not leave (partial files, old copies)."""
    return sorted(
        p.name for p in folder.iterdir() if p.name.startswith(f".{db.name}") or ".old-" in p.name
    )


def test_two_harvests_into_one_database_both_land(tmp_path, tiny_sae_dir):
    """The finding: two harvests of different SAEs into one new database at once."""
    args = [str(a) for a in battery(tmp_path / "b", 6)]
    saes = []
    for name in ("first", "second"):
        saes.append(shutil.copytree(tiny_sae_dir, tmp_path / name))
    db = tmp_path / "db.duckdb"
    done = together(*[["harvest", "--db", db, "--sae-dir", sae, *args] for sae in saes])
    held = {r[0] for r in rows(db, "SELECT sae_id FROM saes")}
    for (code, _), name in zip(done, ("first", "second"), strict=True):
        if code == 0:
            assert name in held, f"harvest of {name} exited 0 and is not in the database"
            assert rows(db, "SELECT count(*) FROM documents WHERE sae_id = ?", [name])[0][0] > 0
    assert [c for c, _ in done] == [0, 0]  # (the writers' lock makes the second wait, not fail)
    assert leftovers(tmp_path, db) == []


def test_two_merges_into_one_database(tmp_path, tiny_sae_dir):
    args = [str(a) for a in battery(tmp_path / "b", 6)]
    shards = []
    for name in ("sae_a", "sae_b"):
        sae = shutil.copytree(tiny_sae_dir, tmp_path / name)
        db = tmp_path / f"{name}.duckdb"
        assert (
            subprocess.run(
                [str(EXE), "harvest", "--db", str(db), "--sae-dir", str(sae), *args],
                env=ENV,
                capture_output=True,
            ).returncode
            == 0
        )
        shards.append(db)
    target = tmp_path / "all.duckdb"
    done = together(["merge", "--db", target, shards[0]], ["merge", "--db", target, shards[1]])
    held = {r[0] for r in rows(target, "SELECT sae_id FROM saes")}
    for (code, _), name in zip(done, ("sae_a", "sae_b"), strict=True):
        if code == 0:
            assert name in held
    assert [c for c, _ in done] == [0, 0]
    assert leftovers(tmp_path, target) == []


def test_two_labels_and_two_indexes_at_once(tmp_path, labelled_db):
    db = copy_db(labelled_db, tmp_path / "db.duckdb")
    done = together(
        ["label", "--db", db, "--min-docs", "5", "--alpha", "0.01"],
        ["label", "--db", db, "--min-docs", "5", "--alpha", "0.02"],
        ["index", "--db", db],
        ["index", "--db", db],
    )
    labels = [c for c, _ in done[:2]]
    assert 0 in labels
    configs = [
        r[0]
        for r in rows(
            db, "SELECT config_json FROM runs WHERE command = 'label' ORDER BY started_at"
        )
    ]
    for code, alpha in zip(labels, ("0.01", "0.02"), strict=True):
        if code == 0:
            assert any(f'"alpha": {alpha}' in c for c in configs), "a finished label was lost"
    assert 0 in [c for c, _ in done[2:]]
    # Every FAISS file the database names is there (a racing build once removed another's).
    for (path,) in rows(
        db, "SELECT path FROM faiss_indexes UNION ALL SELECT path FROM persona_vectors"
    ):
        assert (tmp_path / "db.duckdb.faiss" / path).is_file(), path
    assert leftovers(tmp_path, db) == []


def test_two_exports_of_one_database(tmp_path, indexed_db):
    out = tmp_path / "export"
    done = together(
        ["export", "--db", indexed_db, "--parquet", out],
        ["export", "--db", indexed_db, "--parquet", out],
    )
    assert 0 in [c for c, _ in done]
    count = rows(out / "shoggoth.duckdb", "SELECT count(*) FROM features")
    assert count == rows(indexed_db, "SELECT count(*) FROM features")
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


@pytest.fixture(scope="module")
def answered(labelled_db, tmp_path_factory):
    """The labelled database with planted answers (as `generate` stores them)."""
    from test_grid import plant_answers

    db = copy_db(labelled_db, tmp_path_factory.mktemp("answered") / "answers.duckdb")
    items = [r[0] for r in rows(db, "SELECT item_id::VARCHAR FROM items ORDER BY item_id LIMIT 4")]
    plant_answers(db, items)
    return db


def test_two_grids_and_two_effects_at_once(tmp_path, answered):
    db = copy_db(answered, tmp_path / "db.duckdb")
    grid = ["--min-docs", "2", "--calibration", "2", "--bootstrap", "20"]
    effects = [
        "--top",
        "2",
        "--baseline",
        "0",
        "--per-feature",
        "0",
        "--items-per-topic",
        "2",
        "--bootstrap",
        "20",
    ]
    done = together(
        ["grid", "--db", db, *grid],
        ["grid", "--db", db, *grid],
        ["effects", "--db", db, *effects],
        ["effects", "--db", db, *effects],
    )
    assert 0 in [c for c, _ in done[:2]] and 0 in [c for c, _ in done[2:]]
    assert rows(db, "SELECT count(*) FROM grid_features")[0][0] > 0
    assert rows(db, "SELECT count(*) FROM persona_shifts")[0][0] > 0
    assert not (tmp_path / "db.duckdb.grid").exists()
    assert not (tmp_path / "db.duckdb.effects").exists()
