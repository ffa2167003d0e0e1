"""`shoggoth train --ddp`: one SAE trained by several processes with torch.distributed.

Launched by `torchrun`, each rank loads the model, streams its own shard of the training
contexts (sae/train/stream.py) and runs sae-lens's training step on it. The SAE's forward pass goes
through DistributedDataParallel, so the gradients are averaged across ranks inside `backward()`,
before sae-lens clips them and steps Adam: every rank applies the same update to the same
weights. With equal shard batches the averaged gradient is the gradient of the global batch's
mean loss, which is what one process streaming every shard computes.

sae-lens also keeps per-feature firing counts (they choose the dead features that AuxK revives
and give the final L0); those are combined across ranks after each step so that every rank
decides on the global batch. Rank 0 writes checkpoints, evaluates and publishes; the others wait.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from shoggoth.core.errors import BadInput

if TYPE_CHECKING:
    from sae_lens import SAE


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None
    """gloo or nccl once the process group is up; None in a one-process run."""

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def leader(self) -> bool:
        return self.rank == 0


SINGLE = World()


def launched_world() -> World:
    """The rank, world size and local rank torchrun set, or BadInput outside torchrun."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        raise BadInput(
            "--ddp: run it under torchrun, e.g. torchrun --nproc-per-node 2 "
            "--no-python shoggoth train --ddp …"
        )
    return World(
        int(os.environ["RANK"]),
        int(os.environ["WORLD_SIZE"]),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def device_for(world: World, device: str) -> str:
    """--device for this rank: CUDA device LOCAL_RANK when CUDA is used."""
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return f"cuda:{world.local_rank}" if cuda else "cpu"


def start(world: World, device: str) -> World:
    """Join the process group (NCCL on CUDA, gloo on the CPU)."""
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size)
    return World(world.rank, world.size, world.local_rank, backend)


def finish(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


class _ForwardPass(torch.nn.Module):
    """The SAE's training forward pass as a module's forward, for DistributedDataParallel."""

    def __init__(self, sae: SAE) -> None:
        super().__init__()
        self.sae = sae

    def forward(self, step_input: Any) -> Any:
        return type(self.sae).training_forward_pass(self.sae, step_input=step_input)


def distribute(sae: SAE, world: World) -> DistributedDataParallel:
    """Route sae-lens's calls to `sae.training_forward_pass` through DDP. Built after the
    weights are set: DDP copies rank 0's parameters to every rank when it is built."""
    device_ids = [sae.W_enc.device.index] if sae.W_enc.device.type == "cuda" else None
    ddp = DistributedDataParallel(_ForwardPass(sae), device_ids=device_ids, broadcast_buffers=False)
    # An instance attribute shadows the method: sae-lens's trainer now calls DDP's forward.
    sae.training_forward_pass = lambda step_input: ddp(step_input=step_input)
    return ddp


def combine_firing(trainer: Any, freq_before: torch.Tensor, world: World, local: int) -> None:
    """After a step on each rank's shard: firing counts summed over ranks, 'steps since fired'
    reset where any rank saw the feature fire, samples counted globally."""
    if not world.distributed:
        return
    delta = trainer.act_freq_scores - freq_before
    dist.all_reduce(delta)
    trainer.act_freq_scores = freq_before + delta
    dist.all_reduce(trainer.n_forward_passes_since_fired, op=dist.ReduceOp.MIN)
    trainer.n_training_samples += local * (world.size - 1)


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank when `flag` is true on any (a Ctrl-C seen by some ranks only)."""
    if not world.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if world.backend == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def rank_spread(module: torch.nn.Module, world: World) -> float:
    """The largest absolute difference between any rank's parameters and rank 0's (0.0 when
    the ranks stayed in step)."""
    if not world.distributed:
        return 0.0
    worst = torch.zeros(1, device=next(module.parameters()).device)
    for p in module.parameters():
        ref = p.detach().clone()
        dist.broadcast(ref, src=0)
        worst = torch.maximum(worst, (p.detach() - ref).abs().max().reshape(1))
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst.item())
