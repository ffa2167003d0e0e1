"""`shoggoth search`: one subcommand per way of finding features (text, name, feature,
similar, persona), each with its own config. The flag form of earlier releases
(`shoggoth search --db F --name X`) still runs, with a one-line deprecation note."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shoggoth.core.config import Config, config_options, option
from shoggoth.core.errors import BadInput
from shoggoth.core.placement import placement_of
from shoggoth.core.printing import Format, print_json, shown
from shoggoth.index.store.read import SaeView
from shoggoth.pipeline.search import run as find
from shoggoth.pipeline.search.run import SearchConfig, SearchResult, search, search_in


@dataclass
class SearchOn(Config):
    """What every `shoggoth search` subcommand reads and how it prints."""

    db: Path = option(required="a feature database")
    """The feature database (labels from `shoggoth label`, FAISS and persona vectors from
    `shoggoth index`)."""
    sae: str | None = None
    """The SAE (its sae_id; default: the only one in the database)."""
    top: int = option(10, min=1, max=10_000)
    """Features shown per token, overall, per list or as neighbours."""
    format: Format = "table"
    """table (for reading) or json (for scripts)."""


@dataclass
class SearchText(SearchOn):
    """`shoggoth search text`: features a text activates."""

    text: list[str] = option([], required='the text, e.g. shoggoth search text --db F "Hi"')
    """The text to run through the model and SAE (quote it)."""
    persona: str | None = None
    """Run the text under this persona's system prompt (default: none)."""
    paraphrase: int | None = option(None, min=0)
    """With --persona: which of its prompts (default 0, the first)."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N."""
    device_map: str | None = None
    """Spread the model over several devices: auto, or a JSON file of module → device; --device
    then places the SAE (auto: beside the block it reads). See docs/models.md."""
    max_memory: str | None = None
    """With --device-map: the most memory per device, e.g. 0=20GiB,1=20GiB,cpu=64GiB."""

    def check(self) -> None:
        if self.paraphrase is not None and self.persona is None:
            raise BadInput(
                "--paraphrase: only with --persona (which of its prompts to run the text under)"
            )


@dataclass
class SearchName(SearchOn):
    """`shoggoth search name`: features by name."""

    name: list[str] = option([], required="the text to look for, e.g. pirate")
    """Text contained in a feature's handle, preferred persona or explanation (any case)."""


@dataclass
class SearchFeature(SearchOn):
    """`shoggoth search feature` and `similar`: one feature."""

    feature: int = option(None, required="the feature id", min=0)
    """The feature."""


@dataclass
class SearchPersona(SearchOn):
    """`shoggoth search persona`: a persona's features."""

    persona: str = option(None, required="the persona, e.g. pirate")
    """The persona: the features nearest its vector, and its own (mask-specific) features."""


def run(cfg: SearchOn, find: Callable[[SaeView], SearchResult]) -> None:
    """One search mode on --db/--sae, printed in --format."""
    show(search_in(cfg.db, cfg.sae, find), cfg.format)


class SearchGroup(click.Group):
    """`shoggoth search SUBCOMMAND …`, or the deprecated flags: `shoggoth search --db F …`."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if (
            args
            and args[0] not in self.commands
            and args[0].startswith("-")
            and args[0] not in ("-h", "--help")
        ):
            return "search", search_flags, args
        return super().resolve_command(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # as defined: text, name, feature, similar, persona


@click.group(
    "search",
    cls=SearchGroup,
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
def search_group() -> None:
    """Find features: `text` runs text through the model and SAE (under a persona), `name` by
    handle or explanation, `feature` one feature's label, statistics and contexts, `similar`
    its nearest features by decoder direction (FAISS), `persona` the features nearest a
    persona's vector and its own. All with labels; --format json for scripts."""


@search_group.command("text")
@config_options(SearchText)
def search_text(cfg: SearchText) -> None:
    """The features a text activates, per token and overall (under --persona's prompt)."""
    placement = placement_of(cfg.device_map, cfg.max_memory)
    run(
        cfg,
        lambda d: find.search_text(
            d, " ".join(cfg.text), cfg.persona, cfg.paraphrase or 0, cfg.top, cfg.device, placement
        ),
    )


@search_group.command("name")
@config_options(SearchName)
def search_name(cfg: SearchName) -> None:
    """Features whose handle, preferred persona or explanation contains the text."""
    run(cfg, lambda d: find.search_name(d, " ".join(cfg.name), cfg.top))


@search_group.command("feature")
@config_options(SearchFeature)
def search_feature(cfg: SearchFeature) -> None:
    """One feature: its name, label, statistics, explanation and top contexts."""
    run(cfg, lambda d: find.search_feature(d, cfg.feature, cfg.top))


@search_group.command("similar")
@config_options(SearchFeature)
def search_similar(cfg: SearchFeature) -> None:
    """The features nearest one feature by decoder direction (FAISS)."""
    run(cfg, lambda d: find.search_similar(d, cfg.feature, cfg.top))


@search_group.command("persona")
@config_options(SearchPersona)
def search_persona(cfg: SearchPersona) -> None:
    """The features nearest a persona's vector, and its own features."""
    run(cfg, lambda d: find.search_persona(d, cfg.persona, cfg.top))


@click.command("search", hidden=True)
@config_options(SearchConfig)
def search_flags(cfg: SearchConfig) -> None:
    """The flag form of `shoggoth search` (deprecated)."""
    mode = cfg.mode
    click.echo(
        f"note: shoggoth search --{'feature F --similar' if mode == 'similar' else mode}"
        f" is deprecated and will be removed in the next release; use shoggoth search "
        f"{mode}",
        err=True,
    )
    show(search(cfg), cfg.format)


def show(result: SearchResult, fmt: str) -> None:
    """Print a search result: JSON, or its mode's tables."""
    if fmt == "json":
        print_json(result.as_json())  # NaN as null: the standard JSON every reader takes
        return
    console = Console(soft_wrap=True)
    match result:
        case find.TextSearch():
            _show_text(console, result)
        case find.NameSearch():
            _show_name(console, result)
        case find.SimilarSearch():
            _show_similar(console, result)
        case find.FeatureSearch():
            _show_feature(console, result)
        case find.PersonaSearch():
            _show_persona(console, result)


def _show_text(console: Console, result: find.TextSearch) -> None:
    """The top features of each token of a text, and over the whole text."""
    under = f" under persona '{result.persona}'" if result.persona else ""
    console.print(f"{result.sae_id} · {len(result.tokens)} tokens{under}", highlight=False)
    tokens = Table(title="top features per token")
    for col in ("pos", "token", "features (value, label)"):
        tokens.add_column(col)
    for t in result.tokens:
        tokens.add_row(
            str(t["pos"]),
            repr(t["token"]),
            ", ".join(
                f"{f['feature']} {f['name'] or ''} ({f['value']:.3g}, {f['label']})"
                for f in t["features"]
            ),
        )
    console.print(tokens)
    _print_features(
        console,
        "top features over the whole text",
        result.overall,
        ["feature", "name", "mean_act", "max_act", "n_tokens", "label"],
    )


def _show_name(console: Console, result: find.NameSearch) -> None:
    """Features whose handle or explanation matches a name."""
    _print_features(
        console,
        f"features named like {result.query!r}",
        result.features,
        ["feature", "name", "label", "explanation", "detection", "fuzzing"],
    )


def _show_similar(console: Console, result: find.SimilarSearch) -> None:
    """A feature's nearest neighbours by decoder direction."""
    console.print(
        f"feature {result.feature} ({result.label}) · nearest by decoder direction",
        highlight=False,
    )
    _print_features(
        console,
        "neighbours",
        result.neighbours,
        ["feature", "name", "cosine", "label", "density"],
    )


def _show_feature(console: Console, result: find.FeatureSearch) -> None:
    """One feature: its handle, label, explanation, statistics and top contexts."""
    found = result.found
    console.print(
        f"feature {found.feature} · {found.name or '(no handle)'} · {found.label}",
        highlight=False,
    )
    naming = found.naming
    if naming is not None and naming.explanation:
        console.print(
            f"explanation ({naming.explainer}): {naming.explanation} · "
            f"detection {_fmt(naming.detection)}, fuzzing "
            f"{_fmt(naming.fuzzing)}",
            highlight=False,
        )
    stats = found.statistics or {}
    if stats:
        console.print("  ".join(f"{k}={_fmt(v)}" for k, v in stats.items()), highlight=False)
    _print_features(
        console,
        "top contexts",
        found.contexts or [],
        ["rank", "value", "persona", "item_id", "context"],
    )


def _show_persona(console: Console, result: find.PersonaSearch) -> None:
    """The features nearest a persona's vector, and the persona's own features."""
    found = result.found
    console.print(
        f"persona {found.persona} · vector norm {_fmt(found.vector_norm)} "
        f"({found.relative_norm or 0:.1%} of the length of the non-control mean)",
        highlight=False,
    )
    _print_features(
        console,
        "features nearest the persona vector",
        found.nearest,
        ["feature", "name", "cosine", "label", "density"],
    )
    _print_features(
        console,
        "its own features (mask-specific, persona-concept, mask-or-concept, mask-family)",
        found.mask_specific,
        ["feature", "name", "label", "top_share", "set_ratio", "q_value"],
    )


def _fmt(v: object) -> str:
    if v is None or isinstance(v, float):
        return shown(v, ".4g", missing="-")  # NaN too: a number not measured
    return str(v)


def _print_features(
    console: Console, title: str, rows: Sequence[Mapping[str, object]], columns: list[str]
) -> None:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for r in rows:
        table.add_row(*(Text(_fmt(r.get(c))) for c in columns))
    if not rows:
        table.add_row(*(["(none)"] + [""] * (len(columns) - 1)))
    console.print(table)
