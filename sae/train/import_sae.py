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
from shoggoth.core.errors import BadInput, first_line
from shoggoth.core.outputs import refuse_output_over
from shoggoth.core.versions import library_versions
from shoggoth.sae.models import hub_reachable, load_model
from shoggoth.sae.sae_dir import check_fits, read_sae_dir
from shoggoth.sae.train.run import held_out_contexts, held_out_metrics, resolve_dataset


@dataclass
class ImportConfig(Config):
    """`shoggoth sae import`: register an existing SAE for a model."""
    path: Path | None = None
    """A local sae-lens SAE directory (cfg.json + sae_weights.safetensors)."""
    release: str | None = None
    """sae-lens pretrained release, e.g. gpt2-small-res-jb (with --sae; needs network)."""
    sae: str | None = option(None, was={"--sae-id": None})
    """The SAE's id within --release, e.g. blocks.8.hook_resid_pre."""
    model: str = "minilm"
    """The model the SAE reads: alias, local Hugging Face directory or hub id."""
    out: Path | None = None
    """Output directory (default: runs/imported-MODEL-HOOK). Must not exist."""
    evaluate: bool = True
    """Evaluate on held-out built-in text (explained variance, L0, dead fraction, CE for LMs)."""
    eval_tokens: int = option(16_384, min=1)
    """Tokens for that evaluation."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N."""
    overwrite: bool = False
    """Replace --out if it exists."""


def load_sae(cfg: ImportConfig, device: str) -> tuple[Any, str]:
    """The SAE and a description of where it came from."""
    from sae_lens import SAE

    if (cfg.path is None) == (cfg.release is None):
        raise BadInput("give either --path DIR or --release R --sae S")
    if cfg.path is not None:
        if not (cfg.path / "cfg.json").is_file():
            raise BadInput(f"--path {cfg.path}: not an sae-lens SAE directory (no cfg.json)")
        return read_sae_dir(cfg.path, device, "--path"), str(cfg.path.resolve())
    if not cfg.sae:
        raise BadInput(f"--release {cfg.release}: needs --sae")

    if not hub_reachable():
        raise BadInput(f"--release {cfg.release}: downloading from the registry needs network")
    try:
        return SAE.from_pretrained(cfg.release, cfg.sae, device=device), (
            f"sae-lens registry: {cfg.release} / {cfg.sae}"
        )
    except Exception as e:  # unknown release/id or download failure
        first = first_line(e)
        raise BadInput(f"--release {cfg.release} --sae {cfg.sae}: {first}") from None


def import_sae(cfg: ImportConfig, log: Any = print) -> Path:
    """Check the SAE against the model, evaluate it, and publish it with its shoggoth.json."""
    if cfg.out is not None:
        refuse_output_over(cfg.out, "--out")
    if cfg.out is not None and cfg.out.exists() and not cfg.overwrite:
        raise BadInput(f"--out {cfg.out}: already exists (pass --overwrite to replace it)")
    if cfg.eval_tokens <= 0:
        raise BadInput(f"--eval-tokens {cfg.eval_tokens}: must be positive")
    model = load_model(cfg.model, cfg.device)
    sae, origin = load_sae(cfg, str(model.device))
    hook = check_fits(sae, model, f"SAE {origin}")
    if sae.cfg.metadata.model_name and sae.cfg.metadata.model_name not in (cfg.model, "native"):
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
        sae.save_model(str(built))
        write_json_atomic(built / "shoggoth.json", {
            "model": cfg.model,
            "model_source": model.source.location,
            "hook": hook,
            "d_in": sae.cfg.d_in,
            "d_sae": sae.cfg.d_sae,
            "architecture": sae.cfg.architecture(),
            "imported_from": origin,
            "evaluation": metrics,
            "config": config_metadata(cfg),
            "versions": library_versions(),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        publish(built, out)
    finally:
        shutil.rmtree(built, ignore_errors=True)
    return out
