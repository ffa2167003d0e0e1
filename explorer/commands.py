"""`shoggoth explore` (the Streamlit explorer on a database) and `shoggoth demo` (from nothing to
the explorer: train, harvest, label, index, serve — each step skipped when up to date)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console

from sae.configs import config_options
from sae.errors import BadInput, Interrupted

APP = Path(__file__).resolve().parent / "app.py"


@dataclass
class ExploreConfig:
    """`shoggoth explore`: browse a feature database in the browser."""

    db: Path | None = None
    """The feature database (from `shoggoth harvest`, `label` and `index`)."""
    host: str = "127.0.0.1"
    """Address to listen on. Only this machine by default; another address exposes the
    explorer (which can write manual labels) to the network."""
    port: int = 8501
    """Port to listen on."""


def check_port(host: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise BadInput(f"--port {port}: must be between 1 and 65535")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise BadInput(f"--host {host} --port {port}: cannot listen there "
                           f"({e.strerror}); choose another --port") from None


def serve(cfg: ExploreConfig) -> None:
    """Run the Streamlit explorer until interrupted."""
    if cfg.db is None:
        raise BadInput("--db: required (a feature database; `shoggoth demo --no-serve` builds "
                       "one)")
    check_port(cfg.host, cfg.port)
    err = Console(stderr=True, soft_wrap=True)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"note: listening on {cfg.host}: anyone who can reach it can read the database "
                  "and write manual labels", style="yellow", highlight=False)
    if not cfg.db.is_file():
        err.print(f"note: {cfg.db} does not exist yet; the explorer says how to build it",
                  style="yellow", highlight=False)
    Console(soft_wrap=True).print(f"shoggoth explorer: http://{cfg.host}:{cfg.port}  "
                                  f"({cfg.db}; Ctrl-C to stop)", highlight=False)
    command = [sys.executable, "-m", "streamlit", "run", str(APP),
               "--server.address", cfg.host, "--server.port", str(cfg.port),
               "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none", "--theme.base", "light",
               "--client.toolbarMode", "viewer"]
    env = {**os.environ, "SHOGGOTH_DB": str(cfg.db.resolve()), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(command, env=env)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=10)
        raise Interrupted("explorer stopped") from None
    if code:
        raise BadInput(f"the explorer exited with code {code}")


@click.command("explore")
@config_options(ExploreConfig)
def explore_command(cfg: ExploreConfig) -> None:
    """Browse a feature database in the browser (Streamlit, on 127.0.0.1 unless --host says
    otherwise): overview, feature table, feature pages, personas, search, SQL and a feature
    map. Read-only, except the manual labels it saves."""
    serve(cfg)


@dataclass
class DemoConfig:
    """`shoggoth demo`: from nothing to the explorer on the built-in model and battery."""

    out: Path = Path("runs")
    """Folder for the trained SAE and the feature database."""
    serve: bool = True
    """Start the explorer at the end (--no-serve: stop after building)."""
    host: str = "127.0.0.1"
    """Address the explorer listens on."""
    port: int = 8501
    """Port the explorer listens on."""


SAE_NAME = "sae-minilm-blocks.3.hook_resid_post-topk"


def run_step(console: Console, n: int, title: str, args: list[str] | None, why: str) -> None:
    """Run one pipeline step through the CLI (or report it skipped)."""
    from shoggoth import cli

    if args is None:
        console.print(f"[bold][{n}/5][/bold] {title}: up to date ({why})", highlight=False)
        return
    console.print(f"[bold][{n}/5][/bold] {title}: {why}", highlight=False)
    started = time.time()
    cli.main(args=args, prog_name="shoggoth", standalone_mode=False)
    console.print(f"      done in {time.time() - started:.0f} s", style="dim", highlight=False)


def demo(cfg: DemoConfig) -> None:
    """Train, harvest, label and index what is missing or stale, then serve."""
    from index.database import connect
    from sae.harvest import weights_sha256

    if cfg.serve:
        check_port(cfg.host, cfg.port)
    if cfg.out.exists() and not cfg.out.is_dir():
        raise BadInput(f"--out {cfg.out}: is a file, expected a folder")
    cfg.out.mkdir(parents=True, exist_ok=True)
    sae, db = cfg.out / SAE_NAME, cfg.out / "demo.duckdb"
    console = Console(soft_wrap=True)
    started = time.time()

    partial = cfg.out / f".{SAE_NAME}.partial"
    if (sae / "shoggoth.json").is_file():
        run_step(console, 1, "train the SAE on MiniLM", None, str(sae))
    else:
        flag = ["--resume"] if list(partial.glob("checkpoints/[0-9]*")) else \
            ["--overwrite"] if partial.exists() or sae.exists() else []
        run_step(console, 1, "train the SAE on MiniLM", ["train", "--out", str(sae), *flag],
                 "resuming" if flag == ["--resume"] else "no trained SAE yet")

    state = {"harvested": False, "labelled": False, "indexed": False}
    if db.is_file():
        con = connect(db, read_only=True)
        try:
            row = con.execute("SELECT weights_sha256, sae_id FROM saes").fetchone()
            names = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
            if row is not None and row[0] == weights_sha256(sae):
                state["harvested"] = True
                state["labelled"] = "features" in names and con.execute(
                    "SELECT count(*) FROM features").fetchone()[0] > 0
                state["indexed"] = "persona_vectors" in names and con.execute(
                    "SELECT count(*) FROM faiss_indexes").fetchone()[0] > 0
        finally:
            con.close()
        if not state["harvested"]:  # retrained SAE: its old harvest no longer applies
            console.print(f"      {db} holds another SAE's harvest; rebuilding it",
                          style="dim", highlight=False)
            db.unlink()
            shutil.rmtree(cfg.out / "demo.duckdb.faiss", ignore_errors=True)
    run_step(console, 2, "harvest the persona battery",
             None if state["harvested"] else ["harvest", "--db", str(db), "--sae", str(sae)],
             str(db) if state["harvested"] else "141 prompts × 240 answers")
    run_step(console, 3, "label the features",
             None if state["labelled"] else ["label", "--db", str(db)],
             "labels stored" if state["labelled"] else "Friedman + BH, AUROC, equivalence")
    run_step(console, 4, "index the dictionary",
             None if state["indexed"] else ["index", "--db", str(db)],
             "dictionary stored" if state["indexed"] else
             "examples, histograms, FAISS, persona vectors")
    console.print(f"built in {time.time() - started:.0f} s", highlight=False)
    if cfg.serve:
        console.print("[bold][5/5][/bold] explore", highlight=False)
        serve(ExploreConfig(db=db, host=cfg.host, port=cfg.port))
    else:
        console.print(f"[bold][5/5][/bold] explore: skipped (--no-serve); run "
                      f"`shoggoth explore --db {db}`", highlight=False)


@click.command("demo")
@config_options(DemoConfig)
def demo_command(cfg: DemoConfig) -> None:
    """From nothing to the explorer, offline: train the default SAE on MiniLM, harvest the
    built-in persona battery, label, index, then serve the explorer. Steps whose outputs are
    up to date are skipped."""
    demo(cfg)
