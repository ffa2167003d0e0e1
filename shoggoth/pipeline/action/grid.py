"""`shoggoth grid`: the context × content design, harvested and analysed.

Every persona prompt (k, j) and item i gives a block of four documents, each a (context, text)
pair read by the model and the SAE:

    in_action     the persona's own answer under its own prompt (the mask in action)
    neutral_text  the battery's neutral answer under the persona's prompt (the paired design)
    text_only     the persona's own answer under no persona (content without context)
    baseline      the neutral answer under no persona (one per item, shared by every block)

Documents that share a context run together after its prefix's KV cache; each batch's
per-document activations are saved beside the database as made, so an interrupted run resumes;
the tables are replaced in one transaction at the end (index.action.store). A difference dictionary
reads each document's shift: the document minus the same text under the dictionary's reference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from shoggoth.battery.personas import Item, Persona, baseline_persona
from shoggoth.core.atomic import drop_resume_folder, resume_folder, save_npz_atomic
from shoggoth.core.config import config_metadata, option
from shoggoth.core.errors import BadInput
from shoggoth.core.placement import placement_of
from shoggoth.core.progress import Log, Progress
from shoggoth.index.action.analysis import analyse_grid
from shoggoth.index.action.answers import read_answers
from shoggoth.index.action.labels import GridLabelConfig
from shoggoth.index.action.store import write_grid
from shoggoth.index.store.connection import one_row
from shoggoth.index.store.read import SaeView
from shoggoth.index.store.sae_record import SaeRecord
from shoggoth.index.store.schema import read_battery
from shoggoth.sae.activations import prefix_cache
from shoggoth.sae.encode import (
    encode_aggregate,
    prompts_activations,
    shared_prefix,
    shift_input,
)
from shoggoth.sae.models import Model, load_model
from shoggoth.sae.prompts import Prompt, build_prompt, stored_template
from shoggoth.sae.sae_dir import load_harvest_sae


@dataclass
class GridConfig(GridLabelConfig):
    """`shoggoth grid`: the model's own answers and the neutral ones, each under the persona's
    prompt and under no persona; which features follow the context, the content, both."""

    db: Path = option(required="a database with generated answers")
    """The feature database (from `shoggoth harvest`, with `shoggoth generate` answers)."""
    sae: str | None = None
    """The SAE (its sae_id; default: the only one in the database)."""
    answers: str = "own"
    """The answer set (`shoggoth generate --name`) whose texts are the personas' own."""
    none: str | None = None
    """The control persona that stands for no persona (default: the battery's control with an
    empty prompt, control_none)."""
    neutral: Literal["battery", "own"] = "battery"
    """The reference text: battery, the battery's fixed answers (the paired harvest's texts);
    own, the model's own answers under no persona (in the answer set), so that the content
    effect is the persona's way of speaking against the model's own default, not against
    hand-written text."""
    batch: int = option(32, min=1, max=100_000)
    """Documents per forward pass."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N."""
    device_map: str | None = None
    """Spread the model over several devices: auto, or a JSON file of module → device; --device
    then places the SAE (auto: beside the block it reads). See docs/models.md."""
    max_memory: str | None = None
    """With --device-map: the most memory per device, e.g. 0=20GiB,1=20GiB,cpu=64GiB."""


@dataclass
class GridInputs:
    """What the run reads from the database."""

    record: SaeRecord
    """The SAE's `saes` row."""
    personas: dict[str, Persona]
    items: dict[str, Item]
    none: Persona
    answers: pd.DataFrame
    answers_run: str
    """The run that generated the answer set."""
    neutral_own: dict[str, str] | None
    """--neutral own: the model's own answer under no persona, per item (None: the battery's
    answers)."""

    @property
    def sae_id(self) -> str:
        """The SAE's id."""
        return self.record.sae_id


def read_inputs(cfg: GridConfig) -> GridInputs:
    """The SAE, battery and answer set; BadInput for what cannot work."""
    d = SaeView.for_writing(cfg.db, cfg.sae)
    try:
        record, (personas, items) = d.record, read_battery(d.con)
        if record.value_decimals is None:
            raise BadInput(
                f"--db {cfg.db}: the harvest of '{record.sae_id}' does not say how its values "
                "were rounded (made by an earlier version); harvest it again"
            )
        answers = read_answers(d.con, cfg.answers)
        run = one_row(d.con, "SELECT run_id FROM answer_sets WHERE answer_set = ?", [cfg.answers])[
            0
        ]
    finally:
        d.close()
    by_name = {p.name: p for p in personas}
    if cfg.none is None:
        none = baseline_persona(personas, cfg.db)
    elif cfg.none not in by_name:
        raise BadInput(f"--none {cfg.none}: not a persona of the battery")
    else:
        none = by_name[cfg.none]
    reference = answers[(answers["persona"] == none.name) & (answers["paraphrase"] == 0)]
    answers = answers[answers["persona"] != none.name]
    if cfg.neutral == "own" and reference.empty:
        raise BadInput(
            f"--neutral own: answer set '{cfg.answers}' holds no answer under "
            f"'{none.name}'; run `shoggoth generate --personas …,{none.name}`"
        )
    if answers.empty:
        raise BadInput(
            f"--answers {cfg.answers}: holds no answer of a persona other than '{none.name}'"
        )
    own = (
        dict(zip(reference["item_id"], reference["text"].str.strip(), strict=True))
        if cfg.neutral == "own"
        else None
    )
    return GridInputs(record, by_name, {i.item_id: i for i in items}, none, answers, run, own)


def plan_documents(inputs: GridInputs) -> pd.DataFrame:
    """Every document of the grid: cell, context (persona, paraphrase), text (persona,
    paraphrase; empty for the battery's answer, the no-persona control's for the model's own
    neutral answer), item, the block's persona prompt, and the text itself."""
    rows = []
    own = inputs.answers[inputs.answers["text"].str.strip() != ""]
    none, ref = inputs.none.name, inputs.neutral_own
    if ref is not None:  # an item without the model's own neutral answer has no reference
        own = own[own["item_id"].map(lambda i: bool(ref.get(i)))]
    neutral = (None, None) if ref is None else (none, 0)
    for r in own.itertuples(index=False):
        k, j, i = r.persona, int(r.paraphrase), r.item_id
        plain = None if ref is None else ref[i]
        rows += [
            ("in_action", k, j, k, j, i, k, j, r.text),
            ("neutral_text", k, j, *neutral, i, k, j, plain),
            ("text_only", none, 0, k, j, i, k, j, r.text),
        ]
    rows += [
        ("baseline", none, 0, *neutral, i, None, None, None if ref is None else ref[i])
        for i in sorted(set(own["item_id"]))
    ]
    docs = pd.DataFrame(
        rows,
        columns=[
            "cell",
            "context",
            "context_paraphrase",
            "text_persona",
            "text_paraphrase",
            "item_id",
            "persona",
            "paraphrase",
            "text",
        ],
    )
    docs = docs.sort_values(
        ["context", "context_paraphrase", "cell", "text_persona", "text_paraphrase", "item_id"],
        na_position="first",
        kind="stable",
    )
    docs = docs.astype({"text_paraphrase": "Int16", "paraphrase": "Int16"})
    return docs.reset_index(drop=True).rename_axis("doc").reset_index()


def work_dir(cfg: GridConfig, inputs: GridInputs) -> tuple[Path, str]:
    """The folder this harvest's batches are kept in until the tables are written, and the
    harvest's key (a digest of everything that decides its documents' activations)."""
    key = {
        "sae": inputs.sae_id,
        "weights": inputs.record.weights_sha256,
        "answers": cfg.answers,
        "answers_run": inputs.answers_run,
        "none": inputs.none.name,
        "neutral": cfg.neutral,
        "batch": cfg.batch,
    }
    return resume_folder(
        Path(f"{cfg.db}.grid"), f"{inputs.sae_id}-{cfg.answers}-{cfg.neutral}", key
    )


def build_prompts(model: Model, inputs: GridInputs, docs: pd.DataFrame) -> list[Prompt]:
    """Each document's prompt, built as the harvest builds it."""
    template = stored_template(inputs.record.template)
    out = []
    for d in docs.itertuples(index=False):
        item = inputs.items[d.item_id]
        system = inputs.personas[d.context].prompts[int(d.context_paraphrase)]
        text = d.text if isinstance(d.text, str) else item.answer
        try:
            out.append(
                build_prompt(
                    model.tokenizer,
                    system,
                    item.question,
                    text,
                    template=template,
                    prepend_bos=model.prepend_bos,
                )
            )
        except BadInput as e:
            raise BadInput(
                f"--answers: the answer of '{d.text_persona}' paraphrase "
                f"{d.text_paraphrase} to '{d.item_id}' cannot be fed back: {e}"
            ) from None
    return out


def units(docs: pd.DataFrame, prompts: list[Prompt], batch: int) -> list[np.ndarray]:
    """Batches of documents sharing a context, of similar length, in a fixed order."""
    out = []
    for _, group in docs.groupby(["context", "context_paraphrase"], sort=True):
        idx = sorted(group["doc"].tolist(), key=lambda d: (len(prompts[d].input_ids), d))
        out += [np.array(idx[s : s + batch]) for s in range(0, len(idx), batch)]
    return out


@dataclass
class ReferenceRows:
    """A difference dictionary's reference documents: each grid text (its item, its answer
    text) read under the dictionary's reference, once per run."""

    model: Model
    inputs: GridInputs
    hook: str
    _kept: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)

    def rows(self, docs: pd.DataFrame, batch: np.ndarray, prompts: list[Prompt]) -> torch.Tensor:
        """The reference's activations row for row with the batch's measured tokens."""
        keys = [self.key(docs, d) for d in batch]
        todo = list(dict.fromkeys(k for k in keys if k not in self._kept))
        if todo:
            system = str(self.inputs.record.reference or "")
            template = stored_template(self.inputs.record.template)
            made = [
                build_prompt(
                    self.model.tokenizer,
                    system,
                    self.inputs.items[item].question,
                    text,
                    template=template,
                    prepend_bos=self.model.prepend_bos,
                )
                for item, text in todo
            ]
            acts, row = prompts_activations(self.model, made, [self.hook], None)
            for n, key in enumerate(todo):
                self._kept[key] = acts[self.hook][row == n]
        out = []
        for d, key in zip(batch, keys, strict=True):
            want = sum(prompts[d].mask)
            if len(self._kept[key]) != want:
                raise BadInput(
                    f"--answers: the answer to '{key[0]}' tokenizes differently "
                    "under the dictionary's reference; its shift has no tokens to "
                    "pair"
                )
            out.append(self._kept[key])
        return torch.cat(out)

    def key(self, docs: pd.DataFrame, d: int) -> tuple[str, str]:
        item, text = docs.at[d, "item_id"], docs.at[d, "text"]
        return item, text if isinstance(text, str) else self.inputs.items[item].answer


def harvest_cells(
    cfg: GridConfig, inputs: GridInputs, docs: pd.DataFrame, folder: Path
) -> tuple[np.ndarray, pd.DataFrame]:
    """(n_tokens per document, per-document activations: doc, feature, mean_act, max_act,
    n_fire), batch by batch, resuming from `folder`."""
    model = load_model(
        inputs.record.model,
        cfg.device,
        hook=inputs.record.hook,
        placement=placement_of(cfg.device_map, cfg.max_memory),
    )
    sae = load_harvest_sae(cfg.db, inputs.record, str(model.sae_device(inputs.record.hook)))
    sae.eval()
    prompts = build_prompts(model, inputs, docs)
    longest = max(range(len(prompts)), key=lambda d: len(prompts[d].input_ids))
    model.check_length(len(prompts[longest].input_ids), f"grid document {longest}")
    batches = units(docs, prompts, cfg.batch)
    paths = [folder / f"{u:05d}.npz" for u in range(len(batches))]
    done = sum(len(b) for b, p in zip(batches, paths, strict=True) if p.is_file())
    use_cache = bool(inputs.record.prefix_cache) and model.is_causal
    prefixes: dict[tuple[int, ...], Any] = {}
    hook = inputs.record.hook
    # A difference dictionary reads each document's shift against the same text under its
    # reference.
    reference = ReferenceRows(model, inputs, hook) if inputs.record.is_difference else None
    with Progress("grid", len(docs), done, unit="docs") as bar:
        for b, path in zip(batches, paths, strict=True):
            if path.is_file():
                continue
            chosen = [prompts[d] for d in b]
            shared = tuple(chosen[0].input_ids[: shared_prefix(chosen)]) if use_cache else ()
            if shared and shared not in prefixes:  # a context's batches share its prefix
                prefixes.clear()
                prefixes[shared] = prefix_cache(model, list(shared), inputs.record.hook)
            x, row = prompts_activations(model, chosen, [hook], prefixes.get(shared))
            acts, silent = x[hook], None
            if reference is not None:
                x_ref = reference.rows(docs, b, prompts).to(acts.device)
                acts, silent = shift_input(acts, x_ref)
            out = encode_aggregate(
                sae, acts, row, len(b), inputs.record.value_decimals or 0, silent
            )
            f = out.doc_features
            save_npz_atomic(
                path,
                {
                    "docs": b,
                    "n_tokens": np.array(out.n_tokens),
                    "doc": b[f["doc"]],
                    **{k: v for k, v in f.items() if k != "doc"},
                },
            )
            bar.advance(len(b))
    parts = [dict(np.load(p)) for p in paths]
    n_tokens = np.zeros(len(docs), dtype=np.int64)
    for part in parts:
        n_tokens[part["docs"]] = part["n_tokens"]
    frame = pd.DataFrame(
        {
            k: np.concatenate([p[k] for p in parts])
            for k in ("doc", "feature", "mean_act", "max_act", "n_fire")
        }
    )
    return n_tokens, frame.sort_values(["doc", "feature"], kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class GridResult:
    """What `shoggoth grid` wrote, as its printer reads it."""

    sae_id: str
    """The SAE the grid was read through."""
    answers: str
    """The answer set whose texts are the personas' own."""
    neutral: str
    """The reference text: battery (the battery's answers) or own (the model's own)."""
    documents: int
    """The grid's documents."""
    harvest_seconds: float
    """The grid harvest's wall time."""
    analysis_seconds: float
    """The analysis's wall time (effects, labels and their null runs)."""
    features: pd.DataFrame
    """The `grid_features` rows: every feature's effects and grid label."""
    fdr: pd.DataFrame
    """The `grid_fdr` rows: each grid label's count, null count and estimated FDR."""
    notes: list[str]
    """What this grid could not support, one line each."""


def run_grid(cfg: GridConfig, log: Log = print) -> GridResult:
    """Harvest (or resume) the grid, analyse it and store the tables; returns the summary."""
    inputs = read_inputs(cfg)
    docs = plan_documents(inputs)
    folder, digest = work_dir(cfg, inputs)
    started = time.monotonic()
    log(
        f"grid: {len(docs):,} documents ({(docs['cell'] == 'in_action').sum():,} blocks of "
        f"{docs['persona'].nunique()} personas)"
    )
    n_tokens, doc_features = harvest_cells(cfg, inputs, docs, folder)
    harvested = time.monotonic()
    labels_cfg = GridLabelConfig(
        **{k: getattr(cfg, k) for k in GridLabelConfig.__dataclass_fields__}
    )
    result = analyse_grid(docs, doc_features, int(inputs.record.d_sae), labels_cfg)
    for note in result.notes:
        log(f"note: {note}")
    key = {"sae_id": inputs.sae_id, "answer_set": cfg.answers, "neutral": cfg.neutral}
    write_grid(
        cfg.db,
        key,
        docs.assign(n_tokens=n_tokens),
        doc_features,
        result,
        {**config_metadata(cfg), "harvest_key": digest, "notes": result.notes},
    )
    drop_resume_folder(folder)
    return GridResult(
        inputs.sae_id,
        cfg.answers,
        cfg.neutral,
        len(docs),
        round(harvested - started, 1),
        round(time.monotonic() - harvested, 1),
        result.features,
        result.fdr,
        result.notes,
    )
