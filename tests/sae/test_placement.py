"""`--device-map` and `--max-memory`: how they are parsed, bad maps refused in one line (exit 2,
nothing written), and a model laid out by an explicit device map giving exactly what the
single-device run gives. The suite has no GPU: the map puts every module on the CPU, but as a
map, so the model loads through accelerate's dispatch path and the SAE is placed by
`Model.sae_device`. A real split over several GPUs is not tested here (docs/models.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import duckdb
import numpy as np
import pytest
import torch
from helpers import battery, leaf_commands, snapshot

import shoggoth.core.placement as placement_module
from shoggoth import cli
from shoggoth.core.config import config_metadata
from shoggoth.core.errors import BadInput
from shoggoth.core.placement import Placement, parse_max_memory, placement_of
from shoggoth.index.store.read import SaeView
from shoggoth.pipeline.effects.steer import SteerConfig, load_steering, steer_with
from shoggoth.pipeline.harvest.run import HarvestConfig
from shoggoth.pipeline.search.run import by_text
from shoggoth.sae.generation import (
    generate_batch,
    load_generator,
    prefix_kv,
    prompt_ids,
    shared_length,
)

DATA = ("tokens", "documents", "activations", "doc_features")


def run(capfd, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def gpt2_map(n_layers: int, device: str | int = "cpu") -> dict[str, str | int]:
    """Every module of a GPT-2 with `n_layers` blocks, each placed explicitly."""
    names = [
        "transformer.wte",
        "transformer.wpe",
        *(f"transformer.h.{i}" for i in range(n_layers)),
        "transformer.ln_f",
        "lm_head",
    ]
    return dict.fromkeys(names, device)


def write_map(path: Path, entries: object) -> Path:
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries))
    return path


# ---- parsing (no model) ----------------------------------------------------------------------


def test_max_memory_is_parsed_into_the_dict_transformers_takes():
    assert parse_max_memory("0=20GiB,1=20GiB,cpu=64GiB") == {0: "20GiB", 1: "20GiB", "cpu": "64GiB"}
    assert parse_max_memory(" cuda:1 = 512MiB , 0=1000") == {1: "512MiB", 0: 1000}
    assert parse_max_memory("0=40GB,1=1.5GiB") == {0: "40GB", 1: "1.5GiB"}
    for text, says in (
        ("x=1GiB", "device 'x' is not a GPU index, cuda:N or cpu"),
        ("0=20gb", "size '20gb' is not a number of bytes"),
        ("0=1GiB,cuda:0=2GiB", "is given twice"),
        ("0", "'0' is not DEVICE=SIZE"),
        ("0=1GiB,", "an empty entry"),
        ("disk=1GiB", "device 'disk'"),
    ):
        with pytest.raises(BadInput, match="--max-memory") as caught:
            parse_max_memory(text)
        assert says in str(caught.value) and "\n" not in str(caught.value)


def test_a_device_map_file_is_read_and_recorded(tmp_path):
    entries = {
        **gpt2_map(2, "cuda:0"),
        "transformer.h.0": "cuda",
        "transformer.h.1": "cuda:1",
        "lm_head": 0,
    }
    path = write_map(tmp_path / "map.json", entries)
    placed = placement_of(str(path), "0=10GiB,1=10GiB")  # (GPUs are counted when it loads)
    assert placed.spread and placed.file == str(path) and placed.device_map == entries
    assert placed.max_memory == {0: "10GiB", 1: "10GiB"}
    assert placed.devices() == ["cuda:0", "cuda:1"]
    assert placement_of("auto", None) == Placement("auto")
    assert placement_of(None, None) == Placement() and not Placement().spread
    meta = config_metadata(
        HarvestConfig(
            db=tmp_path / "db.duckdb",
            sae_dir=[tmp_path / "sae"],
            device_map=str(path),
            max_memory="0=10GiB,1=10GiB",
        )
    )
    assert meta["device_map"] == str(path) and meta["max_memory"] == "0=10GiB,1=10GiB"
    assert meta["placement"] == {
        "device_map": placed.device_map,
        "max_memory": {0: "10GiB", 1: "10GiB"},
        "file": str(path),
    }
    json.dumps(meta)  # (saved as JSON)
    plain = config_metadata(HarvestConfig(db=tmp_path / "db.duckdb", sae_dir=[tmp_path / "s"]))
    assert "placement" not in plain and plain["device_map"] is None


BAD_MAPS = [
    ("{", "not valid JSON (line 1"),
    ('{"lm_head": ' + "1" * 5000 + "}", "not a usable JSON file"),
    ("[]", "expected a JSON object of module name → device"),
    ("{}", "expected a JSON object of module name → device"),
    (
        {"transformer.h.0": "gpu:0"},
        "module 'transformer.h.0': device 'gpu:0' is not one a "
        "model runs on here (use cpu, cuda, cuda:N or a GPU index)",
    ),
    ({"transformer.h.0": "cuda:x"}, "device 'cuda:x' is not one a model runs on"),
    ({"transformer.h.0": "cuda:-1"}, "device 'cuda:-1' is not one a model runs on"),
    ({"transformer.h.0": "disk"}, "device 'disk' offloads the weights"),
    ({"transformer.h.0": "meta"}, "device 'meta' offloads the weights"),
    ({"transformer.h.0": "mps"}, "device 'mps' is not one a model runs on"),
    ({"transformer.h.0": True}, "device True is neither a GPU index nor a device name"),
    ({"transformer.h.0": -1}, "GPU index -1 is negative"),
    ({"transformer..h": 0}, "not a module name"),
    ({"transformer.h.0": 0, "lm_head": "cpu"}, "mixes the CPU and GPUs"),
]


@pytest.mark.parametrize("entries, says", BAD_MAPS)
def test_a_bad_device_map_is_one_line_and_writes_nothing(tmp_path, capfd, entries, says):
    path = write_map(tmp_path / "map.json", entries)
    before = snapshot(tmp_path)
    code, out, err = run(
        capfd,
        "harvest",
        "--db",
        tmp_path / "db.duckdb",
        "--sae-dir",
        tmp_path / "sae",
        "--device-map",
        path,
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: --device-map {path}: "), err
    assert says in err, err
    assert snapshot(tmp_path) == before


def test_other_bad_placements_are_one_line_and_write_nothing(tmp_path, capfd, monkeypatch):
    before = snapshot(tmp_path)
    cases = [
        (["--max-memory", "0=20GiB"], "--max-memory '0=20GiB': only with --device-map"),
        (["--device-map", "auto", "--max-memory", "0=lots"], "size 'lots' is not"),
        (["--device-map", tmp_path / "missing.json"], "no such file (give auto"),
        (["--device-map", tmp_path], "is a directory"),
        (["--device-map", " "], "--device-map: is empty"),
        (["--device-map", "a\0b"], "--device-map 'a\\x00b': not a usable path"),
        (["--device-map", "x" * 5000], "not a usable file name (File name too long)"),
        (["--device-map", "auto", "--max-memory", "0=" + "9" * 5000], "is not a number"),
        (["--device-map", "auto", "--max-memory", "٣=1GiB"], "is not a GPU index"),
    ]
    for args, says in cases:
        code, _, err = run(
            capfd, "harvest", "--db", tmp_path / "db.duckdb", "--sae-dir", tmp_path / "sae", *args
        )
        assert code == 2 and err.count("\n") == 1 and says in err, err
        assert len(err) < 500 and "Traceback" not in err
    monkeypatch.setattr(placement_module, "accelerate_installed", lambda: False)
    code, _, err = run(
        capfd,
        "steer",
        "--db",
        tmp_path / "db.duckdb",
        "--feature",
        "0",
        "--prompt",
        "hi",
        "--device-map",
        "auto",
    )
    assert code == 2 and err.count("\n") == 1
    assert "--device-map auto: needs the accelerate package" in err, err
    assert snapshot(tmp_path) == before


def test_every_command_that_takes_a_device_takes_a_device_map(capfd):
    """Every command with --device (the ones that load a model) has --device-map and
    --max-memory, documented in --help."""
    with_device = []
    for path, command in leaf_commands(cli.cli):
        opts = {o for p in command.params if isinstance(p, click.Option) for o in p.opts}
        if "--device" in opts:
            with_device.append(path)
            assert {"--device-map", "--max-memory"} <= opts, path
    assert {
        ("harvest",),
        ("effects",),
        ("steer",),
        ("layers",),
        ("grid",),
        ("generate",),
        ("explain",),
        ("prompt",),
        ("train",),
        ("sae", "import"),
        ("index",),
        ("search", "text"),
    } <= set(with_device), with_device


# ---- on the tiny GPT-2, laid out by an explicit map (slow) -----------------------------------


@pytest.fixture(scope="module")
def spread(tmp_path_factory, tiny_gpt2_dir) -> Path:
    """A device map placing every module of the tiny GPT-2 on the CPU, module by module."""
    n_layers = json.loads((tiny_gpt2_dir / "config.json").read_text())["n_layer"]
    return write_map(tmp_path_factory.mktemp("map") / "map.json", gpt2_map(n_layers))


@pytest.fixture(scope="module")
def harvests(tmp_path_factory, tiny_sae_dir, spread) -> tuple[Path, Path]:
    """The same small battery harvested on one device and over the device map."""
    work = tmp_path_factory.mktemp("placement")
    args = [str(a) for a in battery(work / "b", 6)]
    one, mapped = work / "one.duckdb", work / "mapped.duckdb"
    common = ["--sae-dir", str(tiny_sae_dir), "--batch", "4", *args]
    assert cli.main(["harvest", "--db", str(one), *common, "--device", "cpu"]) == 0
    assert cli.main(["harvest", "--db", str(mapped), *common, "--device-map", str(spread)]) == 0
    return one, mapped


def tables(db: Path) -> dict[str, list[tuple]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in DATA}
    finally:
        con.close()


@pytest.mark.slow
def test_a_harvest_over_a_device_map_equals_the_single_device_harvest(harvests, spread):
    one, mapped = harvests
    a, b = tables(one), tables(mapped)
    assert a["activations"] and a == b  # exactly: every row, every value
    con = duckdb.connect(str(mapped), read_only=True)
    try:
        (config,) = con.execute("SELECT config_json FROM runs WHERE command = 'harvest'").fetchone()
    finally:
        con.close()
    recorded = json.loads(config)["config"]
    assert recorded["device_map"] == str(spread)
    assert recorded["placement"]["device_map"] == json.loads(spread.read_text())


@pytest.mark.slow
def test_steer_and_search_over_a_device_map_equal_the_single_device_run(harvests, spread):
    one, _ = harvests
    con = duckdb.connect(str(one), read_only=True)
    try:
        (feature,) = con.execute(
            "SELECT feature FROM doc_features GROUP BY feature "
            "ORDER BY count(*) DESC, feature LIMIT 1"
        ).fetchone()
    finally:
        con.close()
    answers = []
    for where in ({"device": "cpu"}, {"device_map": str(spread)}):
        cfg = SteerConfig(
            db=one, feature=int(feature), prompt="Why does it rain?", max_tokens=6, **where
        )
        s = load_steering(cfg)
        assert s.model.placement.spread == ("device_map" in where)
        assert s.sae.device == s.model.sae_device(s.hook) == torch.device("cpu")
        answers.append(steer_with(s, cfg))
    assert answers[0] == answers[1]
    found = []
    for where in (Placement(), placement_of(str(spread), None)):
        d = SaeView(one)
        try:
            found.append(by_text(d, "The sea is calm tonight.", None, 0, 5, "cpu", placement=where))
        finally:
            d.close()
    assert np.array_equal(found[0].activations, found[1].activations)
    assert found[0].as_json() == found[1].as_json()


@pytest.mark.slow
def test_a_map_that_does_not_fit_the_model_is_one_line_and_writes_nothing(
    tmp_path, capfd, tiny_gpt2_dir, tiny_sae_dir
):
    n_layers = json.loads((tiny_gpt2_dir / "config.json").read_text())["n_layer"]
    entries = gpt2_map(n_layers)
    cases = [
        (
            {**entries, "transformer.h.99": "cpu"},
            "has no module 'transformer.h.99' (its top modules: lm_head, transformer)",
        ),
        (
            {k: v for k, v in entries.items() if k != "transformer.h.1"},
            "gives module 'transformer.h.1' of model",
        ),
        ({**entries, "lm_head": "cuda:0", "transformer.wte": "cuda:0"}, None),
    ]
    args = [str(a) for a in battery(tmp_path / "b", 2)]
    paths = []
    for n, (mapping, _) in enumerate(cases):
        if mapping is cases[-1][0]:  # a GPU the machine lacks (every GPU, on the suite's)
            mapping = dict.fromkeys(mapping, "cuda:7")
        paths.append(write_map(tmp_path / f"map{n}.json", mapping))
    before = snapshot(tmp_path)
    for path, (_, says) in zip(paths, cases, strict=True):
        code, _, err = run(
            capfd,
            "harvest",
            "--db",
            tmp_path / "db.duckdb",
            "--sae-dir",
            tiny_sae_dir,
            *args,
            "--device-map",
            path,
        )
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"error: --device-map {path}: "), err
        assert (says or "puts modules on cuda:7, but") in err, err
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_effects_over_a_device_map_equal_the_single_device_run(harvests, spread, tmp_path):
    """Attribution (a backward pass), ablation and steering edits at the hook, one item per
    topic, both ways: the same tables."""
    one, _ = harvests
    out = []
    for n, where in enumerate((["--device", "cpu"], ["--device-map", str(spread)])):
        db = tmp_path / f"effects{n}.duckdb"
        shutil.copy(one, db)
        assert (
            cli.main(
                [
                    "effects",
                    "--db",
                    str(db),
                    "--top",
                    "3",
                    "--baseline",
                    "1",
                    "--per-feature",
                    "0",
                    "--items-per-topic",
                    "1",
                    "--bootstrap",
                    "10",
                    *where,
                ]
            )
            == 0
        )
        con = duckdb.connect(str(db), read_only=True)
        try:
            out.append(con.execute("SELECT * FROM feature_effects ORDER BY ALL").fetchall())
        finally:
            con.close()
    assert out[0] and out[0] == out[1]


@pytest.mark.slow
def test_generation_over_a_device_map_equals_the_single_device_run(tiny_gpt2_dir, spread):
    """`generate` and a local `explain` model load through transformers, not the bridge."""
    answers = []
    for where in (None, placement_of(str(spread), None)):
        gen = load_generator(str(tiny_gpt2_dir), "cpu", where)
        rows = [
            prompt_ids(gen.tokenizer, "You are a pirate captain.", q, "auto", True)
            for q in ("Why is the sky blue?", "Why rain?")
        ]
        n = shared_length(rows)
        answers.append(
            generate_batch(
                gen, rows[0][:n], prefix_kv(gen, rows[0][:n]), [r[n:] for r in rows], 8, 1.5, seed=3
            )
        )
        assert gen.device == torch.device("cpu")
    assert answers[0] == answers[1]
