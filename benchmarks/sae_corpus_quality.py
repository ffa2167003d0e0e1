"""Which training text makes a usable SAE for a chat model? The chat corpus against the docs
corpus, at the same token budget, in one run.

Trains the same SAE (`shoggoth train`, same model, hook, width, k, tokens and seed) twice: on
`--dataset chitchat` (conversations in the chat template, half under training personas) and on
`--dataset builtin` (Python's documentation). Both are then measured on the same held-out text:
  held-out chat     explained variance, L0 and dead fraction on held-out chitchat contexts, and
                    next-token CE loss recovered (splicing the reconstruction in);
  battery answers   the fraction of features that never fire on the battery's answer tokens
                    (all 240 answers by default) under the first prompt of every --persona-step-th
                    persona and control: the text the labels are made on. The answers are the same
                    under every persona, so the number of distinct answers decides this figure
                    far more than the number of personas does.
Goals for the chat corpus (issue 15): dead on the battery <= 10%, CE loss recovered >= 0.95.

    python -m benchmarks.sae_corpus_quality [--model smollm2] [--layer 15] [--tokens 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
warnings.filterwarnings("ignore")


def battery_dead_fraction(
    model: Any, sae: Any, hook: str, persona_step: int, per_topic: int | None
) -> float:
    """Features that fire on no answer token of the battery subset."""
    import torch

    from shoggoth.battery.personas import load_items, load_personas, subset_items, subset_personas
    from shoggoth.sae.activations import continuation_activations
    from shoggoth.sae.prompts import build_prompt, collate, pad_id

    items = subset_items(load_items(), per_topic)
    prompts = [
        build_prompt(model.tokenizer, system, i.question, i.answer, prepend_bos=model.prepend_bos)
        for p in subset_personas(load_personas(), 1)[::persona_step]
        for system in p.prompts
        for i in items
    ]
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    with torch.inference_mode():
        for start in range(0, len(prompts), 32):
            batch = collate(prompts[start : start + 32], pad_id(model.tokenizer))
            acts = continuation_activations(model, batch, hook)
            fired |= (sae.encode(acts.to(sae.dtype)) != 0).any(0).cpu()
    return float(1 - fired.float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--expansion", type=int, default=4)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--persona-step", type=int, default=6)
    ap.add_argument("--items-per-topic", type=int, default=None)
    args = ap.parse_args()

    from sae_lens import SAE

    from shoggoth.sae.models import load_model
    from shoggoth.sae.train.run import TrainConfig, held_out_contexts, held_out_metrics, train

    model = load_model(args.model, "cpu")
    hook = f"blocks.{args.layer}.hook_resid_post"
    chat_eval = held_out_contexts(model, "chitchat", "text", 128, 16_384)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in ("chitchat", "builtin"):
            out = Path(tmp) / dataset
            started = time.time()
            train(
                TrainConfig(
                    model=args.model,
                    layer=args.layer,
                    dataset=dataset,
                    tokens=args.tokens,
                    expansion=args.expansion,
                    k=args.k,
                    out=out,
                    checkpoint_every=0,
                    device="cpu",
                ),
                log=lambda _m: None,
            )
            seconds = time.time() - started
            sae = SAE.load_from_disk(str(out), device="cpu")
            metrics = held_out_metrics(model, sae, hook, chat_eval)
            rows[dataset] = {
                "train_seconds": round(seconds, 1),
                "held_out_chat_ev": round(metrics["explained_variance"], 3),
                "ce_loss_recovered": round(metrics.get("ce_loss_recovered", float("nan")), 3),
                "l0": round(metrics["l0"], 1),
                "dead_on_held_out_chat": round(metrics["dead_fraction"], 3),
                "dead_on_battery_answers": round(
                    battery_dead_fraction(
                        model, sae, hook, args.persona_step, args.items_per_topic
                    ),
                    3,
                ),
            }
            print(dataset, json.dumps(rows[dataset]), flush=True)
    print(f"{'':26s} {'chitchat':>10s} {'builtin':>10s}")
    for key in rows["chitchat"]:
        print(f"{key:26s} {rows['chitchat'][key]:>10} {rows['builtin'][key]:>10}")
    print(
        json.dumps(
            {
                "model": args.model,
                "hook": hook,
                "tokens": args.tokens,
                "d_sae": args.expansion * model.d_model,
                "k": args.k,
                **rows,
            }
        )
    )


if __name__ == "__main__":
    main()
