"""The docs site builds with `mkdocs build --strict` (no broken link, no page outside the nav),
its CLI reference holds every command and every option the program has (it is generated from
them), and the README stays a front door."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import leaf_commands

from shoggoth import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    mkdocs = Path(sys.executable).with_name("mkdocs")
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    noise = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and not line.startswith("INFO")
    ]
    assert noise == [], noise  # a plain build prints nothing but its INFO lines
    return out


def test_the_cli_reference_matches_the_commands(site):
    text = html.unescape(re.sub(r"<[^>]+>", " ", (site / "cli" / "index.html").read_text()))
    for path, command in leaf_commands(cli.cli):
        assert f"shoggoth {' '.join(path)}" in text, path
        for param in command.params:
            if getattr(param, "hidden", False):  # a deprecated flag, not documented
                continue
            for opt in getattr(param, "opts", []):
                if opt.startswith("--"):
                    assert opt in text, (path, opt)


def test_the_commands_page_lists_every_command():
    """docs/commands.md is written by hand (one line per command, what it is for): it must not
    lose a command the CLI has, nor keep one it no longer has."""
    text = (ROOT / "docs" / "commands.md").read_text()
    listed = set(re.findall(r"^\| `shoggoth ([a-z]+)", text, flags=re.MULTILINE))
    assert listed == set(cli.cli.list_commands(None)), listed ^ set(cli.cli.list_commands(None))


def test_every_page_is_built(site):
    for page in (ROOT / "docs").glob("*.md"):
        built = site / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert built.is_file(), page.name


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, len(lines)
    links = re.findall(r"\]\((docs/[^)#]+)", "\n".join(lines))
    assert links and all((ROOT / link).exists() for link in links), links
