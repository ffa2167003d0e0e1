"""sae-lens's trainers (one SAE, or several in lockstep on one activation stream) with what
`shoggoth train` adds: Ctrl-C stops at the end of a step with a checkpoint, checkpoints are
written aside and renamed into place (a kill -9 never leaves half of one), only the newest are
kept, and under DDP the ranks agree on firing counts and on when to stop."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

from shoggoth.sae.train.ddp import SINGLE, World, any_rank, combine_firing


def checkpoints(root: Path) -> list[int]:
    """Complete checkpoints under `root`, as training-sample counts (sorted)."""
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


class _Shoggoth:
    """Mixed into sae-lens's SAETrainer and MultiSAETrainer."""

    stop_requested = False
    """Set by Ctrl-C during fit(); acted on at the end of the current step."""
    keep = 2
    """Checkpoints kept (--keep-checkpoints)."""
    stopped_at: int | None = None
    """The checkpoint saved when it stopped (in training samples)."""
    world: World = SINGLE
    root: Path
    """Where the checkpoints go."""

    def fit(self) -> Any:
        # Ctrl-C only asks to stop: the step in flight finishes, and the checkpoint is saved
        # where sae-lens saves its own (after a step, before its counter moves), never halfway
        # through a step, a sparsity-window reset or a checkpoint write.
        if threading.current_thread() is not threading.main_thread():
            return super().fit()  # type: ignore[misc]
        previous = signal.signal(signal.SIGINT, lambda *_: setattr(self, "stop_requested", True))
        try:
            return super().fit()  # type: ignore[misc]
        finally:
            signal.signal(signal.SIGINT, previous)

    def _checkpoint_if_needed(self) -> None:
        super()._checkpoint_if_needed()  # type: ignore[misc]
        if any_rank(self.stop_requested, self.world):
            self.stopped_at = self.n_training_samples  # type: ignore[attr-defined]
            self.save_checkpoint(checkpoint_name=str(self.stopped_at))
            raise KeyboardInterrupt

    def save_checkpoint(self, checkpoint_name: str, *_: Any, **__: Any) -> None:
        if not self.world.leader:
            return
        # sae-lens writes a checkpoint in place; a kill -9 midway would leave a half checkpoint
        # that --resume might pick. Write it aside, then rename it into place.
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".writing-"))
        self._write_checkpoint(tmp, checkpoint_name)
        shutil.rmtree(self.root / checkpoint_name, ignore_errors=True)  # the same point again
        os.replace(tmp / checkpoint_name, self.root / checkpoint_name)
        shutil.rmtree(tmp, ignore_errors=True)
        for old in checkpoints(self.root)[: -self.keep]:  # keep the newest ones
            shutil.rmtree(self.root / str(old), ignore_errors=True)

    def _write_checkpoint(self, base: Path, name: str) -> None:
        raise NotImplementedError


def single_trainer_class() -> type:
    """sae-lens's SAETrainer for one SAE, with a richer progress bar."""
    from sae_lens.training.sae_trainer import SAETrainer

    class Trainer(_Shoggoth, SAETrainer):
        def step(self, batch: Any) -> Any:
            before = self.act_freq_scores.clone() if self.world.distributed else None
            out = super().step(batch)
            if before is not None:
                combine_firing(self, before, self.world, batch.shape[0])
            return out

        def _write_checkpoint(self, base: Path, name: str) -> None:
            SAETrainer.save_checkpoint(self, name, base_path=base)

        def _update_pbar(self, step_output: Any, pbar: Any, update_interval: int = 10) -> None:
            # Tokens/s is tqdm's rate, counted every step; loss, L0 (this batch) and the dead
            # fraction (the trainer's firing counters) are refreshed every `update_interval`.
            pbar.update(self.cfg.train_batch_size_samples)
            if self.n_training_steps % update_interval == 0:
                pbar.unit, pbar.unit_scale = "tok", True
                l0 = float((step_output.feature_acts != 0).sum(-1).float().mean())
                dead = float(self.dead_neurons.float().mean())
                pbar.set_postfix(
                    loss=f"{float(step_output.loss):.4f}",
                    l0=f"{l0:.1f}",
                    dead=f"{dead:.1%}",
                    refresh=False,
                )

    return Trainer


def multi_trainer_class() -> type:
    """sae-lens's MultiSAETrainer: several SAEs stepped in lockstep on one multi-hook stream."""
    from sae_lens.training.multi_sae_trainer import MultiSAETrainer

    class MultiTrainer(_Shoggoth, MultiSAETrainer):
        def _write_checkpoint(self, base: Path, name: str) -> None:
            cfg: Any = getattr(self, "cfg")  # noqa: B009 (sae-lens sets it; mypy cannot see)
            self.cfg = dataclasses.replace(cfg, checkpoint_path=str(base))
            try:
                MultiSAETrainer.save_checkpoint(self, name)
            finally:
                self.cfg = cfg

    return MultiTrainer
