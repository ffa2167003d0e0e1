"""Does the answer per mask hold? One difference dictionary per (block, k, seed), each harvested
on the same battery and labelled; one row per setting with the median shares of the persona's
shift `label` finds (the common pattern, its own modulation, the error), the dictionary-free
common share at that block, and the persona signal the dictionary carries.

Every run goes through the commands a user runs (`train --target difference`, `harvest`,
`label`), into one database per block (the harvest's reference and battery are shared).

    OMP_NUM_THREADS=2 python -m benchmarks.answer_robustness --layer 8 --layer 15 --layer 24 \\
        --k 16 --k 64 --k 256 --seed 0 --seed 1 --seed 2

The defaults are the demo's settings at one block and one seed (a CPU-sized run); the findings
page reports the full grid with its command. A row's seconds are its label plus its share of the
training and harvest runs it was part of; rerunning with the same --work reuses the dictionaries.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import duckdb

from shoggoth import cli


def run(argv: list[str]) -> None:
    """A shoggoth command in this process; stops the benchmark when it fails."""
    code = cli.main([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"shoggoth {' '.join(map(str, argv[:2]))} … exited {code}")


SHARES = """
SELECT median(share) FILTER (part = 'common') AS common,
       median(share) FILTER (part = 'own_features') + median(share) FILTER
           (part = 'own_modulation') AS own,
       median(share) FILTER (part = 'own_features') AS own_features,
       median(share) FILTER (part = 'error') AS error
FROM persona_decomposition WHERE sae_id = ?
"""
FREE = """SELECT median(common_share) FROM persona_space WHERE sae_id = ? AND NOT is_control"""
SIGNAL = """SELECT sum(carried * shift_norm ^ 2) / sum(shift_norm ^ 2) FROM persona_signal
WHERE sae_id = ?"""


def measure(db: Path, sae_id: str) -> dict[str, float]:
    """The medians of one labelled harvest."""
    with duckdb.connect(str(db), read_only=True) as con:
        common, own, own_features, error = con.execute(SHARES, [sae_id]).fetchone()
        free = con.execute(FREE, [sae_id]).fetchone()[0]
        signal = con.execute(SIGNAL, [sae_id]).fetchone()[0]
    return {
        "common": common,
        "own": own,
        "own_features": own_features,
        "error": error,
        "free_common": free,
        "signal": signal,
    }


def labelled(db: Path, sae_id: str) -> bool:
    """Whether `label` has already decomposed this harvest (a rerun picks up after it)."""
    if not db.is_file():
        return False
    with duckdb.connect(str(db), read_only=True) as con:
        try:
            return bool(
                con.execute(
                    "SELECT count(*) FROM persona_decomposition WHERE sae_id = ?", [sae_id]
                ).fetchone()[0]
            )
        except duckdb.CatalogException:
            return False


def train_all(
    args: argparse.Namespace,
    work: Path,
    layers: list[int],
    k: int,
    seed: int,
    trained: dict[tuple[int, int], float],
) -> None:
    """One difference dictionary per block at (k, seed), from one training run's forward
    passes; each moved to its own folder b{block}-k{k}-s{seed}."""
    names = [work / f"b{layer}-k{k}-s{seed}" for layer in layers]
    if all(n.is_dir() for n in names):
        return
    together = work / f"train-k{k}-s{seed}"
    started = time.time()
    if not together.is_dir():
        run(
            [
                "train",
                "--model",
                args.model,
                *[a for layer in layers for a in ("--layer", layer)],
                "--target",
                "difference",
                "--architecture",
                "batchtopk",
                "--d-sae",
                args.d_sae,
                "--k",
                k,
                "--seed",
                seed,
                "--tokens",
                args.tokens,
                "--pair-tokens",
                args.pair_tokens,
                "--out",
                together,
                "--overwrite",
            ]
        )
    for layer, name in zip(layers, names, strict=True):
        single = (
            together
            if len(layers) == 1
            else (together / f"blocks.{layer}.hook_resid_post-d{args.d_sae}-difference")
        )
        single.rename(name)
    if len(layers) > 1:
        together.rmdir()  # (its SAE folders moved out)
    trained[(k, seed)] = time.time() - started


def show(rows: list[dict[str, float]]) -> None:
    """The table so far."""
    print(
        f"{'block':>5} {'k':>4} {'seed':>4} {'common':>7} {'own':>6} {'(own ft)':>8} "
        f"{'error':>6} {'free common':>11} {'signal':>7} {'seconds':>8}",
        flush=True,
    )
    for r in sorted(rows, key=lambda r: (r["layer"], r["k"], r["seed"])):
        print(
            f"{r['layer']:>5} {r['k']:>4} {r['seed']:>4} {r['common']:>7.2f} {r['own']:>6.2f} "
            f"{r['own_features']:>8.2f} {r['error']:>6.2f} {r['free_common']:>11.2f} "
            f"{r['signal']:>7.2f} {r['seconds']:>8.0f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--layer", type=int, action="append", default=None)
    parser.add_argument("--k", type=int, action="append", default=None)
    parser.add_argument("--seed", type=int, action="append", default=None)
    parser.add_argument("--d-sae", type=int, default=2304)
    parser.add_argument("--tokens", type=int, default=122_880)
    parser.add_argument("--pair-tokens", type=int, default=61_440)
    parser.add_argument("--paraphrases", type=int, default=2)
    parser.add_argument("--items-per-topic", type=int, default=3)
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="keep the dictionaries and databases here (default: a temporary folder)",
    )
    args = parser.parse_args()
    layers, ks, seeds = args.layer or [15], args.k or [256], args.seed or [0]
    work = args.work or Path(tempfile.mkdtemp(prefix="shoggoth-robustness-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    trained: dict[tuple[int, int], float] = {}
    rows: list[dict[str, float]] = []
    # Seed by seed (the first seed's k × block table comes first): one training run per k trains
    # every block from the same forward passes; one harvest per block encodes every k.
    for seed in seeds:
        for k in ks:
            train_all(args, work, layers, k, seed, trained)
        for layer in layers:
            db = work / f"block{layer}.duckdb"
            names = [
                f"b{layer}-k{k}-s{seed}" for k in ks if not labelled(db, f"b{layer}-k{k}-s{seed}")
            ]
            started = time.time()
            if names:
                run(
                    [
                        "harvest",
                        "--db",
                        db,
                        *[a for n in names for a in ("--sae-dir", work / n)],
                        "--paraphrases",
                        args.paraphrases,
                        "--items-per-topic",
                        args.items_per_topic,
                    ]
                )
            harvested = (time.time() - started) / max(len(names), 1)
            for k in ks:
                name = f"b{layer}-k{k}-s{seed}"
                started = time.time()
                if name in names:
                    run(["label", "--db", db, "--sae", name, "--calibration-seeds", "1"])
                rows.append(
                    {
                        "layer": layer,
                        "k": k,
                        "seed": seed,
                        **measure(db, name),
                        "seconds": time.time()
                        - started
                        + harvested
                        + trained.get((k, seed), 0.0) / len(layers),
                    }
                )
        show(rows)
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
