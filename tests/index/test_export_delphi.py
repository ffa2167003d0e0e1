"""`shoggoth export --delphi`: a real harvest as delphi's latent cache, read back with
safetensors only (delphi itself is not installed: it pulls vllm). Every activation is where
delphi's loader finds it, the splits are torch's linspace, the dtypes are delphi's, rows.parquet
names each row's document, config.json has the keys delphi's LatentDataset reads, and bad input
or an interruption writes nothing."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import copy_db
from safetensors.numpy import load_file
from test_hostile_databases import SECRET, corpus, outside, run_one

import shoggoth.index.store.delphi
from shoggoth import cli
from shoggoth.index.store.delphi import locations_dtype, split_bounds

LOADER_KEYS = {
    "model_name",
    "ctx_len",
    "dataset_repo",
    "dataset_split",
    "dataset_name",
    "dataset_column",
}
"""What delphi's LatentDataset reads from config.json (delphi/latents/loader.py)."""
CACHE_CONFIG_KEYS = {
    "dataset_repo",
    "dataset_split",
    "dataset_name",
    "dataset_column",
    "batch_size",
    "cache_ctx_len",
    "n_tokens",
    "n_splits",
}
"""delphi's CacheConfig fields, which its save_config writes (delphi/config.py)."""


@pytest.fixture(scope="module")
def cache(labelled_db, tmp_path_factory):
    """labelled_db exported as Parquet and as delphi's cache in one run."""
    out = tmp_path_factory.mktemp("delphi")
    assert (
        cli.main(
            [
                "export",
                "--db",
                str(labelled_db),
                "--parquet",
                str(out / "pq"),
                "--delphi",
                str(out / "delphi"),
            ]
        )
        == 0
    )
    return labelled_db, out / "delphi"


def read_cache(
    folder: Path,
) -> tuple[dict, dict[tuple[int, int, int], np.float16], np.ndarray, list[str]]:
    """config.json, {(row, pos, latent): value} as delphi's TensorBuffer.load rebuilds it from
    every split (latent = stored + the file's start), the tokens, and the file names."""
    (module,) = (folder / "latents").iterdir()
    config = json.loads((module / "config.json").read_text())
    values, tokens, names, located = {}, None, [], 0
    for path in sorted(module.glob("*.safetensors"), key=lambda p: int(p.stem.split("_")[0])):
        names.append(path.name)
        split = load_file(str(path))
        start, end = map(int, path.stem.split("_"))
        locations = split["locations"]
        assert locations.dtype == (
            np.uint16 if not locations.size or locations.max() < 2**16 else np.uint32
        )
        assert split["activations"].dtype == np.float16
        assert split["tokens"].dtype == np.int64
        tokens = split["tokens"] if tokens is None else tokens
        assert np.array_equal(split["tokens"], tokens)  # the same tokens in every split
        triples = [tuple(map(int, t)) for t in locations]
        assert triples == sorted(triples)  # (row, pos, latent) order, as torch.nonzero gives
        for (row, pos, latent), value in zip(triples, split["activations"], strict=True):
            assert 0 <= latent <= end - start
            values[(row, pos, latent + start)] = value
        located += len(triples)
    assert located == len(values)  # no location twice
    assert tokens is not None
    return config, values, tokens, names


def test_every_activation_is_where_delphi_reads_it(cache):
    import torch

    db, folder = cache
    config, values, tokens, names = read_cache(folder)
    with duckdb.connect(str(db), read_only=True) as con:
        ((sae, hook, width),) = con.execute("SELECT sae_id, hook, d_sae FROM saes").fetchall()
        acts = con.execute(
            "SELECT persona::VARCHAR, paraphrase, item_id::VARCHAR, pos, "
            "feature, value FROM activations WHERE sae_id = ?",
            [sae],
        ).fetchall()
        docs = con.execute(
            "SELECT persona::VARCHAR, paraphrase, item_id::VARCHAR, n_tokens "
            "FROM documents WHERE sae_id = ?",
            [sae],
        ).fetchall()
        answer = {}
        for item, token in con.execute(
            "SELECT item_id::VARCHAR, token_id FROM tokens WHERE sae_id = ? ORDER BY item_id, pos",
            [sae],
        ).fetchall():
            answer.setdefault(item, []).append(token)
    assert [p.name for p in (folder / "latents").iterdir()] == [hook]
    # rows.parquet: row i is one document, every document once
    rows = pq.read_table(folder / "rows.parquet").to_pylist()
    assert [r["row"] for r in rows] == list(range(len(rows)))
    assert {r["sae_id"] for r in rows} == {sae}
    assert sorted(
        (r["persona"], r["paraphrase"], r["item_id"], r["n_tokens"]) for r in rows
    ) == sorted(docs)
    row_of = {(r["persona"], r["paraphrase"], r["item_id"]): r["row"] for r in rows}
    # every activation of the database, at its document's row and token, in float16 as delphi
    want = {(row_of[(p, k, i)], pos, f): np.float16(v) for p, k, i, pos, f, v in acts}
    assert len(want) == len(acts) > 1000
    assert values == want
    # tokens: each row is its item's answer, then padding (token 0)
    assert tokens.shape == (len(rows), config["cache_ctx_len"])
    assert tokens.shape[1] % 32 == 0 and tokens.shape[1] >= max(r["n_tokens"] for r in rows)
    for r in rows:
        assert tokens[r["row"], : r["n_tokens"]].tolist() == answer[r["item_id"]]
        assert not tokens[r["row"], r["n_tokens"] :].any()
    # the splits are delphi's: torch.linspace(0, width, n_splits + 1).long(), end inclusive
    bounds = torch.linspace(0, width, steps=6).long().tolist()
    assert names == [f"{a}_{b - 1}.safetensors" for a, b in zip(bounds, bounds[1:], strict=False)]
    # config.json: what delphi's loader reads, its CacheConfig keys, and consistent values
    assert LOADER_KEYS | CACHE_CONFIG_KEYS <= set(config)
    assert config["ctx_len"] == config["cache_ctx_len"] == tokens.shape[1]
    assert config["n_splits"] == 5 and config["n_tokens"] == tokens.size
    assert config["model_name"] and config["shoggoth"]["sae_id"] == sae


def test_flags_set_splits_row_length_and_padding(cache, tmp_path):
    import torch

    db, _ = cache
    out = tmp_path / "d"
    assert (
        cli.main(
            [
                "export",
                "--db",
                str(db),
                "--delphi",
                str(out),
                "--delphi-splits",
                "3",
                "--delphi-ctx-multiple",
                "8",
                "--delphi-pad-token",
                "7",
            ]
        )
        == 0
    )
    config, values, tokens, names = read_cache(out)
    width = config["shoggoth"]["width"]
    bounds = torch.linspace(0, width, steps=4).long().tolist()
    assert names == [f"{a}_{b - 1}.safetensors" for a, b in zip(bounds, bounds[1:], strict=False)]
    rows = pq.read_table(out / "rows.parquet").to_pylist()
    longest = max(r["n_tokens"] for r in rows)
    assert tokens.shape[1] == -(-longest // 8) * 8
    short = min(rows, key=lambda r: r["n_tokens"])
    assert (tokens[short["row"], short["n_tokens"] :] == 7).all()
    _, again, _, _ = read_cache(cache[1])
    assert values == again  # the same activations, split differently
    assert not (tmp_path / "pq").exists()  # --delphi alone writes no Parquet export


def test_split_bounds_are_torchs_linspace():
    import torch

    rng = random.Random(0)
    widths = [
        *range(1, 200),
        2304,
        16384,
        65536,
        131072,
        2**20,
        2**24,
        *rng.sample(range(200, 2**24), 200),
    ]
    for width in widths:
        for n in [*range(1, 12), 16, 32, 100]:
            if n > width:
                continue
            b = torch.linspace(0, width, steps=n + 1).long().tolist()
            assert split_bounds(width, n) == [(a, e - 1) for a, e in zip(b, b[1:], strict=False)], (
                width,
                n,
            )


def test_locations_dtype_is_delphis():
    small = np.array([[65535, 3, 65535]], dtype=np.int64)
    assert locations_dtype(small) is np.uint16
    assert locations_dtype(np.zeros((0, 3), dtype=np.int64)) is np.uint16
    for big in ([[65536, 0, 0]], [[0, 0, 65536]], [[0, 65536, 0]]):
        assert locations_dtype(np.array(big, dtype=np.int64)) is np.uint32


def one_line_refusal(capfd, argv: list[str], words: str) -> None:
    capfd.readouterr()
    assert cli.main(["export", *map(str, argv)]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and words in err[0], err


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_bad_input_is_one_line_and_writes_nothing(labelled_db, tmp_path, capfd):
    db = tmp_path / "db.duckdb"
    shutil.copy(labelled_db, db)
    duckdb.connect(str(tmp_path / "empty.duckdb")).close()
    two = tmp_path / "two.duckdb"
    shutil.copy(labelled_db, two)
    evil = tmp_path / "evil.duckdb"
    shutil.copy(labelled_db, evil)
    with duckdb.connect(str(two)) as con:
        con.execute("INSERT INTO saes SELECT * REPLACE ('second' AS sae_id) FROM saes")
        for table in ("documents", "tokens", "activations"):
            con.execute(f"INSERT INTO {table} SELECT * REPLACE ('second' AS sae_id) FROM {table}")
    with duckdb.connect(str(evil)) as con:
        con.execute("UPDATE saes SET hook = '../../escaped'")
    untokened = tmp_path / "untokened.duckdb"
    shutil.copy(labelled_db, untokened)
    with duckdb.connect(str(untokened)) as con:
        con.execute("DELETE FROM tokens WHERE item_id = (SELECT min(item_id) FROM tokens)")
    past = tmp_path / "past.duckdb"  # the shortest answer's activations moved past its end
    shutil.copy(labelled_db, past)
    with duckdb.connect(str(past)) as con:
        con.execute(
            "UPDATE activations a SET pos = d.n_tokens FROM (SELECT * FROM documents "
            "ORDER BY n_tokens LIMIT 1) d WHERE a.sae_id = d.sae_id AND "
            "a.persona = d.persona AND a.paraphrase = d.paraphrase AND "
            "a.item_id = d.item_id"
        )
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    before = tree(tmp_path)
    out = tmp_path / "cache"
    for argv, words in (
        (["--db", tmp_path / "empty.duckdb", "--delphi", out], "holds no harvest"),
        (["--db", db, "--delphi", out, "--sae", "nope"], "--sae nope"),
        (["--db", two, "--delphi", out], "second"),
        (["--db", evil, "--delphi", out], "not a plain folder name"),
        (["--db", untokened, "--delphi", out], "answer tokens"),
        (["--db", past, "--delphi", out], "past the end"),
        (["--db", db, "--delphi", db], "--delphi"),
        (["--db", db, "--delphi", tmp_path], "--delphi"),
        (["--db", db, "--delphi", tmp_path / "other"], "--overwrite"),
        (["--db", db, "--delphi", tmp_path / "other", "--overwrite"], "not a shoggoth export"),
        (["--db", db, "--delphi", out, "--parquet", out], "--parquet"),
        (["--db", db, "--parquet", tmp_path / "pq", "--sae", "x"], "--delphi"),
        (["--db", db, "--delphi", out, "--delphi-splits", "500"], "more than"),
        (["--db", db], "--parquet, --delphi"),
        # a refused --delphi also keeps the --parquet export of the same run from appearing
        (
            ["--db", db, "--parquet", tmp_path / "pq", "--delphi", out, "--sae", "nope"],
            "--sae nope",
        ),
    ):
        one_line_refusal(capfd, argv, words)
        assert tree(tmp_path) == before, argv
    assert cli.main(["export", "--db", str(two), "--delphi", str(out), "--sae", "second"]) == 0
    assert set(pq.read_table(out / "rows.parquet").column("sae_id").to_pylist()) == {"second"}
    _, second, _, _ = read_cache(out)
    with duckdb.connect(str(labelled_db), read_only=True) as con:
        ((first_sae,),) = con.execute("SELECT sae_id FROM saes").fetchall()
    assert (
        cli.main(
            ["export", "--db", str(two), "--delphi", str(out), "--sae", first_sae, "--overwrite"]
        )
        == 0
    )
    _, first, _, _ = read_cache(out)
    assert first == second and len(first) > 1000


def test_an_interrupted_overwrite_keeps_the_last_cache(cache, tmp_path, monkeypatch):
    db, _ = cache
    out = tmp_path / "d"
    assert cli.main(["export", "--db", str(db), "--delphi", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real, calls = shoggoth.index.store.delphi.read_split, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(shoggoth.index.store.delphi, "read_split", flaky)
    assert (
        cli.main(
            [
                "export",
                "--db",
                str(db),
                "--delphi",
                str(out),
                "--parquet",
                str(tmp_path / "pq"),
                "--overwrite",
            ]
        )
        == 130
    )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no Parquet, no leftovers


@pytest.fixture(scope="module")
def hostile_corpus(tmp_path_factory, indexed_db) -> tuple[Path, dict[str, Path]]:
    """test_hostile_databases' corpus: member name → its database, each in its own folder."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "secret.txt").write_text(SECRET)
    members = {}
    for n, (name, make) in enumerate(corpus(root, indexed_db).items()):
        (root / f"m{n:02d}").mkdir()
        members[name] = copy_db(indexed_db, root / f"m{n:02d}" / "db.duckdb")
        make(members[name])
    return root, members


def test_delphi_over_every_hostile_database(capfd, hostile_corpus):
    """Over every hostile database: a cache or one error line, no traceback, the canary never
    read, nothing written beside the output, and a refusal writes no output."""
    root, members = hostile_corpus
    failures = []
    for name, db in members.items():
        out = db.parent / "out-delphi"
        before = outside(root, db, out)
        code, stdout, stderr = run_one(capfd, ["export", "--db", str(db), "--delphi", str(out)])
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        problem = (
            f"exit {code}"
            if code not in (0, 2)
            else "a traceback"
            if "Traceback" in stderr
            else "not one error line"
            if code == 2 and len(errors) != 1
            else "read the canary"
            if SECRET in stdout + stderr
            else "ran the SQL a name holds"
            if (root / "pwned.txt").exists()
            else "wrote outside its output"
            if outside(root, db, out) != before
            else "wrote an output and failed"
            if code == 2 and out.exists()
            else None
        )
        if problem:
            failures.append(f"{name}: {problem}: {stderr.strip()[-300:]}")
        shutil.rmtree(out, ignore_errors=True)
    assert not failures, "\n".join(failures)
