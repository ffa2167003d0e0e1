"""Shared fixtures: the real MiniLM, a tiny random GPT-2 built and saved on the spot, a random
SAE on it and small harvested databases. Which tests are slow is derived from what they use
(`pytest_collection_modifyitems`), and a fast test that starts a process or loads weights
fails (`_fast_tier_guard`)."""

from __future__ import annotations

import inspect
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # One thread per worker (and per process it starts): several workers each running as many
    # torch/OpenMP threads as there are cores oversubscribe them, and OpenMP's spinning threads
    # then slow every worker down. Set before torch is imported.
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    threads = max(1, (os.cpu_count() or 1) // workers)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(threads))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from helpers import (  # noqa: E402
    CHAT_TEMPLATE,
    battery,
    build_random_sae,
    build_tiny_gpt2,
)

from shoggoth.sae.models import Model, load_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 with a chat template."""
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2-chat"), CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_gpt2_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 without a chat template (a base model)."""
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2-base"), None)


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_gpt2_dir: Path) -> Model:
    return load_model(str(tiny_gpt2_dir), device="cpu")


@pytest.fixture(scope="session")
def tiny_gpt2_base(tiny_gpt2_base_dir: Path) -> Model:
    return load_model(str(tiny_gpt2_base_dir), device="cpu")


@pytest.fixture(scope="session")
def minilm() -> Model:
    return load_model("minilm", device="cpu")


@pytest.fixture(scope="session")
def tiny_sae_dir(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path) -> Path:
    """A random TopK SAE on the tiny chat GPT-2's blocks.1.hook_resid_post."""
    return build_random_sae(
        tmp_path_factory.mktemp("tiny-sae") / "tiny-sae",
        str(tiny_gpt2_dir),
        32,
        "blocks.1.hook_resid_post",
    )


@pytest.fixture(scope="session")
def labelled_db(tmp_path_factory: pytest.TempPathFactory, tiny_sae_dir: Path) -> Path:
    """A real database: the tiny SAE harvested on 30 built-in items, then labelled.
    Tests that change it work on a copy."""
    from shoggoth import cli

    work = tmp_path_factory.mktemp("labelled")
    db = work / "db.duckdb"
    args = battery(work / "b", 30)
    assert (
        cli.main(["harvest", "--db", str(db), "--sae-dir", str(tiny_sae_dir), *map(str, args)]) == 0
    )
    assert cli.main(["label", "--db", str(db), "--min-docs", "5"]) == 0
    return db


@pytest.fixture(scope="session")
def indexed_db(tmp_path_factory: pytest.TempPathFactory, labelled_db: Path) -> Path:
    """`labelled_db` after `shoggoth index`. Tests that change it work on a copy."""
    from shoggoth import cli

    db = tmp_path_factory.mktemp("indexed") / "db.duckdb"
    db.write_bytes(labelled_db.read_bytes())
    assert cli.main(["index", "--db", str(db)]) == 0
    return db


SLOW_FIXTURES = {
    "minilm",
    "tiny_gpt2",
    "tiny_gpt2_base",
    "tiny_gpt2_dir",
    "tiny_gpt2_base_dir",
    "tiny_sae_dir",
    "labelled_db",
    "indexed_db",
    "synthetic_db",
}
"""Fixtures that load model weights, train or harvest: a test that uses one is slow."""
SLOW_CALLS = (
    "subprocess.",
    "Popen(",
    "AppTest",
    "load_model(",
    "torchrun",
    "ray.init",
    "sync_playwright",
    "build_tiny_gpt2(",
    "build_random_sae(",
    "LocalChat(",
    "build_planted",
)
"""What a slow test's own code does: start a process, drive the explorer, load or build a
model."""
SLOW_FILES = (".safetensors", ".gguf", "pytorch_model.bin")


def uses_slow_things(item: pytest.Item) -> bool:
    """Whether a test is slow by what it uses: a slow fixture, an explicit mark, or a slow call
    in its own code."""
    if item.get_closest_marker("slow") or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    function = getattr(item, "function", None)
    try:
        source = inspect.getsource(function) if function is not None else ""
    except (OSError, TypeError):
        source = ""
    return any(call in source for call in SLOW_CALLS)


LONGEST_FIRST = (
    "pipeline/test_demo.py",
    "pipeline/test_harvest.py",
    "sae/test_train.py",
    "sae/test_difference.py",
    "cli/test_cli_edges.py",
    "sae/test_train_scale.py",
    "cli/test_races.py",
    "sae/test_smollm2.py",
    "cli/test_failure_modes.py",
)
"""The files with the longest tests (`python -m benchmarks.suite_time`), run first when the suite
runs on several workers: the workers then end on short tests together instead of one waiting
out a long test that was queued last. Each file's tests stay together and in order."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if uses_slow_things(item):
            item.add_marker(pytest.mark.slow)
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        rank = {name: k for k, name in enumerate(LONGEST_FIRST)}

        def order(item: pytest.Item) -> int:
            path = item.nodeid.split("::")[0].removeprefix("tests/")
            return rank.get(path, len(rank))

        items.sort(key=order)  # stable: every other test keeps its place


FAST_TEST: list[str] = []
"""The fast test running now (empty otherwise), and what it did that a fast test must not."""
CAUGHT: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if not FAST_TEST:
        return
    if event in ("subprocess.Popen", "os.posix_spawn", "os.fork", "os.exec"):
        CAUGHT.append(f"starts a process ({event} {str(args[0])[:80]})")
    elif (
        event == "open"
        and isinstance(args[0], str | Path)
        and str(args[0]).endswith(SLOW_FILES)
        and not _reads_a_header()
    ):
        CAUGHT.append(f"loads model weights ({args[0]})")


HEADER_READERS = {"weight_shapes"}
"""Functions that open a weights file for its header only (a few KiB): not a slow load."""


def _reads_a_header() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name in HEADER_READERS:
            return True
        frame = frame.f_back
    return False


sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def _fast_tier_guard(request: pytest.FixtureRequest):
    """A test in the fast tier that starts a process or loads weights fails: mark it slow (or
    make it use what makes it slow visibly, a slow fixture)."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    FAST_TEST.append(request.node.nodeid)
    CAUGHT.clear()
    try:
        yield
    finally:
        FAST_TEST.clear()
    if CAUGHT:
        pytest.fail(f"a fast test {CAUGHT[0]}; it belongs in the slow tier", pytrace=False)
