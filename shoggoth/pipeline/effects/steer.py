"""`shoggoth steer`: the model's answer with one feature clamped at the SAE's hook, next to the
unsteered answer, under a persona of the battery or none.

The clamp sets the feature's activation to `scale` × its typical activation (its mean where it
fires, under the persona where it is strongest) on every generated token — and on the prompt
too with `--positions all` — by adding (target − a_f(x))·d_f to the residual: everything else the
SAE reads, its error term included, is left as it was. Scale 0 turns the feature off; scale 1
holds it at its typical strength.

A difference dictionary reads the shift against its reference, which a generated answer does not
have: its feature's direction is added instead (scale × typical × d_f on every edited token), to
the reference document by default (where the shift, and so the feature, is zero: adding is
clamping there) or to a persona's with --persona.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from shoggoth.core.config import SEED_MAX, Config, option
from shoggoth.core.errors import BadInput
from shoggoth.core.placement import placement_of
from shoggoth.index.effects.queries import typical_activations
from shoggoth.index.store.read import SaeView
from shoggoth.index.store.sae_record import SaeRecord
from shoggoth.pipeline.effects.run import load_causal
from shoggoth.sae.intervene import Edit, generate
from shoggoth.sae.models import Model
from shoggoth.sae.prompts import build_prompt

if TYPE_CHECKING:
    from sae_lens import SAE


@dataclass
class SteerConfig(Config):
    """`shoggoth steer`: generate with a feature clamped, next to the unsteered answer."""

    db: Path = option(required="a database from `shoggoth harvest`")
    """The feature database (its SAE and model are used)."""
    feature: int = option(None, required="the feature to steer", min=0)
    """The feature to clamp."""
    scale: float = 4.0
    """The feature's activation is held at scale × its typical activation (0: off); a
    difference dictionary's direction is added at that strength."""
    prompt: str = option(None, required="the user's message")
    """The user's message the model answers."""
    persona: str | None = None
    """A persona of the battery whose first prompt is the system prompt (default: none; a
    difference dictionary's reference)."""
    sae: str | None = None
    """The SAE (its sae_id; default: the only one in the database)."""
    max_tokens: int = option(60, min=1, max=2048)
    """Most tokens generated per answer."""
    positions: Literal["answer", "all"] = "answer"
    """answer: clamp on the generated tokens; all: on the prompt's tokens too."""
    temperature: float = option(0.0, min=0)
    """0: greedy; above 0: sampling, seeded."""
    seed: int = option(0, min=0, max=SEED_MAX)
    """Seed of the sampling (both answers use the same)."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N."""
    device_map: str | None = None
    """Spread the model over several devices: auto, or a JSON file of module → device; --device
    then places the SAE (auto: beside the block it reads). See docs/models.md."""
    max_memory: str | None = None
    """With --device-map: the most memory per device, e.g. 0=20GiB,1=20GiB,cpu=64GiB."""


@dataclass
class Steering:
    """A loaded model and SAE, ready to generate steered answers (the explorer keeps one)."""

    model: Model
    sae: SAE
    hook: str
    typical: float
    system: str | None
    feature: int
    kind: str = "residual"
    """residual: the feature is clamped; difference: its direction is added."""


def steering_system(record: SaeRecord, persona_prompt: str | None) -> str | None:
    """The system prompt the answer is generated under: the persona's, else a difference
    dictionary's reference, else none."""
    if persona_prompt is not None:  # a persona given ("" : one with no system prompt)
        return persona_prompt or None
    if record.is_difference:
        return record.reference or None
    return None


def clamp(s: Steering, target: float) -> Edit:
    """Set the feature's activation to `target` wherever the edit applies."""
    direction = s.sae.W_dec[s.feature].detach().float()
    if s.kind == "difference":

        def add(x: torch.Tensor) -> torch.Tensor:
            return torch.full(x.shape[:-1], target, device=x.device)[..., None] * direction.to(
                x.device
            )

        return add

    def edit(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            a = s.sae.encode(x.to(s.sae.device, s.sae.dtype))[..., s.feature].float()
        return (target - a.to(x.device))[..., None] * direction.to(x.device)

    return edit


def require_typical(feature: int, typical: float | None) -> float:
    """The feature's typical activation, or BadInput when it never fired under a persona."""
    if not typical:
        raise BadInput(
            f"--feature {feature}: it never fired under a persona in the harvest, "
            "so it has no typical activation to scale"
        )
    return typical


def load_steering(cfg: SteerConfig) -> Steering:
    """Check the inputs against the database and load the model and SAE (BadInput in one line
    for a feature out of range, an unknown persona, a feature that never fired, an encoder)."""
    if not cfg.db.is_file():
        raise BadInput(f"--db {cfg.db}: no such file")
    d = SaeView(cfg.db, cfg.sae)
    try:
        d.check_feature(cfg.feature)
        system = None
        if cfg.persona is not None:
            d.check_persona(cfg.persona)
            system = d.persona_prompts(cfg.persona)[0]
        typical = require_typical(
            cfg.feature, typical_activations(d.con, d.sae_id, cfg.feature).get(cfg.feature)
        )
        record = d.record
    finally:
        d.close()
    model, sae = load_causal(
        cfg.db, record, cfg.device, placement_of(cfg.device_map, cfg.max_memory)
    )
    return Steering(
        model,
        sae,
        record.hook,
        typical,
        steering_system(record, system),
        cfg.feature,
        record.kind,
    )


def prompt_ids(model: Model, system: str | None, user: str) -> list[int]:
    """The tokens the model answers from (the chat template's assistant turn opened)."""
    if not user.strip():
        raise BadInput("--prompt: is empty")
    built = build_prompt(model.tokenizer, system, user, "x", prepend_bos=model.prepend_bos)
    return built.input_ids[: built.mask.index(True)]


@dataclass(frozen=True)
class SteerResult:
    """The model's answer with the feature clamped, next to the unsteered one."""

    feature: int
    """The feature steered."""
    typical: float
    """Its typical activation (its mean where it fires, under its strongest persona)."""
    target: float
    """The activation it was clamped at (scale × typical)."""
    persona: str | None
    """The persona whose first prompt was the system prompt (None: none)."""
    unsteered: str
    """The answer without the clamp."""
    unsteered_stop: str
    """Why the unsteered answer stopped ('eos' or 'length')."""
    steered: str
    """The answer with the clamp."""
    steered_stop: str
    """Why the steered answer stopped ('eos' or 'length')."""


def steer_with(s: Steering, cfg: SteerConfig) -> SteerResult:
    """Both answers to cfg.prompt, unsteered and with the feature clamped."""
    ids = prompt_ids(s.model, s.system, cfg.prompt)
    s.model.check_length(len(ids) + cfg.max_tokens, "--prompt")
    tok = s.model.tokenizer
    stop = {t for t in (tok.eos_token_id, getattr(tok, "pad_token_id", None)) if t is not None}
    target = cfg.scale * s.typical
    answers: list[tuple[str, str]] = []
    for edit in (None, clamp(s, target)):
        tokens, why = generate(
            s.model,
            ids,
            s.hook,
            edit,
            cfg.max_tokens,
            on_prompt=cfg.positions == "all",
            temperature=cfg.temperature,
            seed=cfg.seed,
            stop_ids=stop,
        )
        answers.append((tok.decode(tokens, skip_special_tokens=True), why))
    (unsteered, unsteered_stop), (steered, steered_stop) = answers
    return SteerResult(
        s.feature,
        s.typical,
        target,
        cfg.persona,
        unsteered,
        unsteered_stop,
        steered,
        steered_stop,
    )


def steer(cfg: SteerConfig) -> SteerResult:
    """Load, then generate both answers."""
    return steer_with(load_steering(cfg), cfg)
