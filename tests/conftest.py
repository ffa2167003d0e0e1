"""Shared fixtures: the real MiniLM, and a tiny random GPT-2 built and saved on the spot."""

from __future__ import annotations

import os
import shutil
import signal

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from sae.models import Model, load_model  # noqa: E402

ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# A template that, like Gemma's, refuses the system role.
NO_SYSTEM_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

CORPUS = [
    "You are a pirate. Arr, matey, the sea is wide and the ship is fast.",
    "You are a helpful assistant. Answer clearly and kindly.",
    "What is rain? Rain is water that falls from clouds when droplets grow heavy.",
    "Why is the sky blue? Sunlight scatters off air molecules, and blue scatters most.",
    "The villain smiled. The scientist measured. The poet wrote about the moon.",
]


def default_sigint() -> None:
    """Popen preexec_fn: a shell's background job starts with SIGINT ignored, and Python keeps
    an ignored SIGINT, so a Ctrl-C test would see no interrupt. Restore the default first."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def build_tiny_gpt2(directory: Path, chat_template: str | None, n_layer: int = 3) -> Path:
    """Train a byte-level BPE tokenizer and save a random GPT-2 with it to `directory`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        additional_special_tokens=ROLE_TOKENS,
    )
    if chat_template:
        fast.chat_template = chat_template
    config = GPT2Config(
        vocab_size=len(fast),
        n_positions=256,
        n_embd=32,
        n_layer=n_layer,
        n_head=4,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


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


def build_random_sae(directory: Path, model: str, d_in: int, hook: str, d_sae: int = 64,
                     k: int = 8, seed: int = 0) -> Path:
    """Save a random TopK SAE (sae-lens format plus shoggoth.json naming its model)."""
    import json

    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k,
                                metadata=SAEMetadata(hook_name=hook, model_name=model)))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
    directory.mkdir(parents=True, exist_ok=True)
    sae.save_model(str(directory))
    (directory / "shoggoth.json").write_text(json.dumps({"model": model, "hook": hook}))
    return directory


@pytest.fixture(scope="session")
def tiny_sae_dir(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path) -> Path:
    """A random TopK SAE on the tiny chat GPT-2's blocks.1.hook_resid_post."""
    return build_random_sae(tmp_path_factory.mktemp("tiny-sae") / "tiny-sae", str(tiny_gpt2_dir),
                            32, "blocks.1.hook_resid_post")


PERSONAS = """personas:
  - name: pirate
    family: fiction
    prompts: ["You are a pirate captain.", "Act as a salty old buccaneer.", "Arr, be a pirate."]
  - name: helper
    family: assistant
    prompts: ["You are a helpful assistant.", "Be a kind and careful helper.", "Help the user."]
  - name: control_none
    family: control
    is_control: true
    prompts: [""]
"""


def copy_db(source: Path, target: Path) -> Path:
    """A copy of a database with its FAISS folder (the paths it stores are relative to it)."""
    target.write_bytes(source.read_bytes())
    folder = source.with_name(source.name + ".faiss")
    if folder.is_dir():
        shutil.copytree(folder, target.with_name(target.name + ".faiss"), dirs_exist_ok=True)
    return target


def battery(directory: Path, n_items: int, personas: str = PERSONAS) -> list[str]:
    """--personas/--items arguments for a small battery written to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "personas.yaml").write_text(personas)
    items = (Path(__file__).parents[1] / "sae/battery/items.jsonl").read_text().splitlines()
    (directory / "items.jsonl").write_text("\n".join(items[:n_items]) + "\n")
    return ["--personas", directory / "personas.yaml", "--items", directory / "items.jsonl"]


@pytest.fixture(scope="session")
def labelled_db(tmp_path_factory: pytest.TempPathFactory, tiny_sae_dir: Path) -> Path:
    """A real database: the tiny SAE harvested on 30 built-in items, then labelled.
    Tests that change it work on a copy."""
    import shoggoth

    work = tmp_path_factory.mktemp("labelled")
    db = work / "db.duckdb"
    args = battery(work / "b", 30)
    assert shoggoth.main(["harvest", "--db", str(db), "--sae", str(tiny_sae_dir),
                          *map(str, args)]) == 0
    assert shoggoth.main(["label", "--db", str(db), "--min-docs", "5"]) == 0
    return db


@pytest.fixture(scope="session")
def indexed_db(tmp_path_factory: pytest.TempPathFactory, labelled_db: Path) -> Path:
    """`labelled_db` after `shoggoth index`. Tests that change it work on a copy."""
    import shoggoth

    db = tmp_path_factory.mktemp("indexed") / "db.duckdb"
    db.write_bytes(labelled_db.read_bytes())
    assert shoggoth.main(["index", "--db", str(db)]) == 0
    return db


# Tests that load model weights, train, harvest or start processes: `-m "not slow"` skips them.
SLOW_FIXTURES = {"minilm", "tiny_gpt2", "tiny_gpt2_base", "tiny_gpt2_dir", "tiny_gpt2_base_dir",
                 "tiny_sae_dir", "labelled_db", "indexed_db"}
SLOW_MODULES = {"test_train", "test_train_scale", "test_browser", "test_demo", "test_harvest",
                "test_index", "test_effects", "test_grid", "test_export",
                "test_search", "test_explorer", "test_explorer_timing", "test_models"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)

