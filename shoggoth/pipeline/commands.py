"""CLI commands for the steps that need a model and the database: `harvest`, `index`,
`explain` and `search`."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shoggoth.core.config import config_options
from shoggoth.core.progress import stderr_log
from shoggoth.index.dictionary.build import IndexConfig
from shoggoth.index.store.read import Dictionary, explanations
from shoggoth.pipeline.build_index import index_harvest
from shoggoth.pipeline.explanations.run import ExplainConfig, explain
from shoggoth.pipeline.harvest.ray_shards import harvest_with_ray
from shoggoth.pipeline.harvest.run import HarvestConfig, harvest
from shoggoth.pipeline.layers import LayersConfig, probe_layers
from shoggoth.pipeline.search import SearchConfig, search


def print_summary(result: dict[str, object]) -> None:
    """The end-of-harvest report: documents, tokens, activations, size on disk, time."""
    title = (f"{result['db']} · {result['sae_id']}"
             + (" · already harvested, nothing to do" if result.get("already_harvested") else
                f" · harvested in {result['seconds']} s"))
    Console(soft_wrap=True).print(title, highlight=False)
    table = Table()
    table.add_column("")
    table.add_column("value", justify="right")
    keys = ["documents", "tokens", "activations", "file_bytes", "bytes_per_activation",
            "file_bytes_per_token"]
    if result.get("tokens_per_second"):
        keys += ["batch_seconds", "tokens_per_second"]
    for key in keys:
        value = result[key]
        table.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else
                      str(value))
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
    result = harvest_with_ray(cfg, log=stderr_log()) if cfg.ray else \
        harvest(cfg, log=stderr_log())
    for one in [result, *result.get("others", [])]:
        print_summary(one)


@click.command("index")
@config_options(IndexConfig)
def index_command(cfg: IndexConfig) -> None:
    """Build the feature dictionary of a harvested SAE: top and interval examples, activation
    histograms, FAISS neighbours by decoder direction and by persona profile, and logit effects
    (causal LMs). Rebuilt aside and renamed into place."""
    result = index_harvest(cfg, log=stderr_log())
    Console(soft_wrap=True).print(
        f"{cfg.db} · {result['sae_id']} · {result['features']:,} features indexed in "
        f"{result['seconds']} s · decoder index {result['decoder_index']} (recall@10 "
        f"{result['recall_at_10']:.3f}) · persona profiles "
        f"{'indexed' if result['profiles'] else 'skipped (run shoggoth label first)'} · "
        f"{result['persona_vectors']} persona vectors · "
        f"logit effects {result['logit_effects']}", highlight=False)


@click.command("explain")
@config_options(ExplainConfig)
def explain_command(cfg: ExplainConfig) -> None:
    """Explain features with a language model (an OpenAI-compatible endpoint, or a local
    instruct model: SmolLM2 offline by default) from their top and interval examples and
    per-persona means, and score each explanation on held-out examples by detection and
    fuzzing (the AUC of the judge's yes-versus-no margins; 0.5 is chance). Resumable; one line
    per failed request."""
    result = explain(cfg, log=stderr_log())
    d = Dictionary(cfg.db, result["sae_id"])
    try:
        table = explanations(d.con, d.sae_id)
    finally:
        d.close()
    console = Console(soft_wrap=True)
    console.print(f"{cfg.db} · {result['sae_id']} · {result['explained']} explained in "
                  f"{result['seconds']} s · {len(table)} explanations stored", highlight=False)
    out = Table()
    for col in ("feature", "name", "explanation", "detection", "fuzzing"):
        out.add_column(col)
    for r in table.itertuples():
        out.add_row(str(r.feature), Text(str(r.name)), Text(r.explanation),
                    _score(r.detection, r.detection_n), _score(r.fuzzing, r.fuzzing_n))
    console.print(out)
    if result["failed"]:
        raise click.ClickException(
            f"{len(result['failed'])} of {len(result['failed']) + result['explained']} "
            "features were not explained (see above); rerun the same command to retry them")


def _score(value: float | None, n: int) -> str:
    return "n/a" if value is None or value != value else f"{value:.2f} (n={n})"


@click.command("layers")
@config_options(LayersConfig)
def layers_command(cfg: LayersConfig) -> None:
    """Where the persona lives, by layer: a linear probe names the persona from answer-token
    residuals on held-out items and prompts, the persona vectors' norms, and at the SAE's layer
    the share of the persona signal its reconstruction carries versus its error term. Writes
    the layer_probe table."""
    table = probe_layers(cfg)
    console = Console(soft_wrap=True)
    chance = table["chance"].iloc[0]
    console.print(f"{cfg.db} · {len(table)} layers · {table['n_documents'].iloc[0]:,} documents "
                  f"· chance {chance:.3f}", highlight=False)
    out = Table(title="where the persona lives")
    for col in ("layer", "probe accuracy", "persona norm (mean, max)", "SAE share of signal",
                "probe on SAE recon / error"):
        out.add_column(col, justify="right")
    for r in table.itertuples(index=False):
        sae = "" if r.sae_signal_fraction is None or r.sae_signal_fraction != \
            r.sae_signal_fraction else f"{r.sae_signal_fraction:.1%}"
        parts = "" if not sae else f"{r.probe_on_reconstruction:.3f} / {r.probe_on_error:.3f}"
        out.add_row(f"{r.layer}{' (SAE)' if r.is_sae_layer else ''}", f"{r.probe_accuracy:.3f}",
                    f"{r.persona_norm_mean:.1%}, {r.persona_norm_max:.1%}", sae, parts)
    console.print(out)


@click.command("search")
@config_options(SearchConfig)
def search_command(cfg: SearchConfig) -> None:
    """Find features: --text "..." [--persona P] runs text through the model and SAE and shows
    the top features per token and overall; --name TEXT finds features by handle or
    explanation; --feature F shows one feature (--similar: its
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
                f"{f['feature']} {f['name'] or ''} ({f['value']:.3g}, {f['label']})"
                for f in t["features"]))
        console.print(tokens)
        _print_features(console, "top features over the whole text", result["overall"],
                        ["feature", "name", "mean_act", "max_act", "n_tokens", "label"])
    elif mode == "name":
        _print_features(console, f"features named like {result['query']!r}", result["features"],
                        ["feature", "name", "label", "explanation", "detection", "fuzzing"])
    elif mode == "similar":
        console.print(f"feature {result['feature']} ({result['label']}) · nearest by decoder "
                      "direction", highlight=False)
        _print_features(console, "neighbours", result["neighbours"],
                        ["feature", "name", "cosine", "label", "density"])
    elif mode == "feature":
        console.print(f"feature {result['feature']} · {result.get('name') or '(no handle)'} · "
                      f"{result['label']}", highlight=False)
        if result.get("explanation"):
            console.print(f"explanation ({result['explainer']}): {result['explanation']} · "
                          f"detection {_fmt(result['detection'])}, fuzzing "
                          f"{_fmt(result['fuzzing'])}", highlight=False)
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
                        ["feature", "name", "cosine", "label", "density"])
        _print_features(console, "its own features (mask-specific, persona-concept, "
                        "mask-or-concept, mask-family)", result["mask_specific"],
                        ["feature", "name", "label", "top_share", "set_ratio", "q_value"])


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _print_features(console: Console, title: str, rows: list[dict[str, Any]],
                    columns: list[str]) -> None:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for r in rows:
        table.add_row(*(Text(_fmt(r.get(c))) for c in columns))
    if not rows:
        table.add_row(*(["(none)"] + [""] * (len(columns) - 1)))
    console.print(table)
