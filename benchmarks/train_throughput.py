"""Training throughput: shoggoth's `train` code path vs a bare sae-lens runner set up by hand.

Both train the same TopK SAE config on the same model, hook and pre-tokenized contexts (the
model's default corpus: the built-in docs for MiniLM, the chat corpus for SmolLM2),
interleaved, several times. Prints tokens/s for each (the training phase alone and end to end)
and the ratio shoggoth / bare, as medians.

    .venv/bin/python -m benchmarks.train_throughput [--model minilm|smollm2] [--layer L]
                                                    [--tokens 200000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
warnings.filterwarnings("ignore")


def held_out_quality(model: object, out: Path, args: argparse.Namespace) -> dict[str, float]:
    """Explained variance and dead fraction of the SAE saved in `out`, on the held-out tokens
    `shoggoth train` evaluates on (the same for both paths)."""
    from sae_lens import SAE

    from shoggoth.sae.train.run import held_out_contexts, held_out_metrics, resolve_dataset

    contexts = held_out_contexts(model, resolve_dataset("auto", model), "text", 128, 16_384)
    sae = SAE.load_from_disk(str(out), device="cpu")
    return held_out_metrics(model, sae, f"blocks.{args.layer}.hook_resid_post", contexts)


def bare_sae_lens(tokens: int, args: argparse.Namespace, out: Path) -> tuple[float, float, dict]:
    """(training seconds, end-to-end seconds, held-out quality) of a hand-built
    LanguageModelSAETrainingRunner."""
    import datasets
    from sae_lens import (
        LanguageModelSAERunnerConfig,
        LanguageModelSAETrainingRunner,
        LoggingConfig,
        TopKTrainingSAEConfig,
    )

    from shoggoth.sae.models import load_model
    from shoggoth.sae.prompts import special_ids
    from shoggoth.sae.train.contexts import pack_contexts, split_documents
    from shoggoth.sae.train.corpus import load_texts
    from shoggoth.sae.train.run import resolve_dataset

    start = time.time()
    model = load_model(args.model, "cpu")
    dataset = resolve_dataset("auto", model)
    train_docs, _ = split_documents(
        load_texts(dataset, max_chars=20 * (tokens + 32_768), tokenizer=model.tokenizer)
    )
    ctx = pack_contexts(
        model.tokenizer,
        train_docs,
        args.context_size,
        is_causal=model.is_causal,
        max_contexts=-(-tokens // args.context_size),
    )
    d_in = model.d_model
    steps = tokens // args.batch_tokens
    window = max(1, max(tokens // 20, args.batch_tokens) // args.batch_tokens)
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=d_in, d_sae=d_in * args.expansion, k=args.k),
        model_name=args.model,
        model_class_name="TransformerBridge",
        hook_name=f"blocks.{args.layer}.hook_resid_post",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=args.context_size,
        training_tokens=tokens,
        train_batch_size_tokens=args.batch_tokens,
        store_batch_size_prompts=16,
        n_batches_in_buffer=16,
        prepend_bos=False,
        exclude_special_tokens=sorted(special_ids(model.tokenizer)),
        lr=args.lr,
        lr_warm_up_steps=steps // 20,
        lr_decay_steps=steps // 5,
        dead_feature_window=window,
        feature_sampling_window=window,
        device="cpu",
        seed=0,
        n_checkpoints=0,
        checkpoint_path=None,
        output_path=str(out),
        logger=LoggingConfig(log_to_wandb=False),
        verbose=False,
    )
    runner = LanguageModelSAETrainingRunner(
        cfg,
        override_dataset=datasets.Dataset.from_dict({"input_ids": ctx.tolist()}),
        override_model=model.bridge,
    )
    fit_start = time.time()
    runner.run()
    end = time.time()
    return end - fit_start, end - start, held_out_quality(model, out, args)


def shoggoth_train(tokens: int, args: argparse.Namespace, out: Path) -> tuple[float, float, dict]:
    """(training seconds, end-to-end seconds, held-out quality) of `shoggoth train`'s code
    path (end to end includes its own evaluation)."""
    from shoggoth.sae.train.run import TrainConfig, train

    start = time.time()
    result = train(
        TrainConfig(
            model=args.model,
            layer=args.layer,
            tokens=tokens,
            context_size=args.context_size,
            batch_tokens=args.batch_tokens,
            expansion=args.expansion,
            k=args.k,
            lr=args.lr,
            out=out,
            device="cpu",
            checkpoint_every=0,
        ),
        log=lambda _: None,
    )
    end = time.time()
    meta = json.loads((result / "shoggoth.json").read_text())
    return meta["fit_seconds"], end - start, meta["evaluation"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", choices=["minilm", "smollm2"])
    parser.add_argument(
        "--layer",
        type=int,
        default=None,
        help="hooked block (default: 3 for minilm, the demo's layer for smollm2)",
    )
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--context-size", type=int, default=128)
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    if args.layer is None:
        from shoggoth.pipeline.demo import RECIPES

        args.layer = RECIPES[args.model].layer
    import transformers

    transformers.logging.set_verbosity_error()
    results: dict[str, list[tuple[float, float, dict]]] = {"shoggoth": [], "bare sae-lens": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, fn in (("bare sae-lens", bare_sae_lens), ("shoggoth", shoggoth_train)):
                fit, total, q = fn(args.tokens, args, Path(tmp) / f"{name.replace(' ', '-')}-{r}")
                results[name].append((fit, total, q))
                print(
                    f"run {r + 1}/{args.repeats} {name:>13}: training {args.tokens / fit:8.0f} "
                    f"tok/s, end to end {args.tokens / total:8.0f} tok/s, held-out EV "
                    f"{q['explained_variance']:.3f}, dead {q['dead_fraction']:.1%}",
                    flush=True,
                )
    med = {
        n: (
            statistics.median(args.tokens / f for f, _, _ in v),
            statistics.median(args.tokens / t for _, t, _ in v),
            statistics.median(q["explained_variance"] for _, _, q in v),
            statistics.median(q["dead_fraction"] for _, _, q in v),
        )
        for n, v in results.items()
    }
    print(
        f"\nmedians over {args.repeats} runs of {args.tokens:,} tokens ({args.model}, "
        f"blocks.{args.layer}.hook_resid_post, topk expansion {args.expansion}, k {args.k}, "
        f"{os.cpu_count()} CPU threads):"
    )
    for name, (fit, total, ev, dead) in med.items():
        print(
            f"  {name:>13}: training {fit:8.0f} tok/s   end to end {total:8.0f} tok/s   "
            f"held-out EV {ev:.3f}   dead {dead:.1%}"
        )
    fit_ratio = med["shoggoth"][0] / med["bare sae-lens"][0]
    total_ratio = med["shoggoth"][1] / med["bare sae-lens"][1]
    print(
        f"  ratio shoggoth / bare sae-lens: training {fit_ratio:.3f}   end to end {total_ratio:.3f}"
    )


if __name__ == "__main__":
    main()
