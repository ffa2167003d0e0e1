"""CLI commands for causal evidence: `effects` and `steer`."""

from __future__ import annotations

import click
import pandas as pd
from rich.console import Console
from rich.table import Table

from shoggoth.core.config import config_options
from shoggoth.core.printing import number, print_json
from shoggoth.core.progress import stderr_log
from shoggoth.index.effects.queries import composition_answer
from shoggoth.pipeline.effects.run import EffectsConfig, run_effects
from shoggoth.pipeline.effects.steer import SteerConfig, steer


def _pct(row: pd.Series | None) -> str:
    """An estimate and its interval in percent ('n/a' when not measured)."""
    if row is None or number(row["estimate"]) is None:
        return "n/a"
    return f"{100 * row['estimate']:.0f}% [{100 * row['ci_low']:.0f}%, {100 * row['ci_high']:.0f}%]"


@click.command("effects")
@config_options(EffectsConfig)
def effects_command(cfg: EffectsConfig) -> None:
    """What features do under each persona: a screen of every live feature (attribution
    patching), then exact ablation at the answer tokens (SAE error term kept) under each
    persona and under no persona, the share of the persona's shift of the answer each
    ablation removes (mediated fraction, item-bootstrap CI), and steering under no persona.
    On a labelled database, the composition test: each persona's own and shared features
    steered into the reference, and the shared ones ablated under the persona. A difference
    dictionary's shifts are against its reference. Causal LMs only. Resumable; writes
    feature_effects, persona_shifts and persona_composition in one transaction."""
    result = run_effects(cfg, log=stderr_log())
    if cfg.format == "json":
        print_json(result.as_json())
        return
    effects = result.effects
    console = Console(soft_wrap=True)
    console.print(
        f"{cfg.db} · {result.sae_id} · {result.items} items · screen "
        f"{result.screen_seconds} s · exact {result.exact_seconds} s",
        highlight=False,
    )
    shifts = Table(title="each persona's shift of the answer's log-probability (vs no persona)")
    for col in ("persona", "shift (nats, mean over items)", "per-token RMS"):
        shifts.add_column(col, justify="left" if col == "persona" else "right")
    for r in result.shifts.itertuples(index=False):
        shifts.add_row(
            r.persona,
            f"{r.shift:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]",
            f"{r.rms_token_shift:.3f}",
        )
    console.print(shifts)
    med = effects[effects["measure"] == "mediated"].sort_values("estimate", ascending=False)
    best = med.groupby("feature", sort=False).head(1)
    steer_rows = effects[effects["measure"] == "steer_toward"].set_index(["feature", "persona"])
    table = Table(
        title="measured features: best persona's mediated fraction, and steering "
        "toward it under no persona"
    )
    for col in ("feature", "role", "persona", "mediated", "steer toward"):
        table.add_column(col, justify="right")
    for _, r in best.iterrows():
        key = (r["feature"], r["persona"])
        steered = steer_rows.loc[key] if key in steer_rows.index else None
        table.add_row(str(r["feature"]), r["role"], r["persona"], _pct(r), _pct(steered))
    console.print(table)
    composition = result.composition
    for _, rows in composition.groupby("persona", sort=True) if len(composition) else []:
        console.print(composition_answer(rows), highlight=False)


@click.command("steer")
@config_options(SteerConfig)
def steer_command(cfg: SteerConfig) -> None:
    """Generate the model's answer with one feature clamped at scale × its typical activation
    (0 turns it off), next to the unsteered answer, under a persona or none; greedy and
    deterministic (seeded when --temperature > 0)."""
    out = steer(cfg)
    console = Console(soft_wrap=True)
    console.print(
        f"feature {out.feature} clamped at {out.target:.3g} ({cfg.scale:g} × "
        f"typical {out.typical:.3g}) · persona {out.persona or 'none'}",
        highlight=False,
    )
    for name, text, why in (
        ("unsteered", out.unsteered, out.unsteered_stop),
        ("steered", out.steered, out.steered_stop),
    ):
        console.print(f"[bold]{name}[/bold] ({why}): ", end="")
        console.print(text, markup=False, highlight=False)
