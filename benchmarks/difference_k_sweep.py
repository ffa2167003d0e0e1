"""How much of the battery's persona signal a difference dictionary carries, by its k.

Trains one difference dictionary per --k (BatchTopK, `shoggoth train --target difference`, the
same pairs for each: --pair-tokens distinct token pairs, --tokens in all), then measures on a
subset of the built-in battery (its non-control personas, --paraphrases prompts each, the first
--items-per-topic items of each topic) the persona signal Σ_k ⟨v_k, v̂_k⟩ / Σ_k |v_k|² against
the empty system turn, as `shoggoth label` does on a harvest, and prints one row per k with the
held-out training personas' figure (`train`'s) beside it.

    OMP_NUM_THREADS=2 python -m benchmarks.difference_k_sweep --k 16 --k 64 --k 256
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from shoggoth.battery.personas import load_items, load_personas, subset_items
from shoggoth.core.signal import signal_fraction
from shoggoth.sae.encode import prompts_activations
from shoggoth.sae.models import load_model
from shoggoth.sae.prompts import EMPTY_SYSTEM, build_prompt
from shoggoth.sae.sae_dir import load_sae_dir
from shoggoth.sae.train.run import TrainConfig, train


def battery_shifts(
    model_name: str, hook: str, paraphrases: int, per_topic: int
) -> tuple[list[int], list[torch.Tensor]]:
    """Each battery document's answer-token shifts against the same item under the empty
    system turn, and its persona's index."""
    model = load_model(model_name, "auto")
    personas = [p for p in load_personas() if not p.is_control]
    who, shifts = [], []
    for item in subset_items(load_items(), per_topic):
        prompts = [
            build_prompt(
                model.tokenizer, system, item.question, item.answer, prepend_bos=model.prepend_bos
            )
            for system in [EMPTY_SYSTEM] + [q for p in personas for q in p.prompts[:paraphrases]]
        ]
        acts, row = prompts_activations(model, prompts, [hook], None)
        x = acts[hook].float().cpu()
        row = row.cpu()
        ref = x[row == 0]
        for n in range(1, len(prompts)):
            shifts.append(x[row == n] - ref)
            who.append((n - 1) // paraphrases)
    return who, shifts


def carried(sae_dir: Path, who: list[int], shifts: list[torch.Tensor]) -> float:
    sae = load_sae_dir(sae_dir, "cpu")
    with torch.no_grad():
        docs = [
            (s.mean(0), sae.decode(sae.encode(s.to(sae.dtype))).float().mean(0)) for s in shifts
        ]
    labels = np.array(who)
    v = np.stack(
        [
            np.mean([d[0].numpy() for d, w in zip(docs, labels, strict=True) if w == k], axis=0)
            for k in sorted(set(who))
        ]
    )
    vh = np.stack(
        [
            np.mean([d[1].numpy() for d, w in zip(docs, labels, strict=True) if w == k], axis=0)
            for k in sorted(set(who))
        ]
    )
    return signal_fraction(v.astype(np.float64), vh.astype(np.float64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--k", type=int, action="append", default=None)
    parser.add_argument("--d-sae", type=int, default=2304)
    parser.add_argument("--tokens", type=int, default=245_760)
    parser.add_argument("--pair-tokens", type=int, default=61_440)
    parser.add_argument("--paraphrases", type=int, default=2)
    parser.add_argument("--items-per-topic", type=int, default=1)
    args = parser.parse_args()
    hook = f"blocks.{args.layer}.hook_resid_post"
    who, shifts = battery_shifts(args.model, hook, args.paraphrases, args.items_per_topic)
    print(f"battery: {len(shifts)} documents of {len(set(who))} personas")
    print(f"{'k':>5} {'battery':>8} {'held-out':>9} {'L0':>7} {'seconds':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.k or [16, 64, 256]:
            out = Path(tmp) / f"k{k}"
            started = time.perf_counter()
            train(
                TrainConfig(
                    model=args.model,
                    layer=[args.layer],
                    target=["difference"],
                    architecture="batchtopk",
                    d_sae=[args.d_sae],
                    k=k,
                    tokens=args.tokens,
                    pair_tokens=args.pair_tokens,
                    checkpoint_every=0,
                    out=out,
                ),
                log=lambda _: None,
            )
            seconds = time.perf_counter() - started
            meta = json.loads((out / "shoggoth.json").read_text())["evaluation"]
            print(
                f"{k:>5} {carried(out, who, shifts):>8.3f} {meta['persona_signal']:>9.3f} "
                f"{meta['l0']:>7.1f} {seconds:>8.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
