"""Hostile input files and flags get the promise every bad input gets: one `error:` line naming
the input, exit code 2, no traceback, nothing written, and soon. YAML alias bombs ("billion
laughs"), nesting thousands deep, a 64 GB sparse file, a path holding a NUL byte, a file that
cannot be read (/proc/self/mem), a memory limit past any machine, and values too long to print.

The bombs run the real program with a timeout, so a regression fails instead of hanging."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PERSONAS, snapshot

from shoggoth import cli

EXE = Path(sys.executable).with_name("shoggoth")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def levels(n: int = 9, width: int = 9) -> str:
    """`n` levels of anchors, each a flow list of `width` aliases to the level below: a few
    hundred bytes that expand to width**n values."""
    parts = [f"&l0 [{', '.join(['x'] * width)}]"]
    parts += [f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, n)]
    return ", ".join(parts)


def check_line(code: int, err: str, names: str) -> str:
    """Exit code 2 and one short `error:` line naming the input; returns what follows the
    name (the problem: test words in it, not in a path that may hold them too)."""
    assert code == 2, err[-2000:]
    assert err.startswith("error: ") and err.count("\n") == 1, err[-2000:]
    assert "Traceback" not in err and len(err) < 500, err[-2000:]
    assert names in err, err
    return err.split(names, 1)[1]


def refused(tmp_path: Path, argv: list, names: str) -> str:
    """Run the `shoggoth` program in `tmp_path` (60 s at most); check the line; check nothing
    was written. Returns the problem the line gives."""
    before = snapshot(tmp_path)
    done = subprocess.run(
        [str(EXE), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        cwd=tmp_path,
    )
    line = check_line(done.returncode, done.stderr, names)
    assert snapshot(tmp_path) == before
    return line


def one_line(capfd, tmp_path: Path, argv: list, names: str) -> str:
    """The same, in-process (for arguments no program can be given, such as a NUL byte)."""
    before = snapshot(tmp_path)
    capfd.readouterr()
    code = cli.main([str(a) for a in argv])
    line = check_line(code, capfd.readouterr().err, names)
    assert snapshot(tmp_path) == before
    return line


@pytest.mark.slow  # runs the program
@pytest.mark.parametrize(
    "text",
    [
        "\n".join(
            [
                f"a{i}: &a{i} [{', '.join(['x'] * 9)}]"
                if i == 0
                else f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]"
                for i in range(9)
            ]
        ),
        f"query: [[{levels()}]]",  # the value of a known key: its message quoted it whole
        f"query: [{levels(40, 2)}]",  # two aliases a level, forty levels
    ],
    ids=["top-level", "query-value", "doubling"],
)
def test_a_yaml_alias_bomb_in_a_config_is_refused(tmp_path, text):
    config = tmp_path / "bomb.yaml"
    config.write_text(text + "\n")
    assert config.stat().st_size < 1000
    line = refused(tmp_path, ["sql", "--db", "x.duckdb", "--config", config], f"--config {config}")
    assert "refused" in line and "values" in line, line


@pytest.mark.slow  # runs the program
def test_a_yaml_alias_bomb_in_a_personas_file_is_refused(tmp_path):
    personas = tmp_path / "personas.yaml"
    personas.write_text(f"personas:\n  - name: [{levels()}]\n    family: f\n    prompts: [a]\n")
    line = refused(
        tmp_path,
        ["harvest", "--db", "out.duckdb", "--sae-dir", "sae", "--personas", personas],
        f"--personas {personas}",
    )
    assert "refused" in line, line


def test_a_recursive_alias_is_refused(capfd, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("query: &q [*q]\n")
    line = one_line(
        capfd, tmp_path, ["sql", "--db", "x.duckdb", "--config", config], f"--config {config}"
    )
    assert "refused, an alias inside the value it names" in line, line


@pytest.mark.slow  # runs the program
def test_yaml_nested_thousands_deep_is_refused(tmp_path):
    config = tmp_path / "deep.yaml"
    config.write_text("query: " + "[" * 5000 + "]" * 5000 + "\n")
    line = refused(tmp_path, ["sql", "--db", "x.duckdb", "--config", config], f"--config {config}")
    assert "nested" in line, line


@pytest.mark.slow  # runs the program
def test_a_huge_sparse_config_is_refused_unread(tmp_path):
    config = tmp_path / "huge.yaml"
    with open(config, "wb") as f:
        f.truncate(64 << 30)  # 64 GB, sparse: no disk used
    line = refused(tmp_path, ["sql", "--db", "x.duckdb", "--config", config], f"--config {config}")
    assert "larger than" in line, line


@pytest.mark.parametrize(
    "argv, names",
    [
        (["sql", "--db", "x.duckdb", "--config", "a\0b.yaml", "SELECT 1"], "--config"),
        (["sql", "--db", "x\0.duckdb", "SELECT 1"], "--db"),
    ],
)
def test_a_path_with_a_nul_byte_is_one_line(capfd, tmp_path, argv, names):
    line = one_line(capfd, tmp_path, argv, names)
    assert "NUL" in line, line


def test_a_path_with_a_nul_byte_in_a_config_file_is_one_line(capfd, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text('db: "x\\0.duckdb"\nquery: SELECT 1\n')
    line = one_line(capfd, tmp_path, ["sql", "--config", config], f"--config {config}")
    assert "'db'" in line and "NUL" in line, line


def test_an_unreadable_config_is_named(capfd, tmp_path):
    line = one_line(
        capfd,
        tmp_path,
        ["sql", "--db", "x.duckdb", "--config", "/proc/self/mem"],
        "--config /proc/self/mem",
    )
    assert "Input/output error" in line, line


@pytest.mark.slow  # runs the program
def test_an_unreadable_items_file_is_named(tmp_path):
    (tmp_path / "personas.yaml").write_text(PERSONAS)
    refused(
        tmp_path,
        [
            "harvest",
            "--db",
            "out.duckdb",
            "--sae-dir",
            "sae",
            "--personas",
            tmp_path / "personas.yaml",
            "--items",
            "/proc/self/mem",
        ],
        "/proc/self/mem",
    )


@pytest.mark.slow  # runs the program
@pytest.mark.parametrize("size", ["99999999TB", "1001TB", "9" * 30 + "GB"])
def test_a_memory_limit_past_any_machine_is_one_line(tmp_path, size):
    line = refused(
        tmp_path, ["sql", "--db", "x.duckdb", "--memory-limit", size, "SELECT 1"], "--memory-limit"
    )
    assert "size such as" in line, line


@pytest.mark.parametrize(
    "text, names",
    [
        ("format: " + "t" * 100_000, "option 'format'"),
        ("query: [[" + ", ".join(["xxxxxxxxxx"] * 20_000) + "]]", "option 'query'"),
        ("? " + "x" * 100_000 + "\n: 1", "unknown option"),  # an explicit key: no length limit
        ("max_rows: " + "1" * 5000, "cannot be used"),
        ("query: 2001-13-45", "cannot be used"),
    ],
)
def test_a_long_or_unbuildable_config_value_is_one_short_line(capfd, tmp_path, text, names):
    config = tmp_path / "c.yaml"
    config.write_text(text + "\n")
    line = one_line(
        capfd, tmp_path, ["sql", "--db", "x.duckdb", "--config", config], f"--config {config}"
    )
    assert names in line, line


@pytest.mark.slow  # runs the program
def test_a_long_persona_name_is_one_short_line(tmp_path):
    personas = tmp_path / "personas.yaml"
    personas.write_text(PERSONAS.replace("name: pirate", "name: " + "P" * 100_000))
    line = refused(
        tmp_path,
        ["harvest", "--db", "out.duckdb", "--sae-dir", "sae", "--personas", personas],
        str(personas),
    )
    assert "persona name" in line, line


@pytest.mark.parametrize(
    "given",
    [
        "javascript:alert(1)",
        "gpt2-small/../../evil",
        "a/b/c",
        "a b/c",
        "/x",
        "x/",
        "",
        None,
        3,
        "gpt2-small/8-res-jb?x=1",
        "gpt2-small/8-res-jb#top",
        "gpt2-small/8-res-jb\n",
    ],
)
def test_a_neuronpedia_id_that_could_leave_its_url_gets_no_link(given):
    from shoggoth.core.names import neuronpedia_url

    assert neuronpedia_url(given, 3) is None


def test_a_neuronpedia_id_links_to_the_feature_page():
    from shoggoth.core.names import neuronpedia_url

    assert (
        neuronpedia_url("gemma-3-270m-it/12-gemmascope-2-res-16k", 7)
        == "https://neuronpedia.org/gemma-3-270m-it/12-gemmascope-2-res-16k/7"
    )
