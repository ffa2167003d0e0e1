"""The `shoggoth label` command."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from shoggoth.core.config import config_options
from shoggoth.core.printing import number, print_json, shown
from shoggoth.index.labels.queries import answers, space_summary
from shoggoth.index.labels.run import LabelRunConfig, label_database


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
    features, fdr = result.features, result.fdr
    if cfg.format == "json":
        print_json(result.as_json())
        return
    console = Console(soft_wrap=True)
    err = Console(stderr=True, soft_wrap=True)
    for note in result.notes:
        err.print(f"note: {note}", highlight=False)
    console.print(f"{cfg.db} · {result.sae_id} · {len(features):,} features", highlight=False)
    seeds = cfg.calibration_seeds
    counts = Table(
        title=f"labels, with their counts under the null (mean of {seeds} prompt "
        "reassignments; split personas) and the estimated FDR"
    )
    for col in ("label", "features", "null (reassigned)", "null (split)", "est. FDR"):
        counts.add_column(col, justify="left" if col == "label" else "right")
    for row in fdr.itertuples(index=False):
        est = "n/a" if number(row.fdr) is None else f"{100 * row.fdr:.1f}%"
        split = shown(row.n_split, ",.0f", missing="")
        counts.add_row(row.label, f"{row.n_real:,}", f"{row.n_null:,.1f}", split, est)
    console.print(counts)
    per = Table(title="per persona: features it is the top persona of, by label")
    per.add_column("persona", no_wrap=True, min_width=22)
    own_labels = ["mask-specific", "persona-concept", "mask-or-concept", "shared-modulated"]
    for label in own_labels:
        per.add_column(label, justify="right")
    by = features[features["label"].isin(own_labels)].groupby(["argmax_persona", "label"]).size()
    for persona in features["argmax_persona"].dropna().unique():
        per.add_row(str(persona), *(f"{int(by.get((persona, lab), 0)):,}" for lab in own_labels))
    console.print(per)
    if number(result.persona_signal) is not None:
        console.print(
            f"persona signal this dictionary carries on the battery: {result.persona_signal:.2f}",
            highlight=False,
        )
    summary = space_summary(result.space, result.axes)
    if summary:
        console.print(summary, highlight=False)
    for line in answers(result.decomposition).values():
        console.print(line, highlight=False)
