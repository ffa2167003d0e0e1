"""Effects throughput on the demo database (SmolLM2): the screen against the harvest of the same
documents, and exact ablation at the issue's scale.

1. The same documents (the no-persona control and every persona, first prompt, on --items items)
   are harvested (`shoggoth harvest` into a temporary database, the model's load included) and
   screened (attribution patching: the persona documents forward and backward in one batch, the
   no-persona document forward once and backward once per persona's weighting, batched, or not
   at all where no feature fires on it); the ratio screen / harvest is the figure, per run with
   --repeats.
2. Exact ablation of --features features (the screen's top ones, chosen by
   `shoggoth.pipeline.effects.tables.make_plan` as `shoggoth effects` does) under 2 conditions (no
   persona and the persona of each feature's largest screen estimate), on --exact-items items,
   timed and scaled to 40 items; rows where the feature does not fire are skipped (their effect
   is exactly zero) and counted. Then the same with steering under no persona (each feature's
   typical activation) added.

    python -m benchmarks.effects_throughput [--db runs/demo.duckdb] [--sae ID] [--items 6]
        [--features 200] [--exact-items 4 (0: the screen alone)] [--batch 32] [--repeats 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from shoggoth.pipeline.effects.measure import exact_item, screen_item
from shoggoth.pipeline.effects.run import (
    EffectsConfig,
    EffectsInputs,
    load_causal,
    make_setup,
    read_inputs,
)
from shoggoth.pipeline.effects.tables import make_plan, screen_estimates
from shoggoth.pipeline.harvest.run import HarvestConfig, harvest


def harvest_seconds(inputs: EffectsInputs, folder: Path) -> float:
    """`shoggoth harvest` of exactly the screened documents, into a new database."""
    personas = [
        {"name": p.name, "family": p.family, "prompts": [p.prompts[0]], "is_control": p.is_control}
        for p in inputs.conditions
    ]
    (folder / "p.yaml").write_text(yaml.safe_dump({"personas": personas}))
    (folder / "i.jsonl").write_text(
        "".join(
            json.dumps(
                {"item_id": i.item_id, "topic": i.topic, "question": i.question, "answer": i.answer}
            )
            + "\n"
            for i in inputs.items
        )
    )
    started = time.perf_counter()
    harvest(
        HarvestConfig(
            db=folder / "h.duckdb",
            sae_dir=[Path(inputs.record.path or "")],
            personas=folder / "p.yaml",
            items=folder / "i.jsonl",
        ),
        log=lambda _: None,
    )
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", type=Path, default=Path("runs/demo.duckdb"))
    ap.add_argument("--sae", default=None, help="the SAE to screen, where --db holds several")
    ap.add_argument("--items", type=int, default=6)
    ap.add_argument("--features", type=int, default=200)
    ap.add_argument("--exact-items", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--repeats", type=int, default=1, help="harvest and screen this many times, in turn"
    )
    args = ap.parse_args()
    cfg = EffectsConfig(db=args.db, sae=args.sae, items_per_topic=1, batch=args.batch)
    inputs = read_inputs(cfg)
    inputs.items = inputs.items[: args.items]
    n_docs = len(inputs.conditions) * len(inputs.items)
    model, sae = load_causal(inputs.db, inputs.record, "auto")
    s = make_setup(inputs, model, sae, cfg)
    print(
        f"{model.name} · {sae.cfg.d_sae} features · {torch.get_num_threads()} threads · "
        f"{n_docs} documents ({len(inputs.conditions)} conditions × {len(inputs.items)} items)"
    )
    ratios = []
    for run in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            harvest_s = harvest_seconds(inputs, Path(tmp))
        per_item = []
        screens = []
        for i in range(len(inputs.items)):
            started = time.perf_counter()
            screens.append(screen_item(s, i))
            per_item.append(time.perf_counter() - started)
        screen_s = sum(per_item)
        ratios.append(screen_s / harvest_s)
        print(
            f"run {run + 1}: harvest of these documents: {harvest_s:.1f} s; screen: "
            f"{screen_s:.1f} s (median {statistics.median(per_item):.2f} s per item); "
            f"screen / harvest = {ratios[-1]:.2f}"
        )
    print(f"screen / harvest, median of {len(ratios)} runs: {statistics.median(ratios):.2f}")
    if args.exact_items == 0:
        return
    # The plan `shoggoth effects` makes: the top features of the screen, each under no persona
    # and its top-screen persona; steered with its typical activation, or not at all.
    steered = make_plan(
        screen_estimates(screens),
        np.stack([x["fired"] for x in screens]).any(0),
        {},
        inputs.typical,
        chosen=None,
        allowed=None,
        top=args.features,
        baseline=0,
        per_feature=1,
        seed=0,
    )
    feats = steered.features
    for label, plan in (
        ("ablation, 2 conditions", dataclasses.replace(steered, steer=[0.0] * len(feats))),
        ("ablation, 2 conditions, and steering under no persona", steered),
    ):
        times, rows, silent = [], 0, 0
        for i in range(args.exact_items):
            started = time.perf_counter()
            out = exact_item(s, i, plan, screens[i]["fired"])
            times.append(time.perf_counter() - started)
            rows += int(np.isfinite(out["ablate_kl"]).sum())
            silent += int((out["ablate_kl"] == 0).sum())
        per = statistics.median(times)
        print(
            f"{label}: {len(feats)} features × {args.exact_items} items: median "
            f"{per:.1f} s per item → {40 * per / 60:.1f} min for 40 items"
            + (
                f" ({silent} of {rows} feature × condition cells skipped: the feature does "
                "not fire there)"
                if plan is not steered
                else ""
            )
        )


if __name__ == "__main__":
    main()
