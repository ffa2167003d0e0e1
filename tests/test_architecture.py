"""The layers: core <- sae <- index <- pipeline <- CLI/explorer. The import-linter contract in
pyproject.toml holds on the tree, and fails on a copy of the tree with one upward import; no
package imports the CLI module, and none imports a package of its own inside a function."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "sae", "index", "pipeline", "explorer")
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT), str(tree / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def copy_tree(target: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, target / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", target / "pyproject.toml")
    return target


def test_the_layer_contract_holds():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("lower, upper", [("core", "sae.models"), ("sae", "index.database"),
                                          ("index", "pipeline.harvest"),
                                          ("pipeline", "explorer.store")])
def test_an_upward_import_breaks_the_contract(tmp_path, lower, upper):
    tree = copy_tree(tmp_path / "tree")
    (tree / lower / "upward.py").write_text(f"import {upper}  # noqa: F401\n")
    result = lint(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout and f"{lower}.upward" in result.stdout


def modules() -> list[Path]:
    return sorted(p for name in PACKAGES for p in (ROOT / name).rglob("*.py"))


def test_no_package_imports_the_cli_module():
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "shoggoth" or n.startswith("shoggoth.") for n in names), path


def test_no_own_package_is_imported_inside_a_function():
    """An import inside a function hides a dependency from the contract (and a cycle)."""
    for path in modules():
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                module = (node.module or "") if isinstance(node, ast.ImportFrom) else \
                    " ".join(a.name for a in node.names) if isinstance(node, ast.Import) else ""
                assert module.split(".")[0] not in PACKAGES, f"{path}: {fn.name} imports {module}"


def test_no_function_is_longer_than_80_lines():
    """Long functions are split into named steps (the explorer's page scripts are not
    functions)."""
    for path in modules():
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                length = fn.end_lineno - fn.lineno + 1
                assert length <= 80, f"{path}: {fn.name} has {length} lines"
