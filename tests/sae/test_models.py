"""The model layer: loading, hook naming, activations and the early stop, bad model input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from shoggoth.core.errors import BadInput
from shoggoth.sae.activations import activations, continuation_activations
from shoggoth.sae.models import (
    ALIASES,
    hook_layer,
    load_model,
    resolve_device,
    resolve_hook,
    resolve_source,
)
from shoggoth.sae.prompts import build_batch

ROWS = [
    ("You are a pirate.", "What is rain?", "Rain is water that falls from clouds."),
    ("", "Why is the sky blue?", "Sunlight scatters off air molecules."),
    ("You are a helpful assistant.", "", "The moon."),
]


CONNECTS: list[tuple] = []
"""Sockets connected (an audit hook records them): a count, where a time would depend on the
machine."""
sys.addaudithook(lambda event, args: CONNECTS.append(args) if event == "socket.connect" else None)


def hf_hidden_states(auto_class, path, batch):
    """Hidden states from plain Hugging Face (eager attention, as the bridge uses)."""
    hf = auto_class.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        return hf(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            output_hidden_states=True,
        ).hidden_states


def test_minilm_resid_post_equals_hf_hidden_states(minilm):
    """blocks.L.hook_resid_post is HF hidden_states[L+1], for every layer, on real tokens."""
    batch = build_batch(minilm.tokenizer, ROWS)
    hidden = hf_hidden_states(AutoModel, minilm.source.location, batch)
    real = batch.attention_mask.bool()
    assert len(hidden) == minilm.n_layers + 1
    for layer in range(minilm.n_layers):
        ours = activations(minilm, batch, f"blocks.{layer}.hook_resid_post")
        assert ours.shape == (*batch.input_ids.shape, minilm.d_model)
        torch.testing.assert_close(ours[real], hidden[layer + 1][real], atol=1e-4, rtol=0)


def test_minilm_facts_come_from_its_config(minilm):
    config = json.loads((Path(minilm.source.location) / "config.json").read_text())
    assert minilm.n_layers == config["num_hidden_layers"]
    assert minilm.d_model == config["hidden_size"]
    assert minilm.is_causal is False
    assert minilm.source.kind == "alias"
    assert minilm.device == torch.device("cpu") and minilm.dtype == torch.float32


def test_tiny_gpt2_loads_like_a_real_model(tiny_gpt2, tiny_gpt2_dir):
    config = json.loads((tiny_gpt2_dir / "config.json").read_text())
    assert tiny_gpt2.source.kind == "local"
    assert (tiny_gpt2.n_layers, tiny_gpt2.d_model) == (config["n_layer"], config["n_embd"])
    assert tiny_gpt2.is_causal and tiny_gpt2.has_chat_template
    batch = build_batch(tiny_gpt2.tokenizer, ROWS, prepend_bos=True)
    hidden = hf_hidden_states(AutoModelForCausalLM, tiny_gpt2_dir, batch)
    real = batch.attention_mask.bool()
    # HF applies ln_f to the last entry of hidden_states, so compare the layers before it.
    for layer in range(tiny_gpt2.n_layers - 1):
        ours = activations(tiny_gpt2, batch, f"blocks.{layer}.hook_resid_post")
        torch.testing.assert_close(ours[real], hidden[layer + 1][real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("which", ["minilm", "tiny_gpt2"])
def test_forward_stops_at_the_hooked_block(which, request):
    model = request.getfixturevalue(which)
    blocks = [b for b in model.bridge.blocks]
    ran: list[int] = []
    handles = [
        b.original_component.register_forward_hook(lambda *_, i=i: ran.append(i))
        for i, b in enumerate(blocks)
    ]
    try:
        batch = build_batch(model.tokenizer, ROWS, prepend_bos=model.prepend_bos)
        for layer in range(model.n_layers):
            ran.clear()
            activations(model, batch, f"blocks.{layer}.hook_resid_post")
            assert ran == list(range(layer + 1))
    finally:
        for h in handles:
            h.remove()


def test_continuation_activations_select_only_masked_tokens(tiny_gpt2):
    batch = build_batch(tiny_gpt2.tokenizer, ROWS, prepend_bos=True)
    full = activations(tiny_gpt2, batch, "blocks.1.hook_resid_post")
    picked = continuation_activations(tiny_gpt2, batch, "blocks.1.hook_resid_post")
    assert picked.shape == (int(batch.continuation_mask.sum()), tiny_gpt2.d_model)
    torch.testing.assert_close(picked, full[batch.continuation_mask])


def test_layer_shortcut_and_default_hook(minilm, tiny_gpt2):
    for model in (minilm, tiny_gpt2):
        for layer in range(model.n_layers):
            hook = resolve_hook(model, layer=layer)
            assert hook == f"blocks.{layer}.hook_resid_post" and hook in model.bridge.hook_dict
            assert hook_layer(hook) == layer
        assert resolve_hook(model) == f"blocks.{model.n_layers // 2}.hook_resid_post"
        assert resolve_hook(model, hook="blocks.0.hook_resid_pre") == "blocks.0.hook_resid_pre"


@pytest.mark.parametrize("layer", [-1, 6, 99])
def test_layer_out_of_range(minilm, layer):
    with pytest.raises(BadInput, match=rf"layer {layer}: out of range.*0\.\.5"):
        resolve_hook(minilm, layer=layer)


def test_unknown_hook_and_both_hook_and_layer(minilm):
    with pytest.raises(BadInput, match="hook 'blocks.1.hook_nope'"):
        resolve_hook(minilm, hook="blocks.1.hook_nope")
    with pytest.raises(BadInput, match="not both"):
        resolve_hook(minilm, hook="blocks.1.hook_resid_post", layer=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_device_auto_falls_back_to_cpu_float32():
    assert resolve_device("auto") == (torch.device("cpu"), torch.float32)
    with pytest.raises(BadInput, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(BadInput, match="device 'tpu'"):
        resolve_device("tpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_auto_picks_cuda_bf16():
    assert resolve_device("auto") == (torch.device("cuda"), torch.bfloat16)


def test_unknown_model_name_is_one_clear_error():
    with pytest.raises(BadInput) as err:
        load_model("no-such-model-anywhere")
    msg = str(err.value)
    assert "no-such-model-anywhere" in msg and "\n" not in msg and "minilm" in msg


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BadInput, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(BadInput, match="is a file"):
        load_model(str(tmp_path / "notes.txt"))
    with pytest.raises(BadInput, match="no such directory"):
        load_model(str(tmp_path / "missing"))


def test_broken_model_directory_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(BadInput) as err:
        load_model(str(tmp_path))
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_hub_name_without_network_fails_fast(monkeypatch):
    """Without HF_HUB_OFFLINE, an unreachable hub is one error within seconds, not a retry
    storm (huggingface_hub alone retries for ~25 s here)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    CONNECTS.clear()
    with pytest.raises(BadInput, match="shoggoth-tests/no-such-model"):
        load_model("shoggoth-tests/no-such-model")
    assert len(CONNECTS) <= 3, f"{len(CONNECTS)} connection attempts: a retry storm"


@pytest.mark.slow  # on a fresh machine, resolving smollm2 converts its GGUF once
def test_every_alias_resolves_or_says_it_needs_network():
    for name, alias in ALIASES.items():
        if alias.offline:
            assert Path(resolve_source(name).location, "config.json").is_file()
        else:
            try:
                resolve_source(name, network=False)
            except BadInput as e:
                assert "needs network" in str(e) and name in str(e)
