"""`shoggoth explain`: the command and its table of explanations."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shoggoth.core.config import config_options
from shoggoth.core.printing import number, shown
from shoggoth.core.progress import stderr_log
from shoggoth.index.explanations.queries import explanations
from shoggoth.index.store.read import SaeView
from shoggoth.pipeline.explanations.run import ExplainConfig, explain


@click.command("explain")
@config_options(ExplainConfig)
def explain_command(cfg: ExplainConfig) -> None:
    """Explain features with a language model (an OpenAI-compatible endpoint, or a local
    instruct model: SmolLM2 offline by default) from their top and interval examples and
    per-persona means, and score each explanation on held-out examples by detection and
    fuzzing (the AUC of the judge's yes-versus-no margins; 0.5 is chance). Resumable; one line
    per failed request."""
    result = explain(cfg, log=stderr_log())
    d = SaeView(cfg.db, result.sae_id)
    try:
        table = explanations(d.con, d.sae_id)
    finally:
        d.close()
    console = Console(soft_wrap=True)
    console.print(
        f"{cfg.db} · {result.sae_id} · {result.explained} explained in "
        f"{result.seconds} s · {len(table)} explanations stored",
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
    if result.failed:
        raise click.ClickException(
            f"{len(result.failed)} of {len(result.failed) + result.explained} "
            "features were not explained (see above); rerun the same command to retry them"
        )


def _score(value: float | None, n: int) -> str:
    return "n/a" if number(value) is None else f"{shown(value)} (n={n})"
