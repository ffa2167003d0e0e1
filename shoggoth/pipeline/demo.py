"""`shoggoth demo`, the building part: train the demo SAE (on SmolLM2-135M-Instruct by default,
MiniLM with `--model minilm`), harvest the battery, label, probe the layers, index — each step run
as a function, and skipped when the database says it is up to date. Serving the explorer is the
CLI's last step (explorer/commands.py)."""

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
from shoggoth.core.progress import stderr_log
from shoggoth.index.dictionary.build import IndexConfig, faiss_dir
from shoggoth.index.labels.run import LabelRunConfig, label_database
from shoggoth.index.store.schema import battery_of
from shoggoth.index.store.status import sae_status
from shoggoth.pipeline.action.generate import GenerateConfig, generate_answers
from shoggoth.pipeline.action.grid import GridConfig, run_grid
from shoggoth.pipeline.build_index import index_harvest
from shoggoth.pipeline.effects.run import EffectsConfig, run_effects
from shoggoth.pipeline.explanations.run import ExplainConfig, explain
from shoggoth.pipeline.harvest.run import HarvestConfig, harvest
from shoggoth.pipeline.layers import LayersConfig, probe_layers
from shoggoth.sae.sae_dir import weights_sha256
from shoggoth.sae.train.run import TrainConfig, train

STEPS = 9


@dataclass(frozen=True)
class Recipe:
    """How the demo builds on one model: its hook, training and harvest settings, chosen to
    finish within 15 minutes on 2 CPU cores."""

    model: str
    layer: int
    """The hooked block (resid_post), chosen by benchmarks/persona_layer_probe.py for SmolLM2."""
    db_name: str
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig settings beyond the defaults."""
    harvest: dict[str, Any] = field(default_factory=dict)
    """HarvestConfig settings: a deterministic subset of the battery, recorded in the database."""
    layers: dict[str, Any] = field(default_factory=dict)
    """LayersConfig settings of the layer probe."""
    effects: dict[str, Any] | None = None
    """EffectsConfig settings of the causal check (None: the model is not a causal LM)."""
    generate: dict[str, Any] | None = None
    """GenerateConfig settings of the model's own answers for the grid (None: not a causal
    LM)."""
    explain: dict[str, Any] | None = None
    """ExplainConfig settings of the offline explanations (None: skipped)."""

    @property
    def sae_name(self) -> str:
        return f"sae-{self.model}-blocks.{self.layer}.hook_resid_post-topk"

    @property
    def what(self) -> str:
        return {"smollm2": "SmolLM2-135M-Instruct (Q4_1, dequantized)",
                "minilm": "MiniLM"}.get(self.model, self.model)


RECIPES = {
    "smollm2": Recipe("smollm2", 15, "demo.duckdb",
                      train={"tokens": 300_000, "expansion": 4, "k": 32},
                      harvest={"paraphrases": 2, "items_per_topic": 6},
                      layers={"items_per_topic": 2, "layers": "0,3,6,9,12,15,18,21,24,27,29"},
                      effects={"items_per_topic": 2, "top": 12, "baseline": 8},
                      generate={"items_per_topic": 1, "max_tokens": 40},
                      explain={"limit": 20}),
    "minilm": Recipe("minilm", 3, "demo-minilm.duckdb", layers={"items_per_topic": 2}),
}


@dataclass
class DemoConfig(Config):
    """`shoggoth demo`: from nothing to the explorer on the built-in model and battery."""

    model: Literal["smollm2", "minilm"] = "smollm2"
    """smollm2: the chat model, on a subset of the battery; minilm: the quick path (an encoder
    that wears no mask), on the whole battery."""
    out: Path = Path("runs")
    """Folder for the trained SAE and the feature database."""
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
        self.console.print(f"[bold][{n}/{STEPS}][/bold] {title}: skipped ({why})",
                           highlight=False)

    def run(self, n: int, title: str, step: Callable[[], Any] | None, why: str) -> None:
        head = f"[bold][{n}/{STEPS}][/bold] {title}"
        if step is None:
            self.console.print(f"{head}: up to date ({why})", highlight=False)
            return
        self.console.print(f"{head}: {why}", highlight=False)
        started = time.time()
        step()
        self.console.print(f"      done in {time.time() - started:.0f} s", style="dim",
                           highlight=False)


def train_step(out: Path, recipe: Recipe) -> tuple[Callable[[], Any] | None, str]:
    """Train the demo SAE unless it exists; resume an interrupted run."""
    sae = out / recipe.sae_name
    if (sae / "shoggoth.json").is_file():
        return None, str(sae)
    partial = out / f".{recipe.sae_name}.partial"
    resume = bool(list(partial.glob("checkpoints/[0-9]*")))
    overwrite = not resume and (partial.exists() or sae.exists())
    cfg = TrainConfig(model=recipe.model, layer=[recipe.layer], out=sae, resume=resume,
                      overwrite=overwrite, **recipe.train)
    return (lambda: train(cfg, log=stderr_log()),
            "resuming" if resume else "no trained SAE yet")


def grid_step(db: Path, settings: dict[str, Any], log: Callable[[str], None]) -> None:
    """Generate the demo's own answers (resumed or skipped when done), then the grid against
    both reference texts: the battery's answers and the model's own under no persona."""
    generate_answers(GenerateConfig(db=db, **settings), log=log)
    for neutral in ("battery", "own"):
        run_grid(GridConfig(db=db, neutral=neutral), log=log)


def build_demo(cfg: DemoConfig, console: Console | None = None) -> Path:
    """Build what is missing or stale; returns the database to explore."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    recipe = RECIPES[cfg.model]
    sae, db = cfg.out / recipe.sae_name, cfg.out / recipe.db_name
    console = console or Console(soft_wrap=True)
    steps = Steps(console)
    started = time.time()
    step, why = train_step(cfg.out, recipe)
    steps.run(1, f"train the SAE on {recipe.what}", step, why)

    personas = subset_personas(load_personas(), recipe.harvest.get("paraphrases"))
    items = subset_items(load_items(), recipe.harvest.get("items_per_topic"))
    status = sae_status(db, weights_sha256(sae), battery_of(personas, items))
    if status.other_sae or status.other_battery:  # its old harvest no longer applies
        console.print(f"      {db} holds another {'SAE' if status.other_sae else 'battery'}'s "
                      "harvest; rebuilding it", style="dim", highlight=False)
        db.unlink()
        shutil.rmtree(faiss_dir(db), ignore_errors=True)
        status = sae_status(db, weights_sha256(sae))
    size = f"{sum(len(p.prompts) for p in personas)} prompts × {len(items)} answers"
    quiet = stderr_log()
    steps.run(2, "harvest the persona battery",
              None if status.harvested else
              lambda: harvest(HarvestConfig(db=db, sae_dir=[sae], **recipe.harvest), log=quiet),
              f"{db}, {status.documents:,} documents" if status.harvested else size)
    steps.run(3, "label the features",
              None if status.labelled else lambda: label_database(LabelRunConfig(db=db)),
              "labels stored" if status.labelled else
              "prompts as replicates, matched controls, calibrated FDR")
    steps.run(4, "probe where the persona lives, by layer",
              None if status.probed else
              lambda: probe_layers(LayersConfig(db=db, **recipe.layers)),
              "layer probe stored" if status.probed else "a linear probe per layer")
    effects = "measure causal effects (ablation and steering)"
    if recipe.effects is None:
        steps.skip(5, effects, f"{recipe.what} is not a causal LM")
    else:
        settings = recipe.effects
        steps.run(5, effects, None if status.effects else
                  lambda: run_effects(EffectsConfig(db=db, **settings), log=quiet),
                  "effects stored" if status.effects else
                  "screen every feature, ablate and steer the top ones")
    grid = "the mask in action: own answers, context × content grid"
    if recipe.generate is None:
        steps.skip(6, grid, f"{recipe.what} is not a causal LM")
    else:
        settings = recipe.generate
        steps.run(6, grid, None if status.grid else lambda: grid_step(db, settings, quiet),
                  "grid labels stored" if status.grid else
                  "generate each persona's answers, read them under every context")
    steps.run(7, "index the dictionary",
              None if status.indexed else lambda: index_harvest(IndexConfig(db=db), log=quiet),
              "dictionary stored" if status.indexed else
              "examples, histograms, FAISS, persona vectors")
    explaining = "explain features with SmolLM2, scored on held-out examples"
    if recipe.explain is None:
        steps.skip(8, explaining, "the quick path (run `shoggoth explain` yourself)")
    else:
        settings = recipe.explain
        steps.run(8, explaining, None if status.explained else
                  lambda: explain(ExplainConfig(db=db, **settings), log=quiet),
                  "explanations stored" if status.explained else
                  f"{settings['limit']} features, detection and fuzzing scores")
    console.print(f"built in {time.time() - started:.0f} s", highlight=False)
    return db
