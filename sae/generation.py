"""The model's own answers: batched, KV-cached generation on the plain Hugging Face model.

Every prompt of one persona paraphrase starts with the same tokens (BOS, template, system
prompt); they run once and their KV cache is shared by every batch of that paraphrase. A batch
is the shared prefix followed by the left-padded rest of each prompt (the user turn and the
assistant header): the padding sits between the two, masked, and every row's positions are
counted from its attention mask, so a row generates exactly what it would alone. Generation
needs no hooks, so it runs on the Hugging Face model itself rather than through the bridge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

from shoggoth.core.errors import BadInput, first_line
from shoggoth.core.placement import Placement
from shoggoth.sae.activations import cache_layers, expand_cache
from shoggoth.sae.models import (
    Where,
    is_causal_lm,
    resolve_device,
    resolve_source,
    spread,
)
from shoggoth.sae.prompts import Template, build_prompt, common_prefix, pad_id

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


PLACEHOLDER = "x"
"""A continuation that marks where the answer starts (build_prompt needs one)."""


@dataclass
class Generator:
    """A causal LM loaded for generation."""

    name: str
    hf: Any
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    location: str
    """The local directory (or hub id) the weights came from."""

    @property
    def stop_ids(self) -> set[int]:
        """Token ids that end an answer: EOS (and the chat template's end-of-turn token, which
        generation_config lists with it)."""
        ids = {self.tokenizer.eos_token_id}
        cfg_eos = getattr(self.hf.generation_config, "eos_token_id", None)
        ids |= set(cfg_eos) if isinstance(cfg_eos, list) else {cfg_eos}
        return {int(i) for i in ids if i is not None}


def load_generator(
    name_or_dir: str, device: str = "auto", placement: Placement | None = None
) -> Generator:
    """The model as a plain transformers causal LM; BadInput for an encoder or a load failure.
    A `placement` with a device map spreads it over several devices (`device` is then
    unused)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    placement = placement or Placement()
    source = resolve_source(name_or_dir)
    where: Where = {}
    if placement.spread:
        dtype, where = spread(name_or_dir, source, placement)
    else:
        dev, dtype = resolve_device(device)
    try:
        hf = AutoModelForCausalLM.from_pretrained(source.location, dtype=dtype, **where)
    except (ValueError, OSError, ImportError) as e:
        raise BadInput(f"model '{name_or_dir}': cannot generate text: {first_line(e)}") from None
    if not is_causal_lm(hf):
        raise BadInput(f"model '{name_or_dir}': is not a causal LM, it cannot write answers")
    if placement.spread:  # the tokens go where the embeddings are
        dev = hf.get_input_embeddings().weight.device
    else:
        hf.to(dev)
    hf.eval().requires_grad_(False)
    return Generator(
        name_or_dir, hf, AutoTokenizer.from_pretrained(source.location), dev, source.location
    )


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    system: str,
    user: str,
    template: Template,
    prepend_bos: bool,
) -> list[int]:
    """The tokens of (system, user) up to where the assistant's answer starts, exactly as the
    harvest tokenizes them."""
    p = build_prompt(
        tokenizer, system, user, PLACEHOLDER, template=template, prepend_bos=prepend_bos
    )
    return p.input_ids[: p.mask.index(True)]


def shared_length(prompts: list[list[int]]) -> int:
    """How many leading tokens every prompt shares (leaving each at least one of its own)."""
    return common_prefix(prompts, min(len(p) for p in prompts) - 1)


def prefix_kv(gen: Generator, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The KV cache of a token prefix, per block (empty for no prefix)."""
    from transformers import DynamicCache

    if not ids:
        return []
    kv = DynamicCache()
    with torch.inference_mode():
        gen.hf(input_ids=torch.tensor([ids], device=gen.device), cache=kv, use_cache=True)
    return cache_layers(kv)


def _pick(logits: torch.Tensor, temperature: float, rng: torch.Generator) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float().cpu() / temperature, -1)
    return torch.multinomial(probs, 1, generator=rng)[:, 0].to(logits.device)


def generate_batch(
    gen: Generator,
    prefix: list[int],
    cache: list[tuple[torch.Tensor, torch.Tensor]],
    suffixes: list[list[int]],
    max_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[tuple[list[int], str]]:
    """Continue prefix + suffix for every suffix (greedy, or sampled at `temperature` from a
    generator seeded with `seed`): per row the new token ids (the stop token excluded) and why
    it stopped ('eos' or 'length'). `cache` is `prefix_kv(gen, prefix)`."""
    from transformers import DynamicCache

    rows, width, start = len(suffixes), max(len(s) for s in suffixes), len(prefix)
    ids = torch.full((rows, width), pad_id(gen.tokenizer), dtype=torch.long)
    attn = torch.ones((rows, start + width), dtype=torch.long)
    for r, s in enumerate(suffixes):
        ids[r, width - len(s) :] = torch.tensor(s)
        attn[r, start : start + width - len(s)] = 0
    kv = expand_cache(cache, rows) if cache else DynamicCache()
    attn, ids = attn.to(gen.device), ids.to(gen.device)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    stops = torch.tensor(sorted(gen.stop_ids), device=gen.device)
    rng = torch.Generator().manual_seed(seed)
    out = torch.zeros((rows, 0), dtype=torch.long, device=gen.device)
    done = torch.zeros(rows, dtype=torch.bool, device=gen.device)
    hit = torch.zeros(rows, dtype=torch.bool, device=gen.device)
    with torch.inference_mode():
        logits = (
            gen.hf(
                input_ids=ids,
                attention_mask=attn,
                position_ids=pos[:, start:],
                cache=kv,
                use_cache=True,
                logits_to_keep=1,
            )
            .logits[:, -1]
            .to(gen.device)
        )
        for _ in range(max_tokens):
            token = _pick(logits, temperature, rng)
            stopped = torch.isin(token, stops) & ~done
            hit |= stopped
            done |= stopped
            out = torch.cat([out, torch.where(done, -1, token)[:, None]], 1)
            if bool(done.all()):
                break
            attn = torch.cat([attn, torch.ones((rows, 1), dtype=attn.dtype, device=gen.device)], 1)
            pos = pos[:, -1:] + 1
            logits = (
                gen.hf(
                    input_ids=token[:, None],
                    attention_mask=attn,
                    position_ids=pos,
                    cache=kv,
                    use_cache=True,
                )
                .logits[:, -1]
                .to(gen.device)
            )
    result = []
    for r in range(rows):
        row = [int(t) for t in out[r].tolist() if t >= 0]
        result.append((row, "eos" if bool(hit[r]) else "length"))
    return result


def decode(gen: Generator, ids: list[int]) -> str:
    """An answer's text: the tokens decoded without special tokens, outer whitespace removed
    (chat templates trim it when the answer is fed back)."""
    return cast("str", gen.tokenizer.decode(ids, skip_special_tokens=True).strip())
