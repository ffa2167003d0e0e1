"""The `shoggoth` command line: one group listing the commands in pipeline order, each living
beside the code it drives and loaded only when it runs."""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from typing import cast

import click

import shoggoth.core.startup  # first: a Ctrl-C while the libraries load is one line
from shoggoth import __version__
from shoggoth.core.errors import (
    BadInput,
    Interrupted,
    environment_line,
    first_line,
    is_environmental,
    is_interrupt,
)
from shoggoth.core.terminal import InertTerminal, one_line

COMMANDS: list[tuple[str, str, str]] = [
    (
        "models",
        "shoggoth.sae.commands:models_command",
        "List the model aliases: where each comes from, its hooks, its chat template.",
    ),
    (
        "prompt",
        "shoggoth.sae.commands:prompt_command",
        "Tokenize a (system, user, continuation) prompt and mark the measured tokens.",
    ),
    (
        "train",
        "shoggoth.sae.commands:train_command",
        "Train an SAE on a model's residual stream with sae-lens.",
    ),
    ("sae", "shoggoth.sae.commands:sae_group", "Manage SAEs that were not trained here."),
    (
        "harvest",
        "shoggoth.pipeline.harvest.commands:harvest_command",
        "Run the model under every persona on the same answers; SAE activations into DuckDB.",
    ),
    (
        "merge",
        "shoggoth.index.store.commands:merge_command",
        "Combine database files (the shard files of a harvest) into one.",
    ),
    (
        "label",
        "shoggoth.index.labels.commands:label_command",
        "Label every feature mask-specific, shared, …, with calibrated FDRs.",
    ),
    (
        "layers",
        "shoggoth.pipeline.layers.commands:layers_command",
        "Where the persona lives, by layer, and how much of it the SAE carries.",
    ),
    (
        "effects",
        "shoggoth.pipeline.effects.commands:effects_command",
        "What features do under each persona: ablation and persona shifts.",
    ),
    (
        "steer",
        "shoggoth.pipeline.effects.commands:steer_command",
        "The model's answer with one feature clamped, beside the plain answer.",
    ),
    (
        "generate",
        "shoggoth.pipeline.action.commands:generate_command",
        "The model's own answer to every item under every persona paraphrase.",
    ),
    (
        "grid",
        "shoggoth.pipeline.action.commands:grid_command",
        "The context × content grid: which features follow the mask, which the words.",
    ),
    (
        "index",
        "shoggoth.pipeline.catalog.commands:index_command",
        "Build the feature catalog: top contexts, FAISS neighbours, handles, maps.",
    ),
    (
        "explain",
        "shoggoth.pipeline.explanations.commands:explain_command",
        "Explain features with a language model, scored on held-out examples.",
    ),
    (
        "search",
        "shoggoth.pipeline.search.commands:search_group",
        "Find features by text, name, feature id, similarity or persona.",
    ),
    (
        "sql",
        "shoggoth.index.store.commands:sql_command",
        "Run SQL on a feature database: read-only and sandboxed.",
    ),
    (
        "export",
        "shoggoth.index.store.commands:export_command",
        "Export the database as Parquet with a DuckDB file of views.",
    ),
    (
        "status",
        "shoggoth.index.store.commands:status_command",
        "What a database holds per SAE: harvested, labelled, probed, effects, …",
    ),
    (
        "explore",
        "shoggoth.explorer.commands:explore_command",
        "Browse a feature database in the browser (Streamlit).",
    ),
    (
        "demo",
        "shoggoth.explorer.commands:demo_command",
        "From nothing to the explorer, offline, on the built-in chat model.",
    ),
]
"""Every command in pipeline order: (name, where it is defined, its line in `--help`). A command
module is imported only when that command runs, so `shoggoth --help`, `sql` and `status` load
neither torch nor transformers (tests/cli/test_cli.py checks both, and that these lines agree with
the commands' own help)."""


class Commands(click.Group):
    """The group that lists COMMANDS in pipeline order and imports one only when it is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, _, _ in COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = next((w for name, w, _ in COMMANDS if name == cmd_name), None)
        if where is None:
            return None
        module, attribute = where.split(":")
        command = getattr(importlib.import_module(module), attribute)
        return cast("click.Command | None", command)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands (in pipeline order)"):
            formatter.write_dl([(name, line) for name, _, line in COMMANDS])


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="shoggoth")
def cli() -> None:
    """shoggoth: SAE features of a language model, labelled mask-specific or shared across
    personas. Docs: docs/index.md (mkdocs serve)."""


def _quiet_libraries() -> None:
    """Keep library chatter (progress bars, load reports) off the user's terminal, without
    importing the libraries: they read these settings when they load."""
    warnings.filterwarnings("ignore")
    for key, value in (
        ("TOKENIZERS_PARALLELISM", "false"),
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
    ):
        os.environ.setdefault(key, value)
    transformers = sys.modules.get("transformers")  # already loaded (shoggoth as a library)
    if transformers is not None:
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input becomes one `error:` line on stderr and exit code 2."""
    try:
        _quiet_libraries()
        shoggoth.core.startup.restore()
        cli.main(args=argv, prog_name="shoggoth", standalone_mode=False)
    except BadInput as e:
        click.echo(one_line(f"error: {e}"), err=True)
        return 2
    except click.UsageError as e:
        click.echo(one_line(f"error: {e.format_message()}"), err=True)
        return 2
    except click.ClickException as e:
        click.echo(one_line(f"error: {e.format_message()}"), err=True)
        return e.exit_code
    except Interrupted as e:
        click.echo(one_line(f"interrupted: {e}"), err=True)
        return 130
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        return 130
    except OSError as e:  # a disk that fills, a folder the user cannot write, …
        # (before `except Exception`, which re-raises what is not an interrupt)
        where = f"{e.filename}: " if e.filename else ""
        click.echo(one_line(f"error: {where}{e.strerror or first_line(e)}"), err=True)
        return 2
    except Exception as e:
        # DuckDB turns a Ctrl-C inside a query into an error of its own; every write is
        # atomic or transactional, so "interrupted" is all there is to say.
        if is_interrupt(e):
            click.echo("interrupted", err=True)
            return 130
        if is_environmental(e):
            click.echo(one_line(f"error: {environment_line(e)}"), err=True)
            return 2
        raise
    return 0


def entry() -> None:
    """The `shoggoth` executable: `main`, then exit with its code."""
    shoggoth.core.startup.PROGRAM = True
    if sys.stdout.isatty():  # values from databases must not drive the user's terminal
        sys.stdout = InertTerminal(sys.stdout)
    try:
        code = main()
        shoggoth.core.startup.finishing()
    except KeyboardInterrupt:  # in the instant between the two
        click.echo("interrupted", err=True)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    entry()
