"""The second built-in model for real: Gemma 3 270M (the base model) assembled from its PyPI chunk
packages and converted once into the user's shoggoth cache; a base model's masks as plain-text
prefixes measured on the answer tokens only, its residual norms past float16's range, a tiny
harvest with and without the prefix KV cache (sliding-window attention behind a cached prefix),
and a half-written conversion rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import build_random_sae, harvest_with_and_without_prefix_cache

from shoggoth.battery.personas import load_items, load_personas
from shoggoth.sae.gguf import GEMMA3_NAME, STAMP, gemma3_dir, gemma3_ready
from shoggoth.sae.prompts import build_prompt

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma_dir() -> Path:
    return Path(gemma3_dir())


@pytest.fixture(scope="module")
def tokenizer(gemma_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gemma_dir)


def test_the_converted_model_is_a_plain_float_gemma3_base_model(gemma_dir, tokenizer):
    config = json.loads((gemma_dir / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"]) == (18, 640)
    assert config["tie_word_embeddings"] and config["vocab_size"] == 262_144
    assert "sliding_attention" in config["layer_types"]
    assert json.loads((gemma_dir / STAMP).read_text())["gguf"].endswith("q4_k_m.gguf")
    assert not getattr(tokenizer, "chat_template", None)  # a base model: no chat template
    assert gemma3_ready()
    assert not list(gemma_dir.parent.glob(f".{GEMMA3_NAME}*"))  # the assembled file is gone


def test_a_mask_is_a_plain_text_prefix_and_only_the_answer_is_measured(tokenizer):
    pirate = next(p for p in load_personas() if p.name == "pirate")
    for item in load_items()[::25]:
        prompt = build_prompt(
            tokenizer, pirate.prompts[0], item.question, item.answer, prepend_bos=True
        )
        assert prompt.template == "plain" and prompt.input_ids[0] == tokenizer.bos_token_id
        assert prompt.input_ids.count(tokenizer.bos_token_id) == 1
        assert tokenizer.decode(prompt.continuation_ids) == item.answer
        head = tokenizer.decode(prompt.input_ids[1 : prompt.mask.index(True)])
        assert head == f"{pirate.prompts[0]}\n\n{item.question}\n\n"


def test_the_residual_stream_outgrows_float16_so_the_cpu_runs_float32():
    from shoggoth.sae.models import load_model

    model = load_model("gemma3", "cpu")
    assert model.dtype == torch.float32 and (model.n_layers, model.d_model) == (18, 640)
    assert model.is_causal and not model.has_chat_template and model.prepend_bos
    ids = model.tokenizer(
        "You are a pirate captain.\n\nWhat is rain?\n\nRain is water.", return_tensors="pt"
    ).input_ids
    with torch.inference_mode():
        _, cache = model.bridge.run_with_cache(ids, names_filter=["blocks.12.hook_resid_post"])
    largest = float(cache["blocks.12.hook_resid_post"].abs().max())
    assert largest > torch.finfo(torch.float16).max  # why float16 is never used for Gemma


def test_a_tiny_harvest_with_and_without_the_prefix_cache(tmp_path, gemma_dir):
    sae = build_random_sae(
        tmp_path / "sae", "gemma3", 640, "blocks.9.hook_resid_post", d_sae=64, k=8
    )
    runs = harvest_with_and_without_prefix_cache(
        tmp_path,
        sae,
        "personas:\n"
        "  - {name: pirate, family: fiction, prompts: ['You are a pirate.', 'Arr, be a pirate.']}\n"
        "  - {name: control_none, family: control, is_control: true, prompts: ['']}\n",
        "--model",
        "gemma3",
    )
    assert [n for n, _, _ in runs] == [9, 9]
    cached, full = (table for _, _, table in runs)
    assert cached.keys() == full.keys() and len(cached) > 100
    # Gemma's residual norms run to 10^4: compare against the typical activation's size.
    scale = float(np.median(np.abs(list(full.values()))))
    worst = max(abs(cached[k] - full[k]) for k in cached)
    print(f"median activation {scale:.3f}, largest difference {worst:.4f}")
    assert worst <= 1e-3 * scale + 0.01


def test_a_killed_conversions_assembled_file_is_removed(gemma_dir):
    """The 250 MB file a killed conversion assembled goes on the next use (a half-written
    conversion folder, one without its stamp, is rebuilt: tests/sae/test_smollm2.py shows it for the
    conversion both models share)."""
    dead = gemma_dir.parent / f".{GEMMA3_NAME}.gguf-999999999"
    dead.write_bytes(b"x" * 100)
    assert Path(gemma3_dir()) == gemma_dir and not dead.exists()
    stamp = json.loads((gemma_dir / STAMP).read_text())
    (gemma_dir / STAMP).write_text(json.dumps({**stamp, "sha256": "0" * 64}))
    try:
        assert not gemma3_ready()  # another file's conversion is not this one
    finally:
        (gemma_dir / STAMP).write_text(json.dumps(stamp))
    assert gemma3_ready()
