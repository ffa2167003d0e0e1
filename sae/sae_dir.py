"""SAE directories as `shoggoth train` and `shoggoth sae import` write them (sae-lens's
cfg.json + sae_weights.safetensors, plus shoggoth.json): loading, identifying and checking one
against a model."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from shoggoth.core.atomic import file_sha256
from shoggoth.core.errors import BadInput, first_line, shown
from shoggoth.core.names import SAE_ID as SAE_ID
from shoggoth.sae.models import Model, resolve_device

if TYPE_CHECKING:
    from sae_lens import SAE


def read_sae_dir(path: Path, device: str, flag: str) -> SAE:
    """`SAE.load_from_disk`, with a damaged or foreign directory reported in one line, and an
    SAE shoggoth cannot read faithfully (see `check_residual`) refused."""
    from sae_lens import SAE

    try:
        sae = SAE.load_from_disk(str(path), device=device)
    except Exception as e:  # damaged or foreign files: one line naming the directory
        first = first_line(e)
        raise BadInput(f"{flag} {path}: could not load the SAE: {first}") from None
    check_residual(sae, f"{flag} {path}")
    return sae


RESIDUAL_HOOK = re.compile(r"blocks\.\d+\.hook_resid_(pre|mid|post)")
"""The residual-stream hooks, the only ones whose values TransformerLens's output-preserving
weight processing leaves as they are."""

SAME_RESIDUAL = frozenset(
    {"fold_ln", "center_unembed", "fold_value_biases", "refactor_factored_attn_matrices"}
)
"""HookedTransformer weight processing that leaves the residual stream's values unchanged
(TransformerLens weight_processing.py): fold_ln moves the norms' weights into the layers that
read them, center_unembed shifts every logit equally, fold_value_biases moves b_V into b_O
(attention patterns sum to 1), refactor_factored_attn_matrices re-factors W_QK and W_OV with the
same products. center_writing_weights does change it: each residual vector loses its mean."""

LOADING_ONLY = frozenset(
    {
        "n_devices",
        "device",
        "device_map",
        "max_memory",
        "dtype",
        "torch_dtype",
        "trust_remote_code",
        "default_prepend_bos",
        "default_padding_side",
        "move_to_device",
        "attn_implementation",
        "low_cpu_mem_usage",
        "cache_dir",
        "local_files_only",
        "token",
    }
)
"""`model_from_pretrained_kwargs` that say where and in what precision the model ran, not what
it computes."""


def check_residual(sae: SAE, who: str) -> None:
    """BadInput in one line unless the SAE encodes and decodes one hook's activations of the
    unprocessed model, as shoggoth reads them: a transcoder (it writes another hook's space)
    and an SAE trained on HookedTransformer-processed weights that change its hook's values
    (sae-lens's `model_from_pretrained_kwargs`; shoggoth's TransformerBridge runs the model's
    own weights) would give wrong features without a word."""
    from sae_lens.saes.transcoder import Transcoder

    meta = sae.cfg.metadata
    hook = meta.hook_name
    if isinstance(sae, Transcoder) or meta.hook_name_out or getattr(sae.cfg, "d_out", None):
        writes = meta.hook_name_out or f"{getattr(sae.cfg, 'd_out', '?')} output dimensions"
        raise BadInput(
            f"{who}: is a transcoder (reads {hook}, writes {writes}); shoggoth reads "
            "residual SAEs only"
        )
    kwargs = meta.model_from_pretrained_kwargs or {}
    if not isinstance(kwargs, dict):
        raise BadInput(
            f"{who}: its model_from_pretrained_kwargs is {shown(kwargs)}, not a "
            "mapping; the SAE's config is damaged"
        )
    # Off the residual stream, even the output-preserving processing changes some hooks
    # (fold_ln a norm's output, fold_value_biases hook_z): refused there.
    residual = bool(hook and RESIDUAL_HOOK.fullmatch(hook))
    harmless = LOADING_ONLY | (SAME_RESIDUAL if residual else frozenset())
    changed = [
        f"{k}={v}"
        for k, v in kwargs.items()
        if k not in harmless and v is not None and v is not False
    ]
    if changed:
        raise BadInput(
            f"{who}: was trained on activations of a HookedTransformer with processed "
            f"weights ({', '.join(changed)} at {hook}), not on the model's own weights "
            "that shoggoth runs"
        )


def pretrained_origin(path: Path, sae: SAE) -> dict[str, str | None]:
    """The sae-lens release, the SAE's id in it and its Neuronpedia id, as `sae import` records
    them in shoggoth.json (the Neuronpedia id also from sae-lens's metadata); None when unknown
    (an SAE `shoggoth train` made)."""
    meta = path / "shoggoth.json"
    saved = json.loads(meta.read_text()) if meta.is_file() else {}
    saved = saved if isinstance(saved, dict) else {}
    out = {
        k: saved[k] if isinstance(saved.get(k), str) else None
        for k in ("release", "sae_lens_id", "neuronpedia_id")
    }
    neuronpedia = getattr(sae.cfg.metadata, "neuronpedia_id", None)
    if out["neuronpedia_id"] is None and isinstance(neuronpedia, str) and neuronpedia:
        out["neuronpedia_id"] = neuronpedia
    return out


def load_sae_dir(path: Path, device: str) -> SAE:
    """An sae-lens SAE from a directory; BadInput in one line when it is not one."""
    if not path.is_dir():
        raise BadInput(f"--sae-dir {path}: no such directory")
    if not (path / "cfg.json").is_file() or not (path / "sae_weights.safetensors").is_file():
        raise BadInput(
            f"--sae-dir {path}: not an SAE directory (needs cfg.json and "
            "sae_weights.safetensors, as `shoggoth train` writes)"
        )
    return read_sae_dir(path, device, "--sae")


def weights_sha256(sae_dir: Path) -> str:
    """sha256 of the SAE's weights file (tells two SAEs with the same name apart)."""
    return file_sha256(sae_dir / "sae_weights.safetensors")


def sae_model_name(path: Path, sae: SAE) -> str | None:
    """The model an SAE was trained on: shoggoth.json's record, else sae-lens metadata."""
    meta = path / "shoggoth.json"
    if meta.is_file():
        name = json.loads(meta.read_text()).get("model")
        if name:
            return str(name)
    return getattr(sae.cfg.metadata, "model_name", None) or None


def check_fits(sae: SAE, model: Model, who: str) -> str:
    """BadInput unless the SAE reads a hook the model has, at the model's width, as a residual
    SAE of the unprocessed model (`check_residual`); its hook."""
    check_residual(sae, who)
    hook = sae.cfg.metadata.hook_name
    if sae.cfg.d_in != model.d_model:
        raise BadInput(
            f"{who}: d_in {sae.cfg.d_in} does not match model '{model.name}' "
            f"(d_model {model.d_model})"
        )
    if not hook or hook not in model.bridge.hook_dict:
        raise BadInput(f"{who}: hook '{hook}' does not exist in model '{model.name}'")
    return cast("str", hook)


class HarvestedSae(Protocol):
    """What the model side reads of a harvested SAE's database row (the database side's
    `SaeRecord` is one)."""

    @property
    def sae_id(self) -> str:
        """The SAE's id in the database."""

    @property
    def path(self) -> str | None:
        """The folder its weights were read from at harvest time."""


def load_harvest_sae(db: Path, harvested: HarvestedSae, device: str) -> SAE:
    """The SAE a harvest in `db` was made with (its `saes` row), loaded from its directory."""
    path = Path(harvested.path or "")
    if not harvested.path or not path.is_dir():
        raise BadInput(
            f"--db {db}: the SAE directory of '{harvested.sae_id}' ({harvested.path}) is gone"
        )
    resolved, _ = resolve_device(device)
    return load_sae_dir(path, str(resolved))


def dictionary_kind(path: Path, sae: SAE) -> tuple[str, str | None]:
    """(kind, reference) of a dictionary: 'difference' and the reference its shifts are measured
    against (a system prompt, EMPTY_SYSTEM for an empty system turn), or ('residual', None).
    shoggoth.json records it; sae-lens's cfg.json metadata carries the same."""
    meta = path / "shoggoth.json"
    saved = json.loads(meta.read_text()) if meta.is_file() else {}
    kind = saved.get("target") or getattr(sae.cfg.metadata, "shoggoth_target", None) or "residual"
    if kind not in ("residual", "difference"):
        raise BadInput(f"--sae-dir {path}: unknown dictionary kind {kind!r}")
    if kind == "residual":
        return kind, None
    reference = saved.get("reference", getattr(sae.cfg.metadata, "shoggoth_reference", None))
    if reference is None:
        raise BadInput(
            f"--sae-dir {path}: a difference dictionary that does not say its "
            "reference (shoggoth.json 'reference')"
        )
    return kind, str(reference)
