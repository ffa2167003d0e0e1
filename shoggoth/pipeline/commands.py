"""CLI commands for the steps that need a model and the database: `harvest`, `index`,
`explain` and `search`."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shoggoth.core.config import config_options
from shoggoth.core.printing import number, print_json, shown
from shoggoth.core.progress import stderr_log
from shoggoth.index.catalog.build import IndexConfig
from shoggoth.index.explanations.queries import explanations
from shoggoth.index.store.read import SaeView
from shoggoth.pipeline.build_index import index_harvest
from shoggoth.pipeline.explanations.run import ExplainConfig, explain
from shoggoth.pipeline.harvest.ray_shards import harvest_with_ray
from shoggoth.pipeline.harvest.run import HarvestConfig, harvest
from shoggoth.pipeline.layers import LayersConfig, probe_layers


def print_summary(result: dict[str, object]) -> None:
    """The end-of-harvest report: documents, tokens, activations, size on disk, time."""
    title = f"{result['db']} · {result['sae_id']}" + (
        " · already harvested, nothing to do"
        if result.get("already_harvested")
        else f" · harvested in {result['seconds']} s"
    )
    Console(soft_wrap=True).print(title, highlight=False)
    table = Table()
    table.add_column("")
    table.add_column("value", justify="right")
    keys = [
        "documents",
        "tokens",
        "activations",
        "file_bytes",
        "bytes_per_activation",
        "file_bytes_per_token",
    ]
    if result.get("tokens_per_second"):
        keys += ["batch_seconds", "tokens_per_second"]
    for key in keys:
        value = result[key]
        table.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value))
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
        print_json(result)
        return
    for one in [result, *result.get("others", [])]:
        print_summary(one)


@click.command("index")
@config_options(IndexConfig)
def index_command(cfg: IndexConfig) -> None:
    """Build the feature catalog of a harvested SAE: top and interval examples, activation
    histograms, FAISS neighbours by decoder direction and by persona profile, and logit effects
    (causal LMs). Rebuilt aside and renamed into place."""
    result = index_harvest(cfg, log=stderr_log())
    if cfg.format == "json":
        print_json(result)
        return
    Console(soft_wrap=True).print(
        f"{cfg.db} · {result['sae_id']} · {result['features']:,} features indexed in "
        f"{result['seconds']} s · decoder index {result['decoder_index']} (recall@10 "
        f"{result['recall_at_10']:.3f}) · persona profiles "
        f"{'indexed' if result['profiles'] else 'skipped (run shoggoth label first)'} · "
        f"{result['persona_vectors']} persona vectors · "
        f"logit effects {result['logit_effects']}",
        highlight=False,
    )


@click.command("explain")
@config_options(ExplainConfig)
def explain_command(cfg: ExplainConfig) -> None:
    """Explain features with a language model (an OpenAI-compatible endpoint, or a local
    instruct model: SmolLM2 offline by default) from their top and interval examples and
    per-persona means, and score each explanation on held-out examples by detection and
    fuzzing (the AUC of the judge's yes-versus-no margins; 0.5 is chance). Resumable; one line
    per failed request."""
    result = explain(cfg, log=stderr_log())
    d = SaeView(cfg.db, result["sae_id"])
    try:
        table = explanations(d.con, d.sae_id)
    finally:
        d.close()
    console = Console(soft_wrap=True)
    console.print(
        f"{cfg.db} · {result['sae_id']} · {result['explained']} explained in "
        f"{result['seconds']} s · {len(table)} explanations stored",
        highlight=False,
    )
    out = Table()
    for col in ("feature", "name", "explanation", "detection", "fuzzing"):
        out.add_column(col)
    for r in table.itertuples():
        out.add_row(
            str(r.feature),
            Text(str(r.name)),
            Text(r.explanation),
            _score(r.detection, r.detection_n),
            _score(r.fuzzing, r.fuzzing_n),
        )
    console.print(out)
    if result["failed"]:
        raise click.ClickException(
            f"{len(result['failed'])} of {len(result['failed']) + result['explained']} "
            "features were not explained (see above); rerun the same command to retry them"
        )


def _score(value: float | None, n: int) -> str:
    return "n/a" if number(value) is None else f"{shown(value)} (n={n})"


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
    console.print(
        f"{cfg.db} · {len(table)} layers · {table['n_documents'].iloc[0]:,} documents "
        f"· chance {chance:.3f}",
        highlight=False,
    )
    out = Table(title="where the persona lives")
    for col in (
        "layer",
        "probe accuracy",
        "persona norm (mean, max)",
        "SAE share of signal",
        "probe on SAE recon / error",
    ):
        out.add_column(col, justify="right")
    for r in table.itertuples(index=False):
        sae = (
            ""
            if r.sae_signal_fraction is None or r.sae_signal_fraction != r.sae_signal_fraction
            else f"{r.sae_signal_fraction:.1%}"
        )
        parts = "" if not sae else f"{r.probe_on_reconstruction:.3f} / {r.probe_on_error:.3f}"
        out.add_row(
            f"{r.layer}{' (SAE)' if r.is_sae_layer else ''}",
            f"{r.probe_accuracy:.3f}",
            f"{r.persona_norm_mean:.1%}, {r.persona_norm_max:.1%}",
            sae,
            parts,
        )
    console.print(out)
