"""CLI commands for the model side: `models`, `prompt`, `train` and `sae import`."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import click
from rich.console import Console
from rich.table import Table

from shoggoth.core.atomic import write_json_atomic
from shoggoth.core.cache import cache_dir
from shoggoth.core.config import Config, config_metadata, config_options
from shoggoth.core.errors import BadInput
from shoggoth.core.placement import placement_of
from shoggoth.core.printing import Format
from shoggoth.core.progress import stderr_log
from shoggoth.core.versions import library_versions
from shoggoth.sae.activations import activations
from shoggoth.sae.models import ALIASES, hook_summary, load_model, resolve_hook, resolve_source
from shoggoth.sae.prompts import Template, build_prompt, check_continuation, collate, pad_id
from shoggoth.sae.train.import_sae import ImportConfig, import_sae
from shoggoth.sae.train.run import TrainConfig, train


@dataclass
class ModelsConfig(Config):
    """`shoggoth models`: list the model aliases."""

    model: str | None = None
    """Also describe this model: a local Hugging Face directory or a hub id."""
    format: Format = "table"
    """table (for reading) or json (for scripts)."""


def describe(name: str) -> dict[str, object]:
    """Facts about one model for the table; loads only its config and tokenizer (no weights).

    An alias whose files are out of reach (hub without network) still gets a row saying so; any
    other model that cannot be found raises BadInput.
    """
    alias = ALIASES.get(name)
    row: dict[str, object] = {
        "model": name,
        "source": alias.source if alias else "",
        "available": "",
        "d_model": None,
        "layers": None,
        "hooks": None,
    }
    if alias is not None and not alias.ready():  # listing it must not convert it
        row["available"] = "offline (bundled; converted once, on first use)"
        row["hooks"] = "listed once converted"
        return row
    try:
        src = resolve_source(name)
    except BadInput as e:
        if alias is None:
            raise
        row["available"] = "needs network"
        row["hooks"] = "not cached; " + str(e).rsplit("; ", 1)[-1]
        return row
    if alias is None:
        row["source"] = f"{src.kind}: {src.location}"
    row["available"] = {"alias": "offline (bundled)", "local": "offline (local)"}.get(
        src.kind, "offline (cached)" if Path(src.location).is_dir() else "network"
    )
    row.update(model_facts(name, Path(src.location)))
    return row


def model_facts(name: str, location: Path) -> dict[str, object]:
    """d_model, layers, hooks, causal, chat_template and chat_format of a model, read from its
    config and tokenizer; kept in the cache for a model folder whose files and libraries have
    not changed since (building a tokenizer takes seconds: Gemma 3's 262k tokens take ten)."""
    cached = described_path(name, location)
    if cached is not None and cached.is_file():
        try:
            return cast("dict[str, object]", json.loads(cached.read_text()))
        except (OSError, ValueError):
            pass  # a damaged entry is described again
    model = load_model(name, device="cpu", load_weights=False)
    facts: dict[str, object] = {
        "d_model": model.d_model,
        "layers": model.n_layers,
        "hooks": hook_summary(model.hook_names, model.n_layers),
        "causal": model.is_causal,
        "chat_template": model.has_chat_template,
        "chat_format": chat_example(model.tokenizer),
    }
    if cached is not None:
        try:
            write_json_atomic(cached, facts)
        except OSError:
            pass  # a read-only cache only costs the next listing its seconds
    return facts


def described_path(name: str, location: Path) -> Path | None:
    """Where the facts of the model in `location` are cached: named by its files (name, size,
    modification time) and the libraries' versions, so a changed file or library is described
    afresh; None for a model not in a local folder."""
    if not location.is_dir():
        return None
    stats = [(p.name, p.stat()) for p in location.iterdir() if p.is_file()]
    files = sorted((name, st.st_size, st.st_mtime_ns) for name, st in stats)
    key = json.dumps([name, str(location), files, library_versions()])
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return cache_dir() / "described" / f"{digest}.json"


def chat_example(tokenizer: object) -> str | None:
    """How the chat template renders a user turn and an answer with no system message (it shows
    a default system prompt the template inserts, as SmolLM2's does); None without a template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    return cast(
        "str | None",
        tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
            tokenize=False,
        ),
    )


@click.command("models")
@config_options(ModelsConfig)
def models_command(cfg: ModelsConfig) -> None:
    """List the model aliases: where each comes from, its hooks, d_model and layer count. A
    model's facts are kept in the cache (`described/`) until its files or the libraries
    change."""
    names = list(ALIASES) + ([cfg.model] if cfg.model else [])
    rows = [describe(n) for n in names]
    if cfg.format == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="shoggoth models")
    cols = ("model", "source", "available", "d_model", "layers", "hooks", "chat_format")
    for col in cols:
        table.add_column(
            "chat template (no system message)" if col == "chat_format" else col, overflow="fold"
        )
    for r in rows:
        table.add_row(*("" if r.get(c) is None else str(r[c]) for c in cols))
    Console(width=160).print(table)


@dataclass
class PromptConfig(Config):
    """`shoggoth prompt`: show how a prompt is built and which tokens are measured."""

    continuation: str = ""
    """The text whose tokens are measured (the assistant answer)."""
    system: str = ""
    """The system/persona prompt; empty for none."""
    user: str = ""
    """The user turn (question)."""
    model: str = "smollm2"
    """Model alias, local Hugging Face directory or hub id (default: the built-in chat model, as
    for train)."""
    hook: str | None = None
    """Hook to read, e.g. blocks.3.hook_resid_post (default: the middle layer's resid_post)."""
    layer: int | None = None
    """Shortcut for --hook blocks.LAYER.hook_resid_post."""
    template: Template = "auto"
    """auto: the chat template when the model has one; chat; plain: persona + user + answer."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N."""
    device_map: str | None = None
    """Spread the model over several devices: auto, or a JSON file of module → device (see
    docs/models.md)."""
    max_memory: str | None = None
    """With --device-map: the most memory per device, e.g. 0=20GiB,1=20GiB,cpu=64GiB."""
    format: Literal["table", "json"] = "table"
    """Output format."""

    def check(self) -> None:
        check_continuation(self.continuation)  # with the flags: before any model loads


@click.command("prompt")
@config_options(PromptConfig)
def prompt_command(cfg: PromptConfig) -> None:
    """Tokenize a (system, user, continuation) prompt, mark the measured tokens, and print the
    norm of each token's activation at the hook."""
    model = load_model(
        cfg.model, cfg.device, placement=placement_of(cfg.device_map, cfg.max_memory)
    )
    hook = resolve_hook(model, cfg.hook, cfg.layer)
    prompt = build_prompt(
        model.tokenizer,
        cfg.system,
        cfg.user,
        cfg.continuation,
        template=cfg.template,
        prepend_bos=model.prepend_bos,
    )
    model.check_length(len(prompt.input_ids), "--continuation")
    acts = activations(model, collate([prompt], pad_id(model.tokenizer)), hook)[0]
    norms = acts.float().norm(dim=-1).tolist()
    tokens = model.tokenizer.convert_ids_to_tokens(prompt.input_ids)
    rows = [
        {"pos": i, "token_id": t, "token": s, "measured": m, "norm": round(n, 4)}
        for i, (t, s, m, n) in enumerate(
            zip(prompt.input_ids, tokens, prompt.mask, norms, strict=True)
        )
    ]
    if cfg.format == "json":
        out = {
            "config": config_metadata(cfg),
            "hook": hook,
            "template": prompt.template,
            "tokens": rows,
        }
        click.echo(json.dumps(out, indent=2))
        return
    table = Table(title=f"{cfg.model} · {hook} · template {prompt.template}")
    for col in ("pos", "token", "measured", f"‖{hook.split('.')[-1]}‖"):
        table.add_column(col)
    for r in rows:
        style = "bold green" if r["measured"] else "dim"
        table.add_row(
            str(r["pos"]),
            repr(r["token"]),
            "yes" if r["measured"] else "",
            f"{r['norm']:.2f}",
            style=style,
        )
    console = Console()
    console.print(table)
    console.print(f"{len(rows)} tokens, {sum(prompt.mask)} measured (the continuation)")


def print_evaluation(title: str, meta: dict[str, object]) -> None:
    """The evaluation saved in shoggoth.json, as a table on stdout."""
    metrics = cast(dict[str, Any], meta.get("evaluation") or {})
    Console(soft_wrap=True).print(title, highlight=False)
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else f"{value:,}"
        table.add_row(key, shown)
    Console().print(table)


@click.command("train")
@config_options(TrainConfig)
def train_command(cfg: TrainConfig) -> None:
    """Train an SAE on a model's residual stream with sae-lens (offline on SmolLM2 by default),
    evaluate it on held-out tokens, and write a directory sae_lens.SAE.load_from_disk reads.
    Several --hook/--layer/--d-sae values train one SAE each from the same forward passes;
    --ddp trains across the processes torchrun starts."""
    out = train(cfg, log=stderr_log())
    if cfg.ddp and os.environ.get("RANK") != "0":
        return  # rank 0 reports
    # Several SAEs trained together: one folder each under --out.
    folders = (
        [out]
        if (out / "shoggoth.json").is_file()
        else sorted(p for p in out.iterdir() if (p / "shoggoth.json").is_file())
    )
    for folder in folders:
        meta = json.loads((folder / "shoggoth.json").read_text())
        print_evaluation(
            f"{folder} · {meta['hook']} · {meta['architecture']} d_sae "
            f"{meta['d_sae']} · {meta['training_tokens']:,} tokens in "
            f"{meta['train_seconds']} s",
            meta,
        )


@click.group("sae")
def sae_group() -> None:
    """Manage SAEs that were not trained here."""


@sae_group.command("import")
@config_options(ImportConfig)
def import_command(cfg: ImportConfig) -> None:
    """Register an existing SAE (local sae-lens directory, or --release/--sae from the
    sae-lens registry) for a model: checks d_in and hook, evaluates it, writes it like train."""
    out = import_sae(cfg, log=stderr_log())
    meta = json.loads((out / "shoggoth.json").read_text())
    if meta.get("evaluation"):
        print_evaluation(f"{out} · {meta['hook']} · imported", meta)
    else:
        click.echo(str(out))
