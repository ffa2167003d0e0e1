"""`shoggoth demo`, the building part: on SmolLM2-135M-Instruct (the default), train a residual
SAE and a persona-difference dictionary from one paired stream, harvest the battery with both in
one pass, label them (each mask decomposed), measure the difference dictionary's causal effects
and its composition test, and index both; with --full also probe the layers, write the model's
own answers and their grid, and explain features. MiniLM (`--model minilm`) is the quick path,
one residual SAE. Each step runs as a function and is skipped when the database says it is up to
date. Serving the explorer is the CLI's last step (explorer/commands.py)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from shoggoth.battery.personas import load_items, load_personas, subset_items, subset_personas
from shoggoth.core.config import Config, option
from shoggoth.core.errors import BadInput
from shoggoth.core.outputs import refuse_output_over
from shoggoth.core.progress import Log, stderr_log
from shoggoth.index.catalog.build import IndexConfig, faiss_dir
from shoggoth.index.labels.run import LabelRunConfig, label_database
from shoggoth.index.store.schema import battery_of
from shoggoth.index.store.status import Status, sae_status
from shoggoth.pipeline.action.generate import GenerateConfig, generate_answers
from shoggoth.pipeline.action.grid import GridConfig, run_grid
from shoggoth.pipeline.catalog.run import index_harvest
from shoggoth.pipeline.effects.run import EffectsConfig, run_effects
from shoggoth.pipeline.explanations.run import ExplainConfig, explain
from shoggoth.pipeline.harvest.run import HarvestConfig, harvest
from shoggoth.pipeline.layers.run import LayersConfig, probe_layers
from shoggoth.sae.sae_dir import weights_sha256
from shoggoth.sae.train.run import Target, TrainConfig, train

STEPS = 9
GEMMA3_LAYER = 12
"""Gemma 3 270M's hooked block (of 18), by benchmarks/persona_layer_probe.py."""


@dataclass(frozen=True)
class Recipe:
    """How the demo builds on one model: its hook, training and harvest settings, chosen to
    finish within 15 minutes on 2 CPU cores (the steps behind --full excepted)."""

    model: str
    layer: int
    """The hooked block (resid_post), chosen per model by benchmarks/persona_layer_probe.py."""
    db_name: str
    targets: tuple[Target, ...] = ("residual",)
    """The dictionaries trained (train --target): several come from one paired stream and are
    harvested in one pass."""
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig settings beyond the defaults."""
    harvest: dict[str, Any] = field(default_factory=dict)
    """HarvestConfig settings: a deterministic subset of the battery, recorded in the database."""
    layers: dict[str, Any] = field(default_factory=dict)
    """LayersConfig settings of the layer probe (--full)."""
    effects: dict[str, Any] | None = None
    """EffectsConfig settings of the causal check and the composition test, run on the last
    target's dictionary (None: the model is not a causal LM)."""
    generate: dict[str, Any] | None = None
    """GenerateConfig settings of the model's own answers for the grid (--full; None: not a
    causal LM)."""
    explain: dict[str, Any] | None = None
    """ExplainConfig settings of the offline explanations (--full; None: skipped)."""

    @property
    def hook(self) -> str:
        return f"blocks.{self.layer}.hook_resid_post"

    @property
    def sae_name(self) -> str:
        """The folder `train` writes: the SAE itself, or one SAE folder per target."""
        arch = self.train.get("architecture", "topk")
        return f"sae-{self.model}-{self.hook}-{arch}" + (
            "" if len(self.targets) == 1 else "-" + "-".join(self.targets)
        )

    def sae_dirs(self, out: Path) -> list[Path]:
        """The trained SAEs' folders, in target order (train's naming: HOOK-dWIDTH[-difference])."""
        folder = out / self.sae_name
        if len(self.targets) == 1:
            return [folder]
        width = self.train["d_sae"][0]
        return [
            folder / (f"{self.hook}-d{width}" + ("-difference" if t == "difference" else ""))
            for t in self.targets
        ]

    @property
    def what(self) -> str:
        return {
            "smollm2": "SmolLM2-135M-Instruct (Q4_1, dequantized)",
            "gemma3": "Gemma 3 270M, the base model (Q4_K_M, dequantized)",
            "minilm": "MiniLM",
        }.get(self.model, self.model)


RECIPES = {
    "smollm2": Recipe(
        "smollm2",
        15,
        "demo.duckdb",
        targets=("residual", "difference"),
        train={
            "architecture": "batchtopk",
            "d_sae": [2304],
            "k": 256,
            "tokens": 122_880,
            "pair_tokens": 61_440,
        },
        harvest={"paraphrases": 2, "items_per_topic": 3},
        layers={"items_per_topic": 2, "layers": "0,3,6,9,12,15,18,21,24,27,29"},
        effects={"items_per_topic": 1, "top": 8, "baseline": 4},
        generate={"items_per_topic": 1, "max_tokens": 40},
        explain={"limit": 20},
    ),
    # A base model: no chat template, so each mask is a plain-text prefix (persona, blank line,
    # question, blank line, answer) and the training corpus is the chat corpus rendered the same
    # way. Four times d_model wide, as for SmolLM2.
    "gemma3": Recipe(
        "gemma3",
        GEMMA3_LAYER,
        "demo-gemma3.duckdb",
        targets=("residual", "difference"),
        train={
            "architecture": "batchtopk",
            "d_sae": [2560],
            "k": 256,
            "tokens": 122_880,
            "pair_tokens": 61_440,
            "dataset": "chitchat",
        },
        harvest={"paraphrases": 2, "items_per_topic": 3},
        layers={"items_per_topic": 2, "layers": "0,2,4,6,8,10,12,14,16,17"},
        effects={"items_per_topic": 1, "top": 8, "baseline": 4},
        generate={"items_per_topic": 1, "max_tokens": 40},
        explain={"limit": 20},
    ),
    "minilm": Recipe("minilm", 3, "demo-minilm.duckdb", layers={"items_per_topic": 2}),
}


@dataclass
class DemoConfig(Config):
    """`shoggoth demo`: from nothing to the explorer on the built-in model and battery."""

    model: Literal["smollm2", "gemma3", "minilm"] = "smollm2"
    """smollm2: the chat model, a residual SAE and a difference dictionary on a subset of the
    battery; gemma3: the same on Gemma 3 270M, a base model of another family (masks as
    plain-text prefixes); minilm: the quick path (an encoder that wears no mask), on the whole
    battery."""
    out: Path = Path("runs")
    """Folder for the trained dictionaries and the feature database."""
    full: bool = False
    """Also probe every layer, write the model's own answers and their context × content grid,
    and explain features (tens of minutes more on 2 CPU cores)."""
    serve: bool = True
    """Start the explorer at the end (--no-serve: stop after building)."""
    host: str = "127.0.0.1"
    """Address the explorer listens on."""
    port: int = option(8501, min=1, max=65535)
    """Port the explorer listens on."""

    def check(self) -> None:
        refuse_output_over(self.out, "--out")
        if self.out.exists() and not self.out.is_dir():
            raise BadInput(f"--out {self.out}: is a file, expected a folder")


class Steps:
    """Numbered step lines on the console: run (with its time) or up to date (with why)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def skip(self, n: int, title: str, why: str) -> None:
        self.console.print(f"[bold][{n}/{STEPS}][/bold] {title}: skipped ({why})", highlight=False)

    def run(self, n: int, title: str, step: Callable[[], Any] | None, why: str) -> None:
        head = f"[bold][{n}/{STEPS}][/bold] {title}"
        if step is None:
            self.console.print(f"{head}: up to date ({why})", highlight=False)
            return
        self.console.print(f"{head}: {why}", highlight=False)
        started = time.time()
        step()
        self.console.print(
            f"      done in {time.time() - started:.0f} s", style="dim", highlight=False
        )


def train_step(out: Path, recipe: Recipe) -> tuple[Callable[[], Any] | None, str]:
    """Train the demo's dictionaries unless they exist; resume an interrupted run."""
    folder = out / recipe.sae_name
    if all((d / "shoggoth.json").is_file() for d in recipe.sae_dirs(out)):
        return None, str(folder)
    partial = out / f".{recipe.sae_name}.partial"
    resume = bool(list(partial.glob("checkpoints/[0-9]*")))
    overwrite = not resume and (partial.exists() or folder.exists())
    cfg = TrainConfig(
        model=recipe.model,
        layer=[recipe.layer],
        target=list(recipe.targets),
        out=folder,
        resume=resume,
        overwrite=overwrite,
        **recipe.train,
    )
    return (
        lambda: train(cfg, log=stderr_log()),
        "resuming" if resume else "no trained dictionary yet",
    )


def grid_step(db: Path, sae_id: str, settings: dict[str, Any], log: Log) -> None:
    """Generate the demo's own answers (resumed or skipped when done), then one dictionary's
    grid against both reference texts: the battery's answers and the model's own under no
    persona."""
    generate_answers(GenerateConfig(db=db, sae=sae_id, **settings), log=log)
    for neutral in ("battery", "own"):
        run_grid(GridConfig(db=db, sae=sae_id, neutral=neutral), log=log)


def statuses_of(
    db: Path, saes: list[Path], battery: dict[str, list[tuple]] | None = None
) -> list[Status]:
    """Each trained dictionary's status in the database."""
    return [sae_status(db, weights_sha256(sae), battery) for sae in saes]


def run_each(
    saes: list[Path], statuses: list[Status], stage: str, step: Callable[[str], Any]
) -> Callable[[], Any] | None:
    """`step(sae_id)` for every dictionary whose `stage` is not done (None: all are)."""
    todo = [
        sae.name for sae, status in zip(saes, statuses, strict=True) if not getattr(status, stage)
    ]
    if not todo:
        return None
    return lambda: [step(sae_id) for sae_id in todo]


def fresh_database(
    db: Path, saes: list[Path], battery: dict[str, list[tuple]], console: Console
) -> list[Status]:
    """Each dictionary's status, after removing a database whose harvest no longer applies
    (another battery's, or of other or only some of the dictionaries: they are harvested
    together)."""
    status = statuses_of(db, saes, battery)
    stale = any(s.other_battery for s in status) or any(s.other_sae for s in status)
    if stale or (db.exists() and not all(s.harvested for s in status)):
        if stale:
            kind = "battery" if any(s.other_battery for s in status) else "SAE"
            console.print(
                f"      {db} holds another {kind}'s harvest; rebuilding it",
                style="dim",
                highlight=False,
            )
        db.unlink(missing_ok=True)
        shutil.rmtree(faiss_dir(db), ignore_errors=True)
        status = statuses_of(db, saes)
    return status


def full_steps(
    steps: Steps, cfg: DemoConfig, recipe: Recipe, db: Path, saes: list[Path], log: Log
) -> None:
    """Steps 6-8, behind --full: the layer probe, the grid and the explanations."""
    status = statuses_of(db, saes)
    later = None if cfg.full else "run `shoggoth demo --full` for it"
    probe = "probe where the persona lives, by layer"
    if later:
        steps.skip(6, probe, later)
    else:
        steps.run(
            6,
            probe,
            run_each(
                saes[:1],
                status[:1],
                "probed",
                lambda sae: probe_layers(LayersConfig(db=db, sae=sae, **recipe.layers)),
            ),
            "layer probe stored" if status[0].probed else "a linear probe per layer",
        )
    grid = "the mask in action: own answers, context × content grid"
    if recipe.generate is None:
        steps.skip(7, grid, f"{recipe.what} is not a causal LM")
    elif later:
        steps.skip(7, grid, later)
    else:
        settings = recipe.generate
        steps.run(
            7,
            grid,
            run_each(saes, status, "grid", lambda sae: grid_step(db, sae, settings, log)),
            "grid labels stored"
            if all(s.grid for s in status)
            else "generate each persona's answers, read them under every context",
        )
    explaining = "explain features with SmolLM2, scored on held-out examples"
    if recipe.explain is None:
        steps.skip(8, explaining, "the quick path (run `shoggoth explain` yourself)")
    elif later:
        steps.skip(8, explaining, later)
    else:
        settings = recipe.explain
        steps.run(
            8,
            explaining,
            run_each(
                saes[-1:],
                status[-1:],
                "explained",
                lambda sae: explain(ExplainConfig(db=db, sae=sae, **settings), log=log),
            ),
            "explanations stored"
            if status[-1].explained
            else f"{settings['limit']} features, detection and fuzzing scores",
        )


def build_demo(cfg: DemoConfig, console: Console | None = None) -> Path:
    """Build what is missing or stale; returns the database to explore."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    recipe = RECIPES[cfg.model]
    saes, db = recipe.sae_dirs(cfg.out), cfg.out / recipe.db_name
    console = console or Console(soft_wrap=True)
    steps = Steps(console)
    started = time.time()
    step, why = train_step(cfg.out, recipe)
    what = (
        "a residual SAE and a difference dictionary, from one paired stream"
        if len(saes) > 1
        else "the SAE"
    )
    steps.run(1, f"train {what} on {recipe.what}", step, why)

    personas = subset_personas(load_personas(), recipe.harvest.get("paraphrases"))
    items = subset_items(load_items(), recipe.harvest.get("items_per_topic"))
    status = fresh_database(db, saes, battery_of(personas, items), console)
    size = f"{sum(len(p.prompts) for p in personas)} prompts × {len(items)} answers"
    quiet = stderr_log()
    harvested = all(s.harvested for s in status)
    steps.run(
        2,
        "harvest the persona battery",
        None
        if harvested
        else lambda: harvest(HarvestConfig(db=db, sae_dir=saes, **recipe.harvest), log=quiet),
        f"{db}, {status[0].documents:,} documents"
        if harvested
        else size + (f", {len(saes)} dictionaries in one pass" if len(saes) > 1 else ""),
    )
    status = statuses_of(db, saes)
    steps.run(
        3,
        "label the features",
        run_each(
            saes, status, "labelled", lambda sae: label_database(LabelRunConfig(db=db, sae=sae))
        ),
        "labels stored"
        if all(s.labelled for s in status)
        else "prompts as replicates, matched controls, calibrated FDR, each mask decomposed",
    )
    effects = "measure causal effects and the composition test"
    if recipe.effects is None:
        steps.skip(4, effects, f"{recipe.what} is not a causal LM")
    else:
        settings, main = recipe.effects, saes[-1].name
        done = statuses_of(db, saes)[-1].effects
        steps.run(
            4,
            effects,
            None
            if done
            else lambda: run_effects(EffectsConfig(db=db, sae=main, **settings), log=quiet),
            "effects stored"
            if done
            else f"{main}: screen every feature, ablate and steer the top ones, rebuild each "
            "mask from its features",
        )
    status = statuses_of(db, saes)
    steps.run(
        5,
        "index the dictionary",
        run_each(
            saes,
            status,
            "indexed",
            lambda sae: index_harvest(IndexConfig(db=db, sae=sae), log=quiet),
        ),
        "dictionary stored"
        if all(s.indexed for s in status)
        else "examples, histograms, FAISS, persona vectors",
    )
    full_steps(steps, cfg, recipe, db, saes, quiet)
    console.print(f"built in {time.time() - started:.0f} s", highlight=False)
    return db
