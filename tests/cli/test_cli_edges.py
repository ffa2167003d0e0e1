"""Edges of every command, each found on a fresh machine once: bad input of every kind gets one
`error:` line, exit 2 and nothing written; Ctrl-C inside a database write exits 130; CSV lines end
in \\n; progress shows off a terminal; file names with quotes merge; a server dies with its
parent."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import faiss
import numpy as np
import pytest
from helpers import battery, build_random_sae, copy_db, default_sigint, snapshot

from shoggoth import cli

EXE = Path(sys.executable).with_name("shoggoth")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def assert_bad(capfd, folder: Path, argv: list[str], expect: str) -> None:
    """One `error:` line naming the problem, exit 2, nothing written under `folder`."""
    before = snapshot(folder)
    capfd.readouterr()
    code = cli.main([str(a) for a in argv])
    _, err = capfd.readouterr()
    assert code == 2, (argv, err)
    assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
    assert expect in err, (argv, err)
    assert snapshot(folder) == before, argv


YAML_SWEEP = [
    ("harvest", "db: 5\nsae: s\n", "option 'db': expected a string, got 5"),
    ("harvest", "db: d.duckdb\nsae_dir: [s]\nbatch: abc\n", "option 'batch'"),
    ("train", "tokens: many\n", "option 'tokens': expected an integer"),
    ("train", "out: 7\n", "option 'out': expected a string, got 7"),
    ("explore", "db: d.duckdb\nport: abc\n", "option 'port'"),
    ("merge", "db: d.duckdb\ninputs: 5\n", "option 'inputs': expected a list"),
    ("label", "db: d.duckdb\nalpha: [1]\n", "option 'alpha': expected a number"),
    ("sql", "db: 5\nquery: SELECT 1\n", "option 'db': expected a string"),
    ("index", "db: d.duckdb\ntop: x\n", "option 'top': expected an integer"),
    ("search", "db: d.duckdb\nfeature: x\n", "option 'feature'"),
    ("prompt", "layer: x\n", "option 'layer'"),
    ("models", "format: xml\n", "option 'format'"),
    ("demo", "out: 7\n", "option 'out': expected a string"),
]


@pytest.mark.parametrize("command, text, expect", YAML_SWEEP)
def test_config_file_values_are_type_checked(capfd, tmp_path, command, text, expect):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    argv = [*command.split(), "--config", config]
    assert_bad(capfd, tmp_path, argv, expect)


def test_config_file_not_utf8(capfd, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_bytes(b"db: \xff\xfe.duckdb\n")
    assert_bad(capfd, tmp_path, ["sql", "--config", config, "SELECT 1"], "not UTF-8")


def test_sql_config_file_with_a_db_path_works(capfd, tmp_path, labelled_db):
    """`db: x.duckdb` in YAML once ended in "'str' object has no attribute 'is_file'"."""
    config = tmp_path / "c.yaml"
    config.write_text(f"db: {labelled_db}\nformat: csv\n")
    capfd.readouterr()
    assert cli.main(["sql", "--config", str(config), "SELECT count(*) AS n FROM saes"]) == 0
    out, _ = capfd.readouterr()
    assert out == "n\n1\n"  # and \n line endings, not \r\n


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["label", "--db", "{db}", "--chunk", "0"], "--chunk 0: must be at least 1"),
        (["label", "--db", "{db}", "--bootstrap", "-1"], "--bootstrap -1"),
        (["label", "--db", "{db}", "--confidence", "2"], "--confidence 2.0"),
        (["label", "--db", "{db}", "--alpha", "5"], "--alpha 5.0"),
        (["label", "--db", "{db}", "--alpha", "nan"], "--alpha nan: must be a finite number"),
        (["index", "--db", "{db}", "--histogram-bins", "2147483648"], "--histogram-bins"),
        (["index", "--db", "{db}", "--neighbors", "5000"], "--neighbors 5000: must be less than"),
        (["index", "--db", "{db}", "--exact-max", "-1"], "--exact-max -1"),
        (["sql", "--db", "{db}", "--max-rows", "-1", "SELECT 1"], "--max-rows -1"),
        (
            ["sql", "--db", "{db}", "--format", "csv", "--out", "{dir}", "SELECT 1"],
            "is a directory",
        ),
        (
            ["sql", "--db", "{db}", "--format", "csv", "--out", "/sys/x.csv", "SELECT 1"],
            "/sys/x.csv: cannot write there",
        ),
        (["train", "--lr", "nan", "--out", "{dir}/sae"], "--lr nan"),
        (["train", "--lr", "inf", "--out", "{dir}/sae"], "--lr inf"),
        (
            [
                "harvest",
                "--db",
                "{dir}/h.duckdb",
                "--sae-dir",
                "{dir}/s",
                "--shard",
                "1/99999999999999999999",
            ],
            "some shards would be empty",
        ),
    ],
)
def test_numbers_and_paths_are_checked(capfd, tmp_path, labelled_db, argv, expect):
    db = copy_db(labelled_db, tmp_path / "db.duckdb")
    (tmp_path / "folder").mkdir()
    argv = [a.replace("{db}", str(db)).replace("{dir}", str(tmp_path / "folder")) for a in argv]
    assert_bad(capfd, tmp_path, argv, expect)


def test_non_utf8_battery_files(capfd, tmp_path):
    args = battery(tmp_path / "b", 3)
    (tmp_path / "b" / "items.jsonl").write_bytes(b'{"item_id": "\xff"}\n')
    sae = build_random_sae(tmp_path / "sae", "minilm", 384, "blocks.3.hook_resid_post", 96, 8)
    assert_bad(
        capfd,
        tmp_path,
        ["harvest", "--db", tmp_path / "h.duckdb", "--sae-dir", sae, *args],
        "not UTF-8",
    )
    (tmp_path / "b" / "personas.yaml").write_bytes(b"personas:\n  - name: \xff\n")
    assert_bad(
        capfd,
        tmp_path,
        ["harvest", "--db", tmp_path / "h.duckdb", "--sae-dir", sae, *args],
        "not UTF-8",
    )


def test_inputs_longer_than_the_model_takes(capfd, tmp_path, minilm):
    long = "word " * 600  # MiniLM takes 512 positions
    assert_bad(
        capfd, tmp_path, ["prompt", "--model", "minilm", "--continuation", long], "--continuation: "
    )
    args = battery(tmp_path / "b", 3)
    items = (tmp_path / "b" / "items.jsonl").read_text().splitlines()
    row = json.loads(items[1])
    row["answer"] = long
    items[1] = json.dumps(row)
    (tmp_path / "b" / "items.jsonl").write_text("\n".join(items) + "\n")
    sae = build_random_sae(tmp_path / "sae", "minilm", 384, "blocks.3.hook_resid_post", 96, 8)
    assert_bad(
        capfd,
        tmp_path,
        ["harvest", "--db", tmp_path / "h.duckdb", "--sae-dir", sae, *args],
        f"item '{row['item_id']}' under persona",
    )


def test_search_text_longer_than_the_model_takes(capfd, tmp_path, indexed_db):
    db = copy_db(indexed_db, tmp_path / "db.duckdb")
    assert_bad(capfd, tmp_path, ["search", "text", "--db", db, "rain " * 400], "--text: ")


def test_merge_handles_quotes_and_catalog_names(capfd, tmp_path, tiny_sae_dir):
    args = [str(a) for a in battery(tmp_path / "b", 4)]
    shards = [tmp_path / "it's 0.duckdb", tmp_path / "input1.duckdb"]
    for i, shard in enumerate(shards):
        assert (
            cli.main(
                [
                    "harvest",
                    "--db",
                    str(shard),
                    "--sae-dir",
                    str(tiny_sae_dir),
                    "--shard",
                    f"{i}/2",
                    *args,
                ]
            )
            == 0
        )
    whole = tmp_path / "whole.duckdb"
    assert cli.main(["harvest", "--db", str(whole), "--sae-dir", str(tiny_sae_dir), *args]) == 0
    out = tmp_path / "input0.duckdb"  # once the name of the merge's first catalog
    assert cli.main(["merge", "--db", str(out), *map(str, shards)]) == 0
    counts = []
    for db in (out, whole):
        con = duckdb.connect(str(db), read_only=True)
        counts.append(con.execute("SELECT count(*), sum(value) FROM activations").fetchone())
        con.close()
    assert counts[0][0] == counts[1][0] > 0
    assert counts[0][1] == pytest.approx(counts[1][1])


def test_progress_is_printed_off_a_terminal(tmp_path, tiny_sae_dir):
    args = [str(a) for a in battery(tmp_path / "b", 4)]
    run = subprocess.run(
        [
            str(EXE),
            "harvest",
            "--db",
            str(tmp_path / "p.duckdb"),
            "--sae-dir",
            str(tiny_sae_dir),
            *args,
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("harvest: ")]
    total = 7 * 4  # 7 prompts in the battery, 4 items
    assert lines[0].startswith(f"harvest: 0/{total} docs") and "started" in lines[0]
    assert lines[-1].startswith(f"harvest: {total}/{total} docs") and "docs/s" in lines[-1]
    assert "\x1b[" not in run.stderr  # no terminal control codes in a log


@pytest.fixture(scope="module")
def synthetic_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic database (benchmarks/synthetic_db.py: 28,800 documents, 4.4M activations,
    1,024 features) on which `label` and `index` work for seconds, not milliseconds."""
    from benchmarks.synthetic_db import build

    return build(tmp_path_factory.mktemp("synthetic"), 1024, 6, log=lambda _m: None)


PCA_MAP = ["--map", "pca"]
"""For `index` on the 1,024-feature synthetic database: UMAP's compilation (~10 s per process)
is not what these tests are about, and it would move index's writes later than the races they
aim at."""

DONE = {"label": "per persona", "index": "features indexed"}
"""What a command prints when its work is done."""


WRITING = {"label": ("db.duckdb.wal", 0.0), "index": (".db.duckdb.index-*.partial", 0.3)}
"""The file that appears when a command starts writing the database (DuckDB's write-ahead log
of a transaction on the file itself, or the copy `index` rebuilds, named after its process), and
how long after it the signal is sent (index: inside its example queries, where DuckDB once
raised "RuntimeError: Query interrupted", exit 1)."""


@pytest.mark.slow
@pytest.mark.parametrize("command, sig", [("index", signal.SIGINT), ("label", signal.SIGKILL)])
def test_interrupting_a_database_write_keeps_a_whole_database(tmp_path, synthetic_db, command, sig):
    """Ctrl-C (or kill -9) while the command writes the database: Ctrl-C exits 130 with one
    `interrupted` line, never a traceback (DuckDB turns it into its own "Query interrupted"
    error); the database is the old one, whole; nothing is left beside it; a rerun finishes."""
    db = copy_db(synthetic_db, tmp_path / "db.duckdb")
    argv = [str(EXE), command, "--db", str(db), *(PCA_MAP if command == "index" else [])]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        preexec_fn=default_sigint,
        text=True,
    )
    name, delay = WRITING[command]
    deadline = time.time() + 300
    while not list(tmp_path.glob(name)):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == (130 if sig == signal.SIGINT else -sig), (out, err)
    assert "Traceback" not in err, err
    if sig == signal.SIGINT:
        assert err.strip().splitlines()[-1].startswith("interrupted"), err
    con = duckdb.connect(str(db), read_only=True)
    assert (
        con.execute("SELECT count(*) FROM features").fetchone()[0]
        == con.execute("SELECT d_sae FROM saes").fetchone()[0]
    )
    con.close()
    if sig == signal.SIGINT:  # (a kill -9 leaves what the next run cleans up)
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".db.duckdb")]
    run = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=600)
    assert run.returncode == 0 and DONE[command] in run.stdout, run.stderr
    # The successful rerun leaves the database alone: no write-ahead log, no partial copy.
    assert {p.name for p in tmp_path.iterdir()} <= {"db.duckdb", "db.duckdb.faiss"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def start_explorer(db: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [str(EXE), "explore", "--db", str(db), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    deadline = time.time() + 90
    while True:
        try:
            if (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read()
                == b"ok"
            ):
                break
        except OSError:
            pass
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.3)
    (server,) = children(proc.pid)
    return proc, server


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_explorer_server_dies_with_its_parent(tmp_path, indexed_db, sig):
    db = copy_db(indexed_db, tmp_path / "db.duckdb")
    proc, server = start_explorer(db)
    assert alive(server)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    deadline = time.time() + 20
    while alive(server) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive(server), "the Streamlit server outlived shoggoth explore"
    if sig == signal.SIGTERM:
        assert proc.returncode == 130


def test_explanations_use_the_thresholds_the_labels_were_made_with(tmp_path, labelled_db):
    from shoggoth.explorer.reasons import label_reasons
    from shoggoth.index.labels import queries as label_queries
    from shoggoth.index.store import read

    db = copy_db(labelled_db, tmp_path / "db.duckdb")
    assert cli.main(["label", "--db", str(db), "--alpha", "0.01", "--min-docs", "5"]) == 0
    con = duckdb.connect(str(db), read_only=True)
    sae = read.saes(con)["sae_id"][0]
    thresholds = label_queries.label_thresholds(con, sae)
    assert (thresholds.alpha, thresholds.min_docs) == (0.01, 5)
    features = label_queries.labelled_features(con, sae)
    con.close()
    live = features[~features["label"].isin(["dead", "rare"])].iloc[0].to_dict()
    text = " ".join(label_reasons(live, thresholds))
    assert "at 0.01." in text and "at 0.05." not in text


@pytest.mark.slow
@pytest.mark.parametrize("offset", [-1.0, 2.0])  # label after index; index mid-label
def test_racing_writers_lose_no_update(tmp_path, synthetic_db, offset):
    """`label` (read, compute, commit in place) and `index` (copy, rebuild, rename) racing,
    `index` started `offset` seconds after `label` (before it when negative; on this database
    label commits about 9 s in, and index copies and renames between 6 and 8 s): each either
    finishes or refuses in one line (exit 2), and whatever finished is in the database at the
    end. A label commit landing while index rebuilds its copy was once thrown away by the
    rename, both commands exiting 0."""
    db = copy_db(synthetic_db, tmp_path / "db.duckdb")

    def start(argv: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(EXE), *argv, "--db", str(db)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )

    first, second = (["label", "--alpha", "0.01"], ["index", *PCA_MAP])[:: 1 if offset >= 0 else -1]
    procs = {first[0]: start(first)}
    time.sleep(abs(offset))
    procs[second[0]] = start(second)
    done = {name: (proc.wait(timeout=600), proc.stderr.read()) for name, proc in procs.items()}
    for name, (code, err) in done.items():
        assert code in (0, 2), (name, err)
        if code == 2:  # (index logs its steps on stderr; then the one error line)
            lines = err.strip().splitlines()
            assert lines[-1].startswith("error: ") and "Traceback" not in err, err
            assert sum(line.startswith("error: ") for line in lines) == 1, err
    assert 0 in (done["label"][0], done["index"][0])
    from shoggoth.index.labels import queries as label_queries

    con = duckdb.connect(str(db), read_only=True)
    if done["label"][0] == 0:
        thresholds = label_queries.label_thresholds(con, "synthetic")
        assert thresholds.alpha == 0.01, "label's work was lost"
    if done["index"][0] == 0:
        assert con.execute("SELECT count(*) FROM faiss_indexes").fetchone()[0] > 0
    con.close()


def test_a_killed_merge_leaves_an_existing_database_as_it_was(tmp_path, tiny_sae_dir):
    """A merge into an existing file is built aside: kill -9 leaves the file byte for byte (it
    once grew from kilobytes to megabytes), and the next merge removes the partial file."""
    import hashlib

    from shoggoth.battery.personas import load_items, load_personas
    from shoggoth.index.store.schema import create_schema

    args = [str(a) for a in battery(tmp_path / "b", 12)]
    shards = [tmp_path / f"s{i}.duckdb" for i in range(2)]
    for i, shard in enumerate(shards):
        assert (
            cli.main(
                [
                    "harvest",
                    "--db",
                    str(shard),
                    "--sae-dir",
                    str(tiny_sae_dir),
                    "--shard",
                    f"{i}/2",
                    *args,
                ]
            )
            == 0
        )
    db = tmp_path / "all.duckdb"
    con = duckdb.connect(str(db), config={"default_block_size": "65536"})
    create_schema(con, load_personas(Path(args[1])), load_items(Path(args[3])))
    con.close()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    proc = subprocess.Popen(
        [str(EXE), "merge", "--db", str(db), *map(str, shards)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    partial = tmp_path / f".all.duckdb.merge-{proc.pid}.partial"  # (one per process)
    deadline = time.time() + 120
    while not partial.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert cli.main(["merge", "--db", str(db), *map(str, shards)]) == 0
    assert not partial.exists()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(DISTINCT sae_id) FROM documents").fetchone()[0] == 1
    con.close()


def test_a_train_killed_after_publishing_leaves_no_work_folder(capfd, tmp_path):
    """The SAE was published, the kill came before its checkpoints were removed: the next run
    of the same command removes them (and says the SAE exists)."""
    out = build_random_sae(tmp_path / "sae", "minilm", 384, "blocks.3.hook_resid_post", 96, 8)
    (out / "shoggoth.json").write_text("{}")
    work = tmp_path / ".sae.partial"
    (work / "checkpoints" / "1024").mkdir(parents=True)
    assert cli.main(["train", "--out", str(out), "--tokens", "2048"]) == 2
    assert "already exists" in capfd.readouterr()[1]
    assert not work.exists()


def test_writers_are_not_blocked_by_an_open_explorer(tmp_path, indexed_db):
    """With the explorer open on a database (pages rendered, the store alive), `label` and
    `index` write it: the explorer holds a connection only while a page runs."""
    from streamlit.testing.v1 import AppTest

    db = copy_db(indexed_db, tmp_path / "db.duckdb")
    os.environ["SHOGGOTH_DB"] = str(db)
    at = AppTest.from_file(
        str(Path(__file__).parents[2] / "explorer" / "app.py"), default_timeout=120
    )
    at.run()
    at.switch_page("views/features.py").run()
    assert not at.exception
    for command in (["label", "--min-docs", "5", "--alpha", "0.02"], ["index", *PCA_MAP]):
        run = subprocess.run(
            [str(EXE), *command, "--db", str(db)],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
    at.switch_page("views/overview.py").run()  # and the explorer reads the new file
    assert not at.exception, [e.value for e in at.exception]
    from shoggoth.explorer.common import store_for

    store_for(str(db.resolve())).close()
    store_for.clear()


def test_a_locked_database_is_refused_before_the_work(tmp_path, synthetic_db):
    """Another process writing the database: `label` says so (naming its PID) before it reads
    millions of rows, not after its work."""
    db = copy_db(synthetic_db, tmp_path / "db.duckdb")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; "
            f"c = duckdb.connect({str(db)!r}); print('held', flush=True); "
            "time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        run = subprocess.run(
            [str(EXE), "label", "--db", str(db)],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=300,
        )
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert f"in use by another process (PID {holder.pid})" in run.stderr
    assert took < 25  # start-up and the 10 s wait for a short reader, not the labelling


def test_faiss_files_resolve_against_the_database_not_the_working_directory(tmp_path, indexed_db):
    (tmp_path / "a").mkdir()
    db = copy_db(indexed_db, tmp_path / "a" / "db.duckdb")
    elsewhere = tmp_path / "b"
    elsewhere.mkdir()
    run = subprocess.run(
        [str(EXE), "search", "similar", "--db", str(db), "--feature", "3", "--format", "json"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=elsewhere,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert len(json.loads(run.stdout)["neighbours"]) == 10
    # A copy without its .faiss folder does not read the original's files.
    bare = tmp_path / "c" / "db.duckdb"
    bare.parent.mkdir()
    bare.write_bytes(db.read_bytes())
    run = subprocess.run(
        [str(EXE), "search", "similar", "--db", str(bare), "--feature", "3"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=db.parent,
        timeout=120,
    )
    assert run.returncode == 2 and "run `shoggoth index` first" in run.stderr, run.stderr


def test_a_faiss_file_that_is_not_the_databases_own_is_refused(tmp_path, indexed_db):
    """The database stores each FAISS file's sha256 and checks it on reading, so a folder copied
    from another database (or a file changed since) is never read as this one's."""
    db = copy_db(indexed_db, tmp_path / "db.duckdb")
    con = duckdb.connect(str(db), read_only=True)
    stored, sha = con.execute(
        "SELECT path, sha256 FROM faiss_indexes WHERE name = 'decoder'"
    ).fetchone()
    con.close()
    path = db.parent / f"{db.name}.faiss" / stored
    assert len(sha) == 64 and hashlib.sha256(path.read_bytes()).hexdigest() == sha
    other = faiss.IndexFlatIP(faiss.read_index(str(path)).d)
    other.add(np.eye(4, other.d, dtype=np.float32))
    faiss.write_index(other, str(path))
    run = subprocess.run(
        [str(EXE), "search", "similar", "--db", str(db), "--feature", "3"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "is not the one this database was indexed with" in run.stderr


@pytest.mark.slow
def test_every_successful_write_leaves_only_the_database_and_its_faiss_folder(
    capfd, tmp_path, indexed_db, tiny_sae_dir
):
    """No write-ahead log, partial copy or build folder stays beside a database after a
    command that wrote it succeeds: label, index, a harvest into it, a merge into it. (Run in
    this process: what a command leaves open here, a process's exit would hide.)"""
    db = copy_db(indexed_db, tmp_path / "db.duckdb")
    args = battery(tmp_path / "b", 30)  # the battery indexed_db was harvested on
    before = set((tmp_path / "db.duckdb.faiss").iterdir())
    other = tmp_path / "other" / "db.duckdb"
    other.parent.mkdir()
    for argv in (
        ["label", "--db", db, "--min-docs", "5"],
        ["index", "--db", db, *PCA_MAP],
        ["harvest", "--db", db, "--sae-dir", tiny_sae_dir, "--sae", "second", *args],
        ["harvest", "--db", other, "--sae-dir", tiny_sae_dir, "--sae", "third", *args],
        ["merge", "--db", db, other],
    ):
        code = cli.main([str(a) for a in argv])
        assert code == 0, (argv, capfd.readouterr().err[-2000:])
        left = {p.name for p in tmp_path.iterdir()} - {"b", "other"}
        assert left == {"db.duckdb", "db.duckdb.faiss"}, (argv[0], left)
    after = set((tmp_path / "db.duckdb.faiss").iterdir())
    assert len(after) == len(before) and after != before  # one build folder, the new one
