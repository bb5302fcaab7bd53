"""Sequence-length warmup: train on short windows first, then longer ones, at constant tokens per step.

HyenaDNA trains its long-context models with a warmup that doubles the sequence length in stages
(1k -> 2k -> ... -> 32k) while dividing the batch size by the same factor, so every optimizer step sees
the same number of tokens. Here a schedule is a list of stages ``(duration, seq_len, batch_size)``;
``duration`` is in epochs or in optimizer steps (``unit``) and the last stage may have ``None`` (runs to
the end of training).

Use it as a callback::

    warmup = SequenceLengthWarmup([(1, 1024, 32), (1, 2048, 16), (None, 4096, 8)], unit="epochs")
    trainer = Trainer(callbacks=[warmup], ...)
    trainer.fit(model, datamodule=GenomeDataModule(fasta, max_length=4096, ...))

or give the stages to the DataModule (``GenomeDataModule(length_warmup=...)``) — the callback does
exactly that in its ``setup`` hook. How it works: the callback sets
``trainer.reload_dataloaders_every_n_epochs = 1``; at each (re)load, the DataModule's
``train_dataloader()`` asks the schedule for the stage at ``trainer.current_epoch`` /
``trainer.global_step`` and builds windows of ``seq_len`` tokens in batches of ``batch_size``. With
``unit="steps"`` an epoch is cut short at the next stage boundary, so a stage change always happens
at an epoch start (resume from a checkpoint saved at a stage boundary or epoch end in that mode).
Validation windows keep the DataModule's ``max_length`` (the final length).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lightning.pytorch.callbacks import Callback

from bioseq.errors import BioseqError

__all__ = ["LengthStage", "LengthSchedule", "SequenceLengthWarmup", "doubling_stages"]


@dataclass(frozen=True)
class LengthStage:
    """One stage: ``duration`` epochs/steps (None = until the end), windows of ``seq_len`` tokens,
    ``batch_size`` windows per batch (per device)."""

    duration: int | None
    seq_len: int
    batch_size: int

    @property
    def tokens_per_batch(self) -> int:
        return self.seq_len * self.batch_size


def _stage(obj, i: int) -> LengthStage:
    if isinstance(obj, LengthStage):
        return obj
    if isinstance(obj, dict):
        duration = obj.get("duration", obj.get("epochs", obj.get("steps")))
        try:
            return LengthStage(duration, int(obj["seq_len"]), int(obj["batch_size"]))
        except KeyError as exc:
            raise BioseqError(
                f"length warmup stage {i}: missing key {exc} (need seq_len, batch_size and "
                "duration/epochs/steps)"
            ) from None
    try:
        duration, seq_len, batch_size = obj
    except (TypeError, ValueError):
        raise BioseqError(
            f"length warmup stage {i}: expected (duration, seq_len, batch_size), got {obj!r}"
        ) from None
    return LengthStage(None if duration is None else int(duration), int(seq_len), int(batch_size))


class LengthSchedule:
    """A validated list of :class:`LengthStage`.

    Args:
        stages: tuples ``(duration, seq_len, batch_size)``, dicts with those keys (``epochs`` or
            ``steps`` accepted for ``duration``) or LengthStage objects.
        unit: ``"epochs"`` or ``"steps"`` (optimizer steps).
        constant_tokens: require ``seq_len * batch_size`` to be the same in every stage.
    """

    def __init__(self, stages: Iterable, unit: str = "epochs", constant_tokens: bool = True):
        if unit not in ("epochs", "steps"):
            raise BioseqError(f"length warmup unit must be 'epochs' or 'steps', got {unit!r}")
        self.unit = unit
        self.stages: list[LengthStage] = [_stage(s, i) for i, s in enumerate(stages)]
        if not self.stages:
            raise BioseqError("length warmup: no stages given")
        for i, s in enumerate(self.stages):
            if s.seq_len <= 0 or s.batch_size <= 0:
                raise BioseqError(
                    f"length warmup stage {i}: seq_len and batch_size must be positive, got {s}"
                )
            if s.duration is None and i != len(self.stages) - 1:
                raise BioseqError(f"length warmup stage {i}: only the last stage may have duration None")
            if s.duration is not None and s.duration <= 0:
                raise BioseqError(f"length warmup stage {i}: duration must be positive, got {s.duration}")
        tokens = {s.tokens_per_batch for s in self.stages}
        if constant_tokens and len(tokens) > 1:
            raise BioseqError(
                "length warmup: seq_len * batch_size differs between stages "
                f"({[s.tokens_per_batch for s in self.stages]}); pass constant_tokens=False to allow it"
            )

    @property
    def max_seq_len(self) -> int:
        return max(s.seq_len for s in self.stages)

    def stage_at(self, progress: int) -> tuple[int, LengthStage, int | None]:
        """``(stage index, stage, units left in it or None)`` at ``progress`` epochs/steps done."""
        start = 0
        for i, s in enumerate(self.stages):
            if s.duration is None or progress < start + s.duration:
                return i, s, (None if s.duration is None else start + s.duration - progress)
            start += s.duration
        return len(self.stages) - 1, self.stages[-1], None  # past the schedule: keep the last stage


def doubling_stages(
    start_len: int, final_len: int, final_batch_size: int, duration: int
) -> list[LengthStage]:
    """HyenaDNA-style stages: ``start_len, 2*start_len, ..., final_len`` with the batch size scaled so
    tokens per batch stay ``final_len * final_batch_size``; each stage lasts ``duration`` units and the
    final one runs to the end."""
    if start_len <= 0 or final_len < start_len or final_len % start_len:
        raise BioseqError(
            f"doubling_stages: need 0 < start_len <= final_len with final_len a multiple of "
            f"start_len, got {start_len}, {final_len}"
        )
    tokens = final_len * final_batch_size
    stages, length = [], start_len
    while length < final_len:
        if tokens % length:
            raise BioseqError(f"doubling_stages: {tokens} tokens per batch is not divisible by {length}")
        stages.append(LengthStage(duration, length, tokens // length))
        length *= 2
    if length != final_len:
        raise BioseqError(
            f"doubling_stages: final_len/start_len must be a power of two, got {final_len}/{start_len}"
        )
    stages.append(LengthStage(None, final_len, final_batch_size))
    return stages


class SequenceLengthWarmup(Callback):
    """Lightning callback that installs a :class:`LengthSchedule` on the DataModule (see module doc).

    The DataModule must implement ``train_length_schedule`` (an attribute the callback sets) —
    :class:`datamodules.genome.GenomeDataModule` does. Sets ``trainer.reload_dataloaders_every_n_epochs
    = 1`` so each epoch's train loader is rebuilt with the current stage.
    """

    def __init__(self, stages: Sequence, unit: str = "epochs", constant_tokens: bool = True):
        self.schedule = LengthSchedule(stages, unit=unit, constant_tokens=constant_tokens)

    def setup(self, trainer, pl_module, stage: str) -> None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "train_length_schedule"):
            raise BioseqError(
                f"SequenceLengthWarmup needs a DataModule with length-warmup support "
                f"(e.g. GenomeDataModule), got {type(dm).__name__}"
            )
        dm.train_length_schedule = self.schedule
        trainer.reload_dataloaders_every_n_epochs = 1

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        stage = getattr(trainer.datamodule, "current_train_stage", None)
        if stage is not None:
            pl_module.log("train/seq_len", float(stage.seq_len), on_step=False, on_epoch=True)
