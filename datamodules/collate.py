"""Batch collation, rank/worker sharding and epoch-aware loading shared by the pretraining DataModules.

Batch format (every pretraining DataModule yields this dict):

* ``input_ids``: LongTensor[B, L], right-padded with ``[PAD]`` (id 4); L = the longest item in the
  batch (optionally rounded up to a multiple).
* ``attention_mask``: BoolTensor[B, L], True on real tokens.
* ``labels``: LongTensor[B, L], a copy of ``input_ids`` with padding set to -100 (``IGNORE_INDEX``).
  These are *unshifted*: the causal LanguageModel shifts them by one itself. For masked-LM
  pretraining the LanguageModel draws the mask and replaces these labels; the data side never masks.
* ``index``: LongTensor[B], the item's position in its dataset for the current epoch (for genome
  training windows: the position in the epoch's window stream; otherwise the record/molecule
  ordinal within its split), so outputs can be put back in order across ranks and workers.

Sharding. :class:`ShardedIterable` splits an epoch's item positions ``0..N-1`` explicitly by
``(rank, world_size)`` and then by ``(worker_id, num_workers)`` (read from
``torch.utils.data.get_worker_info()`` inside the worker):

* rank ``r`` takes positions ``r, r + W, r + 2W, ...``; with ``even=True`` (training) every rank
  takes exactly ``N // W`` of them, so all DDP ranks run the same number of steps;
* the rank's items are cut into consecutive batches of ``batch_size``; worker ``w`` produces the
  batches ``k`` with ``k % num_workers == w``. A DataLoader asks its workers for batches in that
  same round-robin order, so the stream a rank sees is identical for any ``num_workers`` and
  ``len(dataloader)`` is exact.

No two (rank, worker) pairs ever produce the same position.

:class:`EpochDataLoader` tells its dataset the epoch before each pass (Lightning only calls
``set_epoch`` on samplers, which an IterableDataset does not have) and is *stateful*: Lightning stores
``state_dict()`` in checkpoints, and ``load_state_dict`` makes the next pass skip the batches already
trained on, so a mid-epoch resume continues with the same batches as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bioseq.errors import BioseqError

__all__ = [
    "IGNORE_INDEX",
    "PAD_ID",
    "pad_sequences",
    "lm_labels",
    "LMCollator",
    "shard_positions",
    "ShardedIterable",
    "EpochDataLoader",
    "hash_fraction",
    "check_positive",
    "worker_info",
]

IGNORE_INDEX = -100
PAD_ID = 4

# Lightning warns about every IterableDataset with __len__ that workers might duplicate data; ours shard
# by worker explicitly and report exact lengths (module docstring), so that warning does not apply.
warnings.filterwarnings(
    "ignore", message=r"Your `IterableDataset` has `__len__` defined", category=UserWarning
)


def check_positive(name: str, value: int, where: str = "") -> int:
    """Raise a one-line BioseqError unless ``value`` is an int > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise BioseqError(f"{where + ': ' if where else ''}{name} must be a positive integer, got {value!r}")
    return int(value)


def pad_sequences(
    seqs: Sequence[np.ndarray | torch.Tensor | Sequence[int]],
    pad_id: int = PAD_ID,
    pad_to_multiple_of: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D id sequences into ``(input_ids LongTensor[B, L], attention_mask BoolTensor[B, L])``.

    L = max length (at least 1), rounded up to ``pad_to_multiple_of`` when given.
    """
    lengths = [len(s) for s in seqs]
    width = max(lengths, default=0) or 1
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (s, n) in enumerate(zip(seqs, lengths)):
        if n:
            input_ids[i, :n] = torch.as_tensor(np.asarray(s), dtype=torch.long)
            mask[i, :n] = True
    return input_ids, mask


def lm_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """LongTensor[B, L]: ``input_ids`` with padding replaced by ``IGNORE_INDEX`` (-100), unshifted."""
    return input_ids.masked_fill(~attention_mask, IGNORE_INDEX)


class LMCollator:
    """Collate items ``{"input_ids": int array [L_i], "index": int}`` into the LM batch dict.

    Labels are the unshifted copy of ``input_ids`` with pad -> -100; the causal LanguageModel shifts
    them, and for the masked-LM objective the LanguageModel does the masking (not this collator).
    """

    def __init__(self, pad_id: int = PAD_ID, pad_to_multiple_of: int | None = None):
        self.pad_id = pad_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        input_ids, mask = pad_sequences(
            [it["input_ids"] for it in items], self.pad_id, self.pad_to_multiple_of
        )
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": lm_labels(input_ids, mask),
            "index": torch.tensor([int(it["index"]) for it in items], dtype=torch.long),
        }


def hash_fraction(key: str, seed: int = 0) -> float:
    """A stable pseudo-random number in [0, 1) from ``key`` and ``seed`` (blake2b; the same on every
    machine and Python run, unlike ``hash()``). Used to assign records to splits."""
    digest = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def shard_positions(
    n: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    worker_id: int = 0,
    num_workers: int = 1,
    batch_size: int | None = None,
    even: bool = True,
    skip_batches: int = 0,
) -> np.ndarray:
    """The positions (int64 array, in output order) of ``0..n-1`` that one (rank, worker) produces.

    See the module docstring. ``even``: every rank gets ``n // world_size`` positions (the remainder
    is dropped), else ranks differ by at most one. ``skip_batches``: drop the rank's first
    ``skip_batches`` batches (resume); the remaining batches are dealt to workers from worker 0 again.
    """
    if not 0 <= rank < world_size or not 0 <= worker_id < num_workers:
        raise ValueError(f"bad shard rank={rank}/{world_size} worker={worker_id}/{num_workers}")
    if even:
        per_rank = n // world_size
        positions = rank + world_size * np.arange(per_rank, dtype=np.int64)
    else:
        positions = np.arange(rank, n, world_size, dtype=np.int64)
    bs = batch_size or 1
    positions = positions[skip_batches * bs :]
    if num_workers == 1:
        return positions
    batch_of = np.arange(len(positions)) // bs
    return positions[batch_of % num_workers == worker_id]


def worker_info() -> tuple[int, int]:
    """``(worker_id, num_workers)`` inside a DataLoader worker, ``(0, 1)`` in the main process."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class ShardedIterable(IterableDataset):
    """Base class: an epoch of ``num_items()`` positions, sharded by rank and worker, items made by
    ``make_item(position)``. Subclasses decide what a position means in the current ``self.epoch``
    (a shuffled order, a random crop...) from ``(seed, epoch, position)`` only, so the stream is
    deterministic and independent of the number of workers.

    Args:
        rank, world_size: this process's DDP rank and the number of ranks.
        batch_size: the DataLoader's batch size (for dealing whole batches to workers).
        even: equal per-rank counts (training under DDP); evaluation sets False to keep every item.
    """

    def __init__(
        self, *, rank: int = 0, world_size: int = 1, batch_size: int | None = None, even: bool = True
    ):
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.batch_size = batch_size
        self.even = even
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch (seeds the shuffling/augmentation) and how many of this rank's first
        batches to skip (resume). Call before iterating (the workers copy this state at fork)."""
        self.epoch = int(epoch)
        self.skip_batches = int(skip_batches)

    def num_items(self) -> int:  # global items this epoch
        raise NotImplementedError

    def make_item(self, position: int) -> dict | None:
        """The item at ``position``: ``{"input_ids": int64 array, "index": int, ...}``."""
        raise NotImplementedError

    def positions(self, worker_id: int = 0, num_workers: int = 1) -> np.ndarray:
        return shard_positions(
            self.num_items(),
            rank=self.rank,
            world_size=self.world_size,
            worker_id=worker_id,
            num_workers=num_workers,
            batch_size=self.batch_size,
            even=self.even,
            skip_batches=self.skip_batches,
        )

    def __len__(self) -> int:
        """This rank's items in a whole epoch (ignoring ``skip_batches``)."""
        n = self.num_items()
        return n // self.world_size if self.even else len(range(self.rank, n, self.world_size))

    def __iter__(self) -> Iterator[dict]:
        worker_id, num_workers = worker_info()
        for pos in self.positions(worker_id, num_workers):
            yield self.make_item(int(pos))


class EpochDataLoader(DataLoader):
    """A DataLoader over a :class:`ShardedIterable` (or a dataset with ``set_epoch(epoch, skip_batches)``)
    that sets the epoch before every pass and saves/restores mid-epoch progress.

    Args:
        epoch_fn: returns the current epoch (the DataModule passes ``lambda: trainer.current_epoch``);
            without it, the epoch is whatever :meth:`set_epoch` set last (default 0).
        progress_fn: returns how many batches of the current epoch the trainer has consumed (used by
            :meth:`state_dict`; Lightning prefetches, so the count of batches handed out is one too
            many); without it, the count of batches this loader handed out.
        **kwargs: passed to DataLoader. ``persistent_workers`` is forced off: workers must be forked
            again each epoch to see the new epoch.
    """

    def __init__(
        self,
        dataset,
        *,
        epoch_fn: Callable[[], int] | None = None,
        progress_fn: Callable[[], int] | None = None,
        **kwargs,
    ):
        kwargs["persistent_workers"] = False
        super().__init__(dataset, **kwargs)
        self.epoch_fn = epoch_fn
        self.progress_fn = progress_fn
        self._epoch = 0
        self._pending: dict | None = None
        self._yielded = 0
        self._skipped = 0

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def __iter__(self):
        epoch = self.epoch_fn() if self.epoch_fn is not None else self._epoch
        skip = 0
        if self._pending is not None:
            if self._pending["epoch"] == epoch or self.epoch_fn is None:
                epoch, skip = self._pending["epoch"], self._pending["batches"]
            self._pending = None
        self._epoch = epoch
        self.dataset.set_epoch(epoch, skip_batches=skip)
        self._skipped = skip
        self._yielded = 0
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def __len__(self) -> int:
        return len(self.dataset) // (self.batch_size or 1) + bool(len(self.dataset) % (self.batch_size or 1))

    def state_dict(self) -> dict:
        """``{"epoch", "batches"}``: the epoch and how many of its batches were consumed."""
        consumed = self.progress_fn() if self.progress_fn is not None else self._skipped + self._yielded
        return {"epoch": self._epoch, "batches": int(consumed)}

    def load_state_dict(self, state: dict) -> None:
        """The next pass (if it is the same epoch) skips the consumed batches."""
        self._pending = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}


def trainer_loader(dataset, trainer, *, batch_size: int, train: bool, num_workers: int = 0,
                   pin_memory: bool = False, collate_fn: Callable | None = None) -> EpochDataLoader:
    """The :class:`EpochDataLoader` a DataModule hands Lightning for one split.

    The loader follows ``trainer.current_epoch``; for training it also records how many batches of
    the epoch the trainer has consumed, so a mid-epoch checkpoint resumes at the next batch.
    ``collate_fn`` defaults to :class:`LMCollator`.
    """
    epoch_fn = progress_fn = None
    if trainer is not None:
        epoch_fn = lambda: trainer.current_epoch  # noqa: E731
        if train:
            progress_fn = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed  # noqa: E731
    return EpochDataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                           collate_fn=collate_fn if collate_fn is not None else LMCollator(),
                           pin_memory=pin_memory, epoch_fn=epoch_fn, progress_fn=progress_fn)
