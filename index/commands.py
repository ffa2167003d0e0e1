"""CLI commands for the database side: `merge`, `label` and `sql`."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from core.config import config_options
from index.label_db import LabelRunConfig, label_database
from index.labels import LABELS
from index.merge import MergeConfig, merge
from index.sql import SqlConfig, run_sql, write_output


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
    """Label every feature of a harvested SAE (dead, rare, mask-specific, mask-family, shared,
    shared-modulated, unclear) with a Friedman test blocked by item, BH FDR, AUROC, paraphrase
    stability and a bootstrap equivalence bound; run the two calibrations; write features,
    feature_personas and calibration in one transaction."""
    result = label_database(cfg)
    features, calibration = result["features"], result["calibration"]
    console = Console(soft_wrap=True)
    console.print(f"{cfg.db} · {result['sae_id']} · {len(features):,} features", highlight=False)
    counts = Table(title="labels")
    counts.add_column("label")
    counts.add_column("features", justify="right")
    for label in LABELS:
        counts.add_row(label, f"{int((features['label'] == label).sum()):,}")
    console.print(counts)
    per = Table(title="per persona: features it is the top persona of, by label")
    per.add_column("persona", no_wrap=True, min_width=22)
    shown = ["mask-specific", "mask-family", "shared-modulated", "unclear"]
    for label in shown:
        per.add_column(label, justify="right")
    by = features[features["label"].isin(shown)].groupby(["argmax_persona", "label"]).size()
    for persona in features["argmax_persona"].dropna().unique():
        per.add_row(str(persona), *(f"{int(by.get((persona, lab), 0)):,}" for lab in shown))
    console.print(per)
    calib = Table(title="calibration (mask-specific should be ~0 in the fake runs)")
    for col in ("run", "n_live", "n_mask_specific", "n_mask_family", "n_shared"):
        calib.add_column(col)
    for row in calibration.itertuples(index=False):
        calib.add_row(row.run, f"{row.n_live:,}", f"{row.n_mask_specific:,}",
                      f"{row.n_mask_family:,}", f"{row.n_shared:,}")
    console.print(calib)


@click.command("sql")
@config_options(SqlConfig)
def sql_command(cfg: SqlConfig) -> None:
    """Run SQL on a feature database: read-only, with no access to files, the network or
    extensions (--write allows changing the database itself). Example queries:
    docs/queries.sql."""
    columns, rows, table = run_sql(cfg)
    write_output(cfg, columns, rows, table)
