"""Many SAEs, one activation stream: `shoggoth train --layer A --layer B --layer C --layer D`
(sae-lens's MultiSAETrainer stepping 4 SAEs in lockstep on one forward pass per chunk) against 4
separate `shoggoth train` runs of the same SAEs, in one run.

Models: a causal LM with GPT-2-small's shape (12 layers, random weights) hooked at blocks
2, 5, 8, 11, and SmolLM2-135M-Instruct (30 layers) at blocks 6, 12, 18, 24; TopK SAEs with
--expansion 4 and k 32 on the chat corpus. The SAEs of the one run equal the separate runs' bit
for bit (tests/sae/test_train_scale.py), so only time is compared.

    python -m benchmarks.multi_sae_train [--tokens 8192] [--repeats 2] [--models gpt2,smollm2]

Prints the median seconds of the training phase (the activation stream and the SAE steps;
sae-lens's fit) and of the whole command (model load, corpus packing, training, the held-out
evaluation of every SAE on 512 tokens), and the speed-ups. The SAE steps are the same work
either way; only the forward passes are shared, with the forward-depth bound of
multi_sae_harvest.py.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch

from benchmarks.harvest_throughput import gpt2_small
from benchmarks.multi_sae_harvest import HOOKS, print_speedups
from shoggoth.sae.train.run import TrainConfig, train


def fit_seconds(out: Path) -> float:
    metas = (
        [out / "shoggoth.json"]
        if (out / "shoggoth.json").exists()
        else sorted(out.glob("*/shoggoth.json"))
    )
    return json.loads(metas[0].read_text())["fit_seconds"]


def bench(name: str, model_id: str, work: Path, tokens: int, repeats: int) -> None:
    layers = HOOKS[name]

    def one(layer_list: list[int], out: Path) -> tuple[float, float]:
        t = time.perf_counter()
        train(
            TrainConfig(
                model=model_id,
                layer=layer_list,
                tokens=tokens,
                expansion=4,
                k=32,
                batch_tokens=1024,
                context_size=128,
                eval_tokens=512,
                checkpoint_every=0,
                out=out,
            ),
            log=lambda _: None,
        )
        return time.perf_counter() - t, fit_seconds(out)

    together, apart = [], []
    for r in range(repeats):
        together.append(one(list(layers), work / f"{name}-one-{r}"))
        runs = [one([layer], work / f"{name}-apart-{r}-{layer}") for layer in layers]
        apart.append(tuple(sum(x) for x in zip(*runs, strict=True)))
    print(f"\n{name}: SAEs at blocks {', '.join(map(str, layers))}, {tokens:,} tokens each")
    print_speedups(
        layers, ("whole command", "training phase (fit)"), apart, together, "one run", 22
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--models", default="gpt2,smollm2")
    args = ap.parse_args()
    print(
        f"device: {'cuda' if torch.cuda.is_available() else 'cpu'}, "
        f"{torch.get_num_threads()} threads; medians of {args.repeats} runs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            if name not in HOOKS:
                raise SystemExit(f"--models: unknown model {name!r}")
            model = str(gpt2_small(work / "gpt2")) if name == "gpt2" else "smollm2"
            bench(name, model, work, args.tokens, args.repeats)


if __name__ == "__main__":
    main()
