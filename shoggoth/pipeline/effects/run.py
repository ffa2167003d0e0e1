"""`shoggoth effects`: what each feature does to the answer under each mask.

For every persona k and item i, the persona's shift of the answer is Δ_k(i), the per-token
log p(answer | persona k) − log p(answer | no persona). A cheap screen (attribution patching,
one forward and backward pass per document) estimates for every live feature how much of Δ_k
its ablation would remove; the top candidates and a random sample of shared features (the
baseline) are then measured exactly:

- ablation: the feature's contribution a_f·d_f is subtracted at the answer tokens (the SAE's
  error term kept, so only f changes), under persona k and under no persona; the change of the
  answer's log-probability and the mean KL of the next-token distributions;
- the mediated fraction: the share of Δ_k the ablation removes (the change of Δ_k projected
  on Δ_k, summed over items), with an item-bootstrap interval;
- steering: the feature's typical activation added along d_f under no persona, and the share
  of each Δ_k the change of the answer reproduces.

The composition test (pipeline/effects/compose.py) runs in the exact pass, item by item: its
edits ride in the exact ablation's batches (one unedited row and one run of the blocks before
the hook serve both), and every condition's clean run comes from the screen.

Each item's screen and exact results are kept in a folder beside the database as they are
made, so an interrupted run resumes; the tables are replaced in one transaction at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from shoggoth.battery.personas import Item, Persona, baseline_persona, subset_items
from shoggoth.core.atomic import (
    drop_resume_folder,
    resume_folder,
    save_npz_atomic,
    write_json_atomic,
)
from shoggoth.core.config import BOOTSTRAP, CONFIDENCE, SEED_MAX, Config, option
from shoggoth.core.errors import BadInput
from shoggoth.core.lists import parse_names, parse_numbers
from shoggoth.core.placement import Placement, placement_of
from shoggoth.core.printing import Format
from shoggoth.core.progress import Log, Progress
from shoggoth.index.effects.queries import typical_activations
from shoggoth.index.effects.store import write_effects
from shoggoth.index.labels.decompose import part_of_features
from shoggoth.index.labels.queries import labelled_features
from shoggoth.index.labels.rules import LABELS
from shoggoth.index.store.read import SaeView
from shoggoth.index.store.sae_record import SaeRecord
from shoggoth.index.store.schema import read_battery
from shoggoth.pipeline.effects.compose import (
    composition_arrays,
    composition_edits,
    composition_rows,
)
from shoggoth.pipeline.effects.measure import (
    EffectsPlan,
    Setup,
    clean_rows,
    exact_rows,
    screen_item,
)
from shoggoth.pipeline.effects.tables import effect_rows, make_plan, screen_estimates, shift_rows
from shoggoth.sae.models import Model, load_model
from shoggoth.sae.prompts import build_prompt, stored_template
from shoggoth.sae.sae_dir import load_harvest_sae

if TYPE_CHECKING:
    from sae_lens import SAE


COMPOSE = "compose_"
"""The prefix of the composition test's arrays in an item's saved exact-pass results."""


@dataclass
class EffectsConfig(Config):
    """`shoggoth effects`: ablation and steering of features under each persona."""

    db: Path = option(required="a database from `shoggoth harvest`")
    """The feature database (its SAE, model and battery are used)."""
    sae: str | None = None
    """The SAE (its sae_id; default: the only one in the database)."""
    features: str | None = None
    """Comma-separated features to measure exactly (default: the screen's top candidates and a
    baseline sample of shared features)."""
    labels: str | None = None
    """Comma-separated labels the candidates are drawn from (default: every live feature)."""
    top: int = option(20, min=1)
    """Candidates measured exactly: the live features with the largest screen estimate."""
    baseline: int = option(10, min=0)
    """Randomly drawn shared features measured exactly as the baseline."""
    per_feature: int = option(2, min=0)
    """Personas each feature's ablation is measured under (those with its largest screen
    estimates; 0: every persona). Steering is scored against every persona."""
    items_per_topic: int = option(3, min=1)
    """Items of each topic measured (the answers every condition reads)."""
    paraphrase: int = option(0, min=0)
    """Which of each persona's prompts is used (0: the first)."""
    batch: int = option(16, min=1)
    """Batch rows per forward pass (ablations of one document)."""
    bootstrap: int = option(1000, **BOOTSTRAP)
    """Item-bootstrap draws of each interval."""
    confidence: float = option(0.95, **CONFIDENCE)
    """Level of the intervals."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N."""
    device_map: str | None = None
    """Spread the model over several devices: auto, or a JSON file of module → device; --device
    then places the SAE (auto: beside the block it reads). See docs/models.md."""
    max_memory: str | None = None
    """With --device-map: the most memory per device, e.g. 0=20GiB,1=20GiB,cpu=64GiB."""
    seed: int = option(0, min=0, max=SEED_MAX)
    """Seed of the baseline sample and the bootstrap."""
    format: Format = "table"
    """table (for reading) or json (for scripts)."""


def parse_features(spec: str, d_sae: int) -> list[int]:
    """Feature ids from '3,17,40-45'; BadInput naming --features when one is not a feature."""
    return parse_numbers(spec, "--features", 0, d_sae - 1)


def parse_labels(spec: str) -> set[str]:
    """Label names from 'shared,mask-specific'; BadInput naming --labels for unknown ones."""
    return set(parse_names(spec, "--labels", LABELS))


@dataclass
class EffectsInputs:
    """What the run reads from the database."""

    db: Path
    record: SaeRecord
    """The SAE's `saes` row."""
    conditions: list[Persona]
    items: list[Item]
    labels: dict[int, str]
    typical: dict[int, float]
    chosen: list[int] | None
    allowed: set[int] | None
    parts: np.ndarray | None = None
    """[personas, features] each persona's part (decompose.PARTS) of every feature, for the
    composition test (None: not labelled yet)."""

    @property
    def sae_id(self) -> str:
        """The SAE's id."""
        return self.record.sae_id

    @property
    def kind(self) -> str:
        """The dictionary's kind (residual or difference)."""
        return self.record.kind


def reference_condition(record: SaeRecord, personas: list[Persona], db: Path) -> Persona:
    """The condition every persona's shift is taken against: a difference dictionary's own
    reference (its shifts are against it), else the battery's no-persona control."""
    if record.is_difference:
        return Persona(
            "reference",
            "control",
            "the dictionary's reference",
            (record.reference or "",),
            is_control=True,
        )
    return baseline_persona(personas, db)


def feature_parts(labels: pd.DataFrame, main: list[Persona], d_sae: int) -> np.ndarray | None:
    """Each persona's part of every feature, from the labels in force (None: unlabelled)."""
    if not len(labels):
        return None
    frame = labels.set_index("feature").reindex(range(d_sae))
    frame["label"] = frame["label"].fillna("dead")
    return np.stack([part_of_features(frame, p.name) for p in main])


def read_inputs(cfg: EffectsConfig) -> EffectsInputs:
    """The SAE, battery, labels and typical activations; BadInput for what cannot work."""
    d = SaeView.for_writing(cfg.db, cfg.sae)
    try:
        personas, items = read_battery(d.con)
        main = [p for p in personas if not p.is_control]
        if not main:
            raise BadInput(f"--db {cfg.db}: the battery has no persona that is not a control")
        short = [p.name for p in main if len(p.prompts) <= cfg.paraphrase]
        if short:
            raise BadInput(
                f"--paraphrase {cfg.paraphrase}: persona '{short[0]}' has "
                f"{len(next(p for p in main if p.name == short[0]).prompts)} prompts"
            )
        labels = labelled_features(d.con, d.sae_id)
        label_of = dict(zip(labels["feature"], labels["label"], strict=True)) if len(labels) else {}
        allowed = None
        if cfg.labels:
            wanted = parse_labels(cfg.labels)
            if not label_of:
                raise BadInput(f"--labels: {cfg.db} is not labelled yet; run shoggoth label")
            allowed = {int(f) for f, lab in label_of.items() if lab in wanted}
        chosen = parse_features(cfg.features, d.record.d_sae) if cfg.features else None
        return EffectsInputs(
            cfg.db,
            d.record,
            [reference_condition(d.record, personas, cfg.db), *main],
            subset_items(items, cfg.items_per_topic),
            {int(k): str(v) for k, v in label_of.items()},
            typical_activations(d.con, d.sae_id),
            chosen,
            allowed,
            feature_parts(labels, main, d.record.d_sae),
        )
    finally:
        d.close()


def load_causal(
    db: Path, record: SaeRecord, device: str, placement: Placement | None = None
) -> tuple[Model, SAE]:
    """The harvest's model (a causal LM, else BadInput; laid out by `placement`) and SAE (on
    its own device, `Model.sae_device`), without gradients on weights."""
    model = load_model(record.model, device, hook=record.hook, placement=placement)
    if not model.is_causal:
        raise BadInput(
            f"--db {db}: model '{record.model}' is an encoder, not a causal LM; "
            "ablation and steering are measured on next-token predictions"
        )
    model.bridge.requires_grad_(False)
    sae = load_harvest_sae(db, record, str(model.sae_device(record.hook)))
    sae.requires_grad_(False)
    return model, sae


def make_setup(inputs: EffectsInputs, model: Model, sae: SAE, cfg: EffectsConfig) -> Setup:
    """Every condition's prompt for every item, as the harvest built them."""
    template = stored_template(inputs.record.template)
    index = 0 if len(inputs.conditions[0].prompts) <= cfg.paraphrase else cfg.paraphrase
    prompts = [
        [
            build_prompt(
                model.tokenizer,
                p.prompts[index if c == 0 else cfg.paraphrase],
                it.question,
                it.answer,
                template=template,
                prepend_bos=model.prepend_bos,
            )
            for it in inputs.items
        ]
        for c, p in enumerate(inputs.conditions)
    ]
    w_dec = sae.W_dec.detach().float()
    return Setup(
        model,
        sae,
        inputs.record.hook,
        w_dec,
        [p.name for p in inputs.conditions],
        prompts,
        cfg.batch,
        inputs.kind,
    )


def work_dir(inputs: EffectsInputs, cfg: EffectsConfig) -> Path:
    """The folder this run's per-item results are kept in until the tables are written; keyed
    by everything that decides them, so only the same run resumes from it."""
    key = {
        "config": {k: str(v) for k, v in asdict(cfg).items()},
        "sae": inputs.sae_id,
        "weights": inputs.record.weights_sha256,
    }
    return resume_folder(Path(f"{inputs.db}.effects"), inputs.sae_id, key)[0]


def per_item(
    folder: Path, n_items: int, title: str, measure: Callable[[int], dict[str, Any]]
) -> list[dict[str, np.ndarray]]:
    """`measure(item)` for every item, each result saved as it is made; items already saved
    are read back (a resumed run)."""
    paths = [folder / f"{i:05d}.npz" for i in range(n_items)]
    done = sum(p.is_file() for p in paths)
    with Progress(title, n_items, done, unit="items") as bar:
        for i, path in enumerate(paths):
            if not path.is_file():
                save_npz_atomic(path, measure(i))
                bar.advance(1)
    return [dict(np.load(p)) for p in paths]


def plan_of(folder: Path, make: Callable[[], EffectsPlan]) -> EffectsPlan:
    """The exact pass's plan, saved once so that a resumed run measures the same features."""
    path = folder / "plan.json"
    if path.is_file():
        return EffectsPlan(**json.loads(path.read_text()))
    plan = make()
    write_json_atomic(path, asdict(plan))
    return plan


def plan_effects(
    folder: Path, cfg: EffectsConfig, inputs: EffectsInputs, screens: list[dict[str, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, EffectsPlan]:
    """(the screen's estimates, which features fired on some item, the plan of features to
    measure exactly); the plan is saved in the resume folder and read back on a resumed run."""
    estimates = screen_estimates(screens)
    fired = np.asarray(np.stack([x["fired"] for x in screens]).any(0))
    plan = plan_of(
        folder,
        lambda: make_plan(
            estimates,
            fired,
            inputs.labels,
            inputs.typical,
            chosen=inputs.chosen,
            allowed=inputs.allowed,
            top=cfg.top,
            baseline=cfg.baseline,
            per_feature=cfg.per_feature,
            seed=cfg.seed,
        ),
    )
    if not plan.features:
        raise BadInput(f"--db {cfg.db}: no live feature to measure (none fired on these items)")
    return estimates, fired, plan


@dataclass(frozen=True)
class EffectsResult:
    """What `shoggoth effects` wrote, as its printers read it."""

    sae_id: str
    """The SAE measured."""
    effects: pd.DataFrame
    """The `feature_effects` rows: each measured feature's ablation and steering estimates."""
    shifts: pd.DataFrame
    """The `persona_shifts` rows: each persona's shift of the answer's log-probability."""
    composition: pd.DataFrame
    """The `persona_composition` rows (empty before `shoggoth label`)."""
    items: int
    """The items measured."""
    screen_seconds: float
    """The screen's wall time."""
    exact_seconds: float
    """The exact pass's wall time (ablation, steering and the composition test)."""

    def as_json(self) -> dict[str, object]:
        """The `--format json` output."""
        return {
            "sae_id": self.sae_id,
            "items": self.items,
            "screen_seconds": self.screen_seconds,
            "exact_seconds": self.exact_seconds,
            "shifts": self.shifts,
            "effects": self.effects,
            "composition": self.composition,
        }


def run_effects(cfg: EffectsConfig, log: Log = print) -> EffectsResult:
    """Screen, plan, measure and store one SAE's effects; returns the tables and timings."""
    inputs = read_inputs(cfg)
    model, sae = load_causal(
        inputs.db,
        inputs.record,
        cfg.device,
        placement_of(cfg.device_map, cfg.max_memory),
    )
    s = make_setup(inputs, model, sae, cfg)
    folder = work_dir(inputs, cfg)
    n_items, started = len(inputs.items), time.monotonic()
    screens = per_item(folder / "screen", n_items, "effects: screen", lambda i: screen_item(s, i))
    screened = time.monotonic()
    estimates, fired, plan = plan_effects(folder, cfg, inputs, screens)
    log(
        f"exact ablation and steering of {len(plan.features)} features "
        f"({plan.roles.count('baseline')} of them the shared baseline)"
    )
    parts = inputs.parts
    if parts is None:
        log("note: the composition test needs labels; run shoggoth label, then effects again")

    def exact_pass(i: int) -> dict[str, np.ndarray]:
        """The item's exact ablation and steering, and its composition test beside them (its
        edits in the same batches; the clean runs come from the screen)."""
        fired = screens[i]["fired"]
        if parts is None and s.kind != "difference":  # nothing reads the clean runs
            return exact_rows(s, i, plan, fired)[0]
        lp, x = clean_rows(s, i, screens[i])
        x_ref = x[0] if s.kind == "difference" else None
        edits = None if parts is None else composition_edits(s, parts, x)
        out, changes = exact_rows(s, i, plan, fired, x_ref, edits)
        if parts is None:
            return out
        return out | {COMPOSE + k: v for k, v in composition_arrays(s, lp, changes).items()}

    exact = per_item(
        folder / "exact",
        n_items,
        "effects: ablate, steer and compose" if parts is not None else "effects: ablate and steer",
        exact_pass,
    )
    finished = time.monotonic()
    names = s.conditions
    effects = effect_rows(
        names, screens, exact, plan, estimates, fired, cfg.bootstrap, cfg.confidence, cfg.seed
    )
    shifts = shift_rows(names, screens, cfg.bootstrap, cfg.confidence, cfg.seed)
    composition = (
        pd.DataFrame()
        if parts is None
        else composition_rows(
            names,
            [{k[len(COMPOSE) :]: v for k, v in e.items() if k.startswith(COMPOSE)} for e in exact],
            cfg.bootstrap,
            cfg.confidence,
            cfg.seed,
        )
    )
    write_effects(cfg.db, inputs.sae_id, effects, shifts, composition, cfg)
    drop_resume_folder(folder)
    return EffectsResult(
        inputs.sae_id,
        effects,
        shifts,
        composition,
        n_items,
        round(screened - started, 1),
        round(finished - screened, 1),
    )
