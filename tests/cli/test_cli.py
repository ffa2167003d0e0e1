"""The `shoggoth` CLI: help everywhere, the models table, config files, bad input → one line, 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from helpers import leaf_commands

from shoggoth import cli
from shoggoth.sae.models import ALIASES


def run(capfd, *argv):
    """Run the CLI in-process; return (exit code, stdout, stderr) captured at the fd level."""
    code = cli.main(list(argv))
    out, err = capfd.readouterr()
    return code, out, err


def assert_one_line_error(code, out, err, *names):
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for name in names:
        assert name in lines[0]


def test_every_command_has_help(capfd):
    code, out, _ = run(capfd, "--help")
    assert code == 0
    leaves = list(leaf_commands(cli.cli))
    assert {p for p, _ in leaves} >= {
        ("models",),
        ("prompt",),
        ("train",),
        ("sae", "import"),
        ("harvest",),
        ("merge",),
    }
    for path, command in leaves:
        assert path[0] in out
        code, sub, _ = run(capfd, *path, "--help")
        assert code == 0 and "--config" in sub
        for param in command.params:
            if getattr(param, "hidden", False):  # a deprecated flag, not documented
                continue
            if isinstance(param, click.Argument):  # shown, with its help, as NAME
                assert sub.count(param.human_readable_name) >= 2
                continue
            for opt in param.opts:
                assert opt in sub


def test_help_text_comes_from_the_config_docstrings(capfd):
    from shoggoth.core.config import field_help
    from shoggoth.sae.commands import PromptConfig

    _, out, _ = run(capfd, "prompt", "--help")
    flat = " ".join(out.split())
    for field in ("continuation", "layer", "template"):
        doc = field_help(PromptConfig, field)
        assert doc and doc[:30] in flat


def test_models_table_lists_minilm_from_its_config(capfd, minilm):
    config = json.loads((Path(minilm.source.location) / "config.json").read_text())
    code, out, _ = run(capfd, "models", "--format", "json")
    assert code == 0
    rows = {r["model"]: r for r in json.loads(out)}
    assert set(ALIASES) <= set(rows)
    m = rows["minilm"]
    assert (m["d_model"], m["layers"]) == (config["hidden_size"], config["num_hidden_layers"])
    assert m["available"] == "offline (bundled)"
    assert f"blocks.{{0..{config['num_hidden_layers'] - 1}}}.hook_resid_" in m["hooks"]
    for name, alias in ALIASES.items():
        if not alias.offline:
            assert rows[name]["available"] in ("needs network", "offline (cached)", "network")

    code, table, _ = run(capfd, "models")
    assert code == 0 and "minilm" in table and str(config["hidden_size"]) in table


def test_models_describes_a_local_directory(capfd, tiny_gpt2_dir):
    config = json.loads((tiny_gpt2_dir / "config.json").read_text())
    code, out, _ = run(capfd, "models", "--model", str(tiny_gpt2_dir), "--format", "json")
    assert code == 0
    row = json.loads(out)[-1]
    assert (row["d_model"], row["layers"]) == (config["n_embd"], config["n_layer"])
    assert row["causal"] is True and row["chat_template"] is True
    assert row["available"] == "offline (local)"


def test_a_described_model_is_kept_until_its_files_change(
    capfd, tmp_path, monkeypatch, tiny_gpt2_dir
):
    """`models` caches a model's facts by its files and the libraries' versions: listed again,
    the same row; a changed file (here the chat template removed) is described afresh; a
    damaged cache entry is described again, not trusted."""
    import shutil

    monkeypatch.setenv("SHOGGOTH_CACHE", str(tmp_path / "cache"))
    model = shutil.copytree(tiny_gpt2_dir, tmp_path / "model")

    def listed() -> dict:
        code, out, err = run(capfd, "models", "--model", str(model), "--format", "json")
        assert code == 0, err
        return json.loads(out)[-1]

    first = listed()
    entries = list((tmp_path / "cache" / "described").glob("*.json"))
    assert first["chat_template"] is True and first["chat_format"]
    assert len(entries) >= 1 and listed() == first
    for entry in entries:
        entry.write_text("{not json")
    assert listed() == first
    (model / "chat_template.jinja").unlink()  # where transformers saves a chat template
    config = model / "tokenizer_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"chat_template": None}))
    changed = listed()
    assert changed["chat_template"] is False and changed["chat_format"] is None
    assert {k: v for k, v in changed.items() if not k.startswith("chat")} == {
        k: v for k, v in first.items() if not k.startswith("chat")
    }


def test_prompt_marks_the_continuation(capfd, tiny_gpt2_dir, tiny_gpt2):
    code, out, _ = run(
        capfd,
        "prompt",
        "--model",
        str(tiny_gpt2_dir),
        "--system",
        "You are a pirate.",
        "--user",
        "What is rain?",
        "--continuation",
        "Rain is water.",
        "--layer",
        "1",
        "--format",
        "json",
    )
    assert code == 0
    data = json.loads(out)
    measured = [t["token_id"] for t in data["tokens"] if t["measured"]]
    expected = tiny_gpt2.tokenizer("Rain is water.", add_special_tokens=False)["input_ids"]
    assert measured == expected
    assert data["hook"] == "blocks.1.hook_resid_post" and data["template"] == "chat"
    assert all(t["norm"] > 0 for t in data["tokens"])


def test_yaml_config_with_flags_overriding_it(capfd, tmp_path, tiny_gpt2_dir):
    cfg = tmp_path / "prompt.yaml"
    cfg.write_text(
        f"model: {tiny_gpt2_dir}\ncontinuation: Rain is water.\nlayer: 0\ntemplate: plain\n"
    )
    code, out, _ = run(capfd, "prompt", "--config", str(cfg), "--layer", "2", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["hook"] == "blocks.2.hook_resid_post"  # the flag wins
    assert data["template"] == "plain"  # the file's value
    assert data["config"]["model"] == str(tiny_gpt2_dir)


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--model", "no-such-model", "--continuation", "x"], ["no-such-model"]),
        (["--model", "{tmp}", "--continuation", "x"], ["{tmp}", "config.json"]),
        (["--model", "{tmp}/missing", "--continuation", "x"], ["{tmp}/missing"]),
        (["--model", "minilm", "--layer", "6", "--continuation", "x"], ["layer 6", "0..5"]),
        (["--model", "minilm", "--layer", "-2", "--continuation", "x"], ["layer -2"]),
        (
            ["--model", "minilm", "--hook", "blocks.0.hook_nope", "--continuation", "x"],
            ["blocks.0.hook_nope"],
        ),
        (["--continuation", ""], ["continuation"]),
        (["--continuation", "   "], ["continuation"]),
        (["--model", "minilm", "--template", "chat", "--continuation", "x"], ["chat"]),
        (["--device", "tpu", "--continuation", "x"], ["tpu"]),
        (["--layer", "three"], ["three"]),
        (["--no-such-flag"], ["--no-such-flag"]),
        (["--config", "{tmp}/none.yaml"], ["none.yaml"]),
    ],
)
def test_prompt_bad_input_is_one_line_and_exit_2(capfd, tmp_path, argv, names):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    names = [n.replace("{tmp}", str(tmp_path)) for n in names]
    assert_one_line_error(*run(capfd, "prompt", *argv), *names)


def test_bad_yaml_names_the_file_and_line(capfd, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: minilm\nlayer: [1, 2\n")
    assert_one_line_error(*run(capfd, "prompt", "--config", str(bad)), str(bad), "line")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("modle: minilm\n")
    assert_one_line_error(*run(capfd, "prompt", "--config", str(unknown)), "modle")


def test_unknown_command(capfd):
    assert_one_line_error(*run(capfd, "trian"), "trian")


def test_console_script_end_to_end(tmp_path):
    """The installed entry point: a real process, exit code 2, no traceback, one stderr line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    exe = Path(sys.executable).with_name("shoggoth")
    proc = subprocess.run(
        [str(exe), "prompt", "--model", str(tmp_path), "--continuation", "x"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: model '{tmp_path}': not a Hugging Face model directory (no config.json)"
    ]
    proc = subprocess.run(
        [str(exe), "models"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0 and "minilm" in proc.stdout


def test_the_models_listing_converts_no_built_in_model(capfd, tmp_path, monkeypatch):
    """In a new cache, `shoggoth models` lists SmolLM2 and Gemma 3 as converted on first use,
    and converts nothing (the conversion belongs to the first command that needs the
    weights)."""
    monkeypatch.setenv("SHOGGOTH_CACHE", str(tmp_path / "cache"))
    code, out, err = run(capfd, "models", "--format", "json")
    assert code == 0, err
    rows = {r["model"]: r for r in json.loads(out)}
    for name in ("smollm2", "gemma3"):  # neither built-in GGUF model is converted by a listing
        assert rows[name]["available"].startswith("offline (bundled; converted once"), name
    assert rows["minilm"]["d_model"] == 384  # the others are described as before
    assert not (tmp_path / "cache" / "models").exists() and "converting" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["sql", "--help"],
        ["sql", "--db", "{db}", "SELECT 1"],
        ["status", "--db", "{db}"],
        ["--version"],
    ],
)
def test_the_light_commands_load_no_model_library(tmp_path, argv):
    """`shoggoth --help`, `sql` and `status` import neither torch nor transformers (the CLI
    loads a command only when it runs): checked in a fresh interpreter."""
    import duckdb

    db = tmp_path / "f.duckdb"
    duckdb.connect(str(db)).close()
    args = [a.replace("{db}", str(db)) for a in argv]
    code = (
        f"import sys\nfrom shoggoth.cli import main\ntry:\n    main({args!r})\n"
        "except SystemExit:\n    pass\nheavy = [m for m in ('torch', 'transformers', "
        "'sae_lens', 'faiss') if m in sys.modules]\nprint('HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr
