"""`make test` provisions what the tests need: on a machine without Chromium, the Makefile's
`browser` step installs Debian's package (here with apt-get replaced by `echo`, and a PATH with
no Chromium on it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs make

ROOT = Path(__file__).resolve().parents[2]


def fake_path(folder: Path, tools: tuple[str, ...], chromium: bool = False) -> str:
    folder.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        if found:
            (folder / tool).symlink_to(found)
    if chromium:
        (folder / "chromium").write_text("#!/bin/sh\nexit 0\n")
        (folder / "chromium").chmod(0o755)
    return str(folder)


def run_browser_step(
    tmp_path: Path, tools: tuple[str, ...], chromium: bool = False
) -> subprocess.CompletedProcess[str]:
    make = shutil.which("make")
    assert make, "make is needed to run the README's commands"
    env = {**os.environ, "PATH": fake_path(tmp_path / "bin", tools, chromium)}
    return subprocess.run(
        [make, "-s", "-C", str(ROOT), "browser", "APT_GET=echo apt-get"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_installs_chromium_when_it_is_missing(tmp_path):
    run = run_browser_step(tmp_path, ("sh", "id", "make"))
    if os.getuid() == 0:
        assert run.returncode == 0, run.stderr
        assert "apt-get install -y -q chromium" in run.stdout
    else:  # without root, sudo is tried; with no sudo on PATH it says what to install
        assert run.returncode == 2 and "install Debian's 'chromium'" in run.stderr


def test_make_does_nothing_when_chromium_is_there(tmp_path):
    """With a `chromium` on PATH (an executable of that name is all the step looks for), the
    step installs nothing and prints nothing, on any host."""
    run = run_browser_step(tmp_path, ("sh", "id", "make"), chromium=True)
    assert run.returncode == 0 and run.stdout == "" and run.stderr == "", run
