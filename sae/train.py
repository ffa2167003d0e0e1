"""`shoggoth train`: an SAE on one hook of a model, trained by sae-lens.

sae-lens does the training (its TrainingSAE and SAETrainer.fit loop). This module adds what the
project needs around it: a built-in offline corpus, pre-tokenized contexts that look like the
prompts measured later, a deterministic activation stream (sae/stream.py) in place of sae-lens's
ActivationsStore so that a resumed run equals an uninterrupted one, checkpoints written atomically
and resumable after kill -9 or Ctrl-C, a held-out evaluation, and an output directory that
appears only when training succeeded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch

from core.atomic import publish, write_json_atomic
from core.config import Config, config_metadata, option
from core.errors import BadInput, Interrupted
from core.versions import library_versions
from sae.chitchat import CHITCHAT
from sae.contexts import pack_contexts, split_documents
from sae.corpus import BUILTIN, load_texts
from sae.evaluate import ce_loss_recovered, evaluate_sae
from sae.models import load_model, resolve_hook
from sae.prompts import non_special, special_ids
from sae.stream import ActivationStream, context_activations

Architecture = Literal["topk", "batchtopk", "jumprelu", "standard", "gated", "matryoshka"]
TOPK_LIKE = ("topk", "batchtopk", "matryoshka")
WORK_SUFFIX = ".partial"
STATE_FILE = "shoggoth_train_config.json"


@dataclass
class TrainConfig(Config):
    """`shoggoth train`: train an SAE on a model's residual stream (sae-lens underneath)."""
    model: str = "minilm"
    """Model alias, local Hugging Face directory or hub id."""
    hook: str | None = None
    """Hook to train on, e.g. blocks.3.hook_resid_post (default: the middle layer's resid_post)."""
    layer: int | None = None
    """Shortcut for --hook blocks.LAYER.hook_resid_post."""
    dataset: str = "auto"
    """'auto' (chitchat for models with a chat template, builtin otherwise), 'chitchat'
    (offline: human conversations in the model's chat template, some under training personas),
    'builtin' (offline: Python's own docs), a .txt/.jsonl/.parquet file, a folder of them, a
    save_to_disk folder, or a Hugging Face dataset name (needs network)."""
    text_column: str = "text"
    """Column (or JSON field) holding the text in .jsonl, .parquet and Hugging Face datasets."""
    architecture: Architecture = "topk"
    """SAE architecture, as sae-lens trains it (matryoshka = matryoshka batch-top-k)."""
    d_sae: int | None = option(None, min=1)
    """Number of SAE features (default: expansion × d_model)."""
    expansion: int = option(8, min=1)
    """d_sae as a multiple of the model's d_model, when --d-sae is not given."""
    k: int = option(32, min=1)
    """Active features per token for topk, batchtopk and matryoshka."""
    sparsity_coefficient: float = option(5.0, min=0)
    """L1 coefficient (standard, gated) or L0 coefficient (jumprelu); unused by top-k types."""
    tokens: int = option(800_000, min=1)
    """Training tokens (the corpus is repeated if it is smaller)."""
    batch_tokens: int = option(1024, min=1)
    """Tokens per optimizer step."""
    context_size: int = option(128, min=1)
    """Tokens per context, special tokens included."""
    lr: float = option(1e-3, above=0)
    """Adam learning rate (warm-up over the first 5% of steps, decay over the last 20%)."""
    eval_tokens: int = option(16_384, min=1)
    """Held-out tokens (from documents never trained on) for the final evaluation."""
    checkpoint_every: int = option(100, min=0)
    """Save a resumable checkpoint every this many steps (0: never)."""
    keep_checkpoints: int = option(2, min=1)
    """Checkpoints kept while training (the newest ones); all are removed once the SAE is
    published."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N."""
    out: Path | None = None
    """Output directory (default: runs/sae-MODEL-HOOK-ARCHITECTURE). Must not exist."""
    seed: int = 0
    """Random seed for SAE initialization and data order."""
    resume: bool = False
    """Continue the interrupted run for --out from its newest checkpoint."""
    overwrite: bool = False
    """Replace --out (and any interrupted run for it) instead of refusing."""
    wandb: bool = False
    """Log to Weights & Biases (needs network and a login)."""
    def check(self) -> None:
        if self.architecture in TOPK_LIKE and self.d_sae is not None and self.k >= self.d_sae:
            raise BadInput(f"--k {self.k}: must be smaller than --d-sae {self.d_sae}")


def default_out(cfg: TrainConfig, hook: str) -> Path:
    name = Path(cfg.model).name if Path(cfg.model).exists() else cfg.model.replace("/", "-")
    return Path("runs") / f"sae-{name}-{hook}-{cfg.architecture}"


def sae_config(cfg: TrainConfig, d_in: int, d_sae: int, device: str) -> Any:
    """The sae-lens TrainingSAEConfig for this run."""
    import sae_lens

    common = dict(d_in=d_in, d_sae=d_sae, device=device, dtype="float32")
    if cfg.architecture == "topk":
        return sae_lens.TopKTrainingSAEConfig(k=cfg.k, **common)
    if cfg.architecture == "batchtopk":
        return sae_lens.BatchTopKTrainingSAEConfig(k=cfg.k, **common)
    if cfg.architecture == "matryoshka":
        widths = sorted({max(cfg.k + 1, d_sae // 8), max(cfg.k + 1, d_sae // 4),
                         max(cfg.k + 1, d_sae // 2), d_sae})
        return sae_lens.MatryoshkaBatchTopKTrainingSAEConfig(
            k=cfg.k, matryoshka_widths=widths, **common
        )
    if cfg.architecture == "jumprelu":
        return sae_lens.JumpReLUTrainingSAEConfig(l0_coefficient=cfg.sparsity_coefficient,
                                                  **common)
    if cfg.architecture == "gated":
        return sae_lens.GatedTrainingSAEConfig(l1_coefficient=cfg.sparsity_coefficient, **common)
    return sae_lens.StandardTrainingSAEConfig(l1_coefficient=cfg.sparsity_coefficient, **common)


def _trainer_class() -> type:
    """sae-lens's SAETrainer, with a richer progress bar and atomic checkpoints."""
    from sae_lens.training.sae_trainer import SAETrainer

    class Trainer(SAETrainer):
        stop_requested = False
        """Set by Ctrl-C during fit(); acted on at the end of the current step."""
        keep = 2
        """Checkpoints kept (--keep-checkpoints)."""
        stopped_at: int | None = None
        """The checkpoint saved when it stopped (in training samples)."""

        def fit(self) -> Any:
            # Ctrl-C only asks to stop: the step in flight finishes, and the checkpoint is
            # saved where sae-lens saves its own (after a step, before its counter moves),
            # never halfway through a step, a sparsity-window reset or a checkpoint write.
            if threading.current_thread() is not threading.main_thread():
                return super().fit()
            previous = signal.signal(signal.SIGINT,
                                     lambda *_: setattr(self, "stop_requested", True))
            try:
                return super().fit()
            finally:
                signal.signal(signal.SIGINT, previous)

        def _checkpoint_if_needed(self) -> None:
            super()._checkpoint_if_needed()
            if self.stop_requested:
                self.stopped_at = self.n_training_samples
                self.save_checkpoint(checkpoint_name=str(self.n_training_samples))
                raise KeyboardInterrupt

        def _update_pbar(self, step_output: Any, pbar: Any, update_interval: int = 10) -> None:
            # Tokens/s is tqdm's rate, counted every step; loss, L0 (this batch) and the dead
            # fraction (the trainer's firing counters) are refreshed every `update_interval`.
            pbar.update(self.cfg.train_batch_size_samples)
            if self.n_training_steps % update_interval == 0:
                pbar.unit, pbar.unit_scale = "tok", True
                l0 = float((step_output.feature_acts != 0).sum(-1).float().mean())
                dead = float(self.dead_neurons.float().mean())
                pbar.set_postfix(loss=f"{float(step_output.loss):.4f}", l0=f"{l0:.1f}",
                                 dead=f"{dead:.1%}", refresh=False)

        def save_checkpoint(self, checkpoint_name: str, base_path: Any = None) -> None:
            # sae-lens writes a checkpoint in place; a kill -9 midway would leave a half
            # checkpoint that --resume might pick. Write it aside, then rename it into place.
            root = Path(self.cfg.checkpoint_path)
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=".writing-"))
            super().save_checkpoint(checkpoint_name, base_path=tmp)
            shutil.rmtree(root / checkpoint_name, ignore_errors=True)  # the same point, again
            os.replace(tmp / checkpoint_name, root / checkpoint_name)
            shutil.rmtree(tmp, ignore_errors=True)
            for old in sorted(checkpoints(root))[:-self.keep]:  # keep the newest ones
                shutil.rmtree(root / str(old), ignore_errors=True)

    return Trainer


def checkpoints(root: Path) -> list[int]:
    """Complete checkpoints under `root`, as training-sample counts (sorted)."""
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def _resume_fields(cfg: TrainConfig) -> dict[str, Any]:
    meta = config_metadata(cfg)
    for name in ("resume", "overwrite", "device"):
        meta.pop(name)
    return meta


def prepare_dirs(cfg: TrainConfig, out: Path) -> tuple[Path, int | None]:
    """The work directory, and the checkpoint to resume from; refuses unsafe starts."""
    work = out.parent / f".{out.name}{WORK_SUFFIX}"
    if (out / "shoggoth.json").is_file() and work.is_dir() and not cfg.resume:
        # Killed after publishing, before its work folder was removed: the SAE is complete,
        # the checkpoints are leftovers.
        shutil.rmtree(work, ignore_errors=True)
    if out.exists() and not cfg.overwrite:
        raise BadInput(f"--out {out}: already exists (pass --overwrite to replace it)")
    if cfg.resume:
        found = checkpoints(work / "checkpoints")
        if not found:
            raise BadInput(f"--resume: no checkpoint of an interrupted run for {out} (in {work})")
        saved = json.loads((work / STATE_FILE).read_text())
        now = _resume_fields(cfg)
        differ = [k for k in now if saved.get(k) != now[k]]
        if differ:
            raise BadInput(f"--resume: the interrupted run used different {', '.join(differ)}")
        return work, found[-1]
    if work.exists():
        if not cfg.overwrite:
            raise BadInput(
                f"--out {out}: an interrupted run exists ({work}); pass --resume to continue it "
                "or --overwrite to start over"
            )
        shutil.rmtree(work)
    return work, None


def held_out_metrics(model: Any, sae: Any, hook: str, contexts: torch.Tensor) -> dict[str, float]:
    """Evaluation of `sae` at `hook` on held-out contexts: reconstruction and sparsity on every
    non-special token, plus CE loss recovered (on up to 32 contexts) for causal LMs."""

    keep = non_special(model.tokenizer, contexts)
    metrics = evaluate_sae(sae, context_activations(model, contexts, hook, keep))
    if model.is_causal:
        metrics.update(ce_loss_recovered(model, sae, hook, contexts[:32], keep[:32]))
    return metrics


def held_out_contexts(model: Any, dataset: str, text_column: str, context_size: int,
                      eval_tokens: int) -> torch.Tensor:
    """Contexts from the documents `train` never trains on (every 25th document)."""
    # Every 25th document is held out, and chat text runs at about 4 characters per token:
    # 200 characters per held-out token leaves room for the whole --eval-tokens.
    _, held = split_documents(load_texts(dataset, text_column, max_chars=200 * eval_tokens,
                                         tokenizer=model.tokenizer))
    return _eval_contexts(model, held, context_size, eval_tokens)


def _eval_contexts(model: Any, held_docs: list[str], context_size: int,
                   eval_tokens: int) -> torch.Tensor:

    return pack_contexts(model.tokenizer, held_docs, context_size, is_causal=model.is_causal,
                         max_contexts=max(1, math.ceil(eval_tokens / context_size)))


def resolve_dataset(dataset: str, model: Any) -> str:
    """--dataset with 'auto' decided: the chat corpus for chat models, the built-in docs for
    encoders and base models."""
    if dataset != "auto":
        return dataset
    return CHITCHAT if model.has_chat_template else BUILTIN


def training_contexts(cfg: TrainConfig, model: Any, dataset: str
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(training contexts, held-out contexts) from `dataset`; held-out documents are disjoint."""
    texts = load_texts(dataset, cfg.text_column,
                       max_chars=20 * (cfg.tokens + 2 * cfg.eval_tokens),
                       tokenizer=model.tokenizer)
    train_docs, held_docs = split_documents(texts)
    train_ctx = pack_contexts(model.tokenizer, train_docs, cfg.context_size,
                              is_causal=model.is_causal,
                              max_contexts=math.ceil(cfg.tokens / cfg.context_size))
    eval_ctx = _eval_contexts(model, held_docs, cfg.context_size, cfg.eval_tokens)
    if len(train_ctx) == 0 or len(eval_ctx) == 0:
        raise BadInput(f"dataset '{dataset}': too little text for one {cfg.context_size}-token "
                       "context of training and one of evaluation")
    return train_ctx, eval_ctx


def runner_config(cfg: TrainConfig, model: Any, hook: str, d_sae: int, checkpoints: Path,
                  dataset: str) -> Any:
    """The sae-lens LanguageModelSAERunnerConfig: our contexts arrive pre-tokenized, special
    tokens are excluded, and the learning rate warms up over 5% and decays over the last 20%."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig


    steps = max(1, cfg.tokens // cfg.batch_tokens)
    # Features silent this long count as dead and get the AuxK loss that revives them.
    window = max(1, min(10_000_000, max(cfg.tokens // 20, cfg.batch_tokens)) // cfg.batch_tokens)
    device = str(model.device)
    return LanguageModelSAERunnerConfig(
        sae=sae_config(cfg, model.d_model, d_sae, device),
        model_name=cfg.model,
        model_class_name="TransformerBridge",
        hook_name=hook,
        dataset_path=dataset,
        is_dataset_tokenized=True,
        streaming=False,
        context_size=cfg.context_size,
        training_tokens=cfg.tokens,
        train_batch_size_tokens=cfg.batch_tokens,
        store_batch_size_prompts=16,
        n_batches_in_buffer=16,
        prepend_bos=False,
        exclude_special_tokens=sorted(special_ids(model.tokenizer)),
        lr=cfg.lr,
        lr_warm_up_steps=steps // 20,
        lr_decay_steps=steps // 5,
        dead_feature_window=window,
        feature_sampling_window=window,
        device=device,
        seed=cfg.seed,
        dtype="float32",
        autocast_lm=model.device.type == "cuda",
        n_checkpoints=0,
        checkpoint_path=str(checkpoints),
        output_path=None,
        logger=LoggingConfig(log_to_wandb=cfg.wandb, wandb_project="shoggoth"),
        verbose=False,
    )


@dataclass
class TrainRun:
    """What one training run is made of, once the model is loaded and the data packed."""
    model: Any
    hook: str
    d_sae: int
    out: Path
    work: Path
    resume_from: int | None
    train_ctx: torch.Tensor
    eval_ctx: torch.Tensor
    dataset: str
    """--dataset with 'auto' resolved."""


def prepare_run(cfg: TrainConfig, log: Any) -> TrainRun:
    """Load the model, resolve hook and d_sae, refuse unsafe starts and pack the contexts."""
    # With --out given, refuse an unsafe start before the model loads; the default --out
    # depends on the hook, so it is checked once the model is known.
    prepared = prepare_dirs(cfg, cfg.out) if cfg.out is not None else None
    model = load_model(cfg.model, cfg.device)
    hook = resolve_hook(model, cfg.hook, cfg.layer)
    d_sae = cfg.d_sae or cfg.expansion * model.d_model
    if cfg.architecture in TOPK_LIKE and cfg.k >= d_sae:
        raise BadInput(f"--k {cfg.k}: must be smaller than d_sae {d_sae}")
    max_ctx = getattr(model.bridge.cfg, "n_ctx", None)
    if max_ctx and cfg.context_size > max_ctx:
        raise BadInput(f"--context-size {cfg.context_size}: model '{cfg.model}' takes at most "
                       f"{max_ctx} tokens")
    out = cfg.out or default_out(cfg, hook)
    work, resume_from = prepared or prepare_dirs(cfg, out)
    dataset = resolve_dataset(cfg.dataset, model)
    train_ctx, eval_ctx = training_contexts(cfg, model, dataset)
    log(f"corpus {dataset}: {len(train_ctx)} training contexts ({int(train_ctx.numel()):,} "
        f"distinct tokens), {len(eval_ctx)} held-out; model {cfg.model}, hook {hook}, "
        f"d_sae {d_sae}")
    return TrainRun(model, hook, d_sae, out, work, resume_from, train_ctx, eval_ctx, dataset)


def build_trainer(cfg: TrainConfig, run: TrainRun, log: Any) -> Any:
    """The sae-lens trainer over our contexts, with the decoder bias at the data mean (a new
    run) or the state of the newest checkpoint (a resumed one)."""
    from sae_lens import LanguageModelSAETrainingRunner, TrainingSAE, TrainingSAEConfig

    model, work = run.model, run.work
    runner_cfg = runner_config(cfg, model, run.hook, run.d_sae, work / "checkpoints",
                               run.dataset)
    sae = TrainingSAE.from_dict(
        TrainingSAEConfig.from_dict(runner_cfg.get_training_sae_cfg_dict()).to_dict()
    )
    sae.to(str(model.device))
    # sae-lens's runner records the hook, model, dataset and context size in the SAE's metadata;
    # run that same method so SAELens tools read our SAEs like their own.
    LanguageModelSAETrainingRunner._set_sae_metadata(SimpleNamespace(cfg=runner_cfg, sae=sae))
    sae.cfg.metadata.prepend_bos = model.prepend_bos  # our contexts start with BOS for LMs
    trainer_cfg = dataclasses.replace(runner_cfg.to_sae_trainer_config(),
                                      checkpoint_path=str(work / "checkpoints"))
    stream = ActivationStream(model, run.hook, run.train_ctx,
                              non_special(model.tokenizer, run.train_ctx), cfg.batch_tokens,
                              cfg.seed)
    position = 0 if run.resume_from is None else int(run.resume_from)
    # The stream's position is the trainer's sample count, which its checkpoints save.
    trainer = _trainer_class()(sae=sae, data_provider=stream.batches(position), evaluator=None,
                               save_checkpoint_fn=None, cfg=trainer_cfg)
    trainer.keep = cfg.keep_checkpoints
    if cfg.checkpoint_every:
        every = cfg.checkpoint_every * cfg.batch_tokens
        trainer.checkpoint_thresholds = list(range(every, cfg.tokens, every))
    if run.resume_from is None:
        # Start the decoder bias at the data mean: the residual stream has a large constant
        # offset, and features that must first learn it die before they fire.
        sample = run.train_ctx[: max(1, 8192 // cfg.context_size)]
        keep = non_special(model.tokenizer, sample)
        with torch.no_grad():
            sae.b_dec.copy_(context_activations(model, sample, run.hook, keep).mean(0))
    else:
        path = work / "checkpoints" / str(run.resume_from)
        trainer.load_trainer_state(path)
        # Checkpoints are written after a step, before sae-lens counts it: count it now, or
        # the step's sparsity-window reset would run twice.
        trainer.n_training_steps += 1
        sae.load_weights_from_checkpoint(path)
        trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds
                                         if t > trainer.n_training_samples]
        log(f"resuming from checkpoint at {trainer.n_training_samples:,} tokens")
    return trainer


def fit(cfg: TrainConfig, trainer: Any, work: Path) -> Any:
    """sae-lens's training loop; Ctrl-C saves a checkpoint and says how to resume."""
    if cfg.wandb:
        import wandb

        wandb.init(project="shoggoth", config=config_metadata(cfg))
    try:
        trained = trainer.fit()
    except KeyboardInterrupt:
        if trainer.stopped_at is None:  # before the first step: nothing to save
            raise Interrupted(f"stopped before training began; the work is in {work}") from None
        raise Interrupted(f"checkpoint saved in {work} at {trainer.stopped_at:,} tokens; "
                          "continue with --resume") from None
    if not all(bool(torch.isfinite(p).all()) for p in trained.parameters()):
        shutil.rmtree(work, ignore_errors=True)
        raise BadInput(f"--lr {cfg.lr}: training diverged (the SAE's weights are no longer "
                       "finite); nothing was written to --out; try a smaller --lr")
    return trained


def train(cfg: TrainConfig, log: Any = print) -> Path:
    """Train, evaluate and publish an SAE; returns the output directory."""
    from sae_lens import SAE

    started = time.time()
    run = prepare_run(cfg, log)
    run.work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run.work / STATE_FILE, _resume_fields(cfg))
    torch.manual_seed(cfg.seed)
    trainer = build_trainer(cfg, run, log)
    fit_started = time.time()
    trained = fit(cfg, trainer, run.work)
    fit_seconds = time.time() - fit_started
    train_seconds = time.time() - started

    device = str(run.model.device)
    final = run.work / "final"
    shutil.rmtree(final, ignore_errors=True)
    trained.save_inference_model(str(final))
    loaded = SAE.load_from_disk(str(final), device=device)
    log("evaluating on held-out tokens")
    metrics = held_out_metrics(run.model, loaded, run.hook, run.eval_ctx)
    meta = {
        "model": cfg.model,
        "model_source": run.model.source.location,
        "hook": run.hook,
        "layer": int(run.hook.split(".")[1]) if run.hook.startswith("blocks.") else None,
        "d_in": run.model.d_model,
        "d_sae": run.d_sae,
        "architecture": cfg.architecture,
        "dataset": run.dataset,
        "training_tokens": int(trainer.n_training_samples),
        "distinct_training_tokens": int(run.train_ctx.numel()),
        "context_size": cfg.context_size,
        "seed": cfg.seed,
        "resumed_from_tokens": run.resume_from,
        "train_seconds": round(train_seconds, 1),
        "fit_seconds": round(fit_seconds, 2),
        "device": device,
        "evaluation": metrics,
        "config": config_metadata(cfg),
        "versions": library_versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json_atomic(final / "shoggoth.json", meta)
    publish(final, run.out)
    shutil.rmtree(run.work, ignore_errors=True)
    return run.out
