"""What a difference dictionary costs, measured in one run on one model:

- the paired stream (persona and reference forwards, the shared tokens gathered, the shift
  taken and shuffled) against two bare forward passes over the same pairs: the issue's target is
  a rate of at least 0.9x;
- a harvest of the same battery with a difference dictionary against one with a residual SAE of
  the same width (random weights: the cost does not depend on them): the target is at most
  1.2x (the reference runs once per item).

    OMP_NUM_THREADS=2 python -m benchmarks.difference_speed --model smollm2 --pairs 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from shoggoth.pipeline.harvest.run import HarvestConfig, harvest
from shoggoth.sae.activations import activations_at
from shoggoth.sae.models import load_model, resolve_hook
from shoggoth.sae.prompts import EMPTY_SYSTEM, pad_id
from shoggoth.sae.train.chitchat import pieces
from shoggoth.sae.train.difference import persona_set
from shoggoth.sae.train.paired import PairedStream, _padded, make_pairs


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def stream_ratio(model: Any, hook: str, n_pairs: int, repeats: int) -> dict[str, float]:
    pairs = make_pairs(
        model.tokenizer,
        pieces()[: 4 * n_pairs],
        persona_set(None),
        EMPTY_SYSTEM,
        128,
        model.prepend_bos,
        model.is_causal,
    )
    pairs = pairs.select(range(min(n_pairs, len(pairs))))
    stream = PairedStream(model, [hook], pairs, 1024, 0, chunk_pairs=len(pairs))
    pad = pad_id(model.tokenizer)

    def bare() -> None:
        for start in range(0, len(pairs), 32):
            part = pairs.select(range(start, min(len(pairs), start + 32)))
            for ids, keep in (
                (part.persona_ids, part.persona_keep),
                (part.reference_ids, part.reference_keep),
            ):
                activations_at(model, _padded(ids, keep, pad), [hook])

    bare()  # warm-up
    t_bare = median_seconds(bare, repeats)
    t_stream = median_seconds(lambda: stream.chunk(0), repeats)
    tokens = pairs.tokens()
    return {
        "pairs": len(pairs),
        "shared_tokens": tokens,
        "bare_tokens_per_s": tokens / t_bare,
        "stream_tokens_per_s": tokens / t_stream,
        "stream_vs_bare": t_bare / t_stream,
    }


def random_sae(
    folder: Path, model_name: str, hook: str, d_in: int, d_sae: int, target: str
) -> Path:
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(0)
    sae = TopKSAE(
        TopKSAEConfig(
            d_in=d_in,
            d_sae=d_sae,
            k=32,
            metadata=SAEMetadata(hook_name=hook, model_name=model_name),
        )
    )
    folder.mkdir(parents=True)
    sae.save_model(str(folder))
    meta = {
        "model": model_name,
        "hook": hook,
        "target": target,
        "reference": EMPTY_SYSTEM if target == "difference" else None,
    }
    (folder / "shoggoth.json").write_text(json.dumps(meta))
    return folder


def harvest_ratio(
    model_name: str, hook: str, d_in: int, d_sae: int, items_per_topic: int
) -> dict[str, float]:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for target in ("residual", "difference"):
            sae = random_sae(Path(tmp) / target, model_name, hook, d_in, d_sae, target)
            done = harvest(
                HarvestConfig(
                    db=Path(tmp) / f"{target}.duckdb",
                    sae_dir=[sae],
                    paraphrases=2,
                    items_per_topic=items_per_topic,
                ),
                log=lambda _: None,
            )
            out[f"{target}_batch_seconds"] = done.first.batch_seconds
    out["difference_vs_residual"] = out["difference_batch_seconds"] / out["residual_batch_seconds"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--layer", type=int, default=None)
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--items-per-topic", type=int, default=1)
    args = parser.parse_args()
    model = load_model(args.model, "auto")
    hook = resolve_hook(model, layer=args.layer) if args.layer is not None else resolve_hook(model)
    rows = {
        "model": args.model,
        "hook": hook,
        "device": str(model.device),
        **stream_ratio(model, hook, args.pairs, args.repeats),
        **harvest_ratio(args.model, hook, model.d_model, 8 * model.d_model, args.items_per_topic),
    }
    for key, value in rows.items():
        print(f"{key:28s} {value:,.3f}" if isinstance(value, float) else f"{key:28s} {value}")


if __name__ == "__main__":
    main()
