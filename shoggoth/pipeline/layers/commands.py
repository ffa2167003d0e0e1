"""`shoggoth layers`: the command and its table of where the persona lives."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from shoggoth.core.config import config_options
from shoggoth.pipeline.layers.run import LayersConfig, probe_layers


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
