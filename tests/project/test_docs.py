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

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.slow  # builds the site (mkdocs, a subprocess)
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


@pytest.mark.slow  # builds the site (mkdocs, a subprocess)
def test_every_page_is_built(site):
    for page in (ROOT / "docs").glob("*.md"):
        built = site / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert built.is_file(), page.name


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, len(lines)
    links = re.findall(r"\]\((docs/[^)#]+)", "\n".join(lines))
    assert links and all((ROOT / link).exists() for link in links), links


# --- every module a page or a docstring names exists ---

# The design's top-level folders, and where each lives in the repository.
HOMES = {
    "core": "shoggoth/core",
    "battery": "shoggoth/battery",
    "pipeline": "shoggoth/pipeline",
    "sae": "sae",
    "index": "index",
    "explorer": "explorer",
}
TOP = "(?:core|battery|sae|index|pipeline|explorer)"
# In backticks: `index.store.read`, `shoggoth.index.store.read.SaeView`, `index/store/read.py`,
# `index/labels/{rules,stats}`. A page also names modules outside backticks.
QUOTED_DOTTED = re.compile(rf"`(?:shoggoth\.)?({TOP}(?:\.\w+)+)")
QUOTED_PATH = re.compile(rf"`(?:shoggoth/)?({TOP}/[\w/{{}},.\-]*)`")
BARE_DOTTED = re.compile(rf"(?<![\w./`-])(?:shoggoth\.)?({TOP}(?:\.\w+)+)(?![\w/-])")
SUFFIXES = {"md", "py", "json", "jsonl", "yaml", "duckdb", "html", "faiss", "parquet", "toml"}


def _expand(ref: str) -> list[str]:
    m = re.search(r"\{([^}]*)\}", ref)
    if m is None:
        return [ref]
    return [
        x
        for part in m.group(1).split(",")
        for x in _expand(ref[: m.start()] + part + ref[m.end() :])
    ]


def _path_exists(root: Path, ref: str) -> bool:
    top, _, rest = ref.partition("/")
    place = root / HOMES[top] / rest.rstrip("/.")
    return place.exists() or place.with_name(place.name + ".py").exists()


def _dotted_exists(root: Path, ref: str) -> bool:
    """A module, or a name defined at the top of one (a function, class or constant), or a
    method of a class in it."""
    parts = ref.rstrip(".").split(".")
    if parts[0] == "sae" and len(parts) > 1:
        home = root / "sae" / parts[1]
        if not (home.is_dir() or home.with_suffix(".py").is_file()):
            return True  # `sae.decode`: a loaded SAE's attribute, not a module
    for n in range(len(parts), 0, -1):
        place = root / HOMES[parts[0]] / "/".join(parts[1:n])
        if n > 1 and place.with_suffix(".py").is_file():
            rest = parts[n:]
            source = place.with_suffix(".py").read_text()
            return not rest or bool(
                re.search(rf"^(?:(?:async )?def|class) {rest[0]}\b|^{rest[0]}\b.*=", source, re.M)
            )
        if place.is_dir():
            return n == len(parts)
    return False


def missing_modules(text: str, root: Path, bare: bool) -> list[str]:
    """The modules (or names in them) that `text` names and the tree at `root` lacks."""
    missing = [r for r in QUOTED_DOTTED.findall(text) if not _dotted_exists(root, r)]
    for ref in QUOTED_PATH.findall(text):
        missing += [r for r in _expand(ref) if not _path_exists(root, r)]
    if bare:
        missing += [
            r
            for r in BARE_DOTTED.findall(text)
            if r.split(".")[-1] not in SUFFIXES and not _dotted_exists(root, r)
        ]
    return sorted(set(missing))


def test_the_module_check_finds_a_moved_module():
    assert missing_modules("see `index.store.read` and `index/store/read.py`", ROOT, True) == []
    assert missing_modules("`index/labels/{rules,stats}` hold it", ROOT, True) == []
    assert missing_modules("read through `index.read` or index.grid_db", ROOT, True) == [
        "index.grid_db",
        "index.read",
    ]
    assert missing_modules("`index/labels/{rules,nowhere}`", ROOT, False) == [
        "index/labels/nowhere"
    ]
    assert missing_modules("`index.labels.rules.no_such_function`", ROOT, False) == [
        "index.labels.rules.no_such_function"
    ]


def test_every_module_the_docs_and_docstrings_name_exists():
    """Pages are read for bare names too; code only in backticks (`index` is also a variable)."""
    pages = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
    code = [p for home in HOMES.values() for p in sorted((ROOT / home).rglob("*.py"))]
    missing = {
        str(p.relative_to(ROOT)): found
        for p in pages + code
        if (found := missing_modules(p.read_text(), ROOT, p.suffix == ".md"))
    }
    assert missing == {}
