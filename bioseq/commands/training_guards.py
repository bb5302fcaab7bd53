"""Callbacks the ``bioseq pretrain`` / ``bioseq finetune`` wrapper adds to every run.

* :class:`NonFiniteLossGuard` — a NaN or infinite training loss stops the run *before* its backward pass
  and optimizer step (so no bad update is ever applied or checkpointed) with one line naming the step and
  the last checkpoint written (exit 2). Under DDP the ranks agree first (one all-reduce of a flag), so
  every rank stops at the same step instead of leaving the others waiting in a collective.
* :class:`SaveOnSigterm` — ``SIGTERM`` (``kill``, a cluster's preemption notice) ends the run at the next
  batch boundary (Lightning's own handling); this callback then writes ``last.ckpt`` there, so
  ``--ckpt_path last`` continues exactly where it stopped. A ``SIGKILL`` cannot be caught: resume then
  starts from the last periodic checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import torch

from bioseq.errors import BioseqError


class NonFiniteLoss(BioseqError):
    """The training loss became NaN or infinite."""


def _last_checkpoint(trainer: pl.Trainer) -> str:
    for cb in trainer.checkpoint_callbacks:
        path = getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "")
        if path and Path(path).is_file():
            return f"the last checkpoint is {path}"
    return "no checkpoint was written before it"


class NonFiniteLossGuard(pl.Callback):
    """Stop training with :class:`NonFiniteLoss` when the loss to back-propagate is not finite."""

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           loss: torch.Tensor) -> None:
        local_bad = not bool(torch.isfinite(loss.detach()).all())
        bad = local_bad
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(local_bad, all=False)
        if not bad:
            return
        value = loss.detach().float().cpu().reshape(-1)[0].item() if local_bad else 0.0
        shown = "non-finite on another rank" if not local_bad else "nan" if math.isnan(value) else f"{value}"
        progress = trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1
        raise NonFiniteLoss(
            f"training loss is {shown} at step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {progress}): stopped before the update; {_last_checkpoint(trainer)} "
            "(lower the learning rate, or check the data, then resume with --ckpt_path)")


class SaveOnSigterm(pl.Callback):
    """On Lightning's SIGTERM stop during ``fit``, save ``last.ckpt`` of the run's ModelCheckpoint."""

    def __init__(self, kind: str = "pretrain") -> None:
        self.kind = kind
        self.saved: str | None = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(exception, SIGTERMException) or trainer.fast_dev_run or not trainer.training:
            return
        ckpt = trainer.checkpoint_callback
        if ckpt is None or ckpt.dirpath is None:
            return
        path = Path(ckpt.dirpath) / f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}"
        trainer.save_checkpoint(str(path))
        ckpt.last_model_path = str(path)
        self.saved = str(path)
        from bioseq.commands.lightning_cli import say

        say(self.kind, f"stopped by SIGTERM after step {trainer.global_step}; saved {path} "
                       "(resume with --ckpt_path last)")
