"""`shoggoth harvest` and `shoggoth merge` on real models and real DuckDB files: the contract
tables, values recomputed independently, the prefix cache, kill -9 + rerun, shards, and every
bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest
import torch
from helpers import PERSONAS, battery, build_random_sae, default_sigint
from sae_lens import SAE

import shoggoth.index.harvest.store as hdb
from shoggoth import cli
from shoggoth.battery.personas import load_items, load_personas
from shoggoth.sae.activations import activations
from shoggoth.sae.models import Model
from shoggoth.sae.prompts import build_prompt, collate, pad_id

DATA = ("tokens", "documents", "activations", "doc_features")
KEY = "sae_id, persona, paraphrase, item_id, pos, feature"


def run(capfd, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def rows(path: Path, sae_id: str | None = None) -> dict[str, list[tuple]]:
    """Every harvest row of a database (sae_id column dropped when one SAE is asked for)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        if sae_id is None:
            return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in DATA}
        return {
            t: con.execute(
                f"SELECT * EXCLUDE (sae_id) FROM {t} WHERE sae_id = ? ORDER BY ALL", [sae_id]
            ).fetchall()
            for t in DATA
        }
    finally:
        con.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> list[str]:
    return battery(tmp_path_factory.mktemp("battery"), 12)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_sae_dir, small) -> Path:
    """One uninterrupted harvest on the tiny chat GPT-2: the rows every other run must equal."""
    db = tmp_path_factory.mktemp("reference") / "ref.duckdb"
    code = cli.main(
        [
            "harvest",
            "--db",
            str(db),
            "--sae-dir",
            str(tiny_sae_dir),
            "--batch",
            "5",
            *map(str, small),
        ]
    )
    assert code == 0
    return db


def test_harvest_fills_the_contract_tables(reference, tiny_gpt2: Model, tiny_sae_dir, small):
    personas, items = load_personas(Path(small[1])), load_items(Path(small[3]))
    con = duckdb.connect(str(reference), read_only=True)
    n_docs = sum(len(p.prompts) for p in personas) * len(items)
    assert con.execute("SELECT count(*) FROM documents").fetchone()[0] == n_docs == 7 * 12
    sae_row = con.execute(
        "SELECT sae_id, hook, d_in, d_sae, architecture, template, prefix_cache FROM saes"
    ).fetchone()
    assert sae_row == ("tiny-sae", "blocks.1.hook_resid_post", 32, 64, "topk", "chat", True)
    assert con.execute("SELECT command, status FROM runs").fetchall() == [("harvest", "finished")]

    # tokens: exactly the answer's tokens, as the prompt builder marks them.
    tok = tiny_gpt2.tokenizer
    for item in items[:3]:
        expected = build_prompt(
            tok,
            personas[0].prompts[0],
            item.question,
            item.answer,
            prepend_bos=tiny_gpt2.prepend_bos,
        ).continuation_ids
        stored = con.execute(
            "SELECT token_id FROM tokens WHERE item_id = ? ORDER BY pos", [item.item_id]
        ).fetchall()
        assert [t for (t,) in stored] == expected
        n = con.execute(
            "SELECT DISTINCT n_tokens FROM documents WHERE item_id = ?", [item.item_id]
        ).fetchall()
        assert n == [(len(expected),)]  # the same answer tokens under every persona

    # activations: on answer positions only, at most k per token, positive, no duplicates.
    assert con.execute(f"SELECT count(*) = count(DISTINCT ({KEY})) FROM activations").fetchone()[0]
    bad = con.execute(
        "SELECT count(*) FROM activations a JOIN documents d USING "
        "(sae_id, persona, paraphrase, item_id) WHERE a.pos >= d.n_tokens "
        "OR a.value <= 0"
    ).fetchone()[0]
    assert bad == 0
    per_token = con.execute(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM activations GROUP BY "
        "sae_id, persona, paraphrase, item_id, pos)"
    ).fetchone()[0]
    assert 0 < per_token <= 8

    # doc_features: exactly the per-document aggregates of activations.
    mismatch = con.execute("""
        SELECT count(*) FROM doc_features f FULL JOIN (
            SELECT a.sae_id, a.persona, a.paraphrase, a.item_id, a.feature,
                   sum(a.value) / any_value(d.n_tokens) AS mean_act, max(a.value) AS max_act,
                   count(*) AS n_fire
            FROM activations a JOIN documents d USING (sae_id, persona, paraphrase, item_id)
            GROUP BY ALL) g USING (sae_id, persona, paraphrase, item_id, feature)
        WHERE g.n_fire IS NULL OR f.n_fire IS NULL OR f.n_fire <> g.n_fire
           OR abs(f.mean_act - g.mean_act) > 1e-5 OR abs(f.max_act - g.max_act) > 1e-6
    """).fetchone()[0]
    assert mismatch == 0

    # values: recompute one document with a plain forward pass and the SAE, independently.
    decimals = con.execute("SELECT value_decimals FROM saes").fetchone()[0]
    sae = SAE.load_from_disk(str(tiny_sae_dir))
    item = items[5]
    prompt = build_prompt(
        tok, personas[1].prompts[2], item.question, item.answer, prepend_bos=tiny_gpt2.prepend_bos
    )
    batch = collate([prompt], pad_id(tok))
    acts = activations(tiny_gpt2, batch, "blocks.1.hook_resid_post")[0][batch.continuation_mask[0]]
    with torch.no_grad():
        f = torch.round(sae.encode(acts) * 10**decimals) / 10**decimals
    want = {
        (int(p), int(j)): float(f[p, j]) for p, j in zip(*f.nonzero(as_tuple=True), strict=True)
    }
    got = {
        (p, j): v
        for p, j, v in con.execute(
            "SELECT pos, feature, value FROM activations WHERE persona = 'helper' AND "
            "paraphrase = 2 AND item_id = ?",
            [item.item_id],
        ).fetchall()
    }
    assert got.keys() == want.keys()
    assert max(abs(got[k] - want[k]) for k in got) <= 10**-decimals + 1e-6
    con.close()


def test_prefix_cache_gives_the_rows_of_full_forward_passes(
    capfd, tmp_path, reference, tiny_sae_dir, small
):
    db = tmp_path / "nocache.duckdb"
    code, _, err = run(
        capfd,
        "harvest",
        "--db",
        db,
        "--sae-dir",
        tiny_sae_dir,
        "--batch",
        "5",
        "--no-prefix-cache",
        *small,
    )
    assert code == 0, err
    want, got = rows(reference), rows(db)
    for table in DATA:
        if table != "activations" and table != "doc_features":
            assert got[table] == want[table]
    a = {r[:6]: r[6] for r in want["activations"]}
    b = {r[:6]: r[6] for r in got["activations"]}
    assert a.keys() == b.keys()
    assert max(abs(a[k] - b[k]) for k in a) <= 1.01e-3


def test_rerun_of_a_finished_harvest_changes_nothing(capfd, reference, tiny_sae_dir, small):
    before = digest(reference)
    code, out, err = run(
        capfd, "harvest", "--db", reference, "--sae-dir", tiny_sae_dir, "--batch", "5", *small
    )
    assert code == 0, err
    assert "already harvested" in out and digest(reference) == before


def test_minilm_encoder_harvest(capfd, tmp_path, minilm: Model):
    sae = build_random_sae(
        tmp_path / "minilm-sae", "minilm", 384, "blocks.3.hook_resid_post", d_sae=256, k=16
    )
    args = battery(tmp_path / "b", 6)
    db = tmp_path / "m.duckdb"
    code, out, err = run(capfd, "harvest", "--db", db, "--sae-dir", sae, *args)
    assert code == 0, err
    assert "documents" in out and "bytes per activation" in out
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT template, prefix_cache FROM saes").fetchone() == ("plain", False)
    tokens = [t for (t,) in con.execute("SELECT token FROM tokens").fetchall()]
    assert "[CLS]" not in tokens and "[SEP]" not in tokens
    items = load_items(tmp_path / "b/items.jsonl")
    first = [
        t
        for (t,) in con.execute(
            "SELECT token FROM tokens WHERE item_id = ? ORDER BY pos", [items[0].item_id]
        ).fetchall()
    ]
    assert first == minilm.tokenizer.tokenize(items[0].answer)
    assert con.execute("SELECT count(*) FROM documents").fetchone()[0] == 7 * 6
    per_token = con.execute(
        "SELECT max(n), min(n) FROM (SELECT count(*) AS n FROM activations "
        "GROUP BY persona, paraphrase, item_id, pos)"
    ).fetchone()
    assert per_token[0] <= 16 and per_token[1] >= 1


def harvest_process(
    db: Path, sae: Path, args: list, *extra: str, log: Path | None = None
) -> subprocess.Popen:
    """The harvest as a process; its output to `log` when nobody reads it while it runs."""
    exe = Path(sys.executable).with_name("shoggoth")
    cmd = [str(exe), "harvest", "--db", str(db), "--sae-dir", str(sae), *map(str, args), *extra]
    out = subprocess.PIPE if log is None else log.open("w")
    return subprocess.Popen(
        cmd,
        stdout=out,
        stderr=out,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        preexec_fn=default_sigint,
    )


def big_personas() -> str:
    """Six personas with four paraphrases each: a grid long enough to interrupt."""
    lines = ["personas:"]
    for i in range(6):
        prompts = ", ".join(f'"You are persona {i}, style {j}."' for j in range(4))
        lines += [f"  - name: p{i}", f"    family: f{i % 3}", f"    prompts: [{prompts}]"]
    return "\n".join(lines) + "\n"


BIG_PERSONAS = big_personas()


def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_gpt2_dir, tiny_sae_dir):
    args = battery(tmp_path / "b", 20, BIG_PERSONAS)
    # The database already holds another SAE: a killed harvest must leave it byte for byte.
    other = build_random_sae(
        tmp_path / "other", str(tiny_gpt2_dir), 32, "blocks.0.hook_resid_post", seed=3
    )
    db = tmp_path / "db.duckdb"
    # The uninterrupted reference runs meanwhile: the harvests are small (1.x cores each).
    fresh = tmp_path / "fresh.duckdb"
    whole = harvest_process(fresh, tiny_sae_dir, args, "--batch", "4", log=tmp_path / "fresh.log")
    harvest = ["harvest", "--db", str(db), "--sae-dir", str(other), *map(str, args)]
    assert cli.main([*harvest, "--batch", "8"]) == 0  # here, while the reference runs
    before = digest(db)
    partial = tmp_path / ".db.duckdb.tiny-sae.partial"
    wal = Path(f"{partial}.wal")

    proc = harvest_process(db, tiny_sae_dir, args, "--batch", "4")
    deadline = time.time() + 240
    while time.time() < deadline and not (wal.exists() and wal.stat().st_size > 100_000):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    assert proc.poll() is None, "the harvest finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert digest(db) == before and partial.exists()
    con = duckdb.connect(str(db), read_only=True)  # still a usable database
    assert [r[0] for r in con.execute("SELECT sae_id FROM saes").fetchall()] == ["other"]
    con.close()

    again = harvest_process(db, tiny_sae_dir, args, "--batch", "4")
    out, err = again.communicate(timeout=400)
    assert again.returncode == 0, err
    assert "resuming" in err and not partial.exists()

    assert whole.wait(timeout=400) == 0, (tmp_path / "fresh.log").read_text()[-2000:]
    assert rows(db, "tiny-sae") == rows(fresh, "tiny-sae")
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute(f"SELECT count(*) = count(DISTINCT ({KEY})) FROM activations").fetchone()[0]
    assert (
        con.execute("SELECT count(*) FROM documents WHERE sae_id = 'tiny-sae'").fetchone()[0]
        == 6 * 4 * 20
    )
    con.close()
    assert rows(db, "other")["activations"]  # the first SAE is still there

    # Storage: at most 4 bytes on disk per stored activation (the activations table's blocks).
    from shoggoth.index.store.database import storage

    con = duckdb.connect(str(fresh), read_only=True)
    n = con.execute("SELECT count(*) FROM activations").fetchone()[0]
    used = storage(con, fresh)["activations_bytes"]
    con.close()
    assert n > 150_000 and used / n <= 4.0, (n, used / n)


def test_ctrl_c_keeps_the_written_batches(tmp_path, tiny_sae_dir):
    args = battery(tmp_path / "b", 30, BIG_PERSONAS)
    db = tmp_path / "db.duckdb"
    partial = tmp_path / ".db.duckdb.tiny-sae.partial"
    proc = harvest_process(db, tiny_sae_dir, args, "--batch", "4")
    deadline = time.time() + 240
    while time.time() < deadline and not Path(f"{partial}.wal").exists():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "rerun the same command" in err.strip().splitlines()[-1]
    assert partial.exists() and not db.exists()
    again = harvest_process(db, tiny_sae_dir, args, "--batch", "4")
    _, err = again.communicate(timeout=400)
    assert again.returncode == 0 and "resuming" in err, err
    assert len(rows(db)["documents"]) == 6 * 4 * 30


def test_three_shards_merged_equal_one_run(capfd, tmp_path, reference, tiny_sae_dir, small):
    shards = [tmp_path / f"s{i}.duckdb" for i in range(3)]
    for i, db in enumerate(shards):
        code, _, err = run(
            capfd,
            "harvest",
            "--db",
            db,
            "--sae-dir",
            tiny_sae_dir,
            "--batch",
            "5",
            "--shard",
            f"{i}/3",
            *small,
        )
        assert code == 0, err
    sizes = [len(rows(s)["documents"]) for s in shards]
    assert sum(sizes) == 84 and min(sizes) > 0
    merged = tmp_path / "merged.duckdb"
    code, out, err = run(capfd, "merge", "--db", merged, shards[2], shards[0], shards[1])
    assert code == 0, err
    assert rows(merged) == rows(reference)
    con = duckdb.connect(str(merged), read_only=True)
    commands = sorted(c for (c,) in con.execute("SELECT command FROM runs").fetchall())
    assert commands == ["harvest"] * 3 + ["merge"]
    con.close()
    # The merged database is the finished unsharded harvest: rerunning it is a no-op.
    code, out, _ = run(
        capfd, "harvest", "--db", merged, "--sae-dir", tiny_sae_dir, "--batch", "5", *small
    )
    assert code == 0 and "already harvested" in out

    # Incomplete or repeated shard sets are refused, and nothing is written.
    for inputs, words in [
        ((shards[0], shards[1]), "0/3, 1/3"),
        ((shards[0], shards[0], shards[1]), "given twice"),
        ((reference, merged), "more than one input"),
    ]:
        target = tmp_path / "bad.duckdb"
        code, out, err = run(capfd, "merge", "--db", target, *inputs)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
        assert not target.exists()
        assert not list(tmp_path.glob(".bad.duckdb*"))


def test_second_sae_is_added_in_one_transaction(
    capfd, tmp_path, reference, tiny_gpt2_dir, tiny_sae_dir, small
):
    db = tmp_path / "two.duckdb"
    db.write_bytes(reference.read_bytes())
    other = build_random_sae(
        tmp_path / "second",
        str(tiny_gpt2_dir),
        32,
        "blocks.2.hook_resid_post",
        d_sae=48,
        k=4,
        seed=7,
    )
    code, _, err = run(capfd, "harvest", "--db", db, "--sae-dir", other, "--batch", "5", *small)
    assert code == 0, err
    assert rows(db, "tiny-sae") == rows(reference, "tiny-sae")
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute(
        "SELECT max(feature) < 48, count(DISTINCT pos) > 0 FROM activations WHERE sae_id = 'second'"
    ).fetchone() == (True, True)
    con.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["second", "two.duckdb"]


def test_several_saes_share_one_pass_and_equal_separate_harvests(
    capfd, tmp_path, reference, tiny_gpt2_dir, tiny_sae_dir, small, monkeypatch
):
    """Two SAEs at different hooks (blocks 2 and 1) and widths, from the same forward passes,
    give exactly the rows of separate harvests; a Ctrl-C between batches resumes to the same."""
    other = build_random_sae(
        tmp_path / "second",
        str(tiny_gpt2_dir),
        32,
        "blocks.2.hook_resid_post",
        d_sae=48,
        k=4,
        seed=7,
    )
    separate = tmp_path / "separate.duckdb"
    separate.write_bytes(reference.read_bytes())
    code, _, err = run(
        capfd, "harvest", "--db", separate, "--sae-dir", other, "--batch", "5", *small
    )
    assert code == 0, err
    real, calls = hdb.PartialStore.write, []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(hdb.PartialStore, "write", flaky)
    both = tmp_path / "both.duckdb"
    argv = [
        "harvest",
        "--db",
        both,
        "--sae-dir",
        other,
        "--sae-dir",
        tiny_sae_dir,
        "--batch",
        "5",
        *small,
    ]
    assert run(capfd, *argv)[0] == 130
    monkeypatch.setattr(hdb.PartialStore, "write", real)
    code, out, err = run(capfd, *argv)
    assert code == 0, err
    assert "resuming" in err and "· second ·" in out and "· tiny-sae ·" in out
    for sae_id in ("second", "tiny-sae"):
        assert rows(both, sae_id) == rows(separate, sae_id)
    con = duckdb.connect(str(both), read_only=True)
    assert con.execute("SELECT count(DISTINCT run_id) FROM saes").fetchone()[0] == 2
    con.close()
    # One --sae cannot name two SAEs; SAEs of different models are harvested apart.
    code, _, err = run(
        capfd,
        "harvest",
        "--db",
        tmp_path / "x.duckdb",
        "--sae-dir",
        other,
        "--sae-dir",
        tiny_sae_dir,
        "--sae",
        "x",
        *small,
    )
    assert code == 2 and "--sae x: names one SAE" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.duckdb").exists()


def shard_workers() -> list[int]:
    """Ray worker processes running a harvest shard (Ray names them after the task)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"ray::harvest_shard" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def kill_a_worker_mid_shard(folder: Path, killed: list[int], stop: threading.Event) -> None:
    """kill -9 the worker of the first shard that has written a batch of its own."""
    while not stop.is_set():
        if any(folder.glob(".shard-*.partial")):
            for pid in shard_workers()[:1]:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.005)


def test_ray_workers_harvest_the_same_rows(
    capfd, monkeypatch, tmp_path, reference, tiny_sae_dir, small
):
    """A real local Ray cluster (2 CPUs, started here): 3 shards as Ray tasks, one of whose
    workers is killed with kill -9 mid-shard; Ray reruns it, it resumes its partial file, and the
    merge equals one uninterrupted run."""
    import ray

    # Ray starts its workers at nice 15: beside the suite's other workers they got a few percent
    # of a core, and this test took 75-190 s instead of 20 s.
    monkeypatch.setenv("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    db = tmp_path / "ray.duckdb"
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(
        target=kill_a_worker_mid_shard,
        args=(tmp_path / ".ray.duckdb.ray", killed, stop),
        daemon=True,
    )
    killer.start()
    try:
        code, out, err = run(
            capfd,
            "harvest",
            "--db",
            db,
            "--sae-dir",
            tiny_sae_dir,
            "--batch",
            "5",
            "--ray",
            "auto",
            "--workers",
            "3",
            *small,
        )
        stop.set()
        # An error inside a task is its one line, as without Ray, and nothing is left.
        bad = run(
            capfd,
            "harvest",
            "--db",
            tmp_path / "bad.duckdb",
            "--sae-dir",
            tiny_sae_dir,
            "--ray",
            "auto",
            "--model",
            str(tmp_path / "nowhere"),
            *small,
        )
    finally:
        ray.shutdown()
    assert code == 0, err
    assert len(killed) == 1, "no shard worker was running to be killed"
    assert "documents" in out
    errors = [line for line in bad[2].splitlines() if not line.startswith("ray: ")]
    assert bad[0] == 2 and len(errors) == 1 and errors[0].startswith("error: model")
    assert rows(db) == rows(reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ray.duckdb"]
    assert (
        run(
            capfd,
            "harvest",
            "--db",
            db,
            "--sae-dir",
            tiny_sae_dir,
            "--ray",
            "auto",
            "--shard",
            "0/2",
            *small,
        )[0]
        == 2
    )


BAD_YAML = "personas:\n  - name: pirate\n    prompts: [unclosed\n"


@pytest.mark.parametrize(
    "case, words",
    [
        ("malformed_yaml", ["personas.yaml", "line", "not valid YAML"]),
        ("malformed_jsonl", ["items.jsonl", "line 2"]),
        ("no_prompts", ["personas.yaml", "'helper' has no prompts"]),
        ("duplicate_persona", ["personas.yaml", "duplicate persona 'pirate'"]),
        ("empty_item", ["items.jsonl", "line 1", "empty answer"]),
        ("d_in_mismatch", ["d_in 384", "d_model 32"]),
        ("not_an_sae", ["not an SAE directory"]),
        ("not_duckdb", ["db.duckdb", "not a DuckDB database"]),
        ("locked", ["db.duckdb", "locked by another process"]),
        ("other_battery", ["db.duckdb", "different persona battery"]),
        ("bad_shard", ["--shard 3/3"]),
        ("bad_batch", ["--batch 0"]),
    ],
)
def test_harvest_bad_input(
    capfd, monkeypatch, tmp_path, tiny_gpt2_dir, tiny_sae_dir, reference, case, words
):
    args = battery(tmp_path, 4)
    personas, items = tmp_path / "personas.yaml", tmp_path / "items.jsonl"
    sae, db, extra = tiny_sae_dir, tmp_path / "db.duckdb", []
    holder = None
    if case == "malformed_yaml":
        personas.write_text(BAD_YAML)
    elif case == "malformed_jsonl":
        items.write_text(items.read_text().splitlines()[0] + "\n{not json\n")
    elif case == "no_prompts":
        personas.write_text(
            PERSONAS.replace(
                '["You are a helpful assistant.", "Be a kind and careful helper.", '
                '"Help the user."]',
                "[]",
            )
        )
    elif case == "duplicate_persona":
        personas.write_text(PERSONAS.replace("name: helper", "name: pirate"))
    elif case == "empty_item":
        first = json.loads(items.read_text().splitlines()[0])
        items.write_text(json.dumps({**first, "answer": "  "}) + "\n")
    elif case == "d_in_mismatch":
        sae = build_random_sae(
            tmp_path / "wide", str(tiny_gpt2_dir), 384, "blocks.1.hook_resid_post"
        )
    elif case == "not_an_sae":
        sae = tmp_path / "folder"
        sae.mkdir()
        (sae / "notes.txt").write_text("hello")
    elif case == "not_duckdb":
        db.write_text("these are not the bytes of a DuckDB file\n" * 50)
    elif case == "locked":
        # How long a command waits for another process's lock (30 s) is not what is tested.
        monkeypatch.setattr(hdb, "WAIT", 2.0)
        db.write_bytes(reference.read_bytes())
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import duckdb, sys, time; "
                f"c = duckdb.connect({str(db)!r}); print('ok', flush=True); "
                "time.sleep(120)",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout.readline().strip() == "ok"
    elif case == "other_battery":
        db.write_bytes(reference.read_bytes())  # 12 items; this battery has 4
    elif case == "bad_shard":
        extra = ["--shard", "3/3"]
    elif case == "bad_batch":
        extra = ["--batch", "0"]
    before = {p.name: digest(p) for p in tmp_path.iterdir() if p.is_file()}
    names = sorted(p.name for p in tmp_path.iterdir())
    try:
        code, out, err = run(capfd, "harvest", "--db", db, "--sae-dir", sae, *args, *extra)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # nothing written
    assert {p.name: digest(p) for p in tmp_path.iterdir() if p.is_file()} == before


def test_subset_flags_harvest_a_recorded_deterministic_slice(capfd, tmp_path, tiny_sae_dir):
    """--paraphrases N and --items-per-topic M harvest the first N prompts of every persona and
    the first M items of each topic; the database holds exactly that battery and the run record
    names the flags, so a rerun with other flags is refused."""
    (tmp_path / "p.yaml").write_text(PERSONAS)
    db = tmp_path / "db.duckdb"
    base = ["harvest", "--db", db, "--sae-dir", tiny_sae_dir, "--personas", tmp_path / "p.yaml"]
    code, _, err = run(capfd, *base, "--paraphrases", "2", "--items-per-topic", "1")
    assert code == 0, err
    first: dict[str, str] = {}
    for i in load_items():
        first.setdefault(i.topic, i.item_id)
    con = duckdb.connect(str(db), read_only=True)
    assert sorted(r[0] for r in con.execute("SELECT item_id FROM items").fetchall()) == sorted(
        first.values()
    )
    assert con.execute(
        "SELECT persona::VARCHAR AS p, count(*) FROM persona_prompts GROUP BY p ORDER BY p"
    ).fetchall() == [("control_none", 1), ("helper", 2), ("pirate", 2)]
    assert con.execute("SELECT count(*) FROM documents").fetchone()[0] == 5 * len(first)
    config = json.loads(con.execute("SELECT config_json FROM runs").fetchone()[0])["identity"]
    assert (config["paraphrases"], config["items_per_topic"]) == (2, 1)
    con.close()
    code, _, err = run(capfd, *base, "--paraphrases", "3", "--items-per-topic", "1")
    assert code == 2 and "--paraphrases" in err and err.count("\n") == 1, err


def test_each_document_runs_once_beyond_a_small_cache_check(
    capfd, tmp_path, tiny_sae_dir, small, monkeypatch
):
    """The forward passes a harvest runs: every document of the grid once, each item's
    reference document once (the document shifts), and the prefix-cache check's few documents
    both ways; the value scale reads the first batch the harvest stores instead of running it
    again (it once cost three extra batches, a quarter of a small harvest)."""
    from shoggoth.sae import encode

    documents: list[int] = []
    real = encode.prompts_activations

    def counted(model, prompts, hooks, prefix):
        documents.append(len(prompts))
        return real(model, prompts, hooks, prefix)

    monkeypatch.setattr(encode, "prompts_activations", counted)
    code, _, err = run(
        capfd,
        "harvest",
        "--db",
        tmp_path / "db.duckdb",
        "--sae-dir",
        tiny_sae_dir,
        "--batch",
        "5",
        *small,
    )
    assert code == 0, err
    personas, items = load_personas(Path(small[1])), load_items(Path(small[3]))
    grid = sum(len(p.prompts) for p in personas) * len(items)
    assert sum(documents) == grid + len(items) + 2 * encode.CACHE_CHECK_DOCUMENTS, documents
