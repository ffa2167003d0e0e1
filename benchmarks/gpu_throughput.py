"""The GPU path, measured on random-weight models of real shapes (throughput depends on shapes,
not weights): a Qwen2-0.5B-shaped and a Llama-3.2-1B-shaped causal LM, bfloat16 on CUDA.

- harvest: answer tokens/s of shoggoth's harvest computation (prompts through the bridge with
  the prefix KV cache, stopped at the hook, SAE encode, per-document aggregates) against the
  bare forward to the hook over the same tokens;
- train: tokens/s of a TopK SAE (expansion 8, k 32) training step on the model's activations
  (sae-lens TrainingSAE, forward + backward + Adam), as shoggoth trains it.

    python -m benchmarks.gpu_throughput [--small] [--seconds 60]

`--small` shrinks the shapes to run anywhere (a smoke test on CPU). Run by
benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from shoggoth.sae.activations import activations
from shoggoth.sae.encode import encode_aggregate, prompts_activations
from shoggoth.sae.models import load_model
from shoggoth.sae.prompts import Prompt, collate

SHAPES = {
    "qwen2-0.5b-shaped": (
        "Qwen2Config",
        dict(
            hidden_size=896,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            intermediate_size=4864,
            vocab_size=151_936,
        ),
    ),
    "llama-1b-shaped": (
        "LlamaConfig",
        dict(
            hidden_size=2048,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=8192,
            vocab_size=128_256,
        ),
    ),
}


def save_model(folder: Path, kind: str, shape: dict, small: bool) -> Path:
    """A random-weight model of this shape with a byte-level tokenizer, saved locally."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if small:
        shape = {
            **shape,
            "hidden_size": 64,
            "num_hidden_layers": 4,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 1024,
        }
    config = getattr(transformers, kind)(**shape, max_position_embeddings=4096)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        ["a persona answers the same question in its own voice"] * 10,
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<|end|>"]),
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|end|>", pad_token="<|end|>", bos_token="<|end|>"
    )
    fast.save_pretrained(folder)
    return folder


def random_sae(d_in: int, hook: str, device: str) -> object:
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = TopKSAE(
        TopKSAEConfig(
            d_in=d_in, d_sae=8 * d_in, k=32, dtype="float32", metadata=SAEMetadata(hook_name=hook)
        )
    )
    return sae.to(device)


def batches(vocab: int, n_batches: int, batch: int, prefix: int, answer: int) -> list:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_batches):
        shared = torch.randint(10, vocab, (prefix,), generator=g).tolist()
        out.append(
            [
                Prompt(
                    shared + torch.randint(10, vocab, (answer,), generator=g).tolist(),
                    [False] * prefix + [True] * answer,
                    "plain",
                )
                for _ in range(batch)
            ]
        )
    return out


def timed(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def harvest_rates(model: object, sae: object, hook: str, data: list) -> dict[str, float]:
    from shoggoth.sae.activations import prefix_cache

    n_tok = sum(sum(p.mask) for b in data for p in b)

    def ours() -> None:
        for b in data:
            cut = next(i for i, m in enumerate(b[0].mask) if m)
            prefix = prefix_cache(model, b[0].input_ids[:cut], [hook])
            x, rows = prompts_activations(model, b, [hook], prefix)
            encode_aggregate(sae, x[hook], rows, len(b), 3)

    def floor() -> None:
        for b in data:
            answers = [
                Prompt(
                    [t for t, m in zip(p.input_ids, p.mask, strict=True) if m],
                    [True] * sum(p.mask),
                    "plain",
                )
                for p in b
            ]
            activations(model, collate(answers, 0, "right"), hook)

    ours(), floor()  # warm-up (kernels, caches)
    return {"harvest": n_tok / timed(ours, 3), "bare forward": n_tok / timed(floor, 3)}


def train_rate(model: object, hook: str, data: list, d_in: int, steps: int) -> float:
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    acts = torch.cat(
        [activations(model, collate(b, 0, "right"), hook).flatten(0, 1) for b in data]
    ).float()
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(d_in=d_in, d_sae=8 * d_in, k=32, device=str(acts.device))
    )
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    batch = 4096

    def run() -> None:
        for s in range(steps):
            x = acts[(s * batch) % max(1, len(acts) - batch) :][:batch]
            out = sae.training_forward_pass(
                TrainStepInput(
                    sae_in=x,
                    coefficients={},
                    dead_neuron_mask=None,
                    n_training_steps=s,
                    is_logging_step=False,
                )
            )
            opt.zero_grad()
            out.loss.backward()
            opt.step()

    run()
    return steps * min(batch, len(acts)) / timed(run, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    card = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"device: {card} ({'bfloat16' if device == 'cuda' else 'float32'})")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (kind, shape) in SHAPES.items():
            folder = save_model(Path(tmp) / name, kind, shape, args.small)
            model = load_model(str(folder), "auto")
            hook = f"blocks.{model.n_layers // 2}.hook_resid_post"
            sae = random_sae(model.d_model, hook, str(model.device))
            data = batches(300, 4 if args.small else 16, 8 if args.small else 64, 48, 64)
            rates = harvest_rates(model, sae, hook, data)
            rates["train"] = train_rate(
                model, hook, data[:4], model.d_model, 5 if args.small else args.steps
            )
            results[name] = rates
            print(
                f"{name}: harvest {rates['harvest']:,.0f} tok/s vs bare forward to the hook "
                f"{rates['bare forward']:,.0f} tok/s (ratio "
                f"{rates['harvest'] / rates['bare forward']:.2f}) · SAE training "
                f"{rates['train']:,.0f} tok/s",
                flush=True,
            )
            del model, sae
            if device == "cuda":
                torch.cuda.empty_cache()
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_throughput.json").write_text(json.dumps({"card": card, **results}))


if __name__ == "__main__":
    main()
