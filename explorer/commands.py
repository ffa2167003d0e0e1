"""`shoggoth explore` (the Streamlit explorer on a database) and `shoggoth demo` (pipeline.demo
builds what is missing, then the explorer serves it)."""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console

from shoggoth.core.config import Config, config_options, option
from shoggoth.core.errors import BadInput, Interrupted
from shoggoth.core.processes import start_child, wait_forwarding
from shoggoth.explorer.store import check_database
from shoggoth.pipeline.demo import STEPS, DemoConfig, build_demo

APP = Path(__file__).resolve().parent / "app.py"


@dataclass
class ExploreConfig(Config):
    """`shoggoth explore`: browse a feature database in the browser."""

    db: Path = option(required="a feature database; `shoggoth demo --no-serve` builds one")
    """The feature database (from `shoggoth harvest`, `label` and `index`)."""
    host: str = "127.0.0.1"
    """Address to listen on. Only this machine by default; another address exposes the
    explorer (which can write manual labels) to the network."""
    port: int = option(8501, min=1, max=65535)
    """Port to listen on."""


def check_port(host: str, port: int) -> None:
    """BadInput in one line when nothing can listen on host:port."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise BadInput(
                f"--host {host} --port {port}: cannot listen there "
                f"({e.strerror}); choose another --port"
            ) from None


def serve(cfg: ExploreConfig) -> None:
    """Run the Streamlit explorer until interrupted."""
    problem = check_database(cfg.db)  # what the explorer would say, before a server starts
    if problem is not None:
        raise BadInput(problem)
    check_port(cfg.host, cfg.port)
    err = Console(stderr=True, soft_wrap=True)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        err.print(
            f"note: listening on {cfg.host}: anyone who can reach it can read the database "
            "and write manual labels",
            style="yellow",
            highlight=False,
        )
    Console(soft_wrap=True).print(
        f"shoggoth explorer: http://{cfg.host}:{cfg.port}  ({cfg.db}; Ctrl-C to stop)",
        highlight=False,
    )
    # Streamlit, through a launcher that answers 403 to any Host header but loopback and
    # --host (a page on a name rebound to 127.0.0.1 cannot drive the explorer).
    command = [
        sys.executable,
        "-m",
        "shoggoth.explorer.launch",
        "run",
        str(APP),
        "--server.address",
        cfg.host,
        "--server.port",
        str(cfg.port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--theme.base",
        "light",
        "--client.toolbarMode",
        "viewer",
    ]
    env = {**os.environ, "SHOGGOTH_DB": str(cfg.db.resolve()), "HF_HUB_OFFLINE": "1"}
    proc = start_child(command, env)
    try:
        code = wait_forwarding(proc)
    except KeyboardInterrupt:
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


def demo(cfg: DemoConfig) -> None:
    """Build the demo (pipeline.demo), then serve it unless --no-serve."""
    if cfg.serve:
        check_port(cfg.host, cfg.port)
    console = Console(soft_wrap=True)
    db = build_demo(cfg, console)
    if cfg.serve:
        console.print(f"[bold][{STEPS}/{STEPS}][/bold] explore", highlight=False)
        serve(ExploreConfig(db=db, host=cfg.host, port=cfg.port))
    else:
        console.print(
            f"[bold][{STEPS}/{STEPS}][/bold] explore: skipped (--no-serve); run "
            f"`shoggoth explore --db {db}`",
            highlight=False,
        )


@click.command("demo")
@config_options(DemoConfig)
def demo_command(cfg: DemoConfig) -> None:
    """From nothing to the explorer, offline: on SmolLM2-135M-Instruct (a chat model; --model
    gemma3 for Gemma 3 270M, a base model of another family; --model minilm for the quick
    encoder path), train a residual SAE and a persona-difference
    dictionary from one paired stream, harvest the built-in persona battery with both, label
    them (each mask decomposed), measure causal effects and the composition test, index, then
    serve the explorer; --full adds the layer probe, the grid and the explanations. Steps whose
    outputs are up to date are skipped."""
    demo(cfg)
