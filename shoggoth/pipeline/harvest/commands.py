"""`shoggoth harvest`: the command and its end-of-run report."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from shoggoth.core.config import config_options
from shoggoth.core.printing import print_json
from shoggoth.core.progress import stderr_log
from shoggoth.index.harvest.store import HarvestSummary
from shoggoth.pipeline.harvest.ray_shards import harvest_with_ray
from shoggoth.pipeline.harvest.run import HarvestConfig, harvest


def print_summary(result: HarvestSummary) -> None:
    """The end-of-harvest report: documents, tokens, activations, size on disk, time."""
    title = f"{result.db} · {result.sae_id}" + (
        " · already harvested, nothing to do"
        if result.already_harvested
        else f" · harvested in {result.seconds} s"
    )
    Console(soft_wrap=True).print(title, highlight=False)
    table = Table()
    table.add_column("")
    table.add_column("value", justify="right")
    rows: list[tuple[str, float | None]] = [
        ("documents", result.documents),
        ("tokens", result.tokens),
        ("activations", result.activations),
        ("file bytes", result.file_bytes),
        ("bytes per activation", result.bytes_per_activation),
        ("file bytes per token", result.file_bytes_per_token),
    ]
    if result.tokens_per_second:
        rows += [
            ("batch seconds", result.batch_seconds),
            ("tokens per second", result.tokens_per_second),
        ]
    for name, value in rows:
        table.add_row(name, f"{value:,}" if isinstance(value, int) else str(value))
    Console().print(table)


@click.command("harvest")
@config_options(HarvestConfig)
def harvest_command(cfg: HarvestConfig) -> None:
    """Run the model under every persona of the battery on the same answers, encode the answer
    tokens with the SAE, and store the non-zero activations in a DuckDB feature database.
    Several --sae of one model (other hooks or widths) share every forward pass, which stops
    after the deepest hooked block, and are written in the same transactions. --ray runs
    --workers shards as Ray tasks and merges them. Resumable: rerun the same command after an
    interruption."""
    result = harvest_with_ray(cfg, log=stderr_log()) if cfg.ray else harvest(cfg, log=stderr_log())
    if cfg.format == "json":
        print_json(result.as_json())
        return
    for one in result.summaries:
        print_summary(one)
