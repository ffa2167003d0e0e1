"""`shoggoth layers`: where the persona lives, layer by layer, and how much of it the SAE keeps.

For each chosen block of the harvested model, the residual stream after the block is averaged
over the answer tokens of every document (non-control persona × prompt × item). Each item's
documents are centered (no label is used): the answer's content dominates the raw residual, and
what is left is the shift the persona adds. Then, per layer:

- a linear probe (standardised multinomial logistic regression) must name the persona of
  documents whose *items and prompts* it never saw in training (items in folds, prompts split
  into even and odd paraphrases): decoding the persona, not a wording or an answer;
- the persona vectors (each persona's mean centered residual) and their norms, relative to the
  mean norm of a document's residual;
- at the SAE's own layer: the share of the persona signal the SAE carries, Σ_k ⟨v_k, v̂_k⟩ /
  Σ_k |v_k|² (v_k: persona k's mean shift against each item's reference document, the same
  answer under the SAE's reference; v̂_k: that shift through the SAE; core/signal.py), and the
  probe's accuracy on its reconstruction and on its error term. A persona the model encodes
  (probe high) but the reconstruction drops is one the SAE does not capture; a persona the
  probe cannot find is not there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from shoggoth.battery.personas import subset_items
from shoggoth.core.config import SEED_MAX, Config, option
from shoggoth.core.errors import BadInput
from shoggoth.core.lists import parse_numbers
from shoggoth.core.placement import placement_of
from shoggoth.core.progress import Progress
from shoggoth.core.signal import grouped_means, signal_fraction
from shoggoth.index.layers.store import write_layer_probe
from shoggoth.index.store.read import SaeView
from shoggoth.index.store.schema import read_battery
from shoggoth.sae.encode import document_shifts, prompts_activations
from shoggoth.sae.models import Model, hook_layer, load_model
from shoggoth.sae.prompts import (
    EMPTY_SYSTEM,
    Prompt,
    build_prompt,
    collate,
    pad_id,
    stored_template,
)
from shoggoth.sae.sae_dir import load_harvest_sae

if TYPE_CHECKING:
    from sae_lens import SAE


@dataclass
class LayersConfig(Config):
    """`shoggoth layers`: a persona probe per layer, and the SAE's share of the persona signal."""

    db: Path = option(required="a database from `shoggoth harvest`")
    """The feature database (its SAE's model and battery are probed)."""
    sae: str | None = None
    """The SAE (its sae_id; default: the only one in the database)."""
    layers: str = "all"
    """Blocks to probe: 'all', or comma-separated block numbers (the SAE's block is always
    added)."""
    items_per_topic: int = option(2, min=1)
    """Items of each topic in the probe (documents = personas × prompts × items)."""
    folds: int = option(3, min=2)
    """Item folds of the cross-validation."""
    batch: int = option(16, min=1)
    """Documents per forward pass."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N."""
    device_map: str | None = None
    """Spread the model over several devices: auto, or a JSON file of module → device; --device
    then places the SAE (auto: beside the block it reads). See docs/models.md."""
    max_memory: str | None = None
    """With --device-map: the most memory per device, e.g. 0=20GiB,1=20GiB,cpu=64GiB."""
    seed: int = option(0, min=0, max=SEED_MAX)
    """Seed of the item folds."""


@dataclass
class Documents:
    """The probe's documents: persona, paraphrase and item of each."""

    persona: np.ndarray
    paraphrase: np.ndarray
    item: np.ndarray
    names: list[str]


def parse_layers(spec: str, n_layers: int, sae_layer: int | None) -> list[int]:
    """The sorted blocks to probe; BadInput naming --layers when one is out of range."""
    if spec.strip() == "all":
        chosen = set(range(n_layers))
    else:
        chosen = set(parse_numbers(spec, "--layers", 0, n_layers - 1))
    if sae_layer is not None:
        chosen.add(sae_layer)
    return sorted(chosen)


def _mean(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(t.device)  # (a spread model's blocks sit on several devices)
    return ((t.float() * mask).sum(1) / mask.sum(1)).cpu()


def pooled(
    model: Model, prompts: list[Prompt], layers: list[int], batch: int, progress: Progress
) -> np.ndarray:
    """Answer-token means: [documents, layers, d] of each block's output."""
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    missing = [h for h in hooks if h not in model.hook_names]
    if missing:
        raise BadInput(f"--layers: model '{model.name}' has no hook {missing[0]}")
    out = []
    for start in range(0, len(prompts), batch):
        b = collate(prompts[start : start + batch], pad_id(model.tokenizer)).to(model.device)
        with torch.inference_mode():
            _, cache = model.bridge.run_with_cache(
                b.input_ids,
                names_filter=lambda n: n in hooks,
                stop_at_layer=max(layers) + 1,
                attention_mask=b.attention_mask,
                return_cache_object=False,
            )
            mask = b.continuation_mask.unsqueeze(-1).float()
            out.append(torch.stack([_mean(cache[h], mask) for h in hooks], 1))
        progress.advance(len(prompts[start : start + batch]))
    return cast("np.ndarray", torch.cat(out).numpy())


def center_items(x: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Each item's documents minus their mean (over every persona and prompt)."""
    out = x.astype(np.float64).copy()
    for i in np.unique(item):
        out[item == i] -= out[item == i].mean(axis=0)
    return out


def probe_accuracy(x: np.ndarray, docs: Documents, folds: int, seed: int) -> float:
    """Accuracy of naming the persona on held-out items and held-out prompts (train on even
    paraphrases of the other folds' items, test on odd paraphrases of this fold's), averaged
    over folds."""
    items = np.unique(docs.item)
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(items, rng.permutation(len(items)) % folds, strict=True))
    fold = np.array([fold_of[i] for i in docs.item])
    even = docs.paraphrase % 2 == 0
    scores = []
    for f in range(folds):
        train, test = (fold != f) & even, (fold == f) & ~even
        if not test.any() or len(np.unique(docs.persona[train])) < 2:
            continue
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
        probe.fit(x[train], docs.persona[train])
        scores.append(float((probe.predict(x[test]) == docs.persona[test]).mean()))
    return float(np.mean(scores)) if scores else float("nan")


def persona_vectors(centered: np.ndarray, persona: np.ndarray) -> np.ndarray:
    """[personas, d]: each persona's mean centered residual."""
    return np.stack([centered[persona == k].mean(axis=0) for k in np.unique(persona)])


SAEParts = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""Per document at the SAE's hook: activations, reconstruction, shift, shift through the SAE."""


def layer_rows(
    x: np.ndarray,
    sae_parts: SAEParts | None,
    docs: Documents,
    layers: list[int],
    sae_layer: int | None,
    cfg: LayersConfig,
) -> pd.DataFrame:
    """One row per probed layer (see the module docstring)."""
    rows = []
    for n, layer in enumerate(layers):
        raw = x[:, n]
        centered = center_items(raw, docs.item)
        vectors = persona_vectors(centered, docs.persona)
        scale = float(np.linalg.norm(raw, axis=1).mean())
        norms = np.linalg.norm(vectors, axis=1) / scale
        row = {
            "layer": layer,
            "hook": f"blocks.{layer}.hook_resid_post",
            "n_documents": len(raw),
            "n_personas": len(docs.names),
            "n_items": len(np.unique(docs.item)),
            "chance": 1 / len(docs.names),
            "probe_accuracy": probe_accuracy(centered, docs, cfg.folds, cfg.seed),
            "persona_norm_mean": float(norms.mean()),
            "persona_norm_max": float(norms.max()),
            "sae_signal_fraction": None,
            "probe_on_reconstruction": None,
            "probe_on_error": None,
            "is_sae_layer": layer == sae_layer,
        }
        if layer == sae_layer and sae_parts is not None:
            row.update(sae_rows(*sae_parts, docs, cfg))
        rows.append(row)
    return pd.DataFrame(rows)


def sae_rows(
    at_sae: np.ndarray,
    recon: np.ndarray,
    shift: np.ndarray,
    shift_hat: np.ndarray,
    docs: Documents,
    cfg: LayersConfig,
) -> dict[str, float]:
    """The SAE's share of the persona signal at its hook, Σ_k ⟨v_k, v̂_k⟩ / Σ_k |v_k|² (v_k:
    persona k's mean shift against the reference; v̂_k: the same through the SAE;
    core/signal.py), and the probe on its reconstruction and on its error term."""
    x = center_items(at_sae, docs.item)
    r = center_items(recon, docs.item)
    return {
        "sae_signal_fraction": signal_fraction(
            grouped_means(shift, docs.persona), grouped_means(shift_hat, docs.persona)
        ),
        "probe_on_reconstruction": probe_accuracy(r, docs, cfg.folds, cfg.seed),
        "probe_on_error": probe_accuracy(x - r, docs, cfg.folds, cfg.seed),
    }


def sae_documents(
    model: Model,
    sae: SAE,
    kind: str,
    hook: str,
    prompts: list[Prompt],
    references: list[Prompt],
    docs: Documents,
    batch: int,
) -> SAEParts:
    """Per document at the SAE's hook, answer-token means of: the activations, their
    reconstruction (a difference dictionary's: the reference's activations plus its
    reconstruction of the shift), the shift against the item's reference document, and the
    shift through the SAE."""
    ref, ref_rows = prompts_activations(model, references, [hook], None)
    per_item = [ref[hook][ref_rows == i] for i in range(len(references))]
    out: list[list[np.ndarray]] = [[], [], [], []]
    for start in range(0, len(prompts), batch):
        part = prompts[start : start + batch]
        acts, rows = prompts_activations(model, part, [hook], None)
        x = acts[hook].float()
        x_ref = torch.cat([per_item[i] for i in docs.item[start : start + len(part)]]).float()
        shift, shift_hat = document_shifts(sae, kind, x, x_ref, rows, len(part))
        n = torch.bincount(rows, minlength=len(part)).clamp(min=1)[:, None].float().cpu()
        mean = torch.zeros(len(part), x.shape[1]).index_add_(0, rows.cpu(), x.cpu()) / n
        ref_mean = mean.numpy() - shift
        with torch.inference_mode():
            whole = sae.decode(sae.encode(x.to(sae.device, sae.dtype))).float().cpu()
        recon = (
            ref_mean + shift_hat
            if kind == "difference"
            else (torch.zeros_like(mean).index_add_(0, rows.cpu(), whole) / n).numpy()
        )
        for bucket, value in zip(out, (mean.numpy(), recon, shift, shift_hat), strict=True):
            bucket.append(value)
    a, r, sh, sh_hat = (np.concatenate(b).astype(np.float64) for b in out)
    return a, r, sh, sh_hat


def documents(d: SaeView, model: Model, per_topic: int) -> tuple[list[Prompt], Documents]:
    """The prompts of every non-control persona × prompt × the first items of each topic."""
    personas, items = read_battery(d.con)
    main = [p for p in personas if not p.is_control]
    if len(main) < 2 or max(len(p.prompts) for p in main) < 2:
        raise BadInput(
            f"--db {d.db}: the probe needs two or more personas with two or more "
            "prompts each (it tests on prompts it did not train on)"
        )
    chosen = subset_items(items, per_topic)
    template = stored_template(d.record.template)
    prompts, meta = [], []
    for k, p in enumerate(main):
        for j, system in enumerate(p.prompts):
            for i, item in enumerate(chosen):
                prompts.append(
                    build_prompt(
                        model.tokenizer,
                        system,
                        item.question,
                        item.answer,
                        template=template,
                        prepend_bos=model.prepend_bos,
                    )
                )
                meta.append((k, j, i))
    m = np.array(meta)
    return prompts, Documents(m[:, 0], m[:, 1], m[:, 2], [p.name for p in main])


def reference_prompts(d: SaeView, model: Model, per_topic: int) -> list[Prompt]:
    """The reference document of every item the probe uses (in `documents`' item order): the
    same answer under the SAE's reference (an empty system turn when the harvest names none)."""
    _, items = read_battery(d.con)
    template = stored_template(d.record.template)
    reference = d.record.reference or EMPTY_SYSTEM
    return [
        build_prompt(
            model.tokenizer,
            reference,
            item.question,
            item.answer,
            template=template,
            prepend_bos=model.prepend_bos,
        )
        for item in subset_items(items, per_topic)
    ]


def probe_layers(cfg: LayersConfig) -> pd.DataFrame:
    """Run the probe and store it (table layer_probe); returns the rows written."""
    d = SaeView.for_writing(cfg.db, cfg.sae)  # before minutes of forward passes, not after
    try:
        model = load_model(
            d.record.model,
            cfg.device,
            hook=d.record.hook,
            placement=placement_of(cfg.device_map, cfg.max_memory),
        )
        sae_hook, sae_layer = d.record.hook, hook_layer(d.record.hook)
        layers = parse_layers(cfg.layers, model.n_layers, sae_layer)
        prompts, docs = documents(d, model, cfg.items_per_topic)
        sae = (
            load_harvest_sae(d.db, d.record, str(model.sae_device(sae_hook)))
            if sae_layer is not None
            else None
        )
        kind = d.record.kind
        references = reference_prompts(d, model, cfg.items_per_topic)
        sae_id = d.sae_id
    finally:
        d.close()
    with Progress("layers: forward passes", len(prompts), unit="documents") as progress:
        x = pooled(model, prompts, layers, cfg.batch, progress)
    parts = (
        sae_documents(model, sae, kind, sae_hook, prompts, references, docs, cfg.batch)
        if sae is not None
        else None
    )
    table = layer_rows(x, parts, docs, layers, sae_layer, cfg)
    write_layer_probe(cfg.db, sae_id, table, cfg)
    return table
