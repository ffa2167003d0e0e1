"""The `shoggoth` command line: one group, with subcommands living beside the code they drive."""

from __future__ import annotations

import os
import sys
import warnings

import click

import core.startup
from core.errors import BadInput, Interrupted, first_line, is_interrupt
from explorer.commands import demo_command, explore_command
from index.commands import export_command, label_command, merge_command, sql_command
from pipeline.commands import (
    explain_command,
    harvest_command,
    index_command,
    layers_command,
    search_command,
)
from pipeline.effects_commands import effects_command, steer_command
from pipeline.grid_commands import generate_command, grid_command
from sae.commands import (
    models_command,
    prompt_command,
    sae_group,
    train_command,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """shoggoth: SAE features of a language model, labelled mask-specific or shared across
    personas."""


cli.add_command(models_command)
cli.add_command(prompt_command)
cli.add_command(train_command)
cli.add_command(sae_group)
cli.add_command(harvest_command)
cli.add_command(merge_command)
cli.add_command(label_command)
cli.add_command(layers_command)
cli.add_command(effects_command)
cli.add_command(steer_command)
cli.add_command(generate_command)
cli.add_command(grid_command)
cli.add_command(sql_command)
cli.add_command(export_command)
cli.add_command(index_command)
cli.add_command(explain_command)
cli.add_command(search_command)
cli.add_command(explore_command)
cli.add_command(demo_command)


def _quiet_libraries() -> None:
    """Keep library chatter (progress bars, load reports) off the user's terminal."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input becomes one `error:` line on stderr and exit code 2."""
    try:
        _quiet_libraries()
        core.startup.restore()
        cli.main(args=argv, prog_name="shoggoth", standalone_mode=False)
    except BadInput as e:
        click.echo(f"error: {e}", err=True)
        return 2
    except click.UsageError as e:
        click.echo(f"error: {e.format_message()}", err=True)
        return 2
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except Interrupted as e:
        click.echo(f"interrupted: {e}", err=True)
        return 130
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        return 130
    except OSError as e:  # a disk that fills, a folder the user cannot write, …
        # (before `except Exception`, which re-raises what is not an interrupt)
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"error: {where}{e.strerror or first_line(e)}", err=True)
        return 2
    except Exception as e:
        # DuckDB turns a Ctrl-C inside a query into an error of its own; every write is
        # atomic or transactional, so "interrupted" is all there is to say.
        if not is_interrupt(e):
            raise
        click.echo("interrupted", err=True)
        return 130
    return 0


def entry() -> None:
    """The `shoggoth` executable: `main`, then exit with its code."""
    core.startup.PROGRAM = True
    try:
        code = main()
        core.startup.finishing()
    except KeyboardInterrupt:  # in the instant between the two
        click.echo("interrupted", err=True)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    entry()
