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

import contextlib
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from shoggoth.battery.personas import (
    Item,
    Persona,
    load_items,
    load_personas,
    subset_items,
    subset_personas,
)
from shoggoth.battery.units import Unit, count_units, grid_units, parse_shard, shard_units
from shoggoth.core.config import Config, config_metadata, deprecated, option
from shoggoth.core.errors import BadInput, Interrupted
from shoggoth.core.placement import placement_of
from shoggoth.core.printing import Format
from shoggoth.core.progress import Log, Progress
from shoggoth.core.versions import library_versions
from shoggoth.index.harvest.store import HarvestResult, HarvestTarget, PartialStore
from shoggoth.index.harvest.store import summary as harvest_summary
from shoggoth.sae.encode import Harvester, check_lengths, check_tokens, decimals_for
from shoggoth.sae.models import load_model, resolve_device
from shoggoth.sae.prompts import EMPTY_SYSTEM, Template
from shoggoth.sae.sae_dir import (
    SAE_ID,
    check_fits,
    dictionary_kind,
    load_sae_dir,
    pretrained_origin,
    sae_model_name,
    weights_sha256,
)

if TYPE_CHECKING:
    from sae_lens import SAE

# Run settings that decide which rows a harvest writes: a partial harvest is only resumed, and a
# finished one only recognised as done, when these match.
IDENTITY = (
    "sae_id",
    "weights_sha256",
    "model",
    "personas",
    "items",
    "paraphrases",
    "items_per_topic",
    "batch",
    "shard",
    "template",
    "value_decimals",
    "prefix_cache",
)
"""(value_decimals and prefix_cache as requested; what was used is in the saes table.)"""


@dataclass
class HarvestConfig(Config):
    """`shoggoth harvest`: SAE activations on the battery's answers under every persona."""

    db: Path = option(required="the DuckDB file to write")
    """The feature database (DuckDB file) to add this harvest to; created if missing."""
    sae_dir: list[Path] = option([], repeat=True)
    """SAE directory, from `shoggoth train` or `shoggoth sae import` (required); repeat it to
    harvest several SAEs of one model (other hooks or widths) from the same forward passes."""
    sae: str | None = option(None, was={"--sae-id": None})
    """The SAE's id in the database (default: its directory's name; one --sae-dir only)."""
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
    batch: int = option(64, min=1, max=1_000_000, was={"--batch-size": None})
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
    device_map: str | None = None
    """Spread the model over several devices: auto, or a JSON file of module → device; --device
    then places the SAEs (auto: each beside the block it reads). See docs/models.md."""
    max_memory: str | None = None
    """With --device-map: the most memory per device, e.g. 0=20GiB,1=20GiB,cpu=64GiB."""
    ray: str | None = None
    """Harvest --workers shards as Ray tasks and merge them: 'auto' (the cluster this machine
    belongs to, or the running Ray session), a cluster address (ray://host:10001), or 'local'
    (start one here). Needs `pip install shoggoth[ray]`."""
    workers: int | None = option(None, min=1, max=100_000)
    """With --ray: shards, one Ray task each (the model loaded once per task; default 2)."""
    gpus_per_worker: float | None = option(None, min=0)
    """With --ray: GPUs each task asks Ray for (default 0; 1 on a GPU cluster)."""
    format: Format = "table"
    """table (for reading) or json (for scripts)."""

    def check(self) -> None:
        parse_shard(self.shard)
        for flag, value in (
            ("--workers", self.workers),
            ("--gpus-per-worker", self.gpus_per_worker),
        ):
            if value is not None and self.ray is None:
                raise BadInput(
                    f"{flag} {value:g}: only with --ray (it sets how Ray shards the harvest)"
                )
        if not self.sae_dir and self.sae is not None and Path(self.sae).is_dir():
            # `--sae DIR`, as harvest took its SAE folders before --sae-dir
            deprecated(f"--sae {self.sae} (a folder)", f"--sae-dir {self.sae}")
            self.sae_dir, self.sae = [Path(self.sae)], None
        if not self.sae_dir:
            raise BadInput("--sae-dir: required (an SAE directory from `shoggoth train`)")
        if self.sae is not None and not SAE_ID.fullmatch(self.sae):
            raise BadInput(f"--sae {self.sae!r}: use letters, digits, '.', '_' and '-'")
        if self.sae is not None and len(self.sae_dir) > 1:
            raise BadInput(
                f"--sae {self.sae}: names one SAE, but {len(self.sae_dir)} are "
                "given; each SAE is named after its directory"
            )


def run_identity(cfg: HarvestConfig, sae_id: str, sha256: str, model: str) -> dict[str, Any]:
    """The settings that decide a harvest's rows, as stored in its run record."""
    meta = config_metadata(cfg)
    meta.update(
        sae_id=sae_id,
        weights_sha256=sha256,
        model=model,
        personas=str(cfg.personas.resolve()) if cfg.personas else None,
        items=str(cfg.items.resolve()) if cfg.items else None,
    )
    return {k: meta[k] for k in IDENTITY}


def sae_ids(cfg: HarvestConfig) -> list[str]:
    """The database name of each SAE; BadInput for a bad or repeated one."""
    ids = [cfg.sae or p.resolve().name for p in cfg.sae_dir]
    for sae_id in ids:
        if not SAE_ID.fullmatch(sae_id):
            raise BadInput(f"--sae {sae_id!r}: use letters, digits, '.', '_' and '-'")
    if len(set(ids)) < len(ids):
        twice = next(i for i in ids if ids.count(i) > 1)
        raise BadInput(f"--sae-dir: '{twice}' is given twice (SAEs are named after their folders)")
    return ids


def load_saes(cfg: HarvestConfig, device: str) -> tuple[list[SAE], str]:
    """The SAEs and the one model they all read; BadInput when they read different models."""
    saes = [load_sae_dir(p, device) for p in cfg.sae_dir]
    names = [cfg.model or sae_model_name(p, sae) for p, sae in zip(cfg.sae_dir, saes, strict=True)]
    for path, name in zip(cfg.sae_dir, names, strict=True):
        if not name:
            raise BadInput(f"--sae-dir {path}: does not say which model it reads; give --model")
    models = {name for name in names if name}
    if len(models) > 1:
        raise BadInput(
            f"--sae-dir: the SAEs read different models ({', '.join(sorted(models))})"
            "; harvest them separately"
        )
    return saes, models.pop()


def make_harvester(
    cfg: HarvestConfig, saes: list[SAE], model_name: str, personas: list[Persona], items: list[Item]
) -> Harvester:
    """The model loaded, each SAE checked against it and placed beside its hook."""
    model = load_model(
        model_name, cfg.device, placement=placement_of(cfg.device_map, cfg.max_memory)
    )
    hooks = [
        check_fits(sae, model, f"--sae-dir {p}") for sae, p in zip(saes, cfg.sae_dir, strict=True)
    ]
    for sae, hook in zip(saes, hooks, strict=True):
        sae.to(model.sae_device(hook))
        sae.eval()
    kinds = [dictionary_kind(p, sae) for p, sae in zip(cfg.sae_dir, saes, strict=True)]
    harvester = Harvester(
        model,
        saes,
        hooks,
        personas,
        items,
        cfg.template,
        cfg.prefix_cache and model.is_causal,
        [k for k, _ in kinds],
        [r if r is not None else EMPTY_SYSTEM for _, r in kinds],
    )
    return harvester


def harvest(cfg: HarvestConfig, log: Log = print) -> HarvestResult:
    """Run (or resume, or recognise as done) a harvest of one SAE or several from the same
    forward passes; returns each SAE's summary."""
    shard = parse_shard(cfg.shard)
    ids = sae_ids(cfg)
    personas = subset_personas(load_personas(cfg.personas), cfg.paraphrases)
    items = subset_items(load_items(cfg.items), cfg.items_per_topic)
    n_units = count_units(personas, len(items), cfg.batch)
    if shard[1] > n_units:
        raise BadInput(
            f"--shard {cfg.shard}: the grid has {n_units:,} batches, so some shards "
            f"would be empty; use at most {n_units:,} shards"
        )
    target = HarvestTarget(cfg.db, personas, items, ids)
    partial = target.partial
    device, _ = resolve_device(cfg.device)
    saes, model_name = load_saes(cfg, str(device))
    identities = [
        run_identity(cfg, i, weights_sha256(p), model_name)
        for i, p in zip(ids, cfg.sae_dir, strict=True)
    ]
    done = [i for i in ids if target.held.get(i) is not None]
    if done and len(done) == len(ids):
        out = [
            target.already_done(i, identity) for i, identity in zip(ids, identities, strict=True)
        ]
        return HarvestResult(out[0], out[1:])
    if done:
        raise BadInput(
            f"--db {cfg.db}: already holds SAE '{done[0]}'; harvest the others without it"
        )
    harvester = make_harvester(cfg, saes, model_name, personas, items)
    model = harvester.model
    first = harvester.group(0, 0)  # every item under the first persona paraphrase
    expected = [p.continuation_ids for p in first]
    lengths = [len(p.input_ids) for p in first]
    check_lengths(harvester, lengths)
    units = grid_units(personas, lengths, cfg.batch)
    mine = shard_units(units, shard)

    started = time.time()
    store = target.open_partial()
    try:
        decimals, use_cache = begin(
            harvester,
            store,
            cfg,
            ids,
            identities,
            units[0],
            mine,
            (model_name, model.source.location, first[0].template),
            expected,
            partial,
            log,
        )
        harvester.use_prefix_cache = use_cache
        written = store.done_documents(ids[0])
        todo = [
            u
            for u in mine
            if (personas[u.persona].name, u.paraphrase, items[u.items[0]].item_id) not in written
        ]
        batch_seconds, rate = run_units(
            harvester, store, ids, mine, todo, expected, decimals, partial
        )
        store.finish()
    finally:
        store.close()
    target.publish()
    seconds = time.time() - started
    out = [
        replace(
            harvest_summary(cfg.db, i, seconds), batch_seconds=batch_seconds, tokens_per_second=rate
        )
        for i in ids
    ]
    return HarvestResult(out[0], out[1:])


def begin(
    harvester: Harvester,
    store: PartialStore,
    cfg: HarvestConfig,
    ids: list[str],
    identities: list[dict[str, Any]],
    first_unit: Unit,
    mine: list[Unit],
    source: tuple[str, str, str],
    expected: list[list[int]],
    partial: Path,
    log: Log,
) -> tuple[list[int], bool]:
    """Start each SAE's run in the partial file, or resume it (its settings must match);
    returns each SAE's value decimals and whether the prefix cache is used."""
    model_name, location, template = source
    states = [store.resume_state(i) for i in ids]
    started = [s for s in states if s is not None]
    for i, identity, state in zip(ids, identities, states, strict=True):
        if state is not None:
            resumed(cfg, state, identity, i, partial, log if state is started[0] else None)
    fresh = [k for k, s in enumerate(states) if s is None]
    if fresh:
        decimals, use_cache = setup(harvester, cfg, first_unit, mine, log)
        use_cache = started[0]["prefix_cache"] if started else use_cache
    for k in fresh:  # (only before any batch is written: every SAE starts together)
        sae, path = harvester.saes[k], cfg.sae_dir[k]
        sha = identities[k]["weights_sha256"]
        store.start(
            ids[k],
            identities[k],
            config_metadata(cfg),
            library_versions(),
            {
                "model": model_name,
                "hook": harvester.hooks[k],
                "architecture": sae.cfg.architecture(),
                "d_in": sae.cfg.d_in,
                "d_sae": sae.cfg.d_sae,
                "path": str(path.resolve()),
                "weights_sha256": sha,
                "model_source": location,
                "template": template,
                "value_decimals": decimals[k],
                "prefix_cache": use_cache,
                "kind": harvester.kind(k),
                "reference": harvester.references[k],
                **pretrained_origin(path, sae),
            },
            [
                (
                    it.item_id,
                    expected[n],
                    harvester.model.tokenizer.convert_ids_to_tokens(expected[n]),
                )
                for n, it in enumerate(harvester.items)
            ],
        )
        states[k] = {"value_decimals": decimals[k], "prefix_cache": use_cache}
    settled = cast("list[dict[str, Any]]", states)  # every SAE's state is set by now
    return [int(s["value_decimals"]) for s in settled], bool(settled[0]["prefix_cache"])


def resumed(
    cfg: HarvestConfig,
    state: dict[str, Any],
    identity: dict[str, Any],
    sae_id: str,
    partial: Path,
    log: Log | None,
) -> None:
    """BadInput when the unfinished harvest being resumed was started with other settings."""
    if identity != state["identity"]:
        diff = sorted(k for k in IDENTITY if identity[k] != state["identity"].get(k))
        raise BadInput(
            f"--db {cfg.db}: an unfinished harvest of '{sae_id}' with other settings "
            f"({', '.join(diff)}) is in {partial}; rerun it with the same settings, or "
            "delete that file to start over"
        )
    if log is not None:
        log(f"resuming: {state['documents']:,} documents already harvested")


def setup(
    harvester: Harvester, cfg: HarvestConfig, first: Unit, mine: list[Unit], log: Log
) -> tuple[list[int], bool]:
    """A new harvest's value decimals per SAE (from the grid's first batch, whichever shard
    this is) and whether the prefix cache can be used on this model. The first batch's
    activations are computed as the harvest computes them (with the cache when it is used), so
    the harvest's first batch reuses them instead of running again."""
    use_cache = harvester.check_prefix_cache(mine[0]) if mine else False
    if harvester.use_prefix_cache and not use_cache:
        log("note: this model's attention ignores the KV cache; harvesting without prefix caching")
    if cfg.value_decimals is not None:
        decimals = [cfg.value_decimals] * len(harvester.saes)
    else:
        inputs, _ = harvester.sae_inputs(first, cached=use_cache)
        with torch.inference_mode():
            decimals = [
                decimals_for(
                    sae.encode(harvester.encoded_input(k, x, x_ref)[0].to(sae.device, sae.dtype))
                )
                for k, (sae, (x, x_ref)) in enumerate(zip(harvester.saes, inputs, strict=True))
            ]
    return decimals, use_cache


def run_units(
    harvester: Harvester,
    store: PartialStore,
    ids: list[str],
    mine: list[Unit],
    todo: list[Unit],
    expected: list[list[int]],
    decimals: list[int],
    partial: Path,
) -> tuple[float, float]:
    """Compute and write each unit (every SAE's rows in one transaction), with a progress bar;
    Ctrl-C keeps what was written. A writer thread stores one batch while the next is computed
    (DuckDB and torch both work outside the GIL); a signal reaches only the main thread, so a
    batch in flight is always written whole. Returns the seconds of this run's batches and
    their steady-state rate in tokens per second (model load and set-up excluded)."""
    personas, items = harvester.personas, harvester.items
    total = sum(len(u.items) for u in mine)
    before = total - sum(len(u.items) for u in todo)
    n_docs = n_tok = 0
    t0 = time.time()
    pending: Future[None] | None = None
    with (
        Progress("harvest", total, before, unit="docs") as bar,
        ThreadPoolExecutor(1, thread_name_prefix="harvest-writer") as writer,
    ):
        try:
            for unit in todo:
                check_tokens(harvester, unit, expected)
                out = harvester.compute(unit, decimals)
                if pending is not None:
                    pending.result()  # the previous batch is stored (or its error raised)
                pending = writer.submit(
                    store.write,
                    personas[unit.persona].name,
                    unit.paraphrase,
                    [items[i].item_id for i in unit.items],
                    list(zip(ids, out, strict=True)),
                )
                n_docs += len(unit.items)
                n_tok += sum(out[0].n_tokens)
                dt = max(time.time() - t0, 1e-9)
                bar.advance(
                    len(unit.items), rate=f"{n_docs / dt:,.1f} docs/s · {n_tok / dt:,.0f} tok/s"
                )
            if pending is not None:
                pending.result()
        except KeyboardInterrupt:
            settle(pending)
            raise Interrupted(
                f"the written batches are kept in {partial}; rerun the same command to continue"
            ) from None
    seconds = time.time() - t0
    return round(seconds, 3), round(n_tok / seconds, 1) if n_tok else 0.0


def settle(pending: Future[None] | None) -> None:
    """Wait for the batch being written to be stored whole, whatever further Ctrl-C comes (its
    own error is the resumed run's to meet: the transaction is then rolled back)."""
    while pending is not None and not pending.done():
        with contextlib.suppress(KeyboardInterrupt):
            wait([pending])
