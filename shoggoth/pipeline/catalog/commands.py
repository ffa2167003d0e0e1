"""`shoggoth index`: the command that builds the feature catalog."""

from __future__ import annotations

import click
from rich.console import Console

from shoggoth.core.config import config_options
from shoggoth.core.printing import print_json
from shoggoth.core.progress import stderr_log
from shoggoth.index.catalog.build import IndexConfig
from shoggoth.pipeline.catalog.run import index_harvest


@click.command("index")
@config_options(IndexConfig)
def index_command(cfg: IndexConfig) -> None:
    """Build the feature catalog of a harvested SAE: top and interval examples, activation
    histograms, FAISS neighbours by decoder direction and by persona profile, and logit effects
    (causal LMs). Rebuilt aside and renamed into place."""
    result = index_harvest(cfg, log=stderr_log())
    if cfg.format == "json":
        print_json(result.as_json())
        return
    Console(soft_wrap=True).print(
        f"{cfg.db} · {result.sae_id} · {result.features:,} features indexed in "
        f"{result.seconds} s · decoder index {result.decoder_index} (recall@10 "
        f"{result.recall_at_10:.3f}) · persona profiles "
        f"{'indexed' if result.profiles else 'skipped (run shoggoth label first)'} · "
        f"{result.persona_vectors} persona vectors · "
        f"logit effects {result.logit_effects}",
        highlight=False,
    )
