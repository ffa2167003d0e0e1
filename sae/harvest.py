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

import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae.configs import config_metadata
from sae.errors import BadInput, Interrupted, interrupts_deferred
from sae.personas import Item, Persona, load_items, load_personas
from sae.prompts import Prompt, Template, build_prompt, collate, pad_id
from sae.sae_import import check_fits
from sae.train import library_versions

SAE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")
SHARD = re.compile(r"(\d+)/(\d+)")
# Run settings that decide which rows a harvest writes: a partial harvest is only resumed, and a
# finished one only recognised as done, when these match.
IDENTITY = ("sae_id", "weights_sha256", "model", "personas", "items", "batch_size", "shard",
            "template", "value_decimals", "prefix_cache")
"""(value_decimals and prefix_cache as requested; what was used is in the saes table.)"""


@dataclass
class HarvestConfig:
    """`shoggoth harvest`: SAE activations on the battery's answers under every persona."""

    db: Path | None = None
    """The feature database (DuckDB file) to add this harvest to; created if missing."""
    sae: Path | None = None
    """SAE directory, from `shoggoth train` or `shoggoth sae import`."""
    sae_id: str | None = None
    """Name of this SAE in the database (default: the SAE directory's name)."""
    model: str | None = None
    """Model alias, local Hugging Face directory or hub id (default: the SAE's model)."""
    personas: Path | None = None
    """Personas YAML file (default: the built-in battery; format in docs/battery.md)."""
    items: Path | None = None
    """Items JSONL file (default: the built-in battery)."""
    batch_size: int = 64
    """Documents per forward pass."""
    shard: str | None = None
    """I/N: harvest only slice I (0-based) of N of the document grid into --db; combine the N
    files with `shoggoth merge`."""
    template: Template = "auto"
    """auto: the chat template when the model has one; chat; plain: persona + user + answer."""
    prefix_cache: bool = True
    """Causal LMs: run each persona prefix once and reuse its KV cache for every item."""
    value_decimals: int | None = None
    """Decimals activation values are stored with (default: a step of at most 1/500 of the
    median activation, measured on the grid's first batch)."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N."""


@dataclass(frozen=True)
class Unit:
    """One batch of the grid: one persona paraphrase and some items."""

    persona: int
    paraphrase: int
    items: tuple[int, ...]


@dataclass
class Computed:
    """A unit's results, ready to be written: numpy columns, `doc` indexing the unit's items."""

    n_tokens: list[int]
    """Continuation tokens per document (in unit item order)."""
    activations: dict[str, np.ndarray]
    """doc, pos, feature, value of every non-zero (rounded) activation."""
    doc_features: dict[str, np.ndarray]
    """doc, feature, mean_act, max_act, n_fire per document and feature that fired."""
    residual_sum: np.ndarray
    """Sum of the hook activations over the unit's continuation tokens (float64, [d_in]): what
    `shoggoth index` turns into persona vectors."""


def parse_shard(shard: str | None) -> tuple[int, int]:
    """(I, N) from "I/N"; (0, 1) for no shard."""
    if shard is None:
        return 0, 1
    m = SHARD.fullmatch(shard.strip())
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise BadInput(f"--shard {shard}: expected I/N with 0 <= I < N, e.g. 0/4")
    return int(m.group(1)), int(m.group(2))


def shard_units(units: list[Unit], shard: tuple[int, int]) -> list[Unit]:
    """The contiguous slice of `units` that shard (I, N) harvests."""
    i, n = shard
    return units[i * len(units) // n : (i + 1) * len(units) // n]


def grid_units(personas: list[Persona], lengths: list[int], batch_size: int) -> list[Unit]:
    """Every batch of the grid, in the order they are harvested. Items are ordered by prompt
    length so that a batch pads little; every persona paraphrase uses the same batches."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [tuple(order[s : s + batch_size]) for s in range(0, len(order), batch_size)]
    return [Unit(p, j, b) for p, persona in enumerate(personas)
            for j in range(len(persona.prompts)) for b in batches]


def weights_sha256(sae_dir: Path) -> str:
    """sha256 of the SAE's weights file (tells two SAEs with the same name apart)."""
    digest = hashlib.sha256()
    with (sae_dir / "sae_weights.safetensors").open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_sae_dir(path: Path, device: str) -> Any:
    """An sae-lens SAE from a directory; BadInput in one line when it is not one."""
    from sae.sae_import import read_sae_dir

    if not path.is_dir():
        raise BadInput(f"--sae {path}: no such directory")
    if not (path / "cfg.json").is_file() or not (path / "sae_weights.safetensors").is_file():
        raise BadInput(f"--sae {path}: not an SAE directory (needs cfg.json and "
                       "sae_weights.safetensors, as `shoggoth train` writes)")
    return read_sae_dir(path, device, "--sae")


def sae_model_name(path: Path, sae: Any) -> str | None:
    """The model an SAE was trained on: shoggoth.json's record, else sae-lens metadata."""
    meta = path / "shoggoth.json"
    if meta.is_file():
        name = json.loads(meta.read_text()).get("model")
        if name:
            return str(name)
    return getattr(sae.cfg.metadata, "model_name", None) or None


def decimals_for(values: torch.Tensor) -> int:
    """Decimals whose rounding step is at most 1/500 of the median non-zero activation."""
    nonzero = values[values > 0]
    if nonzero.numel() == 0:
        return 4
    median = float(nonzero.float().median())
    return int(min(9, max(0, math.ceil(math.log10(500 / median)))))


@dataclass
class Harvester:
    """The model, SAE and battery of one harvest, and the per-paraphrase prompt caches."""

    model: Any
    sae: Any
    hook: str
    personas: list[Persona]
    items: list[Item]
    template: Template
    use_prefix_cache: bool
    _group: tuple[int, int] | None = field(default=None, repr=False)
    _prompts: list[Prompt] = field(default_factory=list, repr=False)
    _prefix: Any = field(default=None, repr=False)
    _last: tuple[Unit, bool, torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def prompt(self, persona: int, paraphrase: int, item: int) -> Prompt:
        it = self.items[item]
        return build_prompt(self.model.tokenizer, self.personas[persona].prompts[paraphrase],
                            it.question, it.answer, template=self.template,
                            prepend_bos=self.model.prepend_bos)

    def group(self, persona: int, paraphrase: int) -> list[Prompt]:
        """All items' prompts under one persona paraphrase, and (causal LMs) the KV cache of the
        tokens they all share, computed once per paraphrase."""
        if self._group != (persona, paraphrase):
            from sae.activations import prefix_cache

            self._prompts = [self.prompt(persona, paraphrase, i) for i in range(len(self.items))]
            self._prefix = None
            if self.use_prefix_cache:
                shared = shared_prefix(self._prompts)
                if shared:
                    self._prefix = prefix_cache(self.model, self._prompts[0].input_ids[:shared],
                                                self.hook)
            self._group = (persona, paraphrase)
        return self._prompts

    def hook_activations(self, unit: Unit, cached: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """[n_continuation_tokens, d] activations of a unit's documents (document, then position
        order) and the document index of each row."""
        from sae.activations import activations, activations_after_prefix

        if self._last is not None and self._last[:2] == (unit, cached):
            return self._last[2], self._last[3]  # setup's checks reuse the first batch
        prompts = [self.group(unit.persona, unit.paraphrase)[i] for i in unit.items]
        if self.model.is_causal:  # later tokens cannot change a causal model's activations
            ends = [_last_true(p.mask) + 1 for p in prompts]
            prompts = [Prompt(p.input_ids[:end], p.mask[:end], p.template)
                       for p, end in zip(prompts, ends, strict=True)]
        tok = self.model.tokenizer
        if cached and self._prefix is not None:
            cut = len(self._prefix.ids)
            suffixes = [Prompt(p.input_ids[cut:], p.mask[cut:], p.template) for p in prompts]
            batch = collate(suffixes, pad_id(tok), "right")
            acts = activations_after_prefix(self.model, self._prefix, batch, self.hook)
        else:
            batch = collate(prompts, pad_id(tok), getattr(tok, "padding_side", "right"))
            acts = activations(self.model, batch, self.hook)
        mask = batch.continuation_mask.to(acts.device)
        rows = torch.arange(mask.shape[0], device=acts.device)[:, None].expand_as(mask)
        self._last = (unit, cached, acts[mask], rows[mask])
        return self._last[2], self._last[3]

    def compute(self, unit: Unit, decimals: int) -> Computed:
        """Encode a unit's continuation tokens; keep the non-zero (rounded) activations and
        their per-document aggregates."""
        x, doc = self.hook_activations(unit, self.use_prefix_cache)
        with torch.inference_mode():
            f = self.sae.encode(x.to(self.sae.dtype)).float()
            scale = 10.0 ** decimals
            f = torch.round(f * scale) / scale
            n_docs = len(unit.items)
            n_tokens = torch.bincount(doc, minlength=n_docs)
            starts = torch.cumsum(n_tokens, 0) - n_tokens
            token, feature = f.nonzero(as_tuple=True)
            value = f[token, feature]
            doc_of = doc[token]
            # Per-document aggregates of the stored (rounded) values.
            sums = torch.zeros(n_docs, f.shape[1], device=f.device).index_add_(0, doc, f)
            fired = torch.zeros_like(sums).index_add_(0, doc, (f > 0).float())
            peak = torch.zeros_like(sums).index_reduce_(0, doc, f, "amax")
            d, j = fired.nonzero(as_tuple=True)
            mean = sums[d, j] / n_tokens[d]

        def cpu(t: torch.Tensor, dtype: type) -> np.ndarray:
            return t.cpu().numpy().astype(dtype)

        return Computed(
            n_tokens=n_tokens.tolist(),
            residual_sum=x.double().sum(0).cpu().numpy(),
            activations={"doc": cpu(doc_of, np.int32),
                         "pos": cpu(token - starts[doc_of], np.int32),
                         "feature": cpu(feature, np.int32), "value": cpu(value, np.float32)},
            doc_features={"doc": cpu(d, np.int32), "feature": cpu(j, np.int32),
                          "mean_act": cpu(mean, np.float32), "max_act": cpu(peak[d, j], np.float32),
                          "n_fire": cpu(fired[d, j], np.int32)},
        )

    def check_prefix_cache(self, unit: Unit) -> bool:
        """Whether the KV-cache path reproduces a full forward pass on this model (a guard
        against attention implementations that ignore the cache)."""
        if not self.use_prefix_cache:
            return False
        self.group(unit.persona, unit.paraphrase)
        if self._prefix is None:
            return True
        fast, _ = self.hook_activations(unit, cached=True)
        full, _ = self.hook_activations(unit, cached=False)
        scale = float(full.float().abs().max()) or 1.0
        tolerance = 1e-3 if self.model.dtype == torch.float32 else 5e-2
        return float((fast.float() - full.float()).abs().max()) <= tolerance * scale


def _last_true(mask: list[bool]) -> int:
    return len(mask) - 1 - mask[::-1].index(True)


def shared_prefix(prompts: list[Prompt]) -> int:
    """Length of the token prefix all prompts share, stopping before any measured token."""
    first = prompts[0].input_ids
    n = min(min(len(p.input_ids) for p in prompts), min(p.mask.index(True) for p in prompts))
    for p in prompts[1:]:
        ids = p.input_ids
        k = 0
        while k < n and ids[k] == first[k]:
            k += 1
        n = k
    return n


def check_tokens(harvester: Harvester, unit: Unit, expected: list[list[int]]) -> None:
    """The same answer must give the same tokens under every persona, or positions would not
    line up across personas."""
    prompts = harvester.group(unit.persona, unit.paraphrase)
    for i in unit.items:
        if prompts[i].continuation_ids != expected[i]:
            raise BadInput(
                f"item '{harvester.items[i].item_id}': its answer tokenizes differently under "
                f"persona '{harvester.personas[unit.persona].name}' paraphrase {unit.paraphrase} "
                "(the tokenizer merges it with the text before it); try --template plain")


def progress_bar() -> Any:
    """A rich progress bar on stderr: documents, documents/s and continuation tokens/s."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("harvest"), BarColumn(), MofNCompleteColumn(), TextColumn("docs ·"),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
        console=Console(stderr=True), transient=False,
    )


def run_identity(cfg: HarvestConfig, sae_id: str, sha256: str, model: str) -> dict[str, Any]:
    """The settings that decide a harvest's rows, as stored in its run record."""
    meta = config_metadata(cfg)
    meta.update(sae_id=sae_id, weights_sha256=sha256, model=model,
                personas=str(cfg.personas.resolve()) if cfg.personas else None,
                items=str(cfg.items.resolve()) if cfg.items else None)
    return {k: meta[k] for k in IDENTITY}


def harvest(cfg: HarvestConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume, or recognise as done) a harvest; returns its summary."""
    from index import harvest_db

    if cfg.db is None:
        raise BadInput("--db: required (the DuckDB file to write)")
    if cfg.sae is None:
        raise BadInput("--sae: required (an SAE directory from `shoggoth train`)")
    if cfg.batch_size < 1:
        raise BadInput(f"--batch-size {cfg.batch_size}: must be at least 1")
    if cfg.value_decimals is not None and not 0 <= cfg.value_decimals <= 9:
        raise BadInput(f"--value-decimals {cfg.value_decimals}: must be between 0 and 9")
    shard = parse_shard(cfg.shard)
    sae_id = cfg.sae_id or cfg.sae.resolve().name
    if not SAE_ID.fullmatch(sae_id):
        raise BadInput(f"--sae-id {sae_id!r}: use letters, digits, '.', '_' and '-'")
    personas = load_personas(cfg.personas)
    items = load_items(cfg.items)
    target = harvest_db.check_target(cfg.db, personas, items)
    partial = harvest_db.partial_path(cfg.db, sae_id)
    from sae.models import load_model, resolve_device

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
            if identity != state["identity"]:
                diff = sorted(k for k in IDENTITY if identity[k] != state["identity"][k])
                raise BadInput(
                    f"--db {cfg.db}: an unfinished harvest of '{sae_id}' with other settings "
                    f"({', '.join(diff)}) is in {partial}; rerun it with the same settings, or "
                    "delete that file to start over")
            decimals, use_cache = state["value_decimals"], state["prefix_cache"]
            log(f"resuming: {state['documents']:,} documents already harvested")
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
    with progress_bar() as bar:
        task = bar.add_task("harvest", total=total, completed=before, rate="")
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
                bar.update(task, advance=len(unit.items),
                           rate=f"{n_docs / dt:,.1f} docs/s · {n_tok / dt:,.0f} tok/s")
        except KeyboardInterrupt:
            raise Interrupted(f"the written batches are kept in {partial}; rerun the same "
                              "command to continue") from None
    seconds = time.time() - t0
    return {"batch_seconds": round(seconds, 3),
            "tokens_per_second": round(n_tok / seconds, 1) if n_tok else 0.0}
