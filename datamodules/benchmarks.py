"""A Lightning DataModule over labelled-sequence benchmarks (Genomic Benchmarks, NT, GUE).

The files are read by ``datamodules/benchmark_files.py`` (every reader returns a ``LabeledSequences``;
class indices follow the sorted class names). :class:`SequenceClassificationDataModule` turns any of
them into batches ``{"input_ids": Long[B, L] (right-padded with PAD=4), "attention_mask": Bool[B, L],
"labels": Long[B] (Float[B] for regression), "index": Long[B]}``. When a dataset ships no validation
split, one is carved from train, stratified and seeded (``stratified_split``); test data is never used
for selection.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bioseq.datamodules.benchmark_files import (
    GENOMIC_BENCHMARKS,
    BenchmarkDataError,
    LabeledSequences,
    download_genomic_benchmark,
    find_split_file,
    peek_header,
    read_file,
    read_gb_intervals,
    read_gb_layout,
    stratified_split,
)
from bioseq.datamodules.collate import ShardedIterable, trainer_loader


# --------------------------------------------------------------------------------------------------
# Dataset / DataModule
# --------------------------------------------------------------------------------------------------
class TokenizedSequenceDataset(Dataset):
    """Items ``(ids int64[L], label, index)`` from a :class:`LabeledSequences` (tokenised once, up front).

    Sequences longer than ``max_length`` tokens are cut: ``truncation="right"`` keeps the start,
    ``"center"`` keeps the middle, ``"left"`` keeps the end.
    """

    def __init__(
        self,
        data: LabeledSequences,
        tokenizer,
        max_length: int | None = None,
        truncation: str = "right",
        add_eos: bool = False,
    ):
        self.data = data
        self.labels = data.labels
        self.items: list[np.ndarray] = []
        for seq, rid in zip(data.sequences, data.ids):
            ids = np.asarray(
                tokenizer.encode(seq, add_eos=add_eos, path=data.source, record=rid), dtype=np.int64
            )
            if max_length is not None and len(ids) > max_length:
                if truncation == "right":
                    ids = ids[:max_length]
                elif truncation == "left":
                    ids = ids[-max_length:]
                else:
                    off = (len(ids) - max_length) // 2
                    ids = ids[off : off + max_length]
            self.items.append(ids)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i], self.labels[i], i


def make_collate(pad_id: int = 4, complement: np.ndarray | None = None, rc_prob: float = 0.0, seed: int = 0):
    """Collate ``(ids, label, index)`` items into the batch dict; with ``rc_prob`` > 0 each sequence is
    replaced by its reverse complement with that probability (training augmentation)."""
    rng = np.random.default_rng(seed)

    def collate(items):
        length = max(len(it[0]) for it in items)
        ids = np.full((len(items), length), pad_id, dtype=np.int64)
        mask = np.zeros((len(items), length), dtype=bool)
        for r, (x, _, _) in enumerate(items):
            if rc_prob > 0 and complement is not None and rng.random() < rc_prob:
                x = complement[x[::-1]]
            ids[r, : len(x)] = x
            mask[r, : len(x)] = True
        labels = np.asarray([it[1] for it in items])
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(labels),
            "index": torch.as_tensor([it[2] for it in items]),
        }

    return collate


class EpochItems(ShardedIterable):
    """The items of a :class:`TokenizedSequenceDataset` as an epoch stream, sharded explicitly by DDP rank
    and DataLoader worker (see :class:`datamodules.collate.ShardedIterable`).

    Training visits a permutation drawn from ``(seed, epoch)`` and every rank takes the same number of
    items, so W ranks with batch B see exactly the items one process sees with batch W x B; each item is
    reverse-complemented with probability ``rc_prob`` by a draw keyed on ``(seed, epoch, position)``.
    Evaluation keeps file order and every item is seen by exactly one rank (no padding duplicates, so
    metrics reduced over ranks equal one process's). Mid-epoch resume works through
    :class:`datamodules.collate.EpochDataLoader`.
    """

    def __init__(self, dataset: TokenizedSequenceDataset, *, train: bool, seed: int = 0, rc_prob: float = 0.0,
                 complement: np.ndarray | None = None, rank: int = 0, world_size: int = 1,
                 batch_size: int | None = None):
        super().__init__(rank=rank, world_size=world_size, batch_size=batch_size, even=train)
        self.dataset, self.train, self.seed = dataset, train, int(seed)
        self.rc_prob = float(rc_prob) if complement is not None else 0.0
        self.complement = complement
        self._order: tuple[int, np.ndarray] | None = None

    def num_items(self) -> int:
        return len(self.dataset)

    def make_item(self, position: int):
        i = position
        if self.train:
            if self._order is None or self._order[0] != self.epoch:
                rng = np.random.default_rng([self.seed, self.epoch])
                self._order = (self.epoch, rng.permutation(len(self.dataset)))
            i = int(self._order[1][position])
        ids, label, index = self.dataset[i]
        if self.rc_prob > 0:
            u = np.random.default_rng([self.seed, self.epoch, position, 1]).random()
            if u < self.rc_prob:
                ids = self.complement[ids[::-1]]
        return ids, label, index


def _check_labels(data: LabeledSequences) -> None:
    """One line for a record whose label cell is empty (it would otherwise become a class of its own)."""
    for k, name in enumerate(data.class_names or []):
        if not str(name).strip():
            row = int(np.flatnonzero(np.asarray(data.labels) == k)[0])
            raise BenchmarkDataError(f"{data.source}: record {data.ids[row]} has an empty label")


class SequenceClassificationDataModule(L.LightningDataModule):
    """Labelled sequences -> batches for :class:`finetune.classifier.SequenceClassifier`.

    Data sources (first that applies):
      1. explicit files ``train_file`` / ``val_file`` / ``test_file`` / ``predict_file`` (CSV/TSV/parquet
         table, or FASTA with labels in headers);
      2. ``data_dir`` + ``benchmark``:
         * ``"genomic_benchmarks"``: ``<data_dir>/<dataset>/{train,test}/`` in the package layout, or the
           interval form when ``reference`` (FASTA) is given, or tables ``<dataset>/{train,test}.tsv[.gz]``;
           ``download=True`` fetches the package layout into ``data_dir`` when it is missing;
         * ``"nucleotide_transformer"``: ``<data_dir>/<dataset>/`` with ``{train,test}.fna`` or
           ``<dataset>_{train,test}.fna`` (or tables), or one revised table with a ``task`` column;
         * ``"gue"`` / ``"files"``: ``<data_dir>/{train,dev,test}.csv[.gz]``.
    Without a validation file, ``val_fraction`` of train is held out (stratified, ``split_seed``).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        dataset: str | None = None,
        benchmark: str = "files",
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        reference: str | None = None,
        task: str | None = None,
        sequence_column: str | None = None,
        label_column: str | None = None,
        regression: bool = False,
        tokenizer: str = "dna",
        max_length: int | None = None,
        truncation: str = "right",
        add_eos: bool = False,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        rc_augment: float = 0.0,
        download: bool = False,
        download_url: str | None = None,
        download_sha256: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.data: dict[str, LabeledSequences] = {}
        self.datasets: dict[str, TokenizedSequenceDataset] = {}
        self.class_names: list[str] | None = None
        self._tokenizer = None

    # -- sources ------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from bioseq.tokenizers import get_tokenizer

            self._tokenizer = get_tokenizer(self.hparams.tokenizer)
        return self._tokenizer

    def prepare_data(self) -> None:
        h = self.hparams
        if (
            h.download
            and h.benchmark == "genomic_benchmarks"
            and h.data_dir
            and h.dataset
            and h.train_file is None
        ):
            if not (Path(h.data_dir) / h.dataset).exists():
                download_genomic_benchmark(h.dataset, h.data_dir, h.download_url, h.download_sha256)

    def _known_classes(self) -> list[str] | None:
        h = self.hparams
        if h.benchmark == "genomic_benchmarks" and h.dataset in GENOMIC_BENCHMARKS:
            return list(GENOMIC_BENCHMARKS[h.dataset].classes)
        return None

    def _read(self, split: str) -> LabeledSequences | None:
        h = self.hparams
        explicit = {"train": h.train_file, "val": h.val_file, "test": h.test_file, "predict": h.predict_file}[
            split
        ]
        kw = dict(
            task=h.task,
            sequence_column=h.sequence_column,
            label_column=h.label_column,
            class_names=self._known_classes(),
            regression=h.regression,
        )
        if explicit is not None:
            return read_file(explicit, **kw)
        if h.train_file is not None or h.data_dir is None:
            return None
        if split == "predict":
            split = "test"
        if h.benchmark == "genomic_benchmarks":
            if split == "val":
                return None
            if h.reference:
                return read_gb_intervals(h.data_dir, split, h.reference, dataset=h.dataset)
            base = Path(h.data_dir) / (h.dataset or "")
            table = None if (base / split).is_dir() else find_split_file(base, split)
            if table is not None:  # <data_dir>/<dataset>/{train,test}.csv|tsv[.gz] (e.g. the HF mirrors)
                return read_file(table, **kw)
            if (base / split).is_dir() and any((base / split).glob("*.csv*")):
                raise BenchmarkDataError(
                    f"{base / split}: interval CSVs need --data.reference=<genome FASTA>"
                )
            return read_gb_layout(h.data_dir, split, dataset=h.dataset)
        base = Path(h.data_dir)
        if h.benchmark == "nucleotide_transformer" and h.dataset and (base / h.dataset).is_dir():
            base = base / h.dataset
        path = find_split_file(base, split, h.dataset)
        if path is None:
            if split == "val":
                return None
            raise BenchmarkDataError(
                f"{base}: no {split} file (looked for {split}.csv/.tsv/.fna[.gz]"
                + (f" and {h.dataset}_{split}.*" if h.dataset else "")
                + ")"
            )
        if h.benchmark == "nucleotide_transformer" and h.task is None and "task" in peek_header(path):
            kw["task"] = h.dataset
        return read_file(path, **kw)

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if stage in (None, "fit", "validate") and "train" not in self.data:
            train = self._read("train")
            if train is None:
                raise BenchmarkDataError("no training data: set --data.train_file or --data.data_dir")
            val = self._read("val")
            if val is None:
                keep, held = stratified_split(train.labels, h.val_fraction, h.split_seed)
                train, val = train.subset(keep), train.subset(held)
            _check_labels(train)
            if not h.regression and train.labels.dtype.kind in "iu" and len(np.unique(train.labels)) < 2:
                raise BenchmarkDataError(f"{train.source}: every training record has the same label; a "
                                         "classifier needs at least two classes (data.regression=true for "
                                         "a regression task)")
            self.data["train"], self.data["val"] = train, val
            self.class_names = train.class_names
        if stage in (None, "test") and "test" not in self.data:
            test = self._read("test")
            if test is not None:
                _check_labels(test)
                self.data["test"] = test
                self.class_names = self.class_names or test.class_names
        if stage == "predict" and "predict" not in self.data:
            pred = self._read("predict")
            if pred is not None:
                self.data["predict"] = pred
        for split, d in self.data.items():
            if split not in self.datasets:
                self.datasets[split] = TokenizedSequenceDataset(
                    d, self.tokenizer, h.max_length, h.truncation, h.add_eos
                )

    @property
    def num_classes(self) -> int:
        ys = [d.labels for d in self.data.values() if d.labels.dtype.kind == "i"]
        if self.class_names:
            return len(self.class_names)
        return int(max(int(y.max()) for y in ys)) + 1 if ys else 1

    # -- loaders ------------------------------------------------------------------------------------
    def _loader(self, split: str, train: bool) -> DataLoader:
        """An :class:`EpochItems` stream for this rank (shuffled per epoch when training; explicit DDP
        sharding, so Lightning adds no DistributedSampler) in an epoch-aware, resumable loader."""
        if split not in self.datasets:
            raise BenchmarkDataError(
                f"no {split} data: set --data.{split}_file or a data_dir with a {split} split"
            )
        h = self.hparams
        complement = None
        if train and h.rc_augment > 0:
            complement = np.asarray(self.tokenizer.complement_map, dtype=np.int64)
        bs = h.batch_size if train else (h.eval_batch_size or h.batch_size)
        trainer = self.trainer
        rank, world = (int(trainer.global_rank), int(trainer.world_size)) if trainer is not None else (0, 1)
        items = EpochItems(self.datasets[split], train=train, seed=h.split_seed, rc_prob=h.rc_augment,
                           complement=complement, rank=rank, world_size=world, batch_size=bs)
        if train and len(items) == 0:
            raise BenchmarkDataError(f"{len(self.datasets[split])} training items are too few for "
                                     f"{world} ranks")
        return trainer_loader(items, trainer, batch_size=bs, train=train, num_workers=h.num_workers,
                              collate_fn=make_collate(self.tokenizer.pad_id))

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def predict_dataloader(self):
        return self._loader("predict" if "predict" in self.datasets else "test", False)
