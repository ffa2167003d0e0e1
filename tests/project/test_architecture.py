"""The layers: core <- battery <- sae | index <- pipeline <- explorer <- cli, in one `shoggoth`
namespace. The import-linter contracts in pyproject.toml hold on the tree as installed, and fail
on a copy with one upward or sideways import, or with torch imported by a pure statistics
module; nothing imports the CLI module; no module imports one of its own package's inside a
function; nothing but `shoggoth` is installed."""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import MAPPED, ROOT, installed_tree

LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT), str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_the_contracts_hold(tmp_path):
    result = lint(installed_tree(tmp_path / "tree"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "lower, imported",
    [
        ("battery", "shoggoth.sae.models"),
        ("sae", "shoggoth.index.store.database"),
        ("index", "shoggoth.sae.models"),
        ("pipeline", "shoggoth.explorer.store"),
        ("explorer", "shoggoth.cli"),
        ("index/labels/stats.py", "torch"),
    ],
)
def test_a_wrong_import_breaks_a_contract(tmp_path, lower, imported):
    tree = installed_tree(tmp_path / "tree")
    where = tree / "shoggoth" / lower
    if where.suffix == ".py":
        where.write_text(where.read_text() + f"\nimport {imported}  # noqa: E402, F401\n")
        module = "shoggoth." + lower.removesuffix(".py").replace("/", ".")
    else:
        (where / "wrong.py").write_text(f"import {imported}  # noqa: F401\n")
        module = f"shoggoth.{lower.replace('/', '.')}.wrong"
    result = lint(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout and module in result.stdout


def modules() -> list[Path]:
    return sorted(p for source in MAPPED.values() for p in source.rglob("*.py"))


def test_an_editable_install_maps_only_the_namespace():
    """pip install -e: the finder setuptools writes maps `shoggoth` and its parts, nothing
    else, and `core`, `index` or `sae` import from nowhere outside this tree."""
    from importlib.metadata import distribution

    dist = distribution("shoggoth")
    finders = [
        f for f in dist.files or [] if f.name.startswith("__editable___") and f.suffix == ".py"
    ]
    for finder in finders:
        mapping = importlib.import_module(finder.stem).MAPPING
        assert set(mapping) == {
            "shoggoth",
            "shoggoth.sae",
            "shoggoth.index",
            "shoggoth.explorer",
        }, mapping
    assert (dist.read_text("top_level.txt") or "").split() == ["shoggoth"]


@pytest.mark.slow
def test_a_wheel_holds_only_the_namespace(tmp_path):
    """The wheel pip would install: every file under shoggoth/ (sae, index and explorer
    inside it), the battery's data files included."""
    source = tmp_path / "source"  # (setuptools builds inside the tree it is given)
    for name in (*MAPPED, "pyproject.toml", "README.md"):
        if name not in ("shoggoth/sae", "shoggoth/index", "shoggoth/explorer"):
            copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
            copy(ROOT / name, source / name)
    for name in ("sae", "index", "explorer"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("shoggoth-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"shoggoth"}, tops
    for inside in (
        "shoggoth/sae/models.py",
        "shoggoth/index/store/sql.py",
        "shoggoth/explorer/app.py",
        "shoggoth/battery/data/personas.yaml",
        "shoggoth/cli.py",
    ):
        assert inside in names, inside


def test_no_package_imports_the_cli_module():
    for path in modules():
        if path.name == "__main__.py":  # `python -m shoggoth` is the CLI
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n == "shoggoth.cli" for n in names), path


def test_no_own_package_is_imported_inside_a_function():
    """An import inside a function hides a dependency from the contract (and a cycle)."""
    for path in modules():
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                module = (
                    (node.module or "")
                    if isinstance(node, ast.ImportFrom)
                    else " ".join(a.name for a in node.names)
                    if isinstance(node, ast.Import)
                    else ""
                )
                assert module.split(".")[0] != "shoggoth", f"{path}: {fn.name} imports {module}"


def test_no_function_is_longer_than_80_lines():
    """Long functions are split into named steps (the explorer's page scripts are not
    functions)."""
    for path in modules():
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                length = fn.end_lineno - fn.lineno + 1
                assert length <= 80, f"{path}: {fn.name} has {length} lines"


def test_the_tests_are_filed_by_the_part_of_the_package_they_test():
    """tests/<part>/test_<subject>.py, a folder per layer of the package (and `project` for the
    checks of the whole tree): no test module loose at the top, none named for a round."""
    tests = ROOT / "tests"
    assert sorted(p.name for p in tests.glob("test_*.py")) == []
    parts = {"core", "battery", "sae", "index", "pipeline", "explorer", "cli", "project"}
    assert {p.parent.name for p in tests.rglob("test_*.py")} == parts
    names = [p.name for p in tests.rglob("test_*.py")]
    assert len(names) == len(set(names))  # one basename each (the folders are not packages)
