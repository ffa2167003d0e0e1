"""CLI commands for the database side: `merge`, `label`, `index` and `sql`."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from index.dictionary import IndexConfig, build_dictionary
from index.label_db import LabelRunConfig, label_database
from index.labels import LABELS
from index.merge import MergeConfig, merge
from index.search import SearchConfig, search
from index.sql import SqlConfig, run_sql, write_output
from sae.configs import config_options


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


@click.command("index")
@config_options(IndexConfig)
def index_command(cfg: IndexConfig) -> None:
    """Build the feature dictionary of a harvested SAE: top and interval examples, activation
    histograms, FAISS neighbours by decoder direction and by persona profile, and logit effects
    (causal LMs). Rebuilt aside and renamed into place."""
    err = Console(stderr=True, soft_wrap=True)
    result = build_dictionary(cfg, log=lambda msg: err.print(msg, style="dim", highlight=False))
    Console(soft_wrap=True).print(
        f"{cfg.db} · {result['sae_id']} · {result['features']:,} features indexed in "
        f"{result['seconds']} s · decoder index {result['decoder_index']} (recall@10 "
        f"{result['recall_at_10']:.3f}) · persona profiles "
        f"{'indexed' if result['profiles'] else 'skipped (run shoggoth label first)'} · "
        f"{result['persona_vectors']} persona vectors · "
        f"logit effects {result['logit_effects']}", highlight=False)


@click.command("search")
@config_options(SearchConfig)
def search_command(cfg: SearchConfig) -> None:
    """Find features: --text "..." [--persona P] runs text through the model and SAE and shows
    the top features per token and overall; --feature F shows one feature (--similar: its
    nearest features by decoder direction, FAISS); --persona P shows the features nearest the
    persona's vector and its mask-specific features. All with labels; --json for scripts."""
    result = search(cfg)
    if cfg.json:
        click.echo(json.dumps(result, indent=1, default=str))
        return
    console = Console(soft_wrap=True)
    mode = result["mode"]
    if mode == "text":
        under = f" under persona '{result['persona']}'" if result["persona"] else ""
        console.print(f"{result['sae_id']} · {len(result['tokens'])} tokens{under}",
                      highlight=False)
        tokens = Table(title="top features per token")
        for col in ("pos", "token", "features (value, label)"):
            tokens.add_column(col)
        for t in result["tokens"]:
            tokens.add_row(str(t["pos"]), repr(t["token"]), ", ".join(
                f"{f['feature']} ({f['value']:.3g}, {f['label']})" for f in t["features"]))
        console.print(tokens)
        _print_features(console, "top features over the whole text", result["overall"],
                        ["feature", "mean_act", "max_act", "n_tokens", "label", "top_persona"])
    elif mode == "similar":
        console.print(f"feature {result['feature']} ({result['label']}) · nearest by decoder "
                      "direction", highlight=False)
        _print_features(console, "neighbours", result["neighbours"],
                        ["feature", "cosine", "label", "top_persona", "density"])
    elif mode == "feature":
        console.print(f"feature {result['feature']} · {result['label']}", highlight=False)
        stats = result.get("statistics") or {}
        if stats:
            console.print("  ".join(f"{k}={_fmt(v)}" for k, v in stats.items()),
                          highlight=False)
        _print_features(console, "top contexts", result.get("contexts", []),
                        ["rank", "value", "persona", "item_id", "context"])
    else:
        console.print(f"persona {result['persona']} · vector norm {_fmt(result['vector_norm'])} "
                      f"({result['relative_norm'] or 0:.1%} of the length of the non-control mean)",
                      highlight=False)
        _print_features(console, "features nearest the persona vector", result["nearest"],
                        ["feature", "cosine", "label", "top_persona", "density"])
        _print_features(console, "its mask-specific and mask-family features",
                        result["mask_specific"],
                        ["feature", "label", "top_share", "auroc", "q_value"])


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _print_features(console: Console, title: str, rows: list[dict[str, Any]],
                    columns: list[str]) -> None:
    from rich.text import Text

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for r in rows:
        table.add_row(*(Text(_fmt(r.get(c))) for c in columns))
    if not rows:
        table.add_row(*(["(none)"] + [""] * (len(columns) - 1)))
    console.print(table)
