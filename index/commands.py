"""CLI commands for the database side: `merge`, `label`, `sql` and `export`."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from core.config import config_options
from core.startup import hard_exit, running_as_program
from index.export import ExportConfig, export
from index.label_db import LabelRunConfig, label_database
from index.merge import MergeConfig, merge
from index.sql import SqlConfig, bound_address_space, run_sql, write_output


@click.command("merge")
@config_options(MergeConfig)
def merge_command(cfg: MergeConfig) -> None:
    """Combine database files — the N shard files of `shoggoth harvest --shard I/N`, or
    databases holding different SAEs of the same battery — into --db, in one transaction."""
    result = merge(cfg)
    saes = ", ".join(f"{k} ({v} file{'s' if v > 1 else ''})" for k, v in result["saes"].items())
    Console(soft_wrap=True).print(f"{result['db']}: merged {saes}", highlight=False)


@click.command("label")
@config_options(LabelRunConfig)
def label_command(cfg: LabelRunConfig) -> None:
    """Label every feature of a harvested SAE (mask-specific, persona-concept, mask-family,
    mask-general, shared, …) with the prompt as the replicate: a permutation test over the
    prompts' personas (BH FDR), contrast and paraphrase rules, matched mention/negation
    controls and an equivalence bound with its power. Prompt-reassignment and split
    calibration runs give each label its estimated false-discovery rate. Writes features,
    feature_personas, calibration and label_fdr in one transaction (docs/labels.md)."""
    result = label_database(cfg)
    features, fdr = result["features"], result["fdr"]
    console = Console(soft_wrap=True)
    err = Console(stderr=True, soft_wrap=True)
    for note in result["notes"]:
        err.print(f"note: {note}", highlight=False)
    console.print(f"{cfg.db} · {result['sae_id']} · {len(features):,} features", highlight=False)
    seeds = cfg.calibration_seeds
    counts = Table(title=f"labels, with their counts under the null (mean of {seeds} prompt "
                         "reassignments; split personas) and the estimated FDR")
    for col in ("label", "features", "null (reassigned)", "null (split)", "est. FDR"):
        counts.add_column(col, justify="left" if col == "label" else "right")
    for row in fdr.itertuples(index=False):
        est = "n/a" if row.fdr is None or row.fdr != row.fdr else f"{100 * row.fdr:.1f}%"
        split = "" if row.n_split is None or row.n_split != row.n_split else f"{int(row.n_split):,}"
        counts.add_row(row.label, f"{row.n_real:,}", f"{row.n_null:,.1f}", split, est)
    console.print(counts)
    per = Table(title="per persona: features it is the top persona of, by label")
    per.add_column("persona", no_wrap=True, min_width=22)
    shown = ["mask-specific", "persona-concept", "mask-or-concept", "shared-modulated"]
    for label in shown:
        per.add_column(label, justify="right")
    by = features[features["label"].isin(shown)].groupby(["argmax_persona", "label"]).size()
    for persona in features["argmax_persona"].dropna().unique():
        per.add_row(str(persona), *(f"{int(by.get((persona, lab), 0)):,}" for lab in shown))
    console.print(per)


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
    hard_exit(f"error: sql: stopped after {timeout:g} s (--timeout); narrow the query or raise "
              "--timeout", 2)


@click.command("export")
@config_options(ExportConfig)
def export_command(cfg: ExportConfig) -> None:
    """Export the database as Parquet: the bulk tables Hive-partitioned (activations and
    doc_features by SAE and persona, sorted by feature), the others one file each, plus
    shoggoth.duckdb, a DuckDB file of views with the same names and columns, so the documented
    queries run on it unchanged (`shoggoth sql --db DIR/shoggoth.duckdb`), on this machine or,
    with --location, in object storage. Built aside and renamed into place."""
    out = export(cfg)
    console = Console(soft_wrap=True)
    total = sum(out["rows"].values())
    console.print(f"{out['parquet']}: {len(out['rows'])} tables, {total:,} rows, "
                  f"{out['bytes'] / 1e6:,.1f} MB; views in {out['views']} reading "
                  f"{out['location']}", highlight=False)
