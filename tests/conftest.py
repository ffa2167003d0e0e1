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


LONGEST_FILES = {
    "cli/test_cli_edges.py": 200,
    "sae/test_train.py": 150,
    "pipeline/test_harvest.py": 130,
    "index/test_hostile_databases.py": 80,
    "cli/test_races.py": 75,
    "sae/test_difference.py": 65,
    "sae/test_gemma3.py": 60,
    "sae/test_train_scale.py": 60,
    "index/test_labels.py": 55,
    "explorer/test_browser.py": 55,
    "sae/test_smollm2.py": 50,
    "cli/test_failure_modes.py": 50,
    "cli/test_cli.py": 50,
    "pipeline/test_demo.py": 45,
}
"""The files with the longest tests, longest first, and their seconds under `make test` (summed
over their tests, from `python -m benchmarks.suite_time`; a rough weight, not a bound)."""


def spread_longest_first(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """The order that makes pytest-xdist's `--dist worksteal` start every worker on long files.
    worksteal hands each worker one contiguous block of the list (a worker then steals from the
    end of another's block), so the long files go to the blocks, each to the one with the
    fewest seconds so far (longest file first), each block begins with its long files and ends
    with short tests, and what a finished worker steals is short. Each file's tests stay
    together and in order (a module's fixtures are built once)."""
    by_file: dict[str, list[pytest.Item]] = {}
    for item in items:
        by_file.setdefault(item.nodeid.split("::")[0].removeprefix("tests/"), []).append(item)
    blocks: list[list[pytest.Item]] = [[] for _ in range(workers)]
    seconds = [0] * workers
    for name, weight in sorted(LONGEST_FILES.items(), key=lambda kv: -kv[1]):
        if name in by_file:
            k = seconds.index(min(seconds))
            blocks[k].extend(by_file[name])
            seconds[k] += weight
    rest = [group for name, group in by_file.items() if name not in LONGEST_FILES]
    # About the block sizes worksteal cuts (each worker in turn gets the pending count over the
    # workers left), in whole files.
    left = len(items)
    for k, block in enumerate(blocks):
        size = left // (workers - k)
        left -= size
        while len(block) < size and rest:
            block.extend(rest.pop(0))
    return [item for block in blocks for item in block] + [i for group in rest for i in group]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if uses_slow_things(item):
            item.add_marker(pytest.mark.slow)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        items[:] = spread_longest_first(items, workers)


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
