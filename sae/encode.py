"""Encoding the harvest grid: a unit's prompts through the model (with the KV cache of the
prefix its prompts share, for causal LMs) and the SAE, into the non-zero activations and
per-document aggregates a harvest stores."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch

from shoggoth.battery.personas import Item, Persona
from shoggoth.battery.units import Unit
from shoggoth.core.errors import BadInput
from shoggoth.sae.activations import (
    PrefixCache,
    activations_after_prefix_at,
    activations_at,
    prefix_cache,
)
from shoggoth.sae.batching import length_batches, pass_tokens
from shoggoth.sae.models import Model
from shoggoth.sae.prompts import (
    EMPTY_SYSTEM,
    Prompt,
    Template,
    build_prompt,
    collate,
    common_prefix,
    pad_id,
)

if TYPE_CHECKING:
    from sae_lens import SAE

CACHE_CHECK_DOCUMENTS = 4
"""Documents the prefix-cache check runs both ways (of different lengths, so padding is in it)."""


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
    """Sum of the SAE's inputs (the hook activations; for a difference dictionary their shifts)
    over the unit's continuation tokens (float64, [d_in]): what `shoggoth index` turns into
    persona vectors."""
    shift: np.ndarray | None = None
    """[n_docs, d_in] each document's mean shift against its item's reference document."""
    shift_hat: np.ndarray | None = None
    """[n_docs, d_in] the same shift through the dictionary (a residual SAE: its reconstruction
    of the document minus of the reference; a difference dictionary: of the shift)."""


def decimals_for(values: torch.Tensor) -> int:
    """Decimals whose rounding step is at most 1/500 of the median non-zero activation."""
    nonzero = values[values > 0]
    if nonzero.numel() == 0:
        return 4
    median = float(nonzero.float().median())
    return int(min(9, max(0, math.ceil(math.log10(500 / median)))))


@dataclass
class Harvester:
    """The model, SAEs and battery of one harvest, and the per-paraphrase prompt caches. Several
    SAEs (at one hook or several) share every forward pass, which stops after the deepest."""

    model: Model
    saes: list[Any]
    hooks: list[str]
    """The hook each SAE reads."""
    personas: list[Persona]
    items: list[Item]
    template: Template
    use_prefix_cache: bool
    kinds: list[str] = field(default_factory=list)
    """Each SAE's kind: residual (encodes the hook's activations) or difference (their shift
    against the reference document of the same item)."""
    references: list[str] = field(default_factory=list)
    """Each SAE's reference system prompt (EMPTY_SYSTEM: an empty system turn)."""
    _reference: dict[tuple[str, int], dict[str, torch.Tensor]] = field(
        default_factory=dict, repr=False
    )
    _reference_recon: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)
    _group: tuple[int, int] | None = field(default=None, repr=False)
    _prompts: list[Prompt] = field(default_factory=list, repr=False)
    _prefix: Any = field(default=None, repr=False)
    _last: tuple[Unit, bool, dict[str, torch.Tensor], torch.Tensor] | None = field(
        default=None, repr=False
    )

    def prompt(self, persona: int, paraphrase: int, item: int) -> Prompt:
        it = self.items[item]
        return build_prompt(
            self.model.tokenizer,
            self.personas[persona].prompts[paraphrase],
            it.question,
            it.answer,
            template=self.template,
            prepend_bos=self.model.prepend_bos,
        )

    def group(self, persona: int, paraphrase: int) -> list[Prompt]:
        """All items' prompts under one persona paraphrase, and (causal LMs) the KV cache of the
        tokens they all share, computed once per paraphrase."""
        if self._group != (persona, paraphrase):
            self._prompts = [self.prompt(persona, paraphrase, i) for i in range(len(self.items))]
            self._prefix = None
            if self.use_prefix_cache:
                shared = shared_prefix(self._prompts)
                if shared:
                    self._prefix = prefix_cache(
                        self.model, self._prompts[0].input_ids[:shared], self.hooks
                    )
            self._group = (persona, paraphrase)
        return self._prompts

    def hook_activations(
        self, unit: Unit, cached: bool
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Per hook, [n_continuation_tokens, d] activations of a unit's documents (document,
        then position order), and the document index of each row."""
        if self._last is not None and self._last[:2] == (unit, cached):
            return self._last[2], self._last[3]  # the value scale's batch is the first one
        prompts = [self.group(unit.persona, unit.paraphrase)[i] for i in unit.items]
        acts, rows = prompts_activations(
            self.model, prompts, self.hooks, self._prefix if cached else None
        )
        self._last = (unit, cached, acts, rows)
        return acts, rows

    def reference_rows(self, unit: Unit, reference: str) -> dict[str, torch.Tensor]:
        """Per hook, the reference documents' activations row for row with the unit's: each
        item's reference document runs once per harvest."""
        todo = [i for i in unit.items if (reference, i) not in self._reference]
        if todo:
            prompts = [
                build_prompt(
                    self.model.tokenizer,
                    reference,
                    self.items[i].question,
                    self.items[i].answer,
                    template=self.template,
                    prepend_bos=self.model.prepend_bos,
                )
                for i in todo
            ]
            first = self.group(0, 0)
            for i, p in zip(todo, prompts, strict=True):
                if p.continuation_ids != first[i].continuation_ids:
                    raise BadInput(
                        f"item '{self.items[i].item_id}': its answer tokenizes "
                        f"differently under the reference {reference!r}; try "
                        "--template plain"
                    )
            acts, rows = prompts_activations(self.model, prompts, self.hooks, None)
            for n, i in enumerate(todo):
                self._reference[(reference, i)] = {h: a[rows == n] for h, a in acts.items()}
        return {
            h: torch.cat([self._reference[(reference, i)][h] for i in unit.items])
            for h in self.hooks
        }

    def sae_inputs(
        self, unit: Unit, cached: bool
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Per SAE, (the activations at its hook, the reference's), and the document of each
        row. A difference dictionary encodes their difference."""
        x, doc = self.hook_activations(unit, cached)
        out = []
        for k, hook in enumerate(self.hooks):
            reference = self.references[k] if k < len(self.references) else EMPTY_SYSTEM
            out.append((x[hook], self.reference_rows(unit, reference)[hook]))
        return out, doc

    def kind(self, k: int) -> str:
        return self.kinds[k] if k < len(self.kinds) else "residual"

    def encoded_input(
        self, k: int, x: torch.Tensor, x_ref: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What SAE k encodes, and the rows that encode to nothing (None: none)."""
        return shift_input(x, x_ref) if self.kind(k) == "difference" else (x, None)

    def compute(self, unit: Unit, decimals: list[int]) -> list[Computed]:
        """Encode a unit's continuation tokens with every SAE (once: the codes serve the stored
        activations and the shift through the SAE); keep the non-zero (rounded) activations,
        their per-document aggregates and each document's shift."""
        inputs, doc = self.sae_inputs(unit, self.use_prefix_cache)
        out = []
        for k, (sae, (x, x_ref), places) in enumerate(
            zip(self.saes, inputs, decimals, strict=True)
        ):
            encoded, silent = self.encoded_input(k, x, x_ref)
            codes = encode(sae, encoded)
            done = encode_aggregate(sae, encoded, doc, len(unit.items), places, silent, codes)
            ref_recon = None if self.kind(k) == "difference" else self.reference_recon(k, unit)
            done.shift, done.shift_hat = document_shifts(
                sae, self.kind(k), x, x_ref, doc, len(unit.items), codes, ref_recon
            )
            out.append(done)
        return out

    def reference_recon(self, k: int, unit: Unit) -> torch.Tensor:
        """Residual SAE k's reconstruction of the reference documents' activations, row for row
        with the unit's (each item's computed once per harvest, like the rows themselves, which
        `sae_inputs` has run)."""
        reference = self.references[k] if k < len(self.references) else EMPTY_SYSTEM
        todo = [i for i in unit.items if (k, i) not in self._reference_recon]
        if todo:
            sae = self.saes[k]
            with torch.inference_mode():
                for i in todo:
                    x_ref = self._reference[(reference, i)][self.hooks[k]]
                    self._reference_recon[(k, i)] = sae.decode(encode(sae, x_ref))
        return torch.cat([self._reference_recon[(k, i)] for i in unit.items])

    def check_prefix_cache(self, unit: Unit) -> bool:
        """Whether the KV-cache path reproduces a full forward pass on this model (a guard
        against attention implementations that ignore the cache), on the unit's first
        `CACHE_CHECK_DOCUMENTS` documents: the check is of the model's attention, not of the
        data, and a whole batch run twice more cost a quarter of a small harvest."""
        if not self.use_prefix_cache:
            return False
        self.group(unit.persona, unit.paraphrase)
        if self._prefix is None:
            return True
        probe = Unit(unit.persona, unit.paraphrase, unit.items[:CACHE_CHECK_DOCUMENTS])
        fast, _ = self.hook_activations(probe, cached=True)
        full, _ = self.hook_activations(probe, cached=False)
        tolerance = 1e-3 if self.model.dtype == torch.float32 else 5e-2
        for hook in self.hooks:
            scale = float(full[hook].float().abs().max()) or 1.0
            if float((fast[hook].float() - full[hook].float()).abs().max()) > tolerance * scale:
                return False
        return True


def prompts_activations(
    model: Model,
    prompts: list[Prompt],
    hooks: list[str],
    prefix: PrefixCache | None,
    max_rows: int = 64,
    padding: Literal["left", "right"] | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per hook, [n_continuation_tokens, d] activations of the prompts' continuation tokens
    (prompt, then position order), and the prompt index of each row; one forward pass for all
    hooks. With `prefix` (a KV cache of tokens every prompt starts with), only the rest of each
    prompt runs. The prompts run shortest first, cut into passes where padding would cost more
    than a pass (sae/batching.py): a row's activations do not depend on the rows beside it.
    `padding`: the side batches pad on (None: the tokenizer's; after a prefix, always right)."""
    if model.is_causal:  # later tokens cannot change a causal model's activations
        ends = [_last_true(p.mask) + 1 for p in prompts]
        prompts = [
            Prompt(p.input_ids[:end], p.mask[:end], p.template)
            for p, end in zip(prompts, ends, strict=True)
        ]
    cut = len(prefix.ids) if prefix is not None else 0
    if cut:
        prompts = [Prompt(p.input_ids[cut:], p.mask[cut:], p.template) for p in prompts]
    tok = model.tokenizer
    side: Literal["left", "right"] = padding or (
        "left" if prefix is None and getattr(tok, "padding_side", "right") == "left" else "right"
    )
    per: dict[str, list[torch.Tensor]] = {h: [torch.empty(0)] * len(prompts) for h in hooks}
    lengths = [len(p.input_ids) for p in prompts]
    for rows in length_batches(lengths, pass_tokens(model.device), max_rows):
        batch = collate([prompts[i] for i in rows], pad_id(tok), side)
        if prefix is not None:
            acts = activations_after_prefix_at(model, prefix, batch, hooks)
        else:
            acts = activations_at(model, batch, hooks)
        mask = batch.continuation_mask.to(acts[hooks[0]].device)
        for h in hooks:
            for j, i in enumerate(rows):
                per[h][i] = acts[h][j][mask[j]]
    counts = torch.tensor([sum(p.mask) for p in prompts])
    first = per[hooks[0]][0] if prompts else torch.empty(0)
    doc = torch.repeat_interleave(torch.arange(len(prompts)), counts).to(first.device)
    return {h: torch.cat(v) if v else torch.empty(0) for h, v in per.items()}, doc


NO_SHIFT = 1e-4
"""A token's shift is none when its norm is below this fraction of its activation's: the
document is the reference itself (up to the KV cache's rounding)."""


def no_shift(x: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
    """Rows (over any leading dimensions) where the document's activation equals the
    reference's."""
    return (x - x_ref).float().norm(dim=-1) <= NO_SHIFT * x.float().norm(dim=-1)


def shift_input(x: torch.Tensor, x_ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a difference dictionary encodes: the shift x − x_ref, and the rows without one
    (its encoder bias would fire features on a zero input, so they encode to nothing)."""
    return x - x_ref, no_shift(x, x_ref)


def encode(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """[rows, d_sae] the SAE's codes of hook activations `x` [rows, d], unrounded, in its dtype.
    The SAE may sit on another device than the hooked block (a model spread by a device map):
    its input moves to it, and the rest is counted there."""
    with torch.inference_mode():
        return sae.encode(x.to(sae.device, sae.dtype))


def encode_aggregate(
    sae: SAE,
    x: torch.Tensor,
    doc: torch.Tensor,
    n_docs: int,
    decimals: int,
    silent: torch.Tensor | None = None,
    codes: torch.Tensor | None = None,
) -> Computed:
    """SAE-encode hook activations `x` (rows of documents `doc`), round to `decimals`, and keep
    the non-zero activations and their per-document aggregates. `silent` rows encode to
    nothing (a difference dictionary's rows without a shift: its encoder bias would otherwise
    fire features on a zero input). `codes`: `encode(sae, x)` when the caller has it already."""
    with torch.inference_mode():
        f = (codes if codes is not None else encode(sae, x)).float()
        doc = doc.to(f.device)
        if silent is not None:
            f[silent.to(f.device)] = 0
        scale = 10.0**decimals
        f = torch.round(f * scale) / scale
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
        return cast("np.ndarray", t.cpu().numpy().astype(dtype))

    return Computed(
        n_tokens=n_tokens.tolist(),
        residual_sum=x.double().sum(0).cpu().numpy(),
        activations={
            "doc": cpu(doc_of, np.int32),
            "pos": cpu(token - starts[doc_of], np.int32),
            "feature": cpu(feature, np.int32),
            "value": cpu(value, np.float32),
        },
        doc_features={
            "doc": cpu(d, np.int32),
            "feature": cpu(j, np.int32),
            "mean_act": cpu(mean, np.float32),
            "max_act": cpu(peak[d, j], np.float32),
            "n_fire": cpu(fired[d, j], np.int32),
        },
    )


def document_shifts(
    sae: SAE,
    kind: str,
    x: torch.Tensor,
    x_ref: torch.Tensor,
    doc: torch.Tensor,
    n_docs: int,
    codes: torch.Tensor | None = None,
    ref_recon: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """[n_docs, d] each document's mean shift against its reference, and through the SAE.
    `codes`: the SAE's codes of what it encodes (`encode`; the shift for a difference
    dictionary, x for a residual SAE) and `ref_recon` (a residual SAE) its reconstruction of
    x_ref, when the caller has them: an SAE's encoder is then not run again."""
    with torch.inference_mode():

        def recon(a: torch.Tensor, done: torch.Tensor | None = None) -> torch.Tensor:
            return sae.decode(done if done is not None else encode(sae, a)).float()

        shift = (x - x_ref).float()
        if kind == "difference":
            shift_hat = recon(shift, codes)
            shift_hat[no_shift(x, x_ref).to(shift_hat.device)] = 0
        else:
            shift_hat = recon(x, codes) - (
                ref_recon.float() if ref_recon is not None else recon(x_ref)
            )
        n = torch.bincount(doc, minlength=n_docs).clamp(min=1)[:, None].float()

        def pooled(rows: torch.Tensor) -> np.ndarray:
            total = torch.zeros(n_docs, rows.shape[1], device=rows.device).index_add_(
                0, doc.to(rows.device), rows
            )
            return cast("np.ndarray", (total / n.to(rows.device)).cpu().numpy().astype(np.float32))

        return pooled(shift), pooled(shift_hat)


def _last_true(mask: list[bool]) -> int:
    return len(mask) - 1 - mask[::-1].index(True)


def shared_prefix(prompts: list[Prompt]) -> int:
    """Length of the token prefix all prompts share, stopping before any measured token."""
    limit = min(min(len(p.input_ids) for p in prompts), min(p.mask.index(True) for p in prompts))
    return common_prefix([p.input_ids for p in prompts], limit)


def check_tokens(harvester: Harvester, unit: Unit, expected: list[list[int]]) -> None:
    """The same answer must give the same tokens under every persona, or positions would not
    line up across personas."""
    prompts = harvester.group(unit.persona, unit.paraphrase)
    for i in unit.items:
        if prompts[i].continuation_ids != expected[i]:
            raise BadInput(
                f"item '{harvester.items[i].item_id}': its answer tokenizes differently under "
                f"persona '{harvester.personas[unit.persona].name}' paraphrase {unit.paraphrase} "
                "(the tokenizer merges it with the text before it); try --template plain"
            )


def check_lengths(harvester: Harvester, lengths: list[int]) -> None:
    """Every prompt of the grid must fit the model: the longest item (by its prompt under the
    first persona paraphrase, `lengths`) is checked under every persona paraphrase."""
    longest = max(range(len(lengths)), key=lambda i: lengths[i])
    for p, persona in enumerate(harvester.personas):
        for j in range(len(persona.prompts)):
            n = len(harvester.prompt(p, j, longest).input_ids)
            harvester.model.check_length(
                n,
                f"item '{harvester.items[longest].item_id}' under persona '{persona.name}' "
                f"paraphrase {j}",
            )
