"""CLI commands on the database itself: `merge`, `sql`, `export` and `status`. They load no
model library (tests/cli/test_cli.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from shoggoth.core.config import Config, config_options, option
from shoggoth.core.names import shown_name
from shoggoth.core.printing import Format
from shoggoth.core.startup import hard_exit, running_as_program
from shoggoth.index.store.export import ExportConfig, export
from shoggoth.index.store.merge import MergeConfig, merge
from shoggoth.index.store.sql import SqlConfig, bound_address_space, run_sql, write_output
from shoggoth.index.store.status import STAGES, database_status


@click.command("merge")
@config_options(MergeConfig)
def merge_command(cfg: MergeConfig) -> None:
    """Combine database files — the N shard files of `shoggoth harvest --shard I/N`, or
    databases holding different SAEs of the same battery — into --db, in one transaction."""
    result = merge(cfg)
    saes = ", ".join(f"{k} ({v} file{'s' if v > 1 else ''})" for k, v in result["saes"].items())
    Console(soft_wrap=True).print(f"{result['db']}: merged {saes}", highlight=False)


@click.command("sql")
@config_options(SqlConfig)
def sql_command(cfg: SqlConfig) -> None:
    """Run SQL on a feature database: read-only, with no access to files, the network or
    extensions (--write allows changing the database itself). Example queries:
    docs/queries.sql."""
    if running_as_program():
        bound_address_space(cfg.memory_limit)
    columns, rows, table = run_sql(cfg, on_stuck=lambda why: exit_stuck(why, cfg.timeout))
    write_output(cfg, columns, rows, table)


def exit_stuck(why: str, timeout: float) -> None:
    """A query that ignores its interrupt: end the process with the line a stopped query gets
    (a read-only connection has nothing to lose; DuckDB's log keeps a write atomic)."""
    if why == "interrupt":
        hard_exit("interrupted", 130)
    hard_exit(
        f"error: sql: stopped after {timeout:g} s (--timeout); narrow the query or raise --timeout",
        2,
    )


@click.command("export")
@config_options(ExportConfig)
def export_command(cfg: ExportConfig) -> None:
    """Export the database as Parquet: the bulk tables Hive-partitioned (activations and
    doc_features by SAE and persona, sorted by feature), the others one file each, plus
    shoggoth.duckdb, a DuckDB file of views with the same names and columns, so the documented
    queries run on it unchanged (`shoggoth sql --db DIR/shoggoth.duckdb`), on this machine or,
    with --location, in object storage. README.md, a Hugging Face dataset card, lets
    `datasets.load_dataset(DIR, TABLE)` read each table whole. --delphi DIR writes one SAE's
    harvest as delphi's latent cache (one row per document; rows.parquet names them).
    --neuronpedia DIR writes one indexed SAE's features, examples, logits, neighbours, label
    and explanation in Neuronpedia's bulk-import layout, and --neuronpedia-url uploads them
    to a Neuronpedia instance (the key in NEURONPEDIA_API_KEY). Built aside and renamed into
    place."""
    out = export(cfg)
    console = Console(soft_wrap=True)
    if "delphi" in out:
        cache = out["delphi"]
        console.print(
            f"{cache['folder']}: delphi cache of {shown_name(cache['sae_id'])} "
            f"(latents/{shown_name(cache['hook'])}): {cache['rows']:,} rows × "
            f"{cache['ctx']} tokens, {cache['activations']:,} activations in "
            f"{cache['splits']} splits, {cache['bytes'] / 1e6:,.1f} MB",
            highlight=False,
            markup=False,
        )
    if "neuronpedia" in out:
        np = out["neuronpedia"]
        console.print(
            f"{np['source_folder']}: Neuronpedia export of "
            f"{shown_name(np['sae_id'])} as {np['model_id']}/{np['source']}: "
            f"{np['features']:,} features, {np['activations']:,} examples, "
            f"{np['explanations']:,} explanations in {np['batches']} batches, "
            f"{np['bytes'] / 1e6:,.1f} MB",
            highlight=False,
            markup=False,
        )
        if "uploaded" in np:
            sent = np["uploaded"]
            console.print(
                f"uploaded {sent['features']:,} features to {sent['endpoint']} in "
                f"{sent['requests']} requests",
                highlight=False,
                markup=False,
            )
    if "parquet" in out:
        total = sum(out["rows"].values())
        console.print(
            f"{out['parquet']}: {len(out['rows'])} tables, {total:,} rows, "
            f"{out['bytes'] / 1e6:,.1f} MB; views in {out['views']} reading "
            f"{out['location']}",
            highlight=False,
        )


@dataclass
class StatusConfig(Config):
    """`shoggoth status`: what a feature database holds."""

    db: Path = option(required="the feature database to describe")
    """The feature database."""
    format: Format = "table"
    """table (for reading) or json (for scripts)."""


@click.command("status")
@config_options(StatusConfig)
def status_command(cfg: StatusConfig) -> None:
    """What a feature database holds, per SAE: its kind (residual or difference dictionary),
    model, hook and width, the documents
    harvested, and whether it has been labelled, probed by layer, measured by `effects`, put
    through the grid, indexed and explained."""
    rows = database_status(cfg.db)
    if cfg.format == "json":
        click.echo(json.dumps(rows, indent=1))
        return
    table = Table(title=f"{cfg.db}: {len(rows)} SAE(s)")
    for column in ("sae_id", "kind", "model", "hook", "d_sae", "documents", *STAGES):
        table.add_column(
            column, justify="left" if column in ("sae_id", "kind", "model", "hook") else "right"
        )
    for row in rows:
        table.add_row(
            *(
                ("yes" if v else "no")
                if isinstance(v, bool)
                else f"{v:,}"
                if isinstance(v, int)
                else str(v)
                for v in row.values()
            )
        )
    Console(soft_wrap=True).print(table)
