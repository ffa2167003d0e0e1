"""CLI commands for the database side: `merge`."""

from __future__ import annotations

import click
from rich.console import Console

from index.merge import MergeConfig, merge
from sae.configs import config_options


@click.command("merge")
@config_options(MergeConfig)
def merge_command(cfg: MergeConfig) -> None:
    """Combine database files — the N shard files of `shoggoth harvest --shard I/N`, or
    databases holding different SAEs of the same battery — into --db, in one transaction."""
    result = merge(cfg)
    saes = ", ".join(f"{k} ({v} file{'s' if v > 1 else ''})" for k, v in result["saes"].items())
    Console(soft_wrap=True).print(f"{result['db']}: merged {saes}", highlight=False)
