"""`shoggoth generate`: the model's own answer to every item under every persona paraphrase.

The battery's fixed answers isolate a persona's *context*; these answers are the mask *in
action*, what the model writes when it wears the mask. They are stored as an answer set (model
and settings recorded) that `shoggoth grid` reads under any persona. Work is cut into fixed
batches (one persona paraphrase, items of similar prompt length); each batch is written in one
transaction, so an interrupted run resumes after the last batch written, and a sampled answer
depends only on its batch's seed, never on where a run started.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from shoggoth.battery.personas import Item, Persona, baseline_persona, subset_items
from shoggoth.core.config import SEED_MAX, Config, config_metadata, option
from shoggoth.core.errors import BadInput, Interrupted
from shoggoth.core.lists import parse_names
from shoggoth.core.placement import placement_of
from shoggoth.core.progress import Log, Progress
from shoggoth.index.action.answers import SET_NAME, done_keys, finish_set, start_set, write_answers
from shoggoth.index.store.connection import one_row
from shoggoth.index.store.database import WAIT, connect
from shoggoth.index.store.read import SaeView
from shoggoth.index.store.schema import read_battery
from shoggoth.sae.generation import (
    Generator,
    decode,
    generate_batch,
    load_generator,
    prefix_kv,
    prompt_ids,
    shared_length,
)
from shoggoth.sae.prompts import Template, stored_template


@dataclass
class GenerateConfig(Config):
    """`shoggoth generate`: the model's own answers under every persona paraphrase."""

    db: Path = option(required="a database from `shoggoth harvest`")
    """The feature database; its battery (personas, items) is answered."""
    sae: str | None = None
    """The SAE whose model answers (its sae_id; default: the only one in the database)."""
    model: str | None = None
    """Model alias, local directory or hub id (default: the SAE's model)."""
    name: str = "own"
    """Name of the answer set written (`shoggoth grid --answers` reads it by this name)."""
    persona_names: str | None = option(None, was={"--personas": None})
    """Comma-separated personas to answer as, from the database's battery (default: every
    persona that is not a control, and the no-persona control)."""
    paraphrases: int | None = option(None, min=1)
    """Only each persona's first N prompts (default: all in the database)."""
    items_per_topic: int | None = option(None, min=1)
    """Only the first N items of each topic (default: all in the database)."""
    max_tokens: int = option(48, min=1, max=4096)
    """Most tokens per answer; an answer cut there is recorded with stop reason 'length'."""
    temperature: float = option(0.0, min=0, max=10)
    """0: greedy (deterministic); above 0: sampling, seeded per batch."""
    seed: int = option(0, min=0, max=SEED_MAX)
    """Seed of the sampling."""
    batch: int = option(16, min=1, max=4096)
    """Answers generated together (left-padded)."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N."""
    device_map: str | None = None
    """Spread the model over several devices: auto, or a JSON file of module → device (see
    docs/models.md)."""
    max_memory: str | None = None
    """With --device-map: the most memory per device, e.g. 0=20GiB,1=20GiB,cpu=64GiB."""

    def check(self) -> None:
        if not re.fullmatch(SET_NAME, self.name):
            raise BadInput(f"--name {self.name!r}: use letters, digits, '.', '_' and '-'")


@dataclass(frozen=True)
class GenUnit:
    """One batch: a persona paraphrase and some items."""

    persona: int
    paraphrase: int
    items: tuple[int, ...]


def choose_personas(spec: str | None, personas: list[Persona], db: Path) -> list[Persona]:
    """The personas named in `spec` (default: the non-controls and the no-persona control, the
    reference for `shoggoth grid --neutral own`); BadInput for unknown names."""
    if spec is None:
        none = (
            [baseline_persona(personas, db)]
            if any(p.is_control and all(not t for t in p.prompts) for p in personas)
            else []
        )
        return [p for p in personas if not p.is_control] + none
    known = {p.name: p for p in personas}
    return [known[n] for n in parse_names(spec, "--persona-names", known)]


def plan_units(prompts: dict[tuple[int, int], list[list[int]]], batch: int) -> list[GenUnit]:
    """Every batch, in order: items sorted by prompt length within each persona paraphrase."""
    units = []
    for (p, j), rows in prompts.items():
        order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))
        units += [GenUnit(p, j, tuple(order[s : s + batch])) for s in range(0, len(order), batch)]
    return units


def unit_seed(seed: int, persona: str, paraphrase: int, item_id: str) -> int:
    """A batch's sampling seed, from what the batch is (not where a run started)."""
    key = f"{seed}/{persona}/{paraphrase}/{item_id}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


def read_setup(cfg: GenerateConfig) -> tuple[str, Template, list[Persona], list[Item]]:
    """(model, template, personas, items) from the database; BadInput for what cannot work
    (a database that cannot be written first)."""
    d = SaeView.for_writing(cfg.db, cfg.sae)
    try:
        record, (personas, items) = d.record, read_battery(d.con)
    finally:
        d.close()
    chosen = choose_personas(cfg.persona_names, personas, cfg.db)
    if cfg.paraphrases is not None:
        chosen = [
            Persona(
                p.name,
                p.family,
                p.description,
                p.prompts[: cfg.paraphrases],
                p.is_control,
                p.control_of,
            )
            for p in chosen
        ]
    template = stored_template(record.template)
    return cfg.model or record.model, template, chosen, subset_items(items, cfg.items_per_topic)


@dataclass(frozen=True)
class GenerateResult:
    """What `shoggoth generate` left in the answer set, as its printer reads it."""

    name: str
    """The answer set."""
    answers: int
    """Its answers."""
    stop_reasons: dict[str, int]
    """Its answers by why they stopped ('eos' or 'length')."""
    tokens: int
    """Its answers' tokens."""
    empty: int
    """Its empty answers."""
    seconds: float | None = None
    """This run's generation time (None: already generated)."""
    tokens_per_second: float | None = None
    """This run's rate (None: already generated)."""
    already_generated: bool = False
    """The answer set was complete already; nothing was generated."""


def generate_answers(cfg: GenerateConfig, log: Log = print) -> GenerateResult:
    """Generate (or resume, or find finished) an answer set; returns its summary."""
    model_name, template, personas, items = read_setup(cfg)
    settings = {
        "model": model_name,
        "template": template,
        "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature,
        "seed": cfg.seed,
        "batch": cfg.batch,
        "personas": [p.name for p in personas],
        "paraphrases": cfg.paraphrases,
        "items": [i.item_id for i in items],
    }
    gen = load_generator(model_name, cfg.device, placement_of(cfg.device_map, cfg.max_memory))
    bos = gen.tokenizer.bos_token_id is not None
    prompts = {
        (p, j): [prompt_ids(gen.tokenizer, text, it.question, template, bos) for it in items]
        for p, persona in enumerate(personas)
        for j, text in enumerate(persona.prompts)
    }
    if start_set(cfg.db, cfg.name, settings, config_metadata(cfg)) == "finished":
        return replace(summary(cfg.db, cfg.name), already_generated=True)
    done = done_keys(cfg.db, cfg.name)
    units = plan_units(prompts, cfg.batch)
    todo = [
        u
        for u in units
        if (personas[u.persona].name, u.paraphrase, items[u.items[0]].item_id) not in done
    ]
    total = sum(len(u.items) for u in units)
    started, n_tok, prefixes = time.monotonic(), 0, Prefixes(gen)
    with Progress(
        "generate", total, total - sum(len(u.items) for u in todo), unit="answers"
    ) as bar:
        try:
            for n, unit in enumerate(todo):
                rows = run_unit(prefixes, cfg, personas, items, prompts, unit)
                write_answers(cfg.db, cfg.name, rows)
                n_tok += int(rows["n_tokens"].sum())
                dt = time.monotonic() - started
                if n == 0 and len(todo) > 1:
                    log(
                        f"measured: {dt:.1f} s for the first batch of {len(unit.items)}; the "
                        f"{len(todo) - 1} batches left take about "
                        f"{dt * (len(todo) - 1) / 60:.1f} min"
                    )
                bar.advance(len(unit.items), rate=f"{n_tok / max(dt, 1e-9):,.0f} tok/s")
        except KeyboardInterrupt:
            raise Interrupted(
                f"the written batches are kept in {cfg.db}; rerun the same command to continue"
            ) from None
    finish_set(cfg.db, cfg.name)
    seconds = time.monotonic() - started
    return replace(
        summary(cfg.db, cfg.name),
        seconds=round(seconds, 1),
        tokens_per_second=round(n_tok / seconds, 1) if n_tok else 0.0,
    )


class Prefixes:
    """The KV cache of the current persona paraphrase's shared prefix (batches come grouped by
    paraphrase, so one is kept at a time)."""

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.key: tuple[int, int] | None = None
        self.ids: list[int] = []
        self.cache: list[Any] = []

    def get(self, key: tuple[int, int], rows: list[list[int]]) -> tuple[list[int], list[Any]]:
        if key != self.key:
            self.key, self.ids = key, rows[0][: shared_length(rows)]
            self.cache = prefix_kv(self.gen, self.ids)
        return self.ids, self.cache


def run_unit(
    prefixes: Prefixes,
    cfg: GenerateConfig,
    personas: list[Persona],
    items: list[Item],
    prompts: dict[tuple[int, int], list[list[int]]],
    unit: GenUnit,
) -> pd.DataFrame:
    """Generate one batch; its rows for the answers table."""
    gen = prefixes.gen
    rows = prompts[(unit.persona, unit.paraphrase)]
    prefix, cache = prefixes.get((unit.persona, unit.paraphrase), rows)
    n = len(prefix)
    persona = personas[unit.persona].name
    seed = unit_seed(cfg.seed, persona, unit.paraphrase, items[unit.items[0]].item_id)
    out = generate_batch(
        gen, prefix, cache, [rows[i][n:] for i in unit.items], cfg.max_tokens, cfg.temperature, seed
    )
    return pd.DataFrame(
        {
            "persona": persona,
            "paraphrase": unit.paraphrase,
            "item_id": [items[i].item_id for i in unit.items],
            "text": [decode(gen, ids) for ids, _ in out],
            "n_tokens": [len(ids) for ids, _ in out],
            "stop_reason": [why for _, why in out],
        }
    )


def summary(db: Path, name: str) -> GenerateResult:
    """The set's answers, by stop reason, its tokens and its empty answers."""
    con = connect(db, read_only=True, wait=WAIT)
    try:
        counts = dict(
            con.execute(
                "SELECT stop_reason, count(*) FROM answers WHERE answer_set = ? GROUP BY ALL",
                [name],
            ).fetchall()
        )
        tokens = one_row(
            con,
            "SELECT coalesce(sum(n_tokens), 0), count(*) FILTER (WHERE "
            "text = '') FROM answers WHERE answer_set = ?",
            [name],
        )
    finally:
        con.close()
    return GenerateResult(name, sum(counts.values()), counts, int(tokens[0]), int(tokens[1]))
