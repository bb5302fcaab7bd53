"""Test-only Lightning callbacks, passed to the real ``bioseq pretrain|finetune fit`` commands with
``--trainer.callbacks+=tests.lightning_callbacks.<Name>`` (the subprocess gets the repository on
``PYTHONPATH``, so DDP worker processes import them too)."""

from __future__ import annotations

import json
import os
import time

import lightning.pytorch as pl
import torch


class RecordBatches(pl.Callback):
    """Appends one JSON line per training / validation batch to ``<prefix>.rank<R>.jsonl``:
    ``{"stage", "step", "batch_idx", "index": [dataset positions of the batch's items]}``."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def _write(self, trainer, stage, batch, batch_idx):
        rank = trainer.global_rank
        with open(f"{self.prefix}.rank{rank}.jsonl", "a") as fh:
            fh.write(json.dumps({"stage": stage, "step": trainer.global_step, "batch_idx": batch_idx,
                                 "index": batch["index"].tolist(), "pid": os.getpid()}) + "\n")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._write(trainer, "train", batch, batch_idx)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._write(trainer, "val", batch, batch_idx)


class Throttle(pl.Callback):
    """Sleeps ``seconds`` after every training batch (gives a test time to kill a run mid-epoch)."""

    def __init__(self, seconds: float = 0.2):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.seconds)


class PoisonAt(pl.Callback):
    """Sets every weight to NaN before training step ``step`` (a stand-in for a diverged run)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))
