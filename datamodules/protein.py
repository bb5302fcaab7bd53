"""Protein language-model pretraining data: :class:`ProteinDataModule`.

Two modes:

* **Single sequences** (``fasta=``): records of one or more FASTA files (plain, gzip or BGZF) are
  streamed with :func:`bioseq.fasta.read_fasta` every epoch (nothing but a split count is held in
  memory). Each record becomes ``[CLS] residues [SEP]`` (per ``add_cls``/``add_eos``); a record longer
  than fits is cropped: a random window when training (new each epoch), the first window when
  evaluating. Training order is shuffled with a buffer of ``shuffle_buffer`` records.
  Sharding: the split's records are dealt to ranks and workers by their ordinal (see
  :mod:`datamodules.collate`); every worker parses the whole file and keeps its share, so parsing
  cost grows with ``num_workers`` (cheap next to training; pre-split huge corpora into several files).
* **Homolog context** (``alignment=``, the Prot-xLSTM / ProtMamba in-context setting): every
  alignment file is one protein family. An example is ``[CLS] h1 [SEP] h2 [SEP] ... target [SEP]``:
  homologs of the target drawn at random from the family's *training* members (never the target),
  added while they fit in ``max_length``, and the target (query) last. Every member of a split is a
  target once per epoch. Context draws are new each training epoch and fixed for evaluation.

Alignment formats (detected per record, no option needed): aligned FASTA (upper case + ``-`` gaps),
A2M (upper case and ``-`` = match columns, i.e. aligned to the query; lower case = insertions relative
to the query; ``.`` = gap in an insert column) and A3M (A2M without the ``.`` padding). Gaps ``-``
and ``.`` are always removed. ``insertions="keep"`` (default) upper-cases the insert-state letters, so
each homolog is its full unaligned sequence (what the in-context models are trained on);
``insertions="drop"`` removes them, leaving only the residues aligned to query columns.

Splits: a record goes to test if ``hash(split_seed, id) < test_fraction``, else to val if it is
``< test_fraction + val_fraction``, else to train (:func:`datamodules.collate.hash_fraction`): stable
across runs, machines and file order. Batches are the :mod:`datamodules.collate` LM batch
(``labels`` = ``input_ids`` with pad -> -100, unshifted; masked-LM masking is done by the LanguageModel).
``index`` is the record's ordinal within its split (homolog mode: the target's).
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import numpy as np

from bioseq.datamodules.collate import (
    EpochDataLoader,
    ShardedIterable,
    check_positive,
    hash_fraction,
    trainer_loader,
    worker_info,
)
from bioseq.errors import BioseqError
from bioseq.fasta import read_fasta
from bioseq.tokenizers import ProteinTokenizer, get_tokenizer

__all__ = [
    "ProteinDataModule",
    "ProteinRecords",
    "HomologContexts",
    "read_alignment",
    "clean_aligned",
    "split_of",
]

_GAPS = str.maketrans("", "", "-.")
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_GAPS_AND_LOWER = str.maketrans("", "", "-." + _LOWER)


def split_of(record_id: str, val_fraction: float, test_fraction: float, split_seed: int = 0) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for a record id (seeded stable hash)."""
    u = hash_fraction(record_id, split_seed)
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def clean_aligned(seq: str, insertions: str = "keep") -> str:
    """An aligned row (aligned FASTA / A2M / A3M) as a plain sequence: gaps ``-`` ``.`` removed,
    lower-case insert states upper-cased (``"keep"``) or removed (``"drop"``)."""
    if insertions == "keep":
        return seq.translate(_GAPS).upper()
    if insertions == "drop":
        return seq.translate(_GAPS_AND_LOWER)
    raise BioseqError(f"insertions must be 'keep' or 'drop', got {insertions!r}")


def read_alignment(path: str | os.PathLike, insertions: str = "keep") -> list[tuple[str, str, int]]:
    """``(id, cleaned sequence, header line)`` of every row of an alignment (first row = the query).
    Rows that are empty after cleaning are left out."""
    rows = []
    for rec in read_fasta(path, allow_duplicates=True):
        seq = clean_aligned(rec.seq, insertions)
        if seq:
            rows.append((rec.id, seq, rec.line))
    if not rows:
        raise BioseqError(f"{path}: no sequences left in the alignment after removing gaps")
    return rows


def _as_paths(x) -> list[Path] | None:
    return None if x is None else [Path(p) for p in ([x] if isinstance(x, (str, Path)) else x)]


def _crop(n: int, budget: int, rng: np.random.Generator | None) -> int:
    """Start of a ``budget``-long window in a sequence of length ``n`` (0 when it fits or rng is None)."""
    if n <= budget or rng is None:
        return 0
    return int(rng.integers(0, n - budget + 1))


class ProteinRecords(ShardedIterable):
    """Streams one split of FASTA records as LM items (single-sequence mode; see module doc).

    ``n_items`` (the split's record count, from a counting pass) is needed up front so every rank can
    be given the same number of records.
    """

    def __init__(
        self,
        paths: list[Path],
        split: str,
        n_items: int,
        *,
        max_length: int,
        train: bool,
        tokenizer: ProteinTokenizer,
        add_cls: bool = True,
        add_eos: bool = True,
        val_fraction: float = 0.0,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 10_000,
        allow_duplicates: bool = False,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int | None = None,
    ):
        super().__init__(rank=rank, world_size=world_size, batch_size=batch_size, even=train)
        self.paths, self.split, self.n_items = paths, split, n_items
        self.max_length, self.train, self.tokenizer = max_length, train, tokenizer
        self.add_cls, self.add_eos = add_cls, add_eos
        self.budget = max_length - int(add_cls) - int(add_eos)
        if self.budget <= 0:
            raise BioseqError(f"max_length {max_length} leaves no room for residues after [CLS]/[SEP]")
        self.fractions = (val_fraction, test_fraction)
        self.split_seed, self.seed = split_seed, seed
        self.shuffle_buffer = shuffle_buffer
        self.allow_duplicates = allow_duplicates

    def num_items(self) -> int:
        return self.n_items

    def records(self):
        """``(split ordinal, record)`` of this split, in file order."""
        i = 0
        for path in self.paths:
            for rec in read_fasta(path, allow_duplicates=self.allow_duplicates):
                if split_of(rec.id, *self.fractions, self.split_seed) == self.split:
                    yield i, path, rec
                    i += 1

    def encode(self, i: int, path: Path, rec) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, i, 0x9A0]) if self.train else None
        start = _crop(len(rec.seq), self.budget, rng)
        ids = self.tokenizer.encode(
            rec.seq[start : start + self.budget],
            add_cls=self.add_cls,
            add_eos=self.add_eos,
            path=path,
            record=rec.id,
            offset=start,
        )
        return {"input_ids": ids, "index": i}

    def __iter__(self):
        worker_id, num_workers = worker_info()
        mine = np.zeros(self.n_items, dtype=bool)
        mine[self.positions(worker_id, num_workers)] = True
        stream = ((i, path, rec) for i, path, rec in self.records() if i < self.n_items and mine[i])
        if not self.train or self.shuffle_buffer <= 1:
            for item in stream:
                yield self.encode(*item)
            return
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker_id, 0x5B])
        buffer = []
        for item in stream:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            j = int(rng.integers(len(buffer)))
            out, buffer[j] = buffer[j], item
            yield self.encode(*out)
        for j in rng.permutation(len(buffer)):
            yield self.encode(*buffer[j])


class HomologContexts(ShardedIterable):
    """Homolog-context examples (see module doc). ``families``: per family a list of cleaned sequences;
    ``targets``: (family, member) pairs of this split; ``pools``: per family the member indices that may
    serve as context (the training members)."""

    def __init__(
        self,
        families: list[list[str]],
        ids: list[list[str]],
        targets: np.ndarray,
        pools: list[np.ndarray],
        *,
        max_length: int,
        train: bool,
        tokenizer: ProteinTokenizer,
        add_cls: bool = True,
        add_eos: bool = True,
        max_homologs: int | None = None,
        seed: int = 0,
        paths: list | None = None,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int | None = None,
    ):
        super().__init__(rank=rank, world_size=world_size, batch_size=batch_size, even=train)
        self.families, self.ids, self.targets, self.pools = families, ids, targets, pools
        self.max_length, self.train, self.tokenizer = max_length, train, tokenizer
        self.add_cls, self.add_eos = add_cls, add_eos
        self.max_homologs = max_homologs
        self.seed = seed
        self.paths = paths or [None] * len(families)
        if max_length - int(add_cls) - int(add_eos) <= 0:
            raise BioseqError(f"max_length {max_length} leaves no room for residues after [CLS]/[SEP]")

    def num_items(self) -> int:
        return len(self.targets)

    def _order(self) -> np.ndarray:
        if not self.train:
            return np.arange(len(self.targets))
        if getattr(self, "_order_epoch", None) != self.epoch:
            self._order_cache = np.random.default_rng([self.seed, self.epoch, 0x0D]).permutation(
                len(self.targets)
            )
            self._order_epoch = self.epoch
        return self._order_cache

    def example(self, position: int) -> tuple[list[int], int]:
        """``(family, target member, item)`` of the example at ``position`` of the current epoch."""
        item = int(self._order()[position])
        fam, member = (int(x) for x in self.targets[item])
        return fam, member, item

    def make_item(self, position: int) -> dict:
        fam, member, item = self.example(position)
        rng = np.random.default_rng([self.seed, self.epoch if self.train else 0, item, 0x40])
        seqs, names, path = self.families[fam], self.ids[fam], self.paths[fam]
        budget = self.max_length - int(self.add_cls) - int(self.add_eos)
        target = seqs[member]
        start = _crop(len(target), budget, rng if self.train else None)
        target_ids = self.tokenizer.encode(
            target[start : start + budget], path=path, record=names[member], offset=start
        )
        room = budget - len(target_ids)
        parts = []
        pool = self.pools[fam]
        for h in rng.permutation(pool):
            if h == member:
                continue
            if self.max_homologs is not None and len(parts) >= self.max_homologs:
                break
            if len(seqs[h]) + 1 > room:
                continue  # does not fit; a shorter homolog may
            parts.append(self.tokenizer.encode(seqs[h], path=path, record=names[h]))
            room -= len(seqs[h]) + 1
            if room < 2:
                break
        sep = np.array([self.tokenizer.sep_id], dtype=np.int64)
        pieces = [np.array([self.tokenizer.cls_id], dtype=np.int64)] if self.add_cls else []
        for p in parts:
            pieces += [p, sep]
        pieces.append(target_ids)
        if self.add_eos:
            pieces.append(sep)
        return {"input_ids": np.concatenate(pieces), "index": item, "n_context": len(parts)}


class ProteinDataModule(pl.LightningDataModule):
    """Protein sequences (``fasta``) or homolog-context examples (``alignment``) for LM pretraining.

    Args:
        fasta: one FASTA path or a list (single-sequence mode).
        alignment: one alignment path or a list, one protein family each (homolog-context mode).
        max_length: tokens per example including ``[CLS]``/``[SEP]``; must be > 0.
        batch_size, eval_batch_size: examples per batch (per device) for training / evaluation.
        val_fraction, test_fraction: split fractions by seeded hash of the record id (``split_seed``).
        add_cls, add_eos: start with ``[CLS]`` / end with ``[SEP]``.
        insertions: alignment insert states (lower case): ``"keep"`` (upper-cased) or ``"drop"``.
        max_homologs: at most this many context homologs per example.
        shuffle_buffer: records in the training shuffle buffer (single-sequence mode).
        unknown: ``"error"`` (default) or ``"unk"`` for residues outside the protein alphabet.
        allow_duplicates: accept repeated record ids in ``fasta`` (they share a split).
        seed: seeds crops, shuffling and context draws (with the epoch).
        vocabulary: ``"protein"`` (the shared layout, default) or ``"prot-xlstm"`` (Prot-xLSTM's own
            38-token vocabulary, for its presets and released weights). Named apart from the LM's
            ``tokenizer`` (Lightning merges both hyperparameter sets).
    """

    def __init__(
        self,
        fasta: str | list[str] | None = None,
        alignment: str | list[str] | None = None,
        max_length: int = 1024,
        batch_size: int = 8,
        val_fraction: float = 0.05,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        add_cls: bool = True,
        add_eos: bool = True,
        insertions: str = "keep",
        max_homologs: int | None = None,
        shuffle_buffer: int = 10_000,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        unknown: str = "error",
        allow_duplicates: bool = False,
        seed: int = 0,
        pin_memory: bool = False,
        vocabulary: str = "protein",
    ):
        super().__init__()
        self.save_hyperparameters()
        if vocabulary not in ("protein", "prot-xlstm"):
            raise BioseqError(f"ProteinDataModule: vocabulary must be 'protein' or 'prot-xlstm', "
                              f"got {vocabulary!r}")
        if (fasta is None) == (alignment is None):
            raise BioseqError(
                "ProteinDataModule: give exactly one of fasta (sequences) or alignment (homologs)"
            )
        self.max_length = check_positive("max_length", max_length, "ProteinDataModule")
        if max_length - int(add_cls) - int(add_eos) <= 0:
            raise BioseqError(
                f"ProteinDataModule: max_length {max_length} leaves no room for residues after [CLS]/[SEP]"
            )
        self.batch_size = check_positive("batch_size", batch_size, "ProteinDataModule")
        self.eval_batch_size = check_positive(
            "eval_batch_size", eval_batch_size or batch_size, "ProteinDataModule"
        )
        for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= f < 1.0:
                raise BioseqError(f"ProteinDataModule: {name} must be in [0, 1), got {f}")
        if val_fraction + test_fraction >= 1.0:
            raise BioseqError("ProteinDataModule: val_fraction + test_fraction must be < 1")
        clean_aligned("", insertions)  # validates the flag
        self.paths = _as_paths(fasta)
        self.alignments = _as_paths(alignment)
        self.fractions = {"val": val_fraction, "test": test_fraction}
        self.tokenizer = get_tokenizer(vocabulary, unknown=unknown)
        self.counts: dict[str, int] | None = None
        self.families: list[list[str]] | None = None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def prepare_data(self) -> None:
        for p in self.paths or self.alignments:
            if not Path(p).is_file():
                raise BioseqError(f"{p}: file not found")

    def setup(self, stage: str | None = None) -> None:
        if self.counts is not None:
            return
        h = self.hparams
        counts = {"train": 0, "val": 0, "test": 0}
        if self.paths is not None:  # one streaming pass to count the splits (and validate the files)
            for path in self.paths:
                for rec in read_fasta(path, allow_duplicates=h.allow_duplicates):
                    counts[split_of(rec.id, h.val_fraction, h.test_fraction, h.split_seed)] += 1
        else:
            self.families, self.ids, targets = [], [], {s: [] for s in counts}
            for f, path in enumerate(self.alignments):
                rows = read_alignment(path, h.insertions)
                self.families.append([seq for _, seq, _ in rows])
                self.ids.append([rid for rid, _, _ in rows])
                for m, (rid, _, _) in enumerate(rows):
                    targets[split_of(rid, h.val_fraction, h.test_fraction, h.split_seed)].append((f, m))
            self.targets = {s: np.array(t, dtype=np.int64).reshape(-1, 2) for s, t in targets.items()}
            train = self.targets["train"]
            self.pools = [train[train[:, 0] == f, 1] for f in range(len(self.families))]
            counts = {s: len(t) for s, t in self.targets.items()}
        self.counts = counts

    def _rank(self) -> tuple[int, int]:
        return (
            (0, 1) if self.trainer is None else (int(self.trainer.global_rank), int(self.trainer.world_size))
        )

    def dataset(self, split: str) -> ShardedIterable:
        self.setup()
        h = self.hparams
        rank, world = self._rank()
        train = split == "train"
        if self.counts[split] < (world if train else 1):
            where = ", ".join(str(p) for p in (self.paths or self.alignments))
            raise BioseqError(
                f"{where}: empty {split} split ({self.counts[split]} records; "
                f"val_fraction={h.val_fraction}, test_fraction={h.test_fraction})"
            )
        bs = self.batch_size if train else self.eval_batch_size
        common = dict(
            max_length=self.max_length,
            train=train,
            tokenizer=self.tokenizer,
            add_cls=h.add_cls,
            add_eos=h.add_eos,
            seed=h.seed,
            rank=rank,
            world_size=world,
            batch_size=bs,
        )
        if self.paths is not None:
            return ProteinRecords(
                self.paths,
                split,
                self.counts[split],
                val_fraction=h.val_fraction,
                test_fraction=h.test_fraction,
                split_seed=h.split_seed,
                shuffle_buffer=h.shuffle_buffer,
                allow_duplicates=h.allow_duplicates,
                **common,
            )
        return HomologContexts(
            self.families,
            self.ids,
            self.targets[split],
            self.pools,
            max_homologs=h.max_homologs,
            paths=self.alignments,
            **common,
        )

    def _loader(self, split: str) -> EpochDataLoader:
        train = split == "train"
        return trainer_loader(self.dataset(split), self.trainer, train=train,
                              batch_size=self.batch_size if train else self.eval_batch_size,
                              num_workers=self.hparams.num_workers, pin_memory=self.hparams.pin_memory)

    def train_dataloader(self) -> EpochDataLoader:
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val") if self.fractions["val"] > 0 else []

    def test_dataloader(self):
        return self._loader("test") if self.fractions["test"] > 0 else []
