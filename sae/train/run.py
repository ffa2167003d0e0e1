"""`shoggoth train`: SAEs on a model's residual stream, trained by sae-lens.

sae-lens does the training (its TrainingSAE with SAETrainer.fit for one SAE, MultiSAETrainer for
several hooks or widths stepped in lockstep on one activation stream; sae/train/ddp.py for
several processes). This module adds what the project needs around it: a built-in offline
corpus, pre-tokenized contexts that look like the prompts measured later, a deterministic
activation stream (sae/train/stream.py) in place of sae-lens's ActivationsStore so that a
resumed run equals an uninterrupted one, checkpoints written atomically
and resumable after kill -9 or Ctrl-C, a held-out evaluation, and an output directory that
appears only when training succeeded.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal, cast

import torch

from shoggoth.battery.personas import Persona
from shoggoth.core.atomic import publish, write_json_atomic
from shoggoth.core.config import SEED_MAX, Config, config_metadata, option
from shoggoth.core.errors import BadInput, Interrupted, first_line
from shoggoth.core.outputs import refuse_output_over
from shoggoth.core.placement import placement_of
from shoggoth.core.progress import Log, Progress
from shoggoth.core.versions import library_versions
from shoggoth.sae.models import Model, load_model, resolve_hook
from shoggoth.sae.prompts import EMPTY_SYSTEM, non_special, special_ids
from shoggoth.sae.train.chitchat import CHITCHAT
from shoggoth.sae.train.contexts import pack_contexts, split_documents
from shoggoth.sae.train.corpus import BUILTIN, load_texts
from shoggoth.sae.train.ddp import (
    SINGLE,
    World,
    any_rank,
    device_for,
    distribute,
    finish,
    launched_world,
    rank_spread,
    start,
)
from shoggoth.sae.train.difference import (
    DIFFERENCE,
    RESIDUAL,
    persona_set,
    persona_signal,
    training_pairs,
)
from shoggoth.sae.train.evaluate import ce_loss_recovered, evaluate_sae
from shoggoth.sae.train.paired import (
    CHUNK_PAIRS,
    ChunkActivations,
    Pairs,
    difference_key,
    paired_activations,
    sharded_paired_batches,
)
from shoggoth.sae.train.stream import (
    context_activations,
    contexts_activations,
    sharded_batches,
    single_hook,
)
from shoggoth.sae.train.trainer import checkpoints, multi_trainer_class, single_trainer_class

if TYPE_CHECKING:
    from sae_lens import SAE


Target = Literal["residual", "difference"]
Architecture = Literal["topk", "batchtopk", "jumprelu", "standard", "gated", "matryoshka"]
TOPK_LIKE = ("topk", "batchtopk", "matryoshka")
WORK_SUFFIX = ".partial"
STATE_FILE = "shoggoth_train_config.json"


@dataclass
class TrainConfig(Config):
    """`shoggoth train`: train an SAE on a model's residual stream (sae-lens underneath)."""

    model: str = "smollm2"
    """Model alias, local Hugging Face directory or hub id (default: the built-in chat model,
    which wears masks; minilm is the quick encoder)."""
    hook: list[str] = option([], repeat=True)
    """Hook to train on, e.g. blocks.3.hook_resid_post (default: the middle layer's resid_post);
    several hooks train one SAE each from the same forward passes."""
    layer: list[int] = option([], repeat=True)
    """Shortcut for --hook blocks.LAYER.hook_resid_post."""
    dataset: str = "auto"
    """'auto' (chitchat for models with a chat template, builtin otherwise), 'chitchat'
    (offline: human conversations in the model's chat template, some under training personas),
    'builtin' (offline: Python's own docs), a .txt/.jsonl/.parquet file, a folder of them, a
    save_to_disk folder, or a Hugging Face dataset name (from the local datasets cache when
    it is there, offline too; needs network otherwise). Rows holding chat conversations (lists
    of {role, content} messages: UltraChat, tulu, lmsys-chat) are rendered in the model's chat
    template, those without a system turn under the training personas."""
    text_column: str = "text"
    """Column (or JSON field) holding the text in .jsonl, .parquet and Hugging Face datasets,
    or the chat conversations (lists of {role, content} messages). Without a 'text' column, a
    'messages' or 'conversation' column of chat messages is read."""
    target: list[Target] = option([], repeat=True)
    """What a dictionary trains on: residual (the hook's activations) or difference (the shift
    h(persona prompt + text) − h(reference + text) on the tokens the two share, under the
    training personas; no decoder bias). Give both to train one of each from the same pairs of
    forward passes (default: residual)."""
    reference: str = EMPTY_SYSTEM
    """The reference the shifts are measured against: '(empty system message)' (the default)
    is an empty system turn, '' no system turn (a chat template may insert its own default
    prompt, itself a mask), any other text that system prompt."""
    personas: Path | None = None
    """Training personas YAML file the shifts are measured under (default: the built-in training
    personas, disjoint from the battery; format in docs/battery.md)."""
    architecture: Architecture = "topk"
    """SAE architecture, as sae-lens trains it (matryoshka = matryoshka batch-top-k)."""
    d_sae: list[int] = option([], min=1, repeat=True)
    """Number of SAE features (default: expansion × d_model); several widths train one SAE
    each (per hook) from the same activation stream."""
    expansion: int = option(8, min=1)
    """d_sae as a multiple of the model's d_model, when --d-sae is not given."""
    k: int = option(32, min=1)
    """Active features per token for topk, batchtopk and matryoshka."""
    sparsity_coefficient: float = option(5.0, min=0)
    """L1 coefficient (standard, gated) or L0 coefficient (jumprelu); unused by top-k types."""
    tokens: int = option(800_000, min=1)
    """Training tokens (the corpus is repeated if it is smaller)."""
    pair_tokens: int | None = option(None, min=1)
    """Distinct token pairs a paired stream (--target difference) runs (default: --tokens).
    With fewer, their activations are held in memory (2 × d_model floats a pair and hook)
    and trained on for --tokens / --pair-tokens epochs: the forward passes are paid once."""
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
    device_map: str | None = None
    """Spread the model over several devices: auto, or a JSON file of module → device; --device
    then places the SAE (auto: beside the block it reads). See docs/models.md."""
    max_memory: str | None = None
    """With --device-map: the most memory per device, e.g. 0=20GiB,1=20GiB,cpu=64GiB."""
    out: Path | None = None
    """Output directory (default: runs/sae-MODEL-HOOK-ARCHITECTURE). Must not exist. With
    several SAEs, one folder holding an SAE folder per hook and width (HOOK-dWIDTH)."""
    seed: int = option(0, min=0, max=SEED_MAX)
    """Random seed for SAE initialization and data order."""
    resume: bool = False
    """Continue the interrupted run for --out from its newest checkpoint."""
    overwrite: bool = False
    """Replace --out (and any interrupted run for it) instead of refusing."""
    wandb: bool = False
    """Log to Weights & Biases (needs network and a login)."""
    ddp: bool = False
    """Train across the processes torchrun starts (torch.distributed; NCCL on GPUs, gloo on
    CPUs): each rank streams its shard of the contexts, gradients are averaged; rank 0 writes."""
    shards: int | None = option(None, min=1)
    """Split the activation stream into this many shards, each batch taking an equal slice of
    each (default: 1, or the world size under --ddp). One process with --shards N trains on the
    same batches as N DDP ranks."""

    def check(self) -> None:
        for width in self.d_sae:
            if self.architecture in TOPK_LIKE and self.k >= width:
                raise BadInput(f"--k {self.k}: must be smaller than --d-sae {width}")
        if self.out is not None:
            refuse_output_over(self.out, "--out")
        if self.ddp and self.device_map is not None:
            raise BadInput(
                f"--device-map {self.device_map}: not with --ddp (each rank holds "
                "the whole model on its own GPU)"
            )
        shards = self.shards or 1
        if self.batch_tokens % shards:
            raise BadInput(
                f"--batch-tokens {self.batch_tokens}: must be a multiple of --shards {shards}"
            )


def default_out(cfg: TrainConfig, specs: list[SAESpec]) -> Path:
    name = Path(cfg.model).name if Path(cfg.model).exists() else cfg.model.replace("/", "-")
    if len(specs) > 1:
        return Path("runs") / f"sae-{name}-{len(specs)}saes-{cfg.architecture}"
    return Path("runs") / f"sae-{name}-{specs[0].hook}-{cfg.architecture}"


def sae_config(cfg: TrainConfig, d_in: int, d_sae: int, device: str) -> Any:
    """The sae-lens TrainingSAEConfig for this run."""
    import sae_lens

    common = dict(d_in=d_in, d_sae=d_sae, device=device, dtype="float32")
    if cfg.architecture == "topk":
        return sae_lens.TopKTrainingSAEConfig(k=cfg.k, **common)
    if cfg.architecture == "batchtopk":
        return sae_lens.BatchTopKTrainingSAEConfig(k=cfg.k, **common)
    if cfg.architecture == "matryoshka":
        widths = sorted(
            {
                max(cfg.k + 1, d_sae // 8),
                max(cfg.k + 1, d_sae // 4),
                max(cfg.k + 1, d_sae // 2),
                d_sae,
            }
        )
        return sae_lens.MatryoshkaBatchTopKTrainingSAEConfig(
            k=cfg.k, matryoshka_widths=widths, **common
        )
    if cfg.architecture == "jumprelu":
        return sae_lens.JumpReLUTrainingSAEConfig(l0_coefficient=cfg.sparsity_coefficient, **common)
    if cfg.architecture == "gated":
        return sae_lens.GatedTrainingSAEConfig(l1_coefficient=cfg.sparsity_coefficient, **common)
    return sae_lens.StandardTrainingSAEConfig(l1_coefficient=cfg.sparsity_coefficient, **common)


def _resume_fields(cfg: TrainConfig) -> dict[str, Any]:
    meta = config_metadata(cfg)
    # A run may resume on other devices, and as one process or under DDP alike: what must
    # match is the number of stream shards, compared on its own.
    for name in ("resume", "overwrite", "device", "ddp", "shards", "device_map", "max_memory"):
        meta.pop(name)
    meta.pop("placement", None)
    return meta


def check_wandb() -> None:
    """BadInput before any work when --wandb cannot log: W&B missing, or no credentials (an
    offline or disabled WANDB_MODE needs none)."""
    try:
        import wandb
    except ImportError:
        raise BadInput(
            "--wandb: Weights & Biases is not installed; pip install 'shoggoth[wandb]'"
        ) from None
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return
    if not wandb.login(prompt=False):
        raise BadInput(
            "--wandb: no W&B credentials; run `wandb login`, set WANDB_API_KEY, or "
            "set WANDB_MODE=offline"
        )


def work_dir(out: Path) -> Path:
    """Where a run for `out` keeps its checkpoints until it publishes."""
    return out.parent / f".{out.name}{WORK_SUFFIX}"


def prepare_dirs(cfg: TrainConfig, out: Path) -> tuple[Path, int | None]:
    """The work directory, and the checkpoint to resume from; refuses unsafe starts."""
    work = work_dir(out)
    if (out / "shoggoth.json").is_file() and work.is_dir() and not cfg.resume:
        # Killed after publishing, before its work folder was removed: the SAE is complete,
        # the checkpoints are leftovers.
        shutil.rmtree(work, ignore_errors=True)
    if out.exists() and not cfg.overwrite:
        raise BadInput(f"--out {out}: already exists (pass --overwrite to replace it)")
    stopped_early = work.is_dir() and not checkpoints(work / "checkpoints")
    if stopped_early:
        # Interrupted before its first checkpoint: nothing to resume, so nothing to keep.
        shutil.rmtree(work, ignore_errors=True)
    if cfg.resume:
        found = checkpoints(work / "checkpoints")
        if not found:
            if stopped_early and not out.exists():  # resuming it is starting it again
                return work, None
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


def mark_started(work: Path, cfg: TrainConfig) -> None:
    """The work folder of a run that starts now, with its settings: made before the long
    set-up (a paired stream's forward passes come before the first checkpoint), so that a run
    stopped there leaves a folder `--resume` knows (and starts again) rather than nothing."""
    work.mkdir(parents=True, exist_ok=True)
    if not (work / STATE_FILE).is_file():
        write_json_atomic(work / STATE_FILE, _resume_fields(cfg))


def held_out_metrics(model: Model, sae: SAE, hook: str, contexts: torch.Tensor) -> dict[str, float]:
    """Evaluation of `sae` at `hook` on held-out contexts: reconstruction and sparsity on every
    non-special token, plus CE loss recovered (on up to 32 contexts) for causal LMs."""

    keep = non_special(model.tokenizer, contexts)
    metrics = evaluate_sae(sae, context_activations(model, contexts, hook, keep))
    if model.is_causal:
        metrics.update(ce_loss_recovered(model, sae, hook, contexts[:32], keep[:32]))
    return cast("dict[str, float]", metrics)


def held_out_contexts(
    model: Model, dataset: str, text_column: str, context_size: int, eval_tokens: int
) -> torch.Tensor:
    """Contexts from the documents `train` never trains on (every 25th document)."""
    # Every 25th document is held out, and chat text runs at about 4 characters per token:
    # 200 characters per held-out token leaves room for the whole --eval-tokens.
    _, held = split_documents(
        load_texts(
            dataset,
            text_column,
            max_chars=200 * eval_tokens,
            tokenizer=model.tokenizer,
            model_name=model.name,
        )
    )
    return _eval_contexts(model, held, context_size, eval_tokens)


def _eval_contexts(
    model: Model, held_docs: list[str], context_size: int, eval_tokens: int
) -> torch.Tensor:

    return pack_contexts(
        model.tokenizer,
        held_docs,
        context_size,
        is_causal=model.is_causal,
        max_contexts=max(1, math.ceil(eval_tokens / context_size)),
    )


def resolve_dataset(dataset: str, model: Model) -> str:
    """--dataset with 'auto' decided: the chat corpus for chat models, the built-in docs for
    encoders and base models."""
    if dataset != "auto":
        return dataset
    return CHITCHAT if model.has_chat_template else BUILTIN


def training_contexts(
    cfg: TrainConfig, model: Model, dataset: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(training contexts, held-out contexts) from `dataset`; held-out documents are disjoint."""
    texts = load_texts(
        dataset,
        cfg.text_column,
        max_chars=20 * (cfg.tokens + 2 * cfg.eval_tokens),
        tokenizer=model.tokenizer,
        model_name=model.name,
    )
    train_docs, held_docs = split_documents(texts)
    train_ctx = pack_contexts(
        model.tokenizer,
        train_docs,
        cfg.context_size,
        is_causal=model.is_causal,
        max_contexts=math.ceil(cfg.tokens / cfg.context_size),
    )
    eval_ctx = _eval_contexts(model, held_docs, cfg.context_size, cfg.eval_tokens)
    if len(train_ctx) == 0 or len(eval_ctx) == 0:
        raise BadInput(
            f"dataset '{dataset}': too little text for one {cfg.context_size}-token "
            "context of training and one of evaluation"
        )
    return train_ctx, eval_ctx


def runner_config(
    cfg: TrainConfig,
    model: Model,
    hook: str,
    d_sae: int,
    checkpoints: Path,
    dataset: str,
    device: str,
) -> Any:
    """The sae-lens LanguageModelSAERunnerConfig: our contexts arrive pre-tokenized, special
    tokens are excluded, and the learning rate warms up over 5% and decays over the last 20%.
    `device`: where the SAE trains."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    steps = max(1, cfg.tokens // cfg.batch_tokens)
    # Features silent this long count as dead and get the AuxK loss that revives them.
    window = max(1, min(10_000_000, max(cfg.tokens // 20, cfg.batch_tokens)) // cfg.batch_tokens)
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
class SAESpec:
    """One SAE of a run: its hook, width and target."""

    hook: str
    d_sae: int
    target: str = RESIDUAL

    @property
    def name(self) -> str:
        """Its folder under a several-SAE --out."""
        suffix = "-difference" if self.target == DIFFERENCE else ""
        return f"{self.hook}-d{self.d_sae}{suffix}"

    @property
    def key(self) -> str:
        """Its data in a batch of the activation stream."""
        return difference_key(self.hook) if self.target == DIFFERENCE else self.hook


@dataclass
class TrainRun:
    """What one training run is made of, once the model is loaded and the data packed."""

    model: Model
    specs: list[SAESpec]
    out: Path
    work: Path
    resume_from: int | None
    train_ctx: torch.Tensor
    eval_ctx: torch.Tensor
    dataset: str
    """--dataset with 'auto' resolved."""
    world: World
    shards: int
    pairs: Pairs | None = None
    """The training pairs, when a dictionary trains on differences (the stream is paired)."""
    held_pairs: Pairs | None = None
    """Held-out pairs: every dictionary's share of the persona signal is measured on them."""
    primed: dict[int, ChunkActivations] = field(default_factory=dict)
    """Chunks of the paired stream already run before training starts (the data mean reads
    the first): the stream takes them instead of running them again."""

    @property
    def hooks(self) -> list[str]:
        return list(dict.fromkeys(s.hook for s in self.specs))

    @property
    def sae_device(self) -> str:
        """Where the run's SAEs train, all on one device: --device, else (a model spread by a
        device map) beside the first hook's block."""
        return str(self.model.sae_device(self.specs[0].hook))


def resolve_specs(cfg: TrainConfig, model: Model) -> list[SAESpec]:
    """Every (hook, width) pair the flags ask for; BadInput for a hook the model lacks."""
    hooks = [resolve_hook(model, hook=h) for h in cfg.hook]
    hooks += [resolve_hook(model, layer=layer) for layer in cfg.layer]
    hooks = list(dict.fromkeys(hooks)) or [resolve_hook(model)]
    widths = list(dict.fromkeys(cfg.d_sae)) or [cfg.expansion * model.d_model]
    if cfg.architecture in TOPK_LIKE and cfg.k >= min(widths):
        raise BadInput(f"--k {cfg.k}: must be smaller than d_sae {min(widths)}")
    targets: list[str] = list(dict.fromkeys(cfg.target)) or [RESIDUAL]
    return [SAESpec(h, w, t) for h in hooks for w in widths for t in targets]


def join_world(cfg: TrainConfig) -> tuple[World, str]:
    """This process's rank (joining the process group under --ddp) and its device."""
    if not cfg.ddp:
        return SINGLE, cfg.device
    world = launched_world()
    device = device_for(world, cfg.device)
    return start(world, device), device


def leader_prepares_dirs(cfg: TrainConfig, out: Path, world: World) -> tuple[Path, int | None]:
    """prepare_dirs on rank 0 alone (it may delete a stale run); the other ranks wait, then
    find the same work folder and checkpoint, or stop quietly when rank 0 refused."""
    if not world.distributed:
        return prepare_dirs(cfg, out)
    failed: BadInput | None = None
    prepared: tuple[Path, int | None] | None = None
    if world.leader:
        try:
            prepared = prepare_dirs(cfg, out)
        except BadInput as e:
            failed = e
    if any_rank(failed is not None, world):
        if failed is not None:
            raise failed
        raise SystemExit(2)  # rank 0 says why
    if prepared is not None:
        return prepared
    work = work_dir(out)
    found = checkpoints(work / "checkpoints") if cfg.resume else []
    return work, (found[-1] if found else None)


def prepare_run(cfg: TrainConfig, log: Log) -> TrainRun:
    """Load the model, resolve hooks and widths, refuse unsafe starts and pack the contexts."""
    world, device = join_world(cfg)
    if world.distributed and cfg.shards not in (None, world.size):
        raise BadInput(
            f"--shards {cfg.shards}: under --ddp each of the {world.size} ranks "
            "streams one shard; leave --shards out"
        )
    shards = cfg.shards or world.size
    if cfg.batch_tokens % shards:  # (--shards itself is checked with the config)
        raise BadInput(
            f"--batch-tokens {cfg.batch_tokens}: must be a multiple of the {shards} ranks"
        )
    if cfg.wandb and world.leader:
        check_wandb()
    # With --out given, refuse an unsafe start before the model loads; the default --out
    # depends on the hook, so it is checked once the model is known.
    prepared = leader_prepares_dirs(cfg, cfg.out, world) if cfg.out is not None else None
    personas = training_persona_set(cfg)  # a bad personas file is refused before the model loads
    model = load_model(cfg.model, device, placement=placement_of(cfg.device_map, cfg.max_memory))
    specs = resolve_specs(cfg, model)
    if cfg.ddp and len(specs) > 1:
        raise BadInput("--ddp: trains one SAE; give one --hook or --layer and one --d-sae")
    max_ctx = getattr(model.bridge.cfg, "n_ctx", None)
    if max_ctx and cfg.context_size > max_ctx:
        raise BadInput(
            f"--context-size {cfg.context_size}: model '{cfg.model}' takes at most {max_ctx} tokens"
        )
    out = cfg.out or default_out(cfg, specs)
    work, resume_from = prepared or leader_prepares_dirs(cfg, out, world)
    if resume_from is not None:
        saved = json.loads((work / STATE_FILE).read_text()).get("shards", 1)
        if saved != shards:
            raise BadInput(
                f"--resume: the interrupted run streamed {saved} shard(s) (DDP ranks "
                f"or --shards), this one {shards}; resume with the same number"
            )
    dataset = resolve_dataset(cfg.dataset, model)
    train_ctx, eval_ctx = training_contexts(cfg, model, dataset)
    paired = any(s.target == DIFFERENCE for s in specs)
    if world.leader and resume_from is None:
        mark_started(work, cfg)
    try:
        pairs, held = paired_data(cfg, model, dataset, personas, paired)
    except BadInput:
        if world.leader and resume_from is None:  # (bad input: nothing is left behind)
            shutil.rmtree(work, ignore_errors=True)
        raise
    corpus = (
        f"{len(pairs):,} persona/reference pairs ({pairs.tokens():,} shared tokens)"
        if pairs is not None
        else f"{len(train_ctx)} training contexts ({int(train_ctx.numel()):,} distinct tokens)"
    )
    log(
        f"corpus {dataset}: {corpus}, {len(eval_ctx)} held-out; model {cfg.model}, "
        + "; ".join(
            f"hook {s.hook}, d_sae {s.d_sae}" + (", difference" if s.target == DIFFERENCE else "")
            for s in specs
        )
        + (f"; {world.size} DDP ranks ({world.backend})" if world.distributed else "")
    )
    return TrainRun(
        model,
        specs,
        out,
        work,
        resume_from,
        train_ctx,
        eval_ctx,
        dataset,
        world,
        shards,
        pairs,
        held,
    )


def training_persona_set(cfg: TrainConfig) -> list[Persona]:
    """The personas the paired stream runs: --personas's non-control ones, or the built-in."""
    personas = persona_set(cfg.personas)
    if not personas:
        raise BadInput(f"--personas {cfg.personas}: holds no persona with a prompt")
    return personas


def paired_data(
    cfg: TrainConfig, model: Model, dataset: str, personas: list[Persona], paired: bool
) -> tuple[Pairs | None, Pairs | None]:
    """(training pairs when a dictionary trains on differences, held-out pairs). A residual-only
    run whose corpus gives no pairs (too short a context) goes without the persona signal."""
    try:
        return training_pairs(
            model,
            dataset,
            cfg.text_column,
            personas,
            cfg.reference,
            cfg.context_size,
            min(cfg.tokens, cfg.pair_tokens or cfg.tokens) if paired else None,
            min(cfg.eval_tokens, 8192),
        )
    except BadInput:
        if paired:
            raise
        return None, None


def new_sae(cfg: TrainConfig, run: TrainRun, spec: SAESpec) -> tuple[Any, Any]:
    """A fresh sae-lens TrainingSAE for `spec` and its runner config."""
    from sae_lens import LanguageModelSAETrainingRunner, TrainingSAE, TrainingSAEConfig

    runner_cfg = runner_config(
        cfg, run.model, spec.hook, spec.d_sae, run.work / "checkpoints", run.dataset, run.sae_device
    )
    # Each SAE starts from the seed itself: trained beside others, it is the SAE it would be
    # trained alone.
    torch.manual_seed(cfg.seed)
    sae = TrainingSAE.from_dict(
        TrainingSAEConfig.from_dict(runner_cfg.get_training_sae_cfg_dict()).to_dict()
    )
    sae.to(run.sae_device)
    # sae-lens's runner records the hook, model, dataset and context size in the SAE's metadata;
    # run that same method so SAELens tools read our SAEs like their own.
    LanguageModelSAETrainingRunner._set_sae_metadata(SimpleNamespace(cfg=runner_cfg, sae=sae))
    sae.cfg.metadata.prepend_bos = run.model.prepend_bos  # our contexts start with BOS for LMs
    # What it encodes travels in sae-lens's own cfg.json too: a difference dictionary applies to
    # raw shifts against this reference (no activation scaling).
    sae.cfg.metadata.shoggoth_target = spec.target
    if spec.target == DIFFERENCE:
        # No decoder bias (zero, frozen): the shift every persona shares must be a feature, not
        # hide in b_dec. (The encoder bias stays: frozen at zero, BatchTopK recovered a planted
        # model's directions less reliably; a zero shift is silenced at harvest instead.)
        sae.cfg.metadata.shoggoth_reference = cfg.reference
        with torch.no_grad():
            sae.b_dec.zero_()
        sae.b_dec.requires_grad_(False)
    return sae, runner_cfg


def data_mean(cfg: TrainConfig, run: TrainRun) -> dict[str, torch.Tensor]:
    """Per hook, the mean activation over the first ~8k training tokens (every rank alike)."""
    if run.pairs is not None:  # the persona documents a paired stream trains residual SAEs on
        # The stream's first chunk, run once: the stream takes it (an unsharded stream does;
        # a shard's first chunk holds other pairs).
        first = run.pairs.select(range(min(len(run.pairs), CHUNK_PAIRS)))
        with Progress(
            "paired stream: the first chunk's forward passes (the decoder bias's data mean)",
            first.tokens(),
            unit="token pairs",
            bar=False,
            stream=sys.stderr if run.world.leader else io.StringIO(),
        ) as progress:
            persona, ref, _ = paired_activations(
                run.model,
                first,
                run.hooks,
                advance=lambda n: progress.advance(n, rate=f"{progress.rate():,.0f} pairs/s"),
            )
        run.primed[0] = persona, ref
        return {h: a.mean(0) for h, a in persona.items()}
    sample = run.train_ctx[: max(1, 8192 // cfg.context_size)]
    keep = non_special(run.model.tokenizer, sample)
    return {
        h: a.mean(0) for h, a in contexts_activations(run.model, sample, run.hooks, keep).items()
    }


def training_stream(cfg: TrainConfig, run: TrainRun) -> Iterator[dict[str, torch.Tensor]]:
    """The activation batches this rank trains on, from the run's position on: paired shifts
    and activations when a dictionary trains on differences, else the contexts' activations."""
    model = run.model
    position = 0 if run.resume_from is None else int(run.resume_from)
    # The stream's position is the trainer's (global) sample count, which checkpoints save.
    ranks = [run.world.rank] if run.world.distributed else list(range(run.shards))
    if run.pairs is not None:
        return sharded_paired_batches(
            model,
            run.hooks,
            run.pairs,
            cfg.batch_tokens,
            cfg.seed,
            position,
            run.shards,
            ranks,
            keep=run.pairs.tokens() < cfg.tokens,
            primed=run.primed,
        )
    return sharded_batches(
        model,
        run.hooks,
        run.train_ctx,
        non_special(model.tokenizer, run.train_ctx),
        cfg.batch_tokens,
        cfg.seed,
        position,
        run.shards,
        ranks,
    )


def build_trainer(cfg: TrainConfig, run: TrainRun, log: Log) -> Any:
    """sae-lens's trainer (one SAE) or multi-SAE trainer (several, on one stream) over our
    contexts, with decoder biases at the data mean (a new run) or the newest checkpoint's
    state (a resumed one)."""
    work = run.work
    made = [new_sae(cfg, run, spec) for spec in run.specs]
    trainer_cfg = dataclasses.replace(
        made[0][1].to_sae_trainer_config(), checkpoint_path=str(work / "checkpoints")
    )
    batches = training_stream(cfg, run)
    if len(run.specs) == 1:
        trainer = single_trainer_class()(
            sae=made[0][0],
            data_provider=single_hook(batches, run.specs[0].key),
            evaluator=None,
            save_checkpoint_fn=None,
            cfg=trainer_cfg,
        )
        steppers = [trainer]
    else:
        trainer = multi_trainer_class()(
            cfg=trainer_cfg,
            saes={s.name: sae for s, (sae, _) in zip(run.specs, made, strict=True)},
            hook_names={s.name: s.key for s in run.specs},
            data_provider=batches,
        )
        steppers = [trainer, *trainer.trainers.values()]
    trainer.keep, trainer.world, trainer.root = (
        cfg.keep_checkpoints,
        run.world,
        work / "checkpoints",
    )
    if cfg.checkpoint_every:
        every = cfg.checkpoint_every * cfg.batch_tokens
        trainer.checkpoint_thresholds = list(range(every, cfg.tokens, every))
    if run.resume_from is None:
        # Start each decoder bias at the data mean: the residual stream has a large constant
        # offset, and features that must first learn it die before they fire.
        # A difference dictionary has none (zero, frozen): the shift every persona shares must
        # be a feature, and a bias at the data mean would hide it.
        means = data_mean(cfg, run)
        with torch.no_grad():
            for spec, (sae, _) in zip(run.specs, made, strict=True):
                if spec.target == RESIDUAL:
                    sae.b_dec.copy_(means[spec.hook])
    else:
        path = work / "checkpoints" / str(run.resume_from)
        if len(run.specs) == 1:
            trainer.load_trainer_state(path)
            made[0][0].load_weights_from_checkpoint(path)
        else:
            trainer.load_checkpoint(path)
        # Checkpoints are written after a step, before sae-lens counts it: count it now, or
        # the step's sparsity-window reset would run twice.
        for t in steppers:
            t.n_training_steps += 1
        trainer.checkpoint_thresholds = [
            t for t in trainer.checkpoint_thresholds if t > trainer.n_training_samples
        ]
        log(f"resuming from checkpoint at {trainer.n_training_samples:,} tokens")
    if run.world.distributed:
        trainer.ddp = distribute(made[0][0], run.world)
    return trainer


def trained_saes(trained: Any, run: TrainRun) -> dict[str, Any]:
    """{spec name: SAE} from what the trainer's fit() returned."""
    if isinstance(trained, dict):
        return trained
    return {run.specs[0].name: trained}


def fit(cfg: TrainConfig, trainer: Any, run: TrainRun) -> dict[str, Any]:
    """sae-lens's training loop; Ctrl-C saves a checkpoint and says how to resume."""
    work = run.work
    if cfg.wandb and run.world.leader:
        import wandb

        try:
            wandb.init(project="shoggoth", config=config_metadata(cfg))
        except Exception as e:  # W&B's own errors: no key, no network, a bad project
            shutil.rmtree(work, ignore_errors=True)
            raise BadInput(f"--wandb: {first_line(e)}") from None
    try:
        trained = trained_saes(trainer.fit(), run)
    except KeyboardInterrupt:
        if trainer.stopped_at is None:  # before the first step (a paired stream's forward
            # passes): nothing to save; the work folder stays, so --resume starts it again
            raise Interrupted(
                f"stopped before training began; run it again (with or without "
                f"--resume) to start it ({work} holds only its settings)"
            ) from None
        raise Interrupted(
            f"checkpoint saved in {work} at {trainer.stopped_at:,} tokens; continue with --resume"
        ) from None
    for sae in trained.values():
        if not all(bool(torch.isfinite(p).all()) for p in sae.parameters()):
            if run.world.leader:
                shutil.rmtree(work, ignore_errors=True)
            raise BadInput(
                f"--lr {cfg.lr}: training diverged (the SAE's weights are no longer "
                "finite); nothing was written to --out; try a smaller --lr"
            )
    return trained


def train(cfg: TrainConfig, log: Log = print) -> Path:
    """Train, evaluate and publish the SAE (or SAEs); returns the output directory."""
    started = time.time()
    if cfg.ddp and os.environ.get("RANK") != "0":
        log = _quiet
    run = prepare_run(cfg, log)
    try:
        return _train(cfg, run, started, log)
    finally:
        finish(run.world)


def _quiet(_: str) -> None:
    """The log of DDP ranks other than 0."""


def _train(cfg: TrainConfig, run: TrainRun, started: float, log: Log) -> Path:
    from sae_lens import SAE

    if run.world.leader:
        run.work.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run.work / STATE_FILE, {**_resume_fields(cfg), "shards": run.shards})
    trainer = build_trainer(cfg, run, log)
    fit_started = time.time()
    trained = fit(cfg, trainer, run)
    fit_seconds = time.time() - fit_started
    train_seconds = time.time() - started
    ddp = None
    if run.world.distributed:
        ddp = {
            "world_size": run.world.size,
            "backend": run.world.backend,
            "max_rank_difference": rank_spread(trainer.sae, run.world),
        }
        if not run.world.leader:
            return run.out

    device = run.sae_device
    final = run.work / "final"
    shutil.rmtree(final, ignore_errors=True)
    several = len(run.specs) > 1
    held = (
        paired_activations(run.model, run.held_pairs, run.hooks)
        if run.held_pairs is not None
        else None
    )
    for spec in run.specs:
        folder = final / spec.name if several else final
        trained[spec.name].save_inference_model(str(folder))
        loaded = SAE.load_from_disk(str(folder), device=device)
        log(f"evaluating {spec.name} on held-out tokens")
        if spec.target == DIFFERENCE and held is not None:
            metrics = evaluate_sae(loaded, held[0][spec.hook] - held[1][spec.hook])
        else:
            metrics = held_out_metrics(run.model, loaded, spec.hook, run.eval_ctx)
        if held is not None:
            metrics["persona_signal"] = persona_signal(
                loaded, spec.target, held[2], held[0][spec.hook], held[1][spec.hook]
            )
        meta = {
            "model": cfg.model,
            "model_source": run.model.source.location,
            "hook": spec.hook,
            "layer": int(spec.hook.split(".")[1]) if spec.hook.startswith("blocks.") else None,
            "d_in": run.model.d_model,
            "d_sae": spec.d_sae,
            "architecture": cfg.architecture,
            "dataset": run.dataset,
            "training_tokens": int(trainer.n_training_samples),
            "distinct_training_tokens": run.pairs.tokens()
            if run.pairs is not None
            else int(run.train_ctx.numel()),
            "target": spec.target,
            "reference": cfg.reference if spec.target == DIFFERENCE else None,
            "training_personas": run.pairs.names if run.pairs is not None else None,
            "context_size": cfg.context_size,
            "seed": cfg.seed,
            "stream_shards": run.shards,
            "trained_with": [s.name for s in run.specs if s != spec],
            "ddp": ddp,
            "resumed_from_tokens": run.resume_from,
            "train_seconds": round(train_seconds, 1),
            "fit_seconds": round(fit_seconds, 2),
            "device": device,
            "evaluation": metrics,
            "config": config_metadata(cfg),
            "versions": library_versions(),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json_atomic(folder / "shoggoth.json", meta)
    publish(final, run.out)
    shutil.rmtree(run.work, ignore_errors=True)
    return run.out
