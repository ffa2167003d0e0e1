"""Interrupting `layers`, `generate`,
`index` and `export`, each stopped by Ctrl-C, SIGTERM or kill -9 part-way, then rerun. The
interrupted run leaves the last good state (the database opens and holds what it held), an
interrupt exits 130 with one line, and the rerun ends with exactly what one uninterrupted run
writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from helpers import copy_db, default_sigint

from shoggoth import cli

EXE = Path(sys.executable).with_name("shoggoth")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}

COMMANDS = {
    "layers": (
        ["layers", "--device", "cpu"],
        "SELECT layer, probe_accuracy FROM layer_probe ORDER BY layer",
    ),
    "generate": (
        [
            "generate",
            "--max-tokens",
            "6",
            "--items-per-topic",
            "1",
            "--batch",
            "2",
            "--device",
            "cpu",
        ],
        "SELECT persona, paraphrase, item_id, text FROM answers ORDER BY ALL",
    ),
    "index": (
        ["index", "--map", "pca", "--device", "cpu"],
        "SELECT feature, rank, neighbor, round(cosine, 5) FROM neighbors ORDER BY ALL",
    ),
}


def rows(db: Path, query: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(query).fetchall()


def start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(EXE), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        preexec_fn=default_sigint,
    )


def stop_after(proc: subprocess.Popen[str], sig: int, seconds: float) -> tuple[int, str]:
    """Send `sig` after `seconds` (if it still runs); its exit code and stderr."""
    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.fixture(scope="module")
def reference(labelled_db, tmp_path_factory) -> dict[str, list[tuple]]:
    """What each command writes when nothing stops it."""
    out = {}
    for name, (argv, query) in COMMANDS.items():
        db = copy_db(labelled_db, tmp_path_factory.mktemp(f"ref-{name}") / "db.duckdb")
        assert cli.main([*argv, "--db", str(db)]) == 0  # in this process: no start-up to pay
        out[name] = rows(db, query)
        assert out[name], name
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, sig, seconds",
    [
        # each command runs for 7-10 s here (about 3 of them loading the libraries)
        ("layers", signal.SIGINT, 5.0),
        ("generate", signal.SIGTERM, 5.0),
        ("index", signal.SIGKILL, 6.0),
    ],
)
def test_an_interrupted_command_resumes_to_the_same_result(
    labelled_db, reference, tmp_path, name, sig, seconds
):
    argv, query = COMMANDS[name]
    db = copy_db(labelled_db, tmp_path / "db.duckdb")
    before = rows(db, "SELECT count(*) FROM features")
    code, err = stop_after(start([*argv, "--db", str(db)]), sig, seconds)
    assert "Traceback" not in err, err
    if code == 130:
        assert err.strip().splitlines()[-1].startswith("interrupted"), err
    else:
        assert code in (0, -sig), (code, err)
    assert rows(db, "SELECT count(*) FROM features") == before  # the database opens, whole
    assert cli.main([*argv, "--db", str(db)]) == 0  # the rerun (in this process)
    assert rows(db, query) == reference[name]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT])
def test_an_interrupted_export_keeps_the_last_export_and_reruns(labelled_db, tmp_path, sig):
    db = copy_db(labelled_db, tmp_path / "db.duckdb")
    out = tmp_path / "pq"
    first = subprocess.run(
        [str(EXE), "export", "--db", str(db), "--parquet", str(out)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr
    manifest = json.loads((out / "EXPORT.json").read_text())["rows"]
    code, err = stop_after(
        start(["export", "--db", str(db), "--parquet", str(out), "--overwrite"]), sig, 0.7
    )
    assert "Traceback" not in err and code in (0, 130, -sig), (code, err)
    assert json.loads((out / "EXPORT.json").read_text())["rows"] == manifest  # whole, either one
    again = subprocess.run(
        [str(EXE), "export", "--db", str(db), "--parquet", str(out), "--overwrite"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "EXPORT.json").read_text())["rows"] == manifest
    assert not list(tmp_path.glob(".pq.partial-*"))
