"""Many SAEs, one pass: `shoggoth harvest --sae A --sae B --sae C --sae D` (4 hooks spread over
the depth) against 4 separate harvests of the same SAEs, on the same battery slice, in one run.

Models: a causal LM with GPT-2-small's shape (12 layers, random weights) hooked at blocks
2, 5, 8, 11, and SmolLM2-135M-Instruct (30 layers, real weights) hooked at blocks 6, 12, 18, 24.
Random TopK SAEs (expansion 8, k 32): throughput depends on shapes, not weights.

    python -m benchmarks.multi_sae_harvest [--items 48] [--personas 4] [--repeats 3]
                                           [--models gpt2,smollm2]

Prints the median seconds of each (the batch loop, and end to end without the model load), and
the speed-up of one pass over k separate harvests (goal: >= 0.8 k = 3.2x). The floor is the
sum of the separate harvests' forward depths over the deepest: with hooks at d_1 < … < d_k of
L blocks, k passes run Σ d_i + k blocks and one pass d_k + 1.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harvest_throughput import gpt2_small, random_sae, slice_battery
from shoggoth.pipeline.harvest.run import HarvestConfig, harvest
from shoggoth.sae.models import load_model

HOOKS = {"gpt2": (2, 5, 8, 11), "smollm2": (6, 12, 18, 24)}


def bench(name: str, model_id: str, d: int, work: Path, battery: list[Path], repeats: int) -> None:
    saes = [
        random_sae(work / f"sae-{name}-{layer}", model_id, d, f"blocks.{layer}.hook_resid_post")
        for layer in HOOKS[name]
    ]
    t = time.perf_counter()
    model = load_model(model_id, "auto")
    load = time.perf_counter() - t

    def one(sae_dirs: list[Path], db: Path) -> tuple[float, float]:
        t0 = time.perf_counter()
        out = harvest(
            HarvestConfig(
                db=db, sae_dir=sae_dirs, model=model_id, personas=battery[0], items=battery[1]
            ),
            log=lambda _: None,
        )
        return time.perf_counter() - t0 - load, out.first.batch_seconds

    together, apart = [], []
    for r in range(repeats):
        together.append(one(saes, work / f"{name}-one-{r}.duckdb"))
        runs = [one([s], work / f"{name}-apart-{r}-{k}.duckdb") for k, s in enumerate(saes)]
        apart.append(tuple(sum(x) for x in zip(*runs, strict=True)))
    layers = HOOKS[name]
    print(f"\n{name}: {model.n_layers} blocks, SAEs at blocks {', '.join(map(str, layers))}")
    print_speedups(
        layers, ("end to end (model load excluded)", "batch loop"), apart, together, "one pass", 34
    )


def print_speedups(
    layers: tuple[int, ...],
    whats: tuple[str, ...],
    apart: list[tuple[float, ...]],
    together: list[tuple[float, ...]],
    one: str,
    width: int,
) -> None:
    """Per measure `whats[i]`: the medians of k separate runs and of one shared run, the
    speed-up, the 0.8·k goal and the forward-depth bound (Σ(d_i + 1) / (d_max + 1))."""
    bound = (sum(layers) + len(layers)) / (max(layers) + 1)
    for i, what in enumerate(whats):
        a = statistics.median(x[i] for x in apart)
        o = statistics.median(x[i] for x in together)
        print(
            f"  {what:{width}s}: {len(layers)} separate {a:7.1f} s · {one} {o:7.1f} s · "
            f"speed-up {a / o:.2f}x (goal >= {0.8 * len(layers):.1f}x; forward-depth bound "
            f"{bound:.2f}x)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=48)
    ap.add_argument("--personas", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="gpt2,smollm2")
    args = ap.parse_args()
    print(
        f"device: {'cuda' if torch.cuda.is_available() else 'cpu'}, "
        f"{torch.get_num_threads()} threads; medians of {args.repeats} runs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        battery = slice_battery(work, args.personas, 2, args.items)
        for name in args.models.split(","):
            if name == "gpt2":
                bench(name, str(gpt2_small(work / "gpt2")), 768, work, battery, args.repeats)
            elif name == "smollm2":
                bench(name, "smollm2", 576, work, battery, args.repeats)
            else:
                raise SystemExit(f"--models: unknown model {name!r}")


if __name__ == "__main__":
    main()
