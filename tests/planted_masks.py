"""A model whose personas write known directions: each persona one of its own, and every persona
one common direction, all small beside the content's variance (as in SmolLM2).

A one-block GPT-2 (d = 32) set by hand:
- marker tokens (added to the tokenizer): `zqrole` embeds the common direction c, `zqpirate`,
  `zqpoet`, … each its persona's own direction; every persona prompt holds `zqrole` and its own
  marker (the training personas' in counts that vary, so the two directions vary apart). The
  directions are unit vectors of zero mean in dims 0..15 (a layer norm leaves them be);
- every other token embeds a random zero-mean vector in dims 16..31 (the content);
- attention is uniform over the earlier tokens (zero queries and keys) and copies dims 0..15 of
  each token's normalized residual, times GAIN: an answer token's residual carries the markers'
  directions, diluted by its position, and the reference (an empty system turn) carries none;
- the MLP is zero; the unembedding reads dims 0..15 (the persona directions move the answer's
  log-probabilities) and dims 16..31.
`null=True` gives the same model with GAIN 0 on the persona directions and a small leak of the
content into dims 0..15 instead: wording shifts, no persona direction.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from helpers import CHAT_TEMPLATE, build_tiny_gpt2

D = 32
PERSONAS = ("pirate", "poet", "villain", "sage")
COMMON = "zqrole"
CONTENT_SCALE = 3.0
GAIN = 1.2
"""Attention's gain on the marker directions: the persona vectors come out at a few percent of
the residual norm."""


def marker(name: str) -> str:
    return f"zq{name}"


def directions() -> dict[str, np.ndarray]:
    """The planted unit directions (c = COMMON and one per persona), orthogonal and zero-mean:
    e_{2i} − e_{2i+1} over dims 0..15."""
    out = {}
    for n, name in enumerate((COMMON, *PERSONAS)):
        v = np.zeros(D)
        v[2 * n], v[2 * n + 1] = 1, -1
        out[name] = v / np.sqrt(2)
    return out


COUNTS = ((1, 1), (1, 1), (1, 1))
"""(common, own) marker counts in each persona's three paraphrases: the same in each, so that
the common direction is equally strong under every persona (the training personas vary them)."""
TRAIN_COUNTS = ((1, 0), (0, 1), (1, 1), (2, 1), (1, 2))
"""The training personas' counts: each direction also alone, so that a dictionary can tell them
apart (as a model's common shift varies apart from each persona's own)."""
WORDS = {
    "pirate": ["sail the sea", "hoist the flag", "find the gold", "steer the ship"],
    "poet": ["write the verse", "sing the moon", "rhyme the night", "paint the dawn"],
    "villain": ["plot the fall", "scheme in dark", "rule the town", "crush the hope"],
    "sage": ["teach the path", "calm the mind", "seek the truth", "guide the youth"],
}


def persona_prompt(
    name: str, j: int, null: bool = False, counts: tuple[tuple[int, int], ...] = COUNTS
) -> str:
    """Paraphrase j of a persona: its markers, then words of its own."""
    common, own = counts[j % len(counts)]
    words = WORDS[name][j % len(WORDS[name])]
    if null:
        return f"Speak {('now', 'then', 'here', 'there', 'again')[j % 5]} and {words}."
    return " ".join([COMMON] * common + [marker(name)] * own) + f" Now {words}."


def battery_personas(null: bool = False) -> str:
    """The battery: the planted personas (three paraphrases), each with its mention and
    negation control, and the no-persona controls."""
    lines = ["personas:"]
    for n, name in enumerate(PERSONAS):
        prompts = [persona_prompt(name, j, null) for j in range(3)]
        lines += [
            f"  - name: {name}",
            f"    family: f{n % 2}",
            f"    prompts: {json.dumps(prompts)}",
            f"  - name: control_mention_{name}",
            "    family: control",
            "    is_control: true",
            f"    control_of: {name}",
            f'    prompts: ["The user likes {name} stories."]',
            f"  - name: control_negation_{name}",
            "    family: control",
            "    is_control: true",
            f"    control_of: {name}",
            f'    prompts: ["You are not a {name}."]',
        ]
    lines += [
        "  - name: control_none",
        "    family: control",
        "    is_control: true",
        '    prompts: [""]',
        "  - name: control_empty_system",
        "    family: control",
        "    is_control: true",
        '    prompts: ["(empty system message)"]',
    ]
    return "\n".join(lines) + "\n"


def training_personas(null: bool = False) -> str:
    """Training personas: the same markers, other words (the training corpus never holds the
    battery's prompts), one paraphrase per count pattern."""
    lines = ["personas:"]
    for n, name in enumerate(PERSONAS):
        prompts = [
            persona_prompt(name, j, null, TRAIN_COUNTS).replace("Now", "Then")
            for j in range(len(TRAIN_COUNTS))
        ]
        lines += [
            f"  - name: train_{name}",
            f"    family: f{n % 2}",
            f"    prompts: {json.dumps(prompts)}",
        ]
    return "\n".join(lines) + "\n"


def build_planted_masks(directory: Path, null: bool = False) -> Path:
    """The model directory."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    base = build_tiny_gpt2(directory / "tokenizer", CHAT_TEMPLATE, n_layer=1)
    tok = AutoTokenizer.from_pretrained(base)
    tok.add_tokens([COMMON, *(marker(p) for p in PERSONAS)])
    ids = {name: tok.convert_tokens_to_ids(name) for name in (COMMON, *map(marker, PERSONAS))}
    dirs = directions()
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=512,
        n_embd=D,
        n_layer=1,
        n_head=1,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        wte = torch.zeros(len(tok), D)
        content = torch.randn(len(tok), D // 2)
        wte[:, D // 2 :] = CONTENT_SCALE * (content - content.mean(1, keepdim=True))
        for name, tid in ids.items():
            key = COMMON if name == COMMON else name[2:]
            wte[tid] = 0
            wte[tid, :] = torch.from_numpy(dirs[key]).float() * CONTENT_SCALE * 4
        model.transformer.wte.weight.copy_(wte)
        model.transformer.wpe.weight.zero_()
        block = model.transformer.h[0]
        w = torch.zeros(D, 3 * D)  # queries and keys zero: uniform attention
        value = torch.zeros(D, D)
        if null:
            value[D // 2 :, : D // 2] = 0.05 * torch.randn(D // 2, D // 2)  # content leaks
        else:
            value[: D // 2, : D // 2] = GAIN * torch.eye(D // 2)
        w[:, 2 * D :] = value
        block.attn.c_attn.weight.copy_(w)
        block.attn.c_attn.bias.zero_()
        block.attn.c_proj.weight.copy_(torch.eye(D))
        block.attn.c_proj.bias.zero_()
        for p in block.mlp.parameters():
            p.zero_()
        model.lm_head.weight.copy_(torch.randn(len(tok), D))
    out = directory / ("planted-null" if null else "planted-masks")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
