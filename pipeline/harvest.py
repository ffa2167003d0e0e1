"""`shoggoth harvest`: SAE activations on the same answers under every persona, into DuckDB.

The grid is persona × paraphrase × item. It is cut into fixed batches (one persona paraphrase,
`batch_size` items of similar length), and each batch is one unit of work: computed, then written
to a partial database beside `--db` in one transaction. A killed harvest therefore resumes at the
first batch not yet written, and because batches never depend on where a run (or a shard)
started, a resumed or sharded harvest stores exactly the rows of an uninterrupted one.

For causal LMs the tokens every prompt of a persona paraphrase shares (BOS, template, system
prompt) are run once; each batch then continues from that KV cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.config import Config, config_metadata, option
from core.errors import BadInput, Interrupted, interrupts_deferred
from core.progress import Progress
from core.versions import library_versions
from index import harvest_db
from sae.encode import Harvester, check_lengths, check_tokens, decimals_for
from sae.grid import Unit, count_units, grid_units, parse_shard, shard_units
from sae.models import load_model, resolve_device
from sae.personas import load_items, load_personas, subset_items, subset_personas
from sae.prompts import Template
from sae.sae_dir import SAE_ID, check_fits, load_sae_dir, sae_model_name, weights_sha256

# Run settings that decide which rows a harvest writes: a partial harvest is only resumed, and a
# finished one only recognised as done, when these match.
IDENTITY = ("sae_id", "weights_sha256", "model", "personas", "items", "paraphrases",
            "items_per_topic", "batch_size", "shard", "template", "value_decimals", "prefix_cache")
"""(value_decimals and prefix_cache as requested; what was used is in the saes table.)"""


@dataclass
class HarvestConfig(Config):
    """`shoggoth harvest`: SAE activations on the battery's answers under every persona."""

    db: Path | None = option(required="the DuckDB file to write")
    """The feature database (DuckDB file) to add this harvest to; created if missing."""
    sae: Path | None = option(required="an SAE directory from `shoggoth train`")
    """SAE directory, from `shoggoth train` or `shoggoth sae import`."""
    sae_id: str | None = None
    """Name of this SAE in the database (default: the SAE directory's name)."""
    model: str | None = None
    """Model alias, local Hugging Face directory or hub id (default: the SAE's model)."""
    personas: Path | None = None
    """Personas YAML file (default: the built-in battery; format in docs/battery.md)."""
    items: Path | None = None
    """Items JSONL file (default: the built-in battery)."""
    paraphrases: int | None = option(None, min=1)
    """Harvest only each persona's first N system prompts (default: all). A deterministic subset
    for a quick run; the database holds exactly the battery harvested."""
    items_per_topic: int | None = option(None, min=1)
    """Harvest only the first N items of each topic, in file order (default: all)."""
    batch_size: int = option(64, min=1, max=1_000_000)
    """Documents per forward pass."""
    shard: str | None = None
    """I/N: harvest only slice I (0-based) of N of the document grid into --db; combine the N
    files with `shoggoth merge`."""
    template: Template = "auto"
    """auto: the chat template when the model has one; chat; plain: persona + user + answer."""
    prefix_cache: bool = True
    """Causal LMs: run each persona prefix once and reuse its KV cache for every item."""
    value_decimals: int | None = option(None, min=0, max=9)
    """Decimals activation values are stored with (default: a step of at most 1/500 of the
    median activation, measured on the grid's first batch)."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N."""

    def check(self) -> None:
        parse_shard(self.shard)
        if self.sae_id is not None and not SAE_ID.fullmatch(self.sae_id):
            raise BadInput(f"--sae-id {self.sae_id!r}: use letters, digits, '.', '_' and '-'")


def run_identity(cfg: HarvestConfig, sae_id: str, sha256: str, model: str) -> dict[str, Any]:
    """The settings that decide a harvest's rows, as stored in its run record."""
    meta = config_metadata(cfg)
    meta.update(sae_id=sae_id, weights_sha256=sha256, model=model,
                personas=str(cfg.personas.resolve()) if cfg.personas else None,
                items=str(cfg.items.resolve()) if cfg.items else None)
    return {k: meta[k] for k in IDENTITY}


def harvest(cfg: HarvestConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume, or recognise as done) a harvest; returns its summary."""
    shard = parse_shard(cfg.shard)
    sae_id = cfg.sae_id or cfg.sae.resolve().name
    if not SAE_ID.fullmatch(sae_id):
        raise BadInput(f"--sae-id {sae_id!r}: use letters, digits, '.', '_' and '-'")
    personas = subset_personas(load_personas(cfg.personas), cfg.paraphrases)
    items = subset_items(load_items(cfg.items), cfg.items_per_topic)
    n_units = count_units(personas, len(items), cfg.batch_size)
    if shard[1] > n_units:
        raise BadInput(f"--shard {cfg.shard}: the grid has {n_units:,} batches, so some shards "
                       f"would be empty; use at most {n_units:,} shards")
    target = harvest_db.check_target(cfg.db, personas, items)
    partial = harvest_db.partial_path(cfg.db, sae_id)
    device, _ = resolve_device(cfg.device)
    sae = load_sae_dir(cfg.sae, str(device))
    sha256 = weights_sha256(cfg.sae)
    model_name = cfg.model or sae_model_name(cfg.sae, sae)
    if not model_name:
        raise BadInput(f"--sae {cfg.sae}: does not say which model it reads; give --model")
    if target.get(sae_id) is not None:
        return harvest_db.already_done(cfg.db, partial, sae_id, target[sae_id],
                                       run_identity(cfg, sae_id, sha256, model_name))
    model = load_model(model_name, cfg.device)
    hook = check_fits(sae, model, f"--sae {cfg.sae}")
    sae.eval()
    harvester = Harvester(model, sae, hook, personas, items, cfg.template,
                          cfg.prefix_cache and model.is_causal)
    first = harvester.group(0, 0)  # every item under the first persona paraphrase
    expected = [p.continuation_ids for p in first]
    lengths = [len(p.input_ids) for p in first]
    check_lengths(harvester, lengths)
    units = grid_units(personas, lengths, cfg.batch_size)
    mine = shard_units(units, shard)

    started = time.time()
    identity = run_identity(cfg, sae_id, sha256, model_name)
    store = harvest_db.open_partial(partial, personas, items)
    try:
        state = store.resume_state(sae_id)
        if state is None:
            decimals, use_cache = setup(harvester, cfg, units[0], mine, log)
            store.start(sae_id, identity, config_metadata(cfg), library_versions(), {
                "model": model_name, "hook": hook, "architecture": sae.cfg.architecture(),
                "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae, "path": str(cfg.sae.resolve()),
                "weights_sha256": sha256, "model_source": model.source.location,
                "template": first[0].template, "value_decimals": decimals,
                "prefix_cache": use_cache,
            }, [(i.item_id, expected[n], model.tokenizer.convert_ids_to_tokens(expected[n]))
                for n, i in enumerate(items)])
        else:
            decimals, use_cache = resumed(cfg, state, identity, sae_id, partial, log)
        harvester.use_prefix_cache = use_cache
        done = store.done_documents(sae_id)
        todo = [u for u in mine
                if (personas[u.persona].name, u.paraphrase, items[u.items[0]].item_id) not in done]
        rate = run_units(harvester, store, sae_id, mine, todo, expected, decimals, partial)
        store.finish()
    finally:
        store.close()
    harvest_db.publish_harvest(partial, cfg.db, personas, items, sae_id)
    return {**harvest_db.summary(cfg.db, sae_id, time.time() - started), **rate}


def resumed(cfg: HarvestConfig, state: dict[str, Any], identity: dict[str, Any], sae_id: str,
            partial: Path, log: Callable[[str], None]) -> tuple[int, bool]:
    """The value decimals and prefix-cache choice of the unfinished harvest being resumed;
    BadInput when it was started with other settings."""
    if identity != state["identity"]:
        diff = sorted(k for k in IDENTITY if identity[k] != state["identity"].get(k))
        raise BadInput(
            f"--db {cfg.db}: an unfinished harvest of '{sae_id}' with other settings "
            f"({', '.join(diff)}) is in {partial}; rerun it with the same settings, or "
            "delete that file to start over")
    log(f"resuming: {state['documents']:,} documents already harvested")
    return state["value_decimals"], state["prefix_cache"]


def setup(harvester: Harvester, cfg: HarvestConfig, first: Unit, mine: list[Unit],
          log: Callable[[str], None]) -> tuple[int, bool]:
    """A new harvest's value decimals (from the grid's first batch, whichever shard this is) and
    whether the prefix cache can be used on this model."""
    decimals = cfg.value_decimals
    if decimals is None:
        x, _ = harvester.hook_activations(first, cached=False)
        with torch.inference_mode():
            decimals = decimals_for(harvester.sae.encode(x.to(harvester.sae.dtype)))
    use_cache = harvester.check_prefix_cache(mine[0]) if mine else False
    if harvester.use_prefix_cache and not use_cache:
        log("note: this model's attention ignores the KV cache; harvesting without prefix "
            "caching")
    return decimals, use_cache


def run_units(harvester: Harvester, store: Any, sae_id: str, mine: list[Unit], todo: list[Unit],
              expected: list[list[int]], decimals: int, partial: Path) -> dict[str, float]:
    """Compute and write each unit, with a progress bar; Ctrl-C keeps what was written.
    Returns the steady-state rate of this run's batches (model load and set-up excluded)."""
    personas, items = harvester.personas, harvester.items
    total = sum(len(u.items) for u in mine)
    before = total - sum(len(u.items) for u in todo)
    n_docs = n_tok = 0
    t0 = time.time()
    with Progress("harvest", total, before, unit="docs") as bar:
        try:
            for unit in todo:
                check_tokens(harvester, unit, expected)
                out = harvester.compute(unit, decimals)
                with interrupts_deferred():  # a batch is written whole, then Ctrl-C applies
                    store.write(sae_id, personas[unit.persona].name, unit.paraphrase,
                                [items[i].item_id for i in unit.items], out.n_tokens,
                                out.activations, out.doc_features, out.residual_sum)
                n_docs += len(unit.items)
                n_tok += sum(out.n_tokens)
                dt = max(time.time() - t0, 1e-9)
                bar.advance(len(unit.items),
                            rate=f"{n_docs / dt:,.1f} docs/s · {n_tok / dt:,.0f} tok/s")
        except KeyboardInterrupt:
            raise Interrupted(f"the written batches are kept in {partial}; rerun the same "
                              "command to continue") from None
    seconds = time.time() - t0
    return {"batch_seconds": round(seconds, 3),
            "tokens_per_second": round(n_tok / seconds, 1) if n_tok else 0.0}
