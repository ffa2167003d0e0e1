"""CLI commands for the mask in action: `generate` and `grid`."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from shoggoth.core.config import config_options
from shoggoth.core.printing import shown
from shoggoth.core.progress import stderr_log
from shoggoth.index.action.labels import GRID_LABELS
from shoggoth.pipeline.action.generate import GenerateConfig, generate_answers
from shoggoth.pipeline.action.grid import GridConfig, run_grid


@click.command("generate")
@config_options(GenerateConfig)
def generate_command(cfg: GenerateConfig) -> None:
    """The model's own answer to every item under every persona paraphrase (greedy, or seeded
    sampling), batched with each persona prefix's KV cache, into the database as an answer set
    with the model, settings and stop reasons recorded. Resumable; prints a measured time
    estimate after the first batch."""
    out = generate_answers(cfg, log=stderr_log())
    console = Console(soft_wrap=True)
    if out.already_generated:
        console.print(f"answer set '{out.name}' is already complete in {cfg.db}", highlight=False)
    else:
        console.print(
            f"{cfg.db} · answer set '{out.name}' · {out.seconds} s · "
            f"{out.tokens_per_second:,} tokens/s",
            highlight=False,
        )
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(out.stop_reasons.items()))
    console.print(
        f"{out.answers:,} answers, {out.tokens:,} tokens ({reasons}; {out.empty} empty)",
        highlight=False,
    )


@click.command("grid")
@config_options(GridConfig)
def grid_command(cfg: GridConfig) -> None:
    """The context × content grid: each persona's own answers and the neutral ones, under the
    persona's prompt and under no persona, through the model and the SAE; per feature the
    context, content and interaction effects (items as blocks, prompts as replicates, log
    scale, BH across features), labels, and each label's false-discovery rate from null runs
    with every block's contexts and texts swapped at random. Resumable; the grid tables are
    replaced in one transaction."""
    out = run_grid(cfg, log=stderr_log())
    console = Console(soft_wrap=True)
    console.print(
        f"{cfg.db} · {out.sae_id} · answers '{out.answers}' · "
        f"{out.documents:,} documents · harvest {out.harvest_seconds} s · "
        f"analysis {out.analysis_seconds} s",
        highlight=False,
    )
    counts = out.features["grid_label"].value_counts()
    fdr = out.fdr.set_index("label")
    table = Table(title="grid labels")
    for col in ("label", "features", "estimated FDR"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for label in GRID_LABELS:
        rate = fdr["fdr"].get(label) if label in fdr.index else None
        table.add_row(
            label,
            f"{int(counts.get(label, 0)):,}",
            shown(rate, missing=""),
        )
    console.print(table)
