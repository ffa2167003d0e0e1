"""`shoggoth sae import`: bring an existing SAE (local sae-lens directory or the sae-lens
pretrained registry) into the same output layout `shoggoth train` writes, after checking that it
fits the model."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoggoth.core.atomic import publish, write_json_atomic
from shoggoth.core.config import Config, config_metadata, option
from shoggoth.core.errors import BadInput
from shoggoth.core.outputs import refuse_output_over
from shoggoth.core.placement import placement_of
from shoggoth.core.progress import Log
from shoggoth.core.versions import library_versions
from shoggoth.sae.models import load_model
from shoggoth.sae.sae_dir import check_fits, read_sae_dir
from shoggoth.sae.train.folders import folder_layout, load_folder, sparsify_run_hint
from shoggoth.sae.train.pretrained import (
    check_release,
    check_trained_on,
    load_pretrained,
    make_contiguous,
    pretrained_metadata,
    registry_entry,
)
from shoggoth.sae.train.run import held_out_contexts, held_out_metrics, resolve_dataset


@dataclass
class ImportConfig(Config):
    """`shoggoth sae import`: register an existing SAE for a model."""

    path: Path | None = None
    """A local SAE folder: sae-lens (cfg.json + sae_weights.safetensors), a sparsify layer folder
    (cfg.json + sae.safetensors) or dictionary_learning (config.json + ae.pt)."""
    release: str | None = None
    """sae-lens pretrained release or Hugging Face repo id, e.g. gemma-scope-2-270m-it-res (with
    --sae; read from the Hugging Face cache when there, else downloaded)."""
    sae: str | None = option(None, was={"--sae-id": None})
    """The SAE's id within --release, e.g. blocks.8.hook_resid_pre."""
    model: str = "smollm2"
    """The model the SAE reads: alias, local Hugging Face directory or hub id (default: the
    built-in chat model, as for train)."""
    other_model: bool = False
    """Import a --release made for another model than --model (its width and hook must fit)."""
    out: Path | None = None
    """Output directory (default: runs/imported-MODEL-HOOK). Must not exist."""
    evaluate: bool = True
    """Evaluate on held-out built-in text (explained variance, L0, dead fraction, CE for LMs)."""
    eval_tokens: int = option(16_384, min=1)
    """Tokens for that evaluation."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N."""
    device_map: str | None = None
    """Spread the model over several devices: auto, or a JSON file of module → device; --device
    then places the SAE (auto: beside the block it reads). See docs/models.md."""
    max_memory: str | None = None
    """With --device-map: the most memory per device, e.g. 0=20GiB,1=20GiB,cpu=64GiB."""
    overwrite: bool = False
    """Replace --out if it exists."""


def load_sae(cfg: ImportConfig, device: str) -> tuple[Any, str]:
    """The SAE and a description of where it came from."""
    if (cfg.path is None) == (cfg.release is None):
        raise BadInput("give either --path DIR or --release R --sae S")
    if cfg.path is not None:
        if (cfg.path / "cfg.json").is_file() and (cfg.path / "sae_weights.safetensors").is_file():
            return read_sae_dir(cfg.path, device, "--path"), str(cfg.path.resolve())
        if folder_layout(cfg.path) is not None:  # sparsify or dictionary_learning: converted
            return load_folder(cfg.path, device)
        raise BadInput(
            sparsify_run_hint(cfg.path)
            or (
                f"--path {cfg.path}: not an sae-lens SAE directory (cfg.json + "
                "sae_weights.safetensors), a sparsify layer folder (cfg.json + sae.safetensors) "
                "or a dictionary_learning folder (config.json + ae.pt)"
            )
        )
    release = cfg.release
    assert release is not None  # (exactly one of --path and --release, checked above)
    if not cfg.sae:
        raise BadInput(f"--release {release}: needs --sae")

    # sae-lens fetches every file through the Hugging Face cache: no network needed once there.
    sae = load_pretrained(release, cfg.sae, device)
    if registry_entry(release) is None:  # a repo id: the model its cfg.json names
        check_trained_on(
            sae.cfg.metadata.model_name, cfg.model, f"--release {cfg.release}", cfg.other_model
        )
        return sae, f"Hugging Face repo: {cfg.release} / {cfg.sae}"
    return sae, f"sae-lens registry: {cfg.release} / {cfg.sae}"


def import_sae(cfg: ImportConfig, log: Log = print) -> Path:
    """Check the SAE against the model, evaluate it, and publish it with its shoggoth.json."""
    if cfg.out is not None:
        refuse_output_over(cfg.out, "--out")
    if cfg.out is not None and cfg.out.exists() and not cfg.overwrite:
        raise BadInput(f"--out {cfg.out}: already exists (pass --overwrite to replace it)")
    if cfg.eval_tokens <= 0:
        raise BadInput(f"--eval-tokens {cfg.eval_tokens}: must be positive")
    if cfg.path is None and cfg.release and cfg.sae:  # refused before any model loads
        check_release(cfg.release, cfg.sae, cfg.model, cfg.other_model)
    # The SAE first, on the CPU: a folder that is not one is refused before any model loads.
    sae, origin = load_sae(cfg, "cpu")
    model = load_model(
        cfg.model, cfg.device, placement=placement_of(cfg.device_map, cfg.max_memory)
    )
    hook = check_fits(sae, model, f"SAE {origin}")
    sae.to(model.sae_device(hook))  # (a spread model: beside the block it reads)
    if (
        cfg.release is None
        and sae.cfg.metadata.model_name
        and sae.cfg.metadata.model_name not in (cfg.model, "native")
    ):  # (a release: checked)
        log(f"note: the SAE was trained on '{sae.cfg.metadata.model_name}'")
    metrics = None
    if cfg.evaluate:
        dataset = resolve_dataset("auto", model)  # chat text for chat models
        log(f"evaluating on held-out {dataset} text")
        ctx = sae.cfg.metadata.context_size or 128
        contexts = held_out_contexts(model, dataset, "text", min(ctx, 128), cfg.eval_tokens)
        metrics = held_out_metrics(model, sae, hook, contexts)
    out = cfg.out or Path("runs") / f"imported-{Path(cfg.model).name}-{hook}"
    if out.exists() and not cfg.overwrite:
        raise BadInput(f"--out {out}: already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.import-"))
    try:
        make_contiguous(sae)  # converters hand over transposed views, which cannot be saved
        sae.save_model(str(built))
        write_json_atomic(
            built / "shoggoth.json",
            {
                "model": cfg.model,
                "model_source": model.source.location,
                "hook": hook,
                "d_in": sae.cfg.d_in,
                "d_sae": sae.cfg.d_sae,
                "architecture": sae.cfg.architecture(),
                "imported_from": origin,
                **pretrained_metadata(cfg.release, cfg.sae if cfg.release else None, sae),
                "evaluation": metrics,
                "config": config_metadata(cfg),
                "versions": library_versions(),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        publish(built, out)
    finally:
        shutil.rmtree(built, ignore_errors=True)
    return out
