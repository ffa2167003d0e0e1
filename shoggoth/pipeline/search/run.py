"""`shoggoth search`: find features by text (run through the model and SAE under a persona's
prompt), by similarity to a feature (FAISS over decoder directions), or by persona (its persona
vector and mask-specific features). The text mode needs the model; the others read the database
through `index.store.read`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, TypedDict

import numpy as np
import torch

from shoggoth.core.config import Config, option
from shoggoth.core.errors import BadInput
from shoggoth.core.placement import Placement, placement_of
from shoggoth.core.printing import Format
from shoggoth.index.catalog.queries import (
    FeatureDescription,
    PersonaFeatures,
    by_name,
    by_persona,
    describe,
    similar,
)
from shoggoth.index.store.read import SaeView
from shoggoth.sae.activations import continuation_activations
from shoggoth.sae.models import Model, load_model
from shoggoth.sae.prompts import build_prompt, collate, pad_id, stored_template
from shoggoth.sae.sae_dir import load_harvest_sae

if TYPE_CHECKING:
    from sae_lens import SAE


@dataclass
class SearchConfig(Config):
    """`shoggoth search`: find features by text, by similarity or by persona."""

    db: Path = option(required="a feature database")
    """The feature database (labels from `shoggoth label`, FAISS and persona vectors from
    `shoggoth index`)."""
    sae: str | None = None
    """The SAE (its sae_id; default: the only one in the database)."""
    text: str | None = None
    """Run this text through the model and SAE and show the features it activates."""
    name: str | None = None
    """Features whose handle, preferred persona or explanation contains this text (any case),
    from `shoggoth index` and `shoggoth explain`."""
    persona: str | None = None
    """With --text: run the text under this persona's system prompt. Alone: the features
    nearest to the persona's vector and its mask-specific features."""
    paraphrase: int | None = option(None, min=0)
    """With --text --persona: which of the persona's prompts to use (default 0, the first)."""
    feature: int | None = None
    """A feature: its label, statistics and top contexts (with --similar: its neighbours)."""
    similar: bool = False
    """With --feature: the nearest features by decoder direction (FAISS)."""
    top: int = option(10, min=1, max=10_000)
    """Features shown per token, overall, per list or as neighbours."""
    format: Format = option("table", was={"--json": "json"})
    """table (for reading) or json (for scripts)."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N (for --text)."""
    device_map: str | None = None
    """Spread the model over several devices: auto, or a JSON file of module → device; --device
    then places the SAE (auto: beside the block it reads). See docs/models.md."""
    max_memory: str | None = None
    """With --device-map: the most memory per device, e.g. 0=20GiB,1=20GiB,cpu=64GiB."""

    @property
    def mode(self) -> str:
        """The one mode the flags ask for (check() has refused any other combination)."""
        if self.feature is not None:
            return "similar" if self.similar else "feature"
        return "text" if self.text is not None else "name" if self.name is not None else "persona"

    def check(self) -> None:
        if self.similar and self.feature is None:
            raise BadInput("--similar: needs --feature F")
        modes = [
            m
            for m, v in (("--text", self.text), ("--name", self.name), ("--feature", self.feature))
            if v is not None
        ]
        if len(modes) > 1:
            raise BadInput(f"{' and '.join(modes)}: give one of them")
        if self.name is not None and self.persona is not None:
            raise BadInput("--name and --persona: give one of them")
        if not modes and self.persona is None:
            raise BadInput(
                'search: give --text "...", --name TEXT, --feature F [--similar] or --persona P'
            )
        if self.feature is not None and self.persona is not None:
            raise BadInput("--feature and --persona: give one of them")
        if self.paraphrase is not None and (self.text is None or self.persona is None):
            raise BadInput(
                "--paraphrase: only with --text and --persona (which of the "
                "persona's prompts to run the text under)"
            )


def load_runner(
    d: SaeView, device: str = "auto", placement: Placement | None = None
) -> tuple[Model, SAE]:
    """The model and SAE of the dictionary's harvest, ready to encode text."""
    sae = load_harvest_sae(d.db, d.record, device)
    sae.eval()
    model = load_model(d.record.model, device, hook=d.record.hook, placement=placement)
    return model, sae.to(model.sae_device(d.record.hook))


class TokenFeature(TypedDict):
    """One of a token's top features."""

    feature: int
    name: str | None
    """Its name (None before `shoggoth index`)."""
    value: float
    """Its activation on the token."""
    label: str


class TokenFeatures(TypedDict):
    """A token of the text and its top features, strongest first."""

    pos: int
    """Its position in the text (0: the first token)."""
    token: str
    features: list[TokenFeature]


class TextFeature(TypedDict):
    """One of the top features over a whole text."""

    feature: int
    mean_act: float
    """Its mean activation over the text's tokens."""
    max_act: float
    n_tokens: int
    """The tokens it fires on."""
    label: str
    top_persona: str | None
    density: float | None
    name: str | None


@dataclass(frozen=True)
class TextSearch:
    """`search text`: the features a text activates, per token and overall."""

    sae_id: str
    """The SAE the text ran through."""
    text: str
    """The text."""
    persona: str | None
    """The persona whose prompt it ran under (None: no system prompt)."""
    paraphrase: int | None
    """Which of the persona's prompts (None without a persona)."""
    tokens: list[TokenFeatures]
    """Each token's top features."""
    overall: list[TextFeature]
    """The top features by mean activation over the whole text."""
    activations: np.ndarray
    """The full activation matrix, [tokens, d_sae] (not in the JSON)."""

    def as_json(self) -> dict[str, object]:
        """The `--format json` output."""
        return {
            "mode": "text",
            "sae_id": self.sae_id,
            "text": self.text,
            "persona": self.persona,
            "paraphrase": self.paraphrase,
            "tokens": self.tokens,
            "overall": self.overall,
        }


@dataclass(frozen=True)
class NameSearch:
    """`search name`: features whose handle, persona or explanation contains a text."""

    sae_id: str
    """The SAE searched."""
    query: str
    """The text looked for."""
    features: list[dict[str, object]]
    """The features found: feature, name, label, explanation, detection, fuzzing."""

    def as_json(self) -> dict[str, object]:
        """The `--format json` output."""
        return {
            "mode": "name",
            "sae_id": self.sae_id,
            "query": self.query,
            "features": self.features,
        }


@dataclass(frozen=True)
class FeatureSearch:
    """`search feature`: one feature's label, statistics, explanation and contexts."""

    sae_id: str
    """The SAE searched."""
    found: FeatureDescription
    """The feature, described."""

    def as_json(self) -> dict[str, object]:
        """The `--format json` output."""
        return {"mode": "feature", "sae_id": self.sae_id, **self.found.as_json()}


@dataclass(frozen=True)
class SimilarSearch:
    """`search similar`: a feature's nearest features by decoder direction."""

    sae_id: str
    """The SAE searched."""
    feature: int
    """The feature."""
    label: str
    """Its label in force ('unlabelled' before `shoggoth label`)."""
    top_persona: str | None
    """The persona (or family of personas) its label names."""
    density: float | None
    """The share of documents it fires in (None before `shoggoth label`)."""
    name: str | None
    """Its name (None before `shoggoth index`)."""
    neighbours: list[dict[str, object]]
    """Its nearest features: feature, cosine, label, top_persona, density, name."""

    def as_json(self) -> dict[str, object]:
        """The `--format json` output."""
        return {
            "mode": "similar",
            "sae_id": self.sae_id,
            "feature": self.feature,
            "label": self.label,
            "top_persona": self.top_persona,
            "density": self.density,
            "name": self.name,
            "neighbours": self.neighbours,
        }


@dataclass(frozen=True)
class PersonaSearch:
    """`search persona`: the features nearest a persona's vector, and its own."""

    sae_id: str
    """The SAE searched."""
    found: PersonaFeatures
    """The persona's features."""

    def as_json(self) -> dict[str, object]:
        """The `--format json` output."""
        return {"mode": "persona", "sae_id": self.sae_id, **self.found.as_json()}


SearchResult: TypeAlias = TextSearch | NameSearch | FeatureSearch | SimilarSearch | PersonaSearch
"""What one search mode returns: its own record, which the mode's table printer reads and whose
`as_json()` is what --format json writes (docs/search-and-sql.md lists the keys)."""


def by_text(
    d: SaeView,
    text: str,
    persona: str | None,
    paraphrase: int,
    k: int,
    device: str = "auto",
    runner: tuple[Model, SAE] | None = None,
    placement: Placement | None = None,
) -> TextSearch:
    """Run `text` (under a persona's system prompt, or none) through the model and SAE: the top
    features of every token and of the whole text, and the full activation matrix
    (`activations`, [tokens, d_sae]). `runner`: (model, sae) when the caller holds them;
    `placement`: how to lay the model out when it is loaded here."""
    if not text.strip():
        raise BadInput("--text: is empty")
    system = None
    if persona is not None:
        d.check_persona(persona)
        prompts = d.persona_prompts(persona)
        if not 0 <= paraphrase < len(prompts):
            raise BadInput(
                f"--paraphrase {paraphrase}: persona '{persona}' has "
                f"{len(prompts)} prompts (0 to {len(prompts) - 1})"
            )
        system = prompts[paraphrase]
    model, sae = runner if runner is not None else load_runner(d, device, placement)
    template = stored_template(d.record.template)
    prompt = build_prompt(
        model.tokenizer, system, None, text, template=template, prepend_bos=model.prepend_bos
    )
    model.check_length(len(prompt.input_ids), "--text")
    batch = collate([prompt], pad_id(model.tokenizer))
    with torch.inference_mode():
        x = continuation_activations(model, batch, d.record.hook)
        f = sae.encode(x.to(sae.device, sae.dtype)).float().cpu().numpy()
    tokens = model.tokenizer.convert_ids_to_tokens(prompt.continuation_ids)
    tops = [[int(j) for j in np.argsort(-acts)[:k] if acts[j] > 0] for acts in f]
    mean = f.mean(axis=0)
    overall = [int(j) for j in np.argsort(-mean)[:k] if mean[j] > 0]
    labels = d.labels(sorted({j for top in tops for j in top} | set(overall)))
    per_token: list[TokenFeatures] = [
        {
            "pos": pos,
            "token": token,
            "features": [
                {
                    "feature": j,
                    "name": labels[j]["name"],
                    "value": round(float(acts[j]), 4),
                    "label": labels[j]["label"],
                }
                for j in top
            ],
        }
        for pos, (token, acts, top) in enumerate(zip(tokens, f, tops, strict=True))
    ]
    return TextSearch(
        d.sae_id,
        text,
        persona,
        paraphrase if persona else None,
        per_token,
        [
            {
                "feature": j,
                "mean_act": round(float(mean[j]), 4),
                "max_act": round(float(f[:, j].max()), 4),
                "n_tokens": int((f[:, j] > 0).sum()),
                "label": labels[j]["label"],
                "top_persona": labels[j]["top_persona"],
                "density": labels[j]["density"],
                "name": labels[j]["name"],
            }
            for j in overall
        ],
        f,
    )


def search_text(
    d: SaeView,
    text: str,
    persona: str | None,
    paraphrase: int,
    top: int,
    device: str,
    placement: Placement | None = None,
) -> TextSearch:
    """`search text`: the features a text activates, per token and overall."""
    return by_text(d, text, persona, paraphrase, top, device, placement=placement)


def search_name(d: SaeView, name: str, top: int) -> NameSearch:
    """`search name`: features whose handle, persona or explanation contains `name`."""
    return NameSearch(d.sae_id, name, by_name(d, name, top))


def search_feature(d: SaeView, feature: int, top: int) -> FeatureSearch:
    """`search feature`: one feature's label, statistics, explanation and contexts."""
    return FeatureSearch(d.sae_id, describe(d, feature, top))


def search_similar(d: SaeView, feature: int, top: int) -> SimilarSearch:
    """`search similar`: a feature's nearest features by decoder direction."""
    neighbours = similar(d, feature, top)
    labels = d.labels([feature])[feature]
    return SimilarSearch(
        d.sae_id,
        feature,
        labels["label"],
        labels["top_persona"],
        labels["density"],
        labels["name"],
        neighbours,
    )


def search_persona(d: SaeView, persona: str, top: int) -> PersonaSearch:
    """`search persona`: the features nearest a persona's vector, and its own."""
    return PersonaSearch(d.sae_id, by_persona(d, persona, top))


def search_in(db: Path, sae: str | None, find: Callable[[SaeView], SearchResult]) -> SearchResult:
    """Open one SAE of `db` read-only, run one search mode on it, close it."""
    d = SaeView(db, sae)
    try:
        return find(d)
    finally:
        d.close()


def search(cfg: SearchConfig) -> SearchResult:
    """The flag form: the one mode the flags ask for (`cfg.mode`)."""
    finders: dict[str, Callable[[SaeView], SearchResult]] = {
        "text": lambda d: search_text(
            d,
            cfg.text or "",
            cfg.persona,
            cfg.paraphrase or 0,
            cfg.top,
            cfg.device,
            placement_of(cfg.device_map, cfg.max_memory),
        ),
        "name": lambda d: search_name(d, cfg.name or "", cfg.top),
        "feature": lambda d: search_feature(d, cfg.feature or 0, cfg.top),
        "similar": lambda d: search_similar(d, cfg.feature or 0, cfg.top),
        "persona": lambda d: search_persona(d, cfg.persona or "", cfg.top),
    }
    return search_in(cfg.db, cfg.sae, finders[cfg.mode])
