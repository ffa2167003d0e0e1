"""How commands fail: a database file never widens the SQL sandbox, no output is written over a
database, environmental failures (a full disk, an immutable file) are one line, runaway queries
keep their bounds, and Ctrl-C as a command finishes still exits 130 with one line."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from helpers import PERSONAS, battery, copy_db, default_sigint, snapshot

from shoggoth import cli
from shoggoth.battery.personas import load_personas
from shoggoth.core.errors import BadInput

EXE = Path(sys.executable).with_name("shoggoth")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def one_line(capfd, argv: list, code: int = 2) -> str:
    """Run the CLI in-process; assert one `error:` line and the exit code; return the line."""
    capfd.readouterr()
    got = cli.main([str(a) for a in argv])
    err = capfd.readouterr().err
    assert got == code, (argv, err)
    assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
    return err


def hostile_db(path: Path, location: str) -> Path:
    """A database anyone can make with `sql --write`: an export_info row pointing at `location`."""
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE export_info (location VARCHAR, source VARCHAR, exported_at VARCHAR,"
        " row_counts JSON)"
    )
    con.execute("INSERT INTO export_info VALUES (?, 'x', 'now', '{}')", [location])
    con.close()
    return path


@pytest.mark.parametrize("location", ["/", "/etc", str(Path.home())])
def test_a_database_cannot_open_the_sandbox(capfd, tmp_path, location):
    db = hostile_db(tmp_path / "evil.duckdb", location)
    target = tmp_path / "written.txt"
    (Path(location) / "shoggoth-escape.csv").unlink(missing_ok=True)  # a run before the fix
    for query in (
        "SELECT content FROM read_text('/etc/hostname')",
        "SELECT * FROM read_csv('/etc/passwd')",
        f"COPY (SELECT 42) TO '{target}'",
        f"COPY (SELECT 42) TO '{Path(location) / 'shoggoth-escape.csv'}'",
    ):
        err = one_line(capfd, ["sql", "--db", db, query])
        assert "refused" in err, err
    assert not target.exists() and not (Path(location) / "shoggoth-escape.csv").exists()


def test_an_export_folder_comes_from_the_users_path(capfd, tmp_path):
    """A views database reads its own export folder (where its manifest is) or the one given as
    --parquet, never the folder it names inside."""
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "EXPORT.json").write_text('{"columns": {}, "rows": {}}')
    duckdb.sql(f"COPY (SELECT 7 AS x) TO '{folder / 't.parquet'}' (FORMAT parquet)")
    db = hostile_db(folder / "shoggoth.duckdb", "/")
    assert (
        cli.main(
            [
                "sql",
                "--db",
                str(db),
                "--format",
                "csv",
                f"SELECT x FROM read_parquet('{folder / 't.parquet'}')",
            ]
        )
        == 0
    )
    assert capfd.readouterr().out == "x\n7\n"
    one_line(capfd, ["sql", "--db", db, "SELECT content FROM read_text('/etc/hostname')"])
    elsewhere = hostile_db(tmp_path / "views.duckdb", str(folder))
    one_line(capfd, ["sql", "--db", elsewhere, f"SELECT * FROM '{folder / 't.parquet'}'"])
    assert (
        cli.main(
            [
                "sql",
                "--db",
                str(elsewhere),
                "--parquet",
                str(folder),
                "--format",
                "csv",
                f"SELECT x FROM '{folder / 't.parquet'}'",
            ]
        )
        == 0
    )
    assert capfd.readouterr().out == "x\n7\n"
    err = one_line(capfd, ["sql", "--db", elsewhere, "--parquet", tmp_path, "SELECT 1"])
    assert "not a shoggoth export" in err


def databases(tmp_path: Path, labelled_db: Path) -> Path:
    db = copy_db(labelled_db, tmp_path / "f.duckdb")
    (tmp_path / "f.duckdb.faiss").mkdir(exist_ok=True)
    (tmp_path / "f.duckdb.faiss" / "x.npy").write_bytes(b"x")
    copy_db(labelled_db, tmp_path / "other.duckdb")
    return db


@pytest.mark.parametrize(
    "out",
    [
        "f.duckdb",
        "./f.duckdb",
        "f.duckdb.wal",
        "f.duckdb.faiss",
        "f.duckdb.faiss/x.npy",
        "other.duckdb",
    ],
)
def test_sql_out_is_never_a_database(capfd, tmp_path, labelled_db, out):
    db = databases(tmp_path, labelled_db)
    before = snapshot(tmp_path)
    os.chdir(tmp_path)
    for fmt in ("json", "csv", "parquet"):
        one_line(capfd, ["sql", "--db", db, "--format", fmt, "--out", out, "SELECT 1"])
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--views", "f.duckdb"),
        ("--views", "other.duckdb"),
        ("--parquet", "."),
        ("--parquet", "f.duckdb.faiss"),
    ],
)
def test_export_never_replaces_a_database(capfd, tmp_path, labelled_db, flag, value):
    db = databases(tmp_path, labelled_db)
    before = snapshot(tmp_path)
    os.chdir(tmp_path)
    argv = ["export", "--db", db, "--parquet", "pq", "--overwrite"]
    argv = (
        [*argv, flag, value]
        if flag == "--views"
        else ["export", "--db", db, "--parquet", value, "--overwrite"]
    )
    one_line(capfd, argv)
    assert snapshot(tmp_path) == before


def test_export_location_without_views_only_writes_nothing(capfd, tmp_path, labelled_db):
    err = one_line(
        capfd,
        ["export", "--db", labelled_db, "--parquet", tmp_path / "pq", "--location", "ftp://x/y"],
    )
    assert "--views-only" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["train", "--out"], ["demo", "--no-serve", "--out"]])
def test_train_and_demo_outputs_are_never_a_database(capfd, tmp_path, labelled_db, command):
    db = databases(tmp_path, labelled_db)
    before = snapshot(tmp_path)
    for out in (db, db.with_name("f.duckdb.faiss")):
        one_line(capfd, [*command, out, *(["--overwrite"] if command[0] == "train" else [])])
    assert snapshot(tmp_path) == before


@contextlib.contextmanager
def small_disk(folder: Path, size: int):
    """A tmpfs of `size` bytes at `folder` (root can mount one; skipped where not allowed)."""
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 512 KiB tmpfs."""
    with small_disk(tmp_path / "disk", 512 * 1024) as disk:
        yield disk


def test_a_disk_that_fills_mid_write_is_one_line(capfd, tiny_disk, labelled_db):
    query = (
        "SELECT md5(range::VARCHAR) || md5((range + 1)::VARCHAR) || md5((-range)::VARCHAR) "
        "AS x FROM range(60000)"
    )  # ~6 MB of hex, ~3 MB compressed
    for fmt in ("json", "csv", "parquet"):
        err = one_line(
            capfd,
            ["sql", "--db", labelled_db, "--format", fmt, "--out", tiny_disk / f"out.{fmt}", query],
        )
        assert "No space left on device" in err, err
    assert list(tiny_disk.iterdir()) == []


def test_an_oserror_raised_anywhere_is_one_line(capfd, monkeypatch, tmp_path, labelled_db):
    """The `except OSError` clause once stood after `except Exception` and could not run."""
    import shoggoth.index.store.sql

    def full(*_a, **_k):
        raise OSError(28, "No space left on device", str(tmp_path / "o.json"))

    monkeypatch.setattr(shoggoth.index.store.sql, "_write_text", full)
    err = one_line(
        capfd,
        ["sql", "--db", labelled_db, "--format", "json", "--out", tmp_path / "o.json", "SELECT 1"],
    )
    assert "No space left on device" in err and "o.json" in err
    assert list(tmp_path.iterdir()) == []


@contextlib.contextmanager
def immutable(path: Path):
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    if done.returncode:
        pytest.skip(f"chattr +i is not supported here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize(
    "command", [["index", "--map", "pca"], ["label", "--min-docs", "5"], ["layers"]]
)
def test_an_immutable_database_is_refused_before_the_work(
    capfd, tmp_path, labelled_db, monkeypatch, command
):
    import shoggoth.index.catalog.build
    import shoggoth.pipeline.layers.run

    db = copy_db(labelled_db, tmp_path / "db.duckdb")
    started = []
    monkeypatch.setattr(
        shoggoth.index.catalog.build,
        "build_parts",
        lambda *a, **k: started.append(1) or pytest.fail("index did the work"),
    )
    monkeypatch.setattr(
        shoggoth.pipeline.layers.run,
        "load_model",
        lambda *a, **k: started.append(1) or pytest.fail("layers did the work"),
    )
    before = snapshot(tmp_path)
    with immutable(db):
        err = one_line(capfd, [command[0], "--db", db, *command[1:]])
    assert "cannot be written" in err and not started
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "command", [["generate"], ["grid", "--answers", "no-such-set"], ["effects"]]
)
def test_a_writer_checks_the_database_before_it_reads_its_inputs(
    capfd, tmp_path, labelled_db, monkeypatch, command
):
    """generate, grid and effects read their inputs through SaeView.for_writing: a database that
    cannot be written is refused first (grid used to name the missing answer set instead, and
    generate read the battery, before finding out)."""
    import shoggoth.pipeline.action.generate
    import shoggoth.pipeline.action.grid
    import shoggoth.pipeline.effects.run

    started = []
    for module, name in (
        (shoggoth.pipeline.action.generate, "load_generator"),
        (shoggoth.pipeline.action.grid, "load_model"),
        (shoggoth.pipeline.effects.run, "load_model"),
    ):
        monkeypatch.setattr(
            module, name, lambda *a, **k: started.append(1) or pytest.fail("did the work")
        )
    db = copy_db(labelled_db, tmp_path / "db.duckdb")
    before = snapshot(tmp_path)
    with immutable(db):
        err = one_line(capfd, [command[0], "--db", db, *command[1:]])
    assert "cannot be written" in err and not started
    assert snapshot(tmp_path) == before


def test_explore_refuses_what_it_cannot_serve(capfd, tmp_path):
    text = tmp_path / "text.duckdb"
    text.write_text("hello\n")
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    with socket.socket() as busy:  # were the database let through, the port would refuse
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for db, words in (
            (tmp_path / "nope.duckdb", "no such file"),
            (text, "not a DuckDB database"),
            (empty, "holds no feature tables"),
        ):
            err = one_line(capfd, ["explore", "--db", db, "--port", port])
            assert words in err, err


def test_bad_values_that_once_ended_in_a_traceback(capfd, tmp_path, labelled_db):
    assert "--seed -1" in one_line(capfd, ["label", "--db", labelled_db, "--seed", "-1"])
    for query in (";;;", "-- only a comment", " ; -- x\n;"):
        assert "no statement" in one_line(capfd, ["sql", "--db", labelled_db, "--", query])
    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)
    assert "not a regular file" in one_line(capfd, ["label", "--config", fifo])
    config = tmp_path / "m.yaml"
    config.write_text(f"db: {tmp_path / 'm.duckdb'}\ninputs: {labelled_db}\n")
    assert "expected a list" in one_line(capfd, ["merge", "--config", config])
    assert not (tmp_path / "m.duckdb").exists()


def test_flags_that_were_accepted_and_ignored(capfd, tmp_path, labelled_db):
    for flag in (["--workers", "4"], ["--gpus-per-worker", "1"]):
        err = one_line(
            capfd, ["harvest", "--db", tmp_path / "h.duckdb", "--sae-dir", tmp_path, *flag]
        )
        assert "only with --ray" in err
    err = one_line(capfd, ["search", "--db", labelled_db, "--feature", "2", "--paraphrase", "1"])
    assert "--paraphrase" in err
    assert not (tmp_path / "h.duckdb").exists()


def test_ray_client_address_without_the_extra_is_one_line(capfd, tmp_path, tiny_sae_dir):
    err = one_line(
        capfd,
        [
            "harvest",
            "--db",
            tmp_path / "h.duckdb",
            "--sae-dir",
            tiny_sae_dir,
            "--ray",
            "ray://127.0.0.1:1",
        ],
    )
    assert "--ray ray://127.0.0.1:1" in err
    assert not (tmp_path / "h.duckdb").exists()


PERSONAS_WITH = (
    PERSONAS
    + """  - name: control_mention_both
    family: control
    is_control: true
    control_of: {control_of}
    prompts: ["The user likes pirates and helpers."]
"""
)


def test_control_of_may_list_personas_and_is_control_is_a_boolean(tmp_path):
    path = tmp_path / "p.yaml"
    for given in ("[pirate, helper]", "pirate,helper", "'pirate, helper'"):
        path.write_text(PERSONAS_WITH.format(control_of=given))
        assert load_personas(path)[-1].control_of == "pirate,helper"
    for given, words in (
        ("[pirate, nobody]", "unknown persona 'nobody'"),
        ("[]", "control_of"),
        ("{a: 1}", "control_of"),
        ("[pirate, 3]", "control_of"),
    ):
        path.write_text(PERSONAS_WITH.format(control_of=given))
        with pytest.raises(BadInput, match=words):
            load_personas(path)
    path.write_text(PERSONAS.replace("is_control: true", 'is_control: "yes"'))
    with pytest.raises(BadInput, match="is_control must be true or false"):
        load_personas(path)


@pytest.mark.slow  # W&B starts a service process to check credentials
def test_wandb_without_credentials_is_refused_before_the_work(capfd, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    out = tmp_path / "sae"
    err = one_line(capfd, ["train", "--wandb", "--out", out, "--tokens", "1000"])
    assert "W&B" in err
    assert not out.exists() and not list(tmp_path.glob(".sae*"))


def test_a_run_stopped_before_its_first_checkpoint_starts_over(tmp_path):
    """Ctrl-C before the first checkpoint once left a work folder that --resume refused and only
    --overwrite cleared."""
    from shoggoth.sae.train.run import TrainConfig, prepare_dirs, work_dir

    out = tmp_path / "sae"
    work = work_dir(out)
    work.mkdir()
    (work / "state.json").write_text("{}")
    assert prepare_dirs(TrainConfig(out=out, resume=True), out) == (work, None)
    assert not work.exists()
    work.mkdir()
    assert prepare_dirs(TrainConfig(out=out), out) == (work, None)
    # A run marks its work folder before its long set-up (a paired stream's forward passes):
    # stopped there, --resume starts it again.
    from shoggoth.sae.train.run import mark_started

    shutil.rmtree(work, ignore_errors=True)
    mark_started(work, TrainConfig(out=out))
    assert prepare_dirs(TrainConfig(out=out, resume=True), out) == (work, None)


@pytest.mark.slow
def test_a_runaway_query_keeps_its_memory_and_time_bounds(tmp_path, labelled_db):
    query = "SELECT sum(len(x)) FROM (SELECT list(range(400000000)) AS x)"
    started = time.monotonic()
    done = subprocess.run(
        [
            str(EXE),
            "sql",
            "--db",
            str(labelled_db),
            "--memory-limit",
            "300MB",
            "--timeout",
            "20",
            "--",
            query,
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: sql:") and done.stderr.count("\n") == 1, done.stderr
    assert seconds < 20 + 3 + 15  # the timeout, the grace, a start-up on a loaded machine


class Stuck(Exception):
    pass


@pytest.mark.slow  # runs a subprocess
def test_a_query_that_ignores_its_interrupt_is_ended(tmp_path):
    """A Python UDF (like building one huge list) never looks at DuckDB's interrupt flag: the
    timeout still holds, through `on_stuck`, a grace period after the interrupt."""
    from shoggoth.index.store.sql import STUCK_GRACE, execute

    con = duckdb.connect()
    con.create_function("nap", lambda s: time.sleep(s) or s, [float], float)
    calls = []

    def stuck(why):
        calls.append((why, time.monotonic() - started))
        raise Stuck

    started = time.monotonic()
    with pytest.raises(Stuck):
        execute(con, "SELECT nap(20.0)", timeout=0.5, on_stuck=stuck)
    ((why, seconds),) = calls
    assert why == "timeout" and 0.5 + STUCK_GRACE <= seconds < 20


@pytest.mark.slow
def test_ctrl_c_as_a_command_finishes_exits_130_with_one_line(tmp_path, labelled_db):
    """Ctrl-C after `label` has published: no death by the signal (exit -2), the labels kept."""
    codes = []
    for attempt in range(2):
        db = copy_db(labelled_db, tmp_path / f"db{attempt}.duckdb")
        with duckdb.connect(str(db)) as con:
            con.execute("DELETE FROM features")
        proc = subprocess.Popen(
            [str(EXE), "label", "--db", str(db), "--min-docs", "5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            preexec_fn=default_sigint,
        )
        for line in proc.stdout:
            if "per persona" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        codes.append(proc.returncode)
        assert proc.returncode in (0, 130), (proc.returncode, err)
        assert "Traceback" not in err, err
        if proc.returncode == 130:
            assert err.strip().splitlines()[-1] == "interrupted", err
        with duckdb.connect(str(db), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM features").fetchone()[0] > 0
    assert 130 in codes, codes


@pytest.mark.slow
def test_ctrl_c_around_a_commands_end_is_never_death_by_the_signal(labelled_db):
    """Ctrl-C at many moments from a command's last line of output to its exit (Python finalizing
    while DuckDB's threads, which do not block SIGINT, still run): every run ends with its work
    done (0, its usual output) or with 130 and the line `interrupted`; never killed by the signal
    (-2, no line), never a traceback or an abort (-6)."""
    argv = [str(EXE), "status", "--db", str(labelled_db)]

    def run(delay: float | None) -> tuple[int, str, float]:
        """`status`, with SIGINT `delay` seconds after its table's last line; its exit code,
        stderr and the seconds from that line to its exit."""
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            preexec_fn=default_sigint,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("└"):
                break
        last_line = time.monotonic()
        if delay is not None:
            time.sleep(delay)
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        return proc.returncode, err, time.monotonic() - last_line

    code, normal, _ = run(None)
    assert code == 0 and "Traceback" not in normal, normal
    tail = max(run(None)[2] for _ in range(3))  # from the last line to the exit
    runs = 20
    delays = [1.3 * tail * i / (runs - 1) for i in range(runs)]
    outcomes = [run(delay)[:2] for delay in delays]
    bad = [
        (round(d, 3), c, e)
        for d, (c, e) in zip(delays, outcomes, strict=True)
        if not (c == 0 and e == normal or c == 130 and e.lstrip("\n") == "interrupted\n")
    ]
    # (an interrupt inside click's command loop gets its newline first: "\ninterrupted\n")
    assert not bad, (
        f"{len(bad)} of {runs} runs ended badly ({tail:.3f} s from the last line to the exit)",
        bad,
    )


def test_finishing_turns_a_late_ctrl_c_into_one_line():
    code = (
        "import os, signal, time, shoggoth.core.startup as s; s.finishing(); "
        "print('done', flush=True); os.kill(os.getpid(), signal.SIGINT); time.sleep(5)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        timeout=60,
        preexec_fn=default_sigint,
    )
    assert done.returncode == 130 and done.stderr == "interrupted\n", done
    assert done.stdout == "done\n"


FINALIZING_CTRL_C = """
import os, signal, threading, time, shoggoth.core.startup as s
s.PROGRAM = True
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()  # a library's thread

class CtrlC:
    def __del__(self):  # as Python clears the modules: its own signal handlers are gone
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)

keep = CtrlC()
s.finishing()
print("done", flush=True)
"""


def test_a_ctrl_c_while_python_finalizes_keeps_the_commands_exit():
    """Past the exit hooks Python puts the default SIGINT action back and the kernel hands the
    signal to a thread that does not block it: the process must not die by it (-2)."""
    done = subprocess.run(
        [sys.executable, "-c", FINALIZING_CTRL_C],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        timeout=60,
        preexec_fn=default_sigint,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "done\n", ""), done


def test_no_file_is_left_beside_a_refused_export(tmp_path, capfd, labelled_db):
    db = copy_db(labelled_db, tmp_path / "db.duckdb")
    shutil.copy(db, tmp_path / "keep.duckdb")
    one_line(
        capfd,
        ["export", "--db", db, "--parquet", tmp_path / "pq", "--views", tmp_path / "keep.duckdb"],
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.duckdb", "keep.duckdb"]


@pytest.mark.parametrize(
    "command",
    [
        ["label", "--min-docs", "5"],
        ["index", "--map", "pca"],
        ["export", "--parquet", "{disk}/pq"],
        ["harvest"],
    ],
)
def test_a_full_disk_in_any_writer_is_one_line_and_keeps_the_database(
    capfd, tmp_path, labelled_db, tiny_sae_dir, command
):
    """The database sits on a disk with a little room left: each writer ends in one line (no
    DuckDB or pyarrow traceback), and the database is the one it was."""
    size = labelled_db.stat().st_size
    with small_disk(tmp_path / "disk", size + 16 * 1024) as disk:
        db = disk / "db.duckdb"
        shutil.copy(labelled_db, db)
        before = db.read_bytes()
        argv = [a.replace("{disk}", str(disk)) for a in command]
        if command[0] == "harvest":  # a second SAE into the same database
            argv += [
                "--sae-dir",
                str(tiny_sae_dir),
                "--sae",
                "second",
                *map(str, battery(tmp_path / "b", 30)),
            ]  # labelled_db's battery
        capfd.readouterr()
        code = cli.main([str(a) for a in [argv[0], "--db", db, *argv[1:]]])
        err = capfd.readouterr().err
        last = err.strip().splitlines()[-1]  # (after the steps' progress lines)
        assert code == 2 and last.startswith("error: ") and "Traceback" not in err, err
        assert "No space left on device" in last or "no space left" in last, err
        assert db.read_bytes() == before
        with duckdb.connect(str(db), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM features").fetchone()[0] > 0
