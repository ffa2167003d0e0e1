"""mypy finds no error in the whole namespace (run on the tree as installed: sae/, index/ and
explorer/ inside shoggoth/, since mypy cannot follow setuptools' editable finder)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import installed_tree


@pytest.mark.slow
def test_mypy_finds_no_error(tmp_path):
    installed_tree(tmp_path)
    done = subprocess.run([sys.executable, "-m", "mypy", "shoggoth"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Success: no issues found" in done.stdout
