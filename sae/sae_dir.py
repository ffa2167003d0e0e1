"""SAE directories as `shoggoth train` and `shoggoth sae import` write them (sae-lens's
cfg.json + sae_weights.safetensors, plus shoggoth.json): loading, identifying and checking one
against a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shoggoth.core.atomic import file_sha256
from shoggoth.core.errors import BadInput, first_line
from shoggoth.core.names import SAE_ID as SAE_ID
from shoggoth.sae.models import resolve_device


def read_sae_dir(path: Path, device: str, flag: str) -> Any:
    """`SAE.load_from_disk`, with a damaged or foreign directory reported in one line."""
    from sae_lens import SAE

    try:
        return SAE.load_from_disk(str(path), device=device)
    except Exception as e:  # damaged or foreign files: one line naming the directory
        first = first_line(e)
        raise BadInput(f"{flag} {path}: could not load the SAE: {first}") from None


def load_sae_dir(path: Path, device: str) -> Any:
    """An sae-lens SAE from a directory; BadInput in one line when it is not one."""
    if not path.is_dir():
        raise BadInput(f"--sae-dir {path}: no such directory")
    if not (path / "cfg.json").is_file() or not (path / "sae_weights.safetensors").is_file():
        raise BadInput(f"--sae-dir {path}: not an SAE directory (needs cfg.json and "
                       "sae_weights.safetensors, as `shoggoth train` writes)")
    return read_sae_dir(path, device, "--sae")


def weights_sha256(sae_dir: Path) -> str:
    """sha256 of the SAE's weights file (tells two SAEs with the same name apart)."""
    return file_sha256(sae_dir / "sae_weights.safetensors")


def sae_model_name(path: Path, sae: Any) -> str | None:
    """The model an SAE was trained on: shoggoth.json's record, else sae-lens metadata."""
    meta = path / "shoggoth.json"
    if meta.is_file():
        name = json.loads(meta.read_text()).get("model")
        if name:
            return str(name)
    return getattr(sae.cfg.metadata, "model_name", None) or None


def check_fits(sae: Any, model: Any, who: str) -> str:
    """BadInput unless the SAE reads a hook the model has, at the model's width; its hook."""
    hook = sae.cfg.metadata.hook_name
    if sae.cfg.d_in != model.d_model:
        raise BadInput(f"{who}: d_in {sae.cfg.d_in} does not match model '{model.name}' "
                       f"(d_model {model.d_model})")
    if not hook or hook not in model.bridge.hook_dict:
        raise BadInput(f"{who}: hook '{hook}' does not exist in model '{model.name}'")
    return hook


def load_harvest_sae(db: Path, sae_id: str, row: dict[str, Any], device: str) -> Any:
    """The SAE a harvest in `db` was made with (its `saes` row), loaded from its directory."""
    path = Path(row["path"])
    if not path.is_dir():
        raise BadInput(f"--db {db}: the SAE directory of '{sae_id}' ({path}) is gone")
    resolved, _ = resolve_device(device)
    return load_sae_dir(path, str(resolved))


def dictionary_kind(path: Path, sae: Any) -> tuple[str, str | None]:
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
        raise BadInput(f"--sae-dir {path}: a difference dictionary that does not say its "
                       "reference (shoggoth.json 'reference')")
    return kind, str(reference)
