"""A model in which one known residual direction carries the persona's effect on the answer.

A one-block GPT-2 (d = 16) whose parts are set by hand:
- the tokens that only the pirate's prompts contain embed a large component on direction u = e0;
  every other token has none (and zero mean, so its layer norm has none either);
- attention is uniform over the earlier tokens (zero queries and keys) and copies each token's
  normalized residual, with u amplified: under the pirate, every answer token's residual carries
  some u, under any other prompt none;
- the MLP is zero; the unembedding reads u strongly (a random vector of tokens), and dims 8..15
  give the background logits.
An SAE with a ReLU feature 0 reading and writing u, and features 1..7 reading and writing e1..e7
(orthogonal to u, and not read by the unembedding) then has exactly one feature that carries the
pirate's shift of the answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from helpers import CHAT_TEMPLATE, ROLE_TOKENS, build_tiny_gpt2
from helpers import PERSONAS as SHARED_PERSONAS

D, D_SAE, AMPLIFY, READ = 16, 8, 20.0, 6.0
PIRATE_PROMPTS = [
    "Arr, you are a pirate captain, matey.",
    "Be a salty pirate on the sea, arr.",
    "Pirate talk only, matey: arr!",
]
PERSONAS = SHARED_PERSONAS.replace(
    'prompts: ["You are a pirate captain.", "Act as a salty old buccaneer.", "Arr, be a pirate."]',
    f"prompts: {json.dumps(PIRATE_PROMPTS)}",
)
"""The test battery of conftest, with the planted pirate's own prompts."""


def pirate_tokens(tokenizer: object, others: list[str]) -> list[int]:
    """Token ids in the pirate's prompts that no other text of the battery contains."""
    seen = {t for text in others for t in tokenizer(text)["input_ids"]}
    seen |= set(tokenizer.convert_tokens_to_ids(ROLE_TOKENS))
    mine = {t for text in PIRATE_PROMPTS for t in tokenizer(text)["input_ids"]}
    return sorted(mine - seen)


def build_planted(directory: Path, items: list[dict[str, str]]) -> tuple[Path, Path]:
    """The model directory and the SAE directory (on blocks.0.hook_resid_post)."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    base = build_tiny_gpt2(directory / "tokenizer", CHAT_TEMPLATE, n_layer=1)
    tok = AutoTokenizer.from_pretrained(base)
    others = [
        text
        for p in yaml.safe_load(PERSONAS)["personas"]
        if p["name"] != "pirate"
        for text in p["prompts"]
    ]
    others += [it["question"] for it in items] + [it["answer"] for it in items]
    planted = pirate_tokens(tok, others)
    assert planted, "the pirate prompts must have tokens of their own"
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=256,
        n_embd=D,
        n_layer=1,
        n_head=1,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        wte = torch.randn(len(tok), D)
        wte[:, 0] = 0
        wte[:, 1:] -= wte[:, 1:].mean(1, keepdim=True)  # zero mean: layer norm keeps u at 0
        wte[planted, 0] = 8.0
        model.transformer.wte.weight.copy_(wte)
        model.transformer.wpe.weight.zero_()
        block = model.transformer.h[0]
        w = torch.zeros(D, 3 * D)
        w[:, 2 * D :] = torch.eye(D)  # values copy; queries and keys are zero: uniform attention
        block.attn.c_attn.weight.copy_(w)
        block.attn.c_attn.bias.zero_()
        proj = torch.eye(D)
        proj[0, 0] = AMPLIFY
        block.attn.c_proj.weight.copy_(proj)
        block.attn.c_proj.bias.zero_()
        for p in block.mlp.parameters():
            p.zero_()
        head = torch.zeros(len(tok), D)
        head[:, 0] = READ * torch.randn(len(tok))
        head[:, 8:] = torch.randn(len(tok), D - 8)
        model.lm_head.weight.copy_(head)
    out = directory / "planted-gpt2"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    hook = "blocks.0.hook_resid_post"
    sae = StandardSAE(
        StandardSAEConfig(
            d_in=D,
            d_sae=D_SAE,
            apply_b_dec_to_input=False,
            metadata=SAEMetadata(hook_name=hook, model_name=str(out)),
        )
    )
    with torch.no_grad():
        eye = torch.eye(D)[:D_SAE]
        sae.W_enc.copy_(eye.T)
        sae.W_dec.copy_(eye)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae_dir = directory / "planted-sae"
    sae_dir.mkdir()
    sae.save_model(str(sae_dir))
    (sae_dir / "shoggoth.json").write_text(json.dumps({"model": str(out), "hook": hook}))
    return out, sae_dir
