"""`ruff check` and `ruff format --check` are part of the suite, so CI refuses code that is not
clean or not formatted (the same two checks `make lint` runs)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUFF = Path(sys.executable).with_name("ruff")


@pytest.mark.parametrize("check", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_is_clean(check):
    proc = subprocess.run([str(RUFF), *check, str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_check_can_fail(tmp_path):
    """The format check reads the project's settings and fails on unformatted code."""
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "bad.py").write_text("x = {  'a':1 }\n")
    proc = subprocess.run(
        [str(RUFF), "format", "--check", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 1 and "bad.py" in proc.stdout
