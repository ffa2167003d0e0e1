"""A model whose personas are a common direction at their own strength plus an own direction
spread over features every persona fires, plus wording noise; and the difference dictionary
whose features span them. Every figure of the persona space and of the decomposition is then
known by construction (`Planted`).

A one-block GPT-2 (d = 64) set by hand:
- each wording j of persona k is one marker token `zqk{k}w{j}` (every persona prompt is exactly
  one token, so every persona's answer tokens sit at the same positions). Its embedding is the
  planted vector u_kj in dims 0..31 (zero-mean) plus a zero-mean ballast in dims 32..63 that
  brings every marker to the same norm R, so a layer norm scales every u_kj by one constant;
- every other token embeds a random zero-mean vector in dims 32..63 (the content);
- attention is uniform over the earlier tokens (zero queries and keys) and copies dims 0..31 of
  each token's normalized residual: an answer token's shift against the reference (an empty
  system turn, no marker) is u_kj times a factor that depends only on its position;
- the MLP is zero.
The dictionary: F orthonormal features in dims 0..31, encoder = decoder transposed (ReLU, no
biases). Persona k's activations are a_k = s_k γ + δ_k > 0 on every feature: γ the pattern every
mask shares, s_k its strength, δ_k its own modulation (zero over the personas), which holds a
planted axis t_k α (the assistant persona furthest along it). u_kj = a_k W + η e + ε_kj with e
off the dictionary (the error) and ε_kj the wording noise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from helpers import CHAT_TEMPLATE, build_tiny_gpt2

D, P = 64, 32
"""Model width; the planted vectors live in dims 0..P-1."""
F = 10
"""Dictionary features."""
RADIUS = 40.0
"""Every marker embedding's norm."""
GAIN = 2.0
MODULATION = 0.7
"""Each persona's own modulation of a feature, at most this fraction of the common pattern."""
AXIS_FEATURES = 7
"""Features whose modulation follows the planted axis (the rest: at random, half as strong)."""
HOOK = "blocks.0.hook_resid_post"
EMPTY_SYSTEM = "(empty system message)"


@dataclass(frozen=True)
class Planted:
    """What the model and dictionary were built from."""

    names: list[str]
    """The personas (the last is the assistant, furthest along the axis)."""
    wordings: int
    """Wordings (prompts) per persona."""
    w_dec: np.ndarray
    """[F, D] the dictionary's features (unit rows, zero in dims P..D-1)."""
    acts: np.ndarray
    """[personas, F] each persona's planted activations a_k."""
    vectors: np.ndarray
    """[personas, wordings, D] each wording's planted vector u_kj."""
    axis: np.ndarray
    """[D] the planted axis α W (unit)."""
    spread: np.ndarray
    """[personas] each persona's position t_k along the axis."""


def _zero_mean_basis(rng: np.random.Generator, n: int) -> np.ndarray:
    """n orthonormal vectors in dims 0..P-1, each of zero mean (a layer norm leaves them be)."""
    raw = rng.normal(size=(P, n))
    raw -= raw.mean(axis=0, keepdims=True)
    q, _ = np.linalg.qr(raw)
    out = np.zeros((n, D))
    out[:, :P] = q.T
    return out


def plant(
    seed: int, own: bool = True, n_personas: int = 5, wordings: int = 4, wording_noise: float = 0.03
) -> Planted:
    """The planted personas. `own=False`: every persona is the common pattern at its strength
    (no own direction, no axis), wording noise only."""
    rng = np.random.default_rng(seed)
    basis = _zero_mean_basis(rng, F + 1)
    w_dec, error = basis[:F], basis[F]
    k = n_personas + 1  # and the assistant
    gamma = rng.uniform(0.6, 1.0, F)
    strength = rng.uniform(0.9, 1.1, k)
    # Each feature's personas take the levels -1..1 (times MODULATION): on the axis features in
    # the order of the personas' places on the axis (signs alpha), on the others at random.
    levels = np.linspace(-1, 1, k)
    spread = np.append(np.linspace(-0.5, 0.5, n_personas), 1.0)
    rank = np.argsort(np.argsort(spread))
    alpha = np.where(rng.random(F) < 0.5, -1.0, 1.0)
    alpha[AXIS_FEATURES:] = 0
    z = np.empty((k, F))
    for f in range(F):
        z[:, f] = levels[rank] * alpha[f] if f < AXIS_FEATURES else 0.5 * rng.permutation(levels)
    delta = MODULATION * gamma[None, :] * z if own else np.zeros((k, F))
    acts = strength[:, None] * gamma[None, :] + delta
    assert (acts > 0.2 * gamma).all(), "every persona fires every feature"
    ranked = np.sort(acts, axis=0)
    assert (ranked[-1] < 1.6 * ranked[-2]).all(), "no persona dominates a feature"
    vectors = np.empty((k, wordings, D))
    for p in range(k):
        base = acts[p] @ w_dec + 0.15 * error * float(np.linalg.norm(acts[p]))
        for j in range(wordings):
            vectors[p, j] = base + wording_noise * float(np.linalg.norm(base)) * _noise(rng)
    axis = (alpha * gamma) @ w_dec
    names = [f"p{p}" for p in range(n_personas)] + ["assistant"]
    return Planted(names, wordings, w_dec, acts, vectors, axis / np.linalg.norm(axis), spread)


def _noise(rng: np.random.Generator) -> np.ndarray:
    """A random unit direction in dims 0..P-1 of zero mean."""
    v = np.zeros(D)
    v[:P] = rng.normal(size=P)
    v[:P] -= v[:P].mean()
    return v / np.linalg.norm(v)


def marker(p: int, j: int) -> str:
    return f"zqk{p}w{j}"


def personas_yaml(planted: Planted) -> str:
    """The battery: the planted personas (one marker per wording) and two plain controls (no
    system turn; the empty system turn, which is the reference)."""
    lines = ["personas:"]
    for p, name in enumerate(planted.names):
        prompts = [marker(p, j) for j in range(planted.wordings)]
        lines += [
            f"  - name: {name}",
            f"    family: f{p % 2}",
            f"    prompts: {json.dumps(prompts)}",
        ]
    lines += [
        "  - name: control_none",
        "    family: control",
        "    is_control: true",
        '    prompts: [""]',
        "  - name: control_empty_system",
        "    family: control",
        "    is_control: true",
        f'    prompts: ["{EMPTY_SYSTEM}"]',
    ]
    return "\n".join(lines) + "\n"


def build(directory: Path, planted: Planted) -> tuple[Path, Path]:
    """(model directory, dictionary directory)."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    base = build_tiny_gpt2(directory / "tokenizer", CHAT_TEMPLATE, n_layer=1)
    tok = AutoTokenizer.from_pretrained(base)
    markers = [marker(p, j) for p in range(len(planted.names)) for j in range(planted.wordings)]
    tok.add_tokens(markers)
    rng = np.random.default_rng(0)
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
    wte = np.zeros((len(tok), D))
    content = rng.normal(size=(len(tok), D - P))
    wte[:, P:] = 3.0 * (content - content.mean(axis=1, keepdims=True))
    for p in range(len(planted.names)):
        for j in range(planted.wordings):
            u = planted.vectors[p, j, :P]
            ballast = _noise(rng)[:P]  # a zero-mean direction, moved into the content dims
            room = RADIUS**2 - float(u @ u)
            assert room > 0
            tid = tok.convert_tokens_to_ids(marker(p, j))
            wte[tid, :P] = u
            wte[tid, P:] = ballast * np.sqrt(room)
    with torch.no_grad():
        model.transformer.wte.weight.copy_(torch.from_numpy(wte).float())
        model.transformer.wpe.weight.zero_()
        block = model.transformer.h[0]
        w = torch.zeros(D, 3 * D)  # queries and keys zero: uniform attention
        w[:P, 2 * D : 2 * D + P] = GAIN * torch.eye(P)  # values: dims 0..P-1 only
        block.attn.c_attn.weight.copy_(w)
        block.attn.c_attn.bias.zero_()
        block.attn.c_proj.weight.copy_(torch.eye(D))
        block.attn.c_proj.bias.zero_()
        for param in block.mlp.parameters():
            param.zero_()
        model.lm_head.weight.copy_(torch.randn(len(tok), D))
    out = directory / "planted-space"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    sae_dir = directory / "planted-space-difference"
    sae = StandardSAE(
        StandardSAEConfig(
            d_in=D,
            d_sae=F,
            apply_b_dec_to_input=False,
            metadata=SAEMetadata(hook_name=HOOK, model_name=str(out)),
        )
    )
    with torch.no_grad():
        dec = torch.from_numpy(planted.w_dec).float()
        sae.W_dec.copy_(dec)
        sae.W_enc.copy_(dec.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae_dir.mkdir(parents=True)
    sae.save_model(str(sae_dir))
    (sae_dir / "shoggoth.json").write_text(
        json.dumps(
            {"model": str(out), "hook": HOOK, "target": "difference", "reference": EMPTY_SYSTEM}
        )
    )
    return out, sae_dir


def expected(planted: Planted) -> dict[str, dict[str, float]]:
    """Per persona, the figures `label` should find: the dictionary-free common share and the
    decomposition's parts (shares of the persona's mean shift v_k)."""
    v = planted.vectors.mean(axis=1)  # [personas, D]
    m = v.mean(axis=0)
    m_hat = m / np.linalg.norm(m)
    w = planted.w_dec
    a = np.maximum(planted.vectors @ w.T, 0).mean(axis=1)  # [personas, F] through the ReLU
    common = a.mean(axis=0)
    out = {}
    for p, name in enumerate(planted.names):
        vv = float(v[p] @ v[p])
        recon = a[p] @ w
        out[name] = {
            "common_share": float(v[p] @ m_hat) ** 2 / vv,
            "common": float(v[p] @ (common @ w)) / vv,
            "own_modulation": float(v[p] @ ((a[p] - common) @ w)) / vv,
            "error": float(v[p] @ (v[p] - recon)) / vv,
        }
    return out
