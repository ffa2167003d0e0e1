"""`shoggoth demo`, the building part: train the default SAE on MiniLM, harvest the built-in
battery, label, index — each step run as a function, and skipped when the database says it is up
to date. Serving the explorer is the CLI's last step (explorer/commands.py)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from core.config import Config, option
from core.errors import BadInput
from core.progress import stderr_log
from index.dictionary import IndexConfig, faiss_dir
from index.label_db import LabelRunConfig, label_database
from index.status import sae_status
from pipeline.dictionary import index_harvest
from pipeline.harvest import HarvestConfig, harvest
from sae.personas import load_items, load_personas
from sae.sae_dir import weights_sha256
from sae.train import TrainConfig, train

SAE_NAME = "sae-minilm-blocks.3.hook_resid_post-topk"
STEPS = 5


@dataclass
class DemoConfig(Config):
    """`shoggoth demo`: from nothing to the explorer on the built-in model and battery."""

    out: Path = Path("runs")
    """Folder for the trained SAE and the feature database."""
    serve: bool = True
    """Start the explorer at the end (--no-serve: stop after building)."""
    host: str = "127.0.0.1"
    """Address the explorer listens on."""
    port: int = option(8501, min=1, max=65535)
    """Port the explorer listens on."""

    def check(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise BadInput(f"--out {self.out}: is a file, expected a folder")


class Steps:
    """Numbered step lines on the console: run (with its time) or up to date (with why)."""

    def __init__(self, console: Console) -> None:
        self.console = console

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


def train_step(out: Path) -> tuple[Callable[[], Any] | None, str]:
    """Train the default SAE unless it exists; resume an interrupted run."""
    sae = out / SAE_NAME
    if (sae / "shoggoth.json").is_file():
        return None, str(sae)
    partial = out / f".{SAE_NAME}.partial"
    resume = bool(list(partial.glob("checkpoints/[0-9]*")))
    overwrite = not resume and (partial.exists() or sae.exists())
    cfg = TrainConfig(out=sae, resume=resume, overwrite=overwrite)
    return (lambda: train(cfg, log=stderr_log()),
            "resuming" if resume else "no trained SAE yet")


def build_demo(cfg: DemoConfig, console: Console | None = None) -> Path:
    """Build what is missing or stale; returns the database to explore."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    sae, db = cfg.out / SAE_NAME, cfg.out / "demo.duckdb"
    console = console or Console(soft_wrap=True)
    steps = Steps(console)
    started = time.time()
    step, why = train_step(cfg.out)
    steps.run(1, "train the SAE on MiniLM", step, why)

    status = sae_status(db, weights_sha256(sae))
    if status.other_sae:  # retrained SAE: its old harvest no longer applies
        console.print(f"      {db} holds another SAE's harvest; rebuilding it", style="dim",
                      highlight=False)
        db.unlink()
        shutil.rmtree(faiss_dir(db), ignore_errors=True)
    personas, items = load_personas(), load_items()
    size = f"{sum(len(p.prompts) for p in personas)} prompts × {len(items)} answers"
    quiet = stderr_log()
    steps.run(2, "harvest the persona battery",
              None if status.harvested else
              lambda: harvest(HarvestConfig(db=db, sae=sae), log=quiet),
              f"{db}, {status.documents:,} documents" if status.harvested else size)
    steps.run(3, "label the features",
              None if status.labelled else lambda: label_database(LabelRunConfig(db=db)),
              "labels stored" if status.labelled else "Friedman + BH, AUROC, equivalence")
    steps.run(4, "index the dictionary",
              None if status.indexed else lambda: index_harvest(IndexConfig(db=db), log=quiet),
              "dictionary stored" if status.indexed else
              "examples, histograms, FAISS, persona vectors")
    console.print(f"built in {time.time() - started:.0f} s", highlight=False)
    return db
