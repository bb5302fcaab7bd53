"""SMILES language-model pretraining data: :class:`SmilesDataModule`.

Input: CSV/TSV files (plain or gzip; the SMILES column chosen by name, ``column="smiles"``; TSV when
the name ends in ``.tsv``/``.tab`` (+``.gz``) or the header has a tab) or ``.smi`` files (first
whitespace-separated field of each line; a first line whose field is ``smiles`` is a header).
Surrounding whitespace is stripped (MoleculeNet's ESOL has a trailing space on its first SMILES);
empty cells are skipped.

Vocabulary: regex atom-level tokens (:class:`bioseq.tokenizers.SmilesTokenizer`) built from every
molecule of the input in ``prepare_data`` and saved as JSON at ``vocab_path`` (default
``<trainer.default_root_dir>/smiles_vocab.json``, or ``./smiles_vocab.json`` without a trainer). An
existing file is loaded instead of rebuilt, so finetuning and resumed runs keep their ids. ``.`` is
always in the vocabulary (it joins molecules in context mode). ``vocab_size`` is available right
after construction (it builds or loads the vocabulary on first access), for linking to the model.

Examples: ``[CLS] tokens [SEP]`` (per ``add_cls``/``add_eos``). Molecules longer than ``max_length``
tokens are left out (counted in ``too_long``; cropping would make invalid SMILES). With
``molecules_per_example > 1`` (the Chem-xLSTM in-context setting) an example is the target molecule
preceded by up to ``molecules_per_example - 1`` other molecules of the training split, drawn at
random (new each training epoch, fixed for evaluation) while they fit, all joined by ``.``:
``[CLS] m1 . m2 . target [SEP]``.

Splits by seeded hash of the (stripped) SMILES string: duplicates always share a split. Batches are the
:mod:`datamodules.collate` LM batch (``labels`` = ``input_ids`` with pad -> -100, unshifted; masked-LM
masking is done by the LanguageModel). ``index`` = the molecule's ordinal within its split.
"""

from __future__ import annotations

import itertools
import logging
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
)
from bioseq.errors import BioseqError
from bioseq.smiles_file import read_smiles
from bioseq.tokenizers import SmilesTokenizer, load_tokenizer

__all__ = ["SmilesDataModule", "SmilesExamples", "read_smiles"]

log = logging.getLogger(__name__)


class SmilesExamples(ShardedIterable):
    """One split's molecules as LM items (see module doc). ``smiles``: the split's molecules;
    ``context``: the molecules context is drawn from (the training split)."""

    def __init__(
        self,
        smiles: list[str],
        *,
        tokenizer: SmilesTokenizer,
        max_length: int,
        train: bool,
        context: list[str] | None = None,
        molecules_per_example: int = 1,
        add_cls: bool = True,
        add_eos: bool = True,
        seed: int = 0,
        source: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int | None = None,
    ):
        super().__init__(rank=rank, world_size=world_size, batch_size=batch_size, even=train)
        self.smiles, self.context = smiles, context or []
        self.tokenizer, self.max_length, self.train = tokenizer, max_length, train
        self.k = molecules_per_example
        self.add_cls, self.add_eos, self.seed, self.source = add_cls, add_eos, seed, source
        self.dot = np.array([tokenizer.token_to_id(".")], dtype=np.int64) if self.k > 1 else None

    def num_items(self) -> int:
        return len(self.smiles)

    def _order(self) -> np.ndarray:
        if getattr(self, "_order_epoch", None) != self.epoch:
            n = len(self.smiles)
            rng = np.random.default_rng([self.seed, self.epoch, 0x5E])
            self._order_cache = rng.permutation(n) if self.train else np.arange(n)
            self._order_epoch = self.epoch
        return self._order_cache

    def make_item(self, position: int) -> dict:
        item = int(self._order()[position])
        target = self.tokenizer.encode(self.smiles[item], path=self.source, record=f"molecule {item}")
        pieces, n_mol = [target], 1
        if self.k > 1 and self.context:
            rng = np.random.default_rng([self.seed, self.epoch if self.train else 0, item, 0xC7])
            room = self.max_length - int(self.add_cls) - int(self.add_eos) - len(target)
            for j in rng.choice(len(self.context), size=min(len(self.context), 4 * self.k), replace=False):
                if n_mol >= self.k:
                    break
                if self.context[j] == self.smiles[item]:
                    continue
                ids = self.tokenizer.encode(self.context[j])
                if len(ids) + 1 <= room:
                    pieces[:0] = [ids, self.dot]
                    room -= len(ids) + 1
                    n_mol += 1
        if self.add_cls:
            pieces.insert(0, np.array([self.tokenizer.cls_id], dtype=np.int64))
        if self.add_eos:
            pieces.append(np.array([self.tokenizer.eos_id], dtype=np.int64))
        return {"input_ids": np.concatenate(pieces), "index": item, "n_molecules": n_mol}


class SmilesDataModule(pl.LightningDataModule):
    """SMILES molecules for LM pretraining (see the module docstring).

    Args:
        data: one file or a list (CSV/TSV/``.smi``, plain or gzip).
        column: the SMILES column name in CSV/TSV files.
        max_length: tokens per example including ``[CLS]``/``[SEP]``; must be > 0.
        batch_size, eval_batch_size: examples per batch (per device) for training / evaluation.
        val_fraction, test_fraction, split_seed: hash split of the molecules.
        vocab_path: where the vocabulary JSON is saved/loaded (see module doc).
        min_freq: tokens seen fewer times are left out of a newly built vocabulary (encode as [UNK]).
        molecules_per_example: > 1 for multi-molecule context examples joined by ``.``.
        add_cls, add_eos: start with ``[CLS]`` / end with ``[SEP]``.
        seed: seeds the training order and context draws (with the epoch).
    """

    def __init__(
        self,
        data: str | list[str],
        column: str = "smiles",
        max_length: int = 256,
        batch_size: int = 32,
        val_fraction: float = 0.05,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        vocab_path: str | None = None,
        min_freq: int = 1,
        molecules_per_example: int = 1,
        add_cls: bool = True,
        add_eos: bool = True,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        seed: int = 0,
        pin_memory: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.paths = [Path(p) for p in ([data] if isinstance(data, (str, Path)) else data)]
        if not self.paths:
            raise BioseqError("SmilesDataModule: no data files given")
        self.max_length = check_positive("max_length", max_length, "SmilesDataModule")
        if max_length - int(add_cls) - int(add_eos) <= 0:
            raise BioseqError(f"SmilesDataModule: max_length {max_length} leaves no room after [CLS]/[SEP]")
        self.batch_size = check_positive("batch_size", batch_size, "SmilesDataModule")
        self.eval_batch_size = check_positive(
            "eval_batch_size", eval_batch_size or batch_size, "SmilesDataModule"
        )
        check_positive("molecules_per_example", molecules_per_example, "SmilesDataModule")
        for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= f < 1.0:
                raise BioseqError(f"SmilesDataModule: {name} must be in [0, 1), got {f}")
        if val_fraction + test_fraction >= 1.0:
            raise BioseqError("SmilesDataModule: val_fraction + test_fraction must be < 1")
        self._vocab_path = None if vocab_path is None else Path(vocab_path)
        self._tokenizer: SmilesTokenizer | None = None
        self._molecules: list[tuple[str, Path, int]] | None = None
        self.splits: dict[str, list[str]] | None = None
        self.too_long = 0

    # -- data and vocabulary
    @property
    def vocab_path(self) -> Path:
        if self._vocab_path is not None:
            return self._vocab_path
        root = Path(self.trainer.default_root_dir) if self.trainer is not None else Path.cwd()
        return root / "smiles_vocab.json"

    def molecules(self) -> list[tuple[str, Path, int]]:
        """``(smiles, file, line)`` of every input molecule (read once)."""
        if self._molecules is None:
            mols = []
            for path in self.paths:
                mols += [(s, path, line) for s, line in read_smiles(path, self.hparams.column)]
            if not mols:
                raise BioseqError(f"{', '.join(map(str, self.paths))}: no SMILES found")
            self._molecules = mols
        return self._molecules

    def _ensure_tokenizer(self, save: bool = True) -> SmilesTokenizer:
        if self._tokenizer is None:
            path = self.vocab_path
            if path.is_file():
                tok = load_tokenizer(path)
                if not isinstance(tok, SmilesTokenizer):
                    raise BioseqError(f"{path}: not a SMILES vocabulary (tokenizer {tok.name!r})")
                log.info("loaded SMILES vocabulary (%d tokens) from %s", tok.vocab_size, path)
            else:
                smiles = (s for s, _, _ in self.molecules())
                tok = SmilesTokenizer.build(itertools.chain(smiles, ["."]), min_freq=self.hparams.min_freq)
                if save:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                    tok.save(tmp)
                    os.replace(tmp, path)
                    log.info("built SMILES vocabulary (%d tokens), saved to %s", tok.vocab_size, path)
            self._tokenizer = tok
        return self._tokenizer

    @property
    def tokenizer(self) -> SmilesTokenizer:
        return self._ensure_tokenizer()

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def prepare_data(self) -> None:
        """Build and save the vocabulary unless ``vocab_path`` exists (rank 0 only)."""
        self._ensure_tokenizer(save=True)

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        h = self.hparams
        tok = self.tokenizer
        budget = self.max_length - int(h.add_cls) - int(h.add_eos)
        splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        too_long = 0
        for smi, _, _ in self.molecules():
            if len(tok.tokenize(smi)) > budget:
                too_long += 1
                continue
            u = hash_fraction(smi, h.split_seed)
            split = (
                "test" if u < h.test_fraction else "val" if u < h.test_fraction + h.val_fraction else "train"
            )
            splits[split].append(smi)
        if too_long:
            log.warning("%d molecules longer than %d tokens were left out", too_long, budget)
        self.too_long = too_long
        self.splits = splits

    # -- loaders
    def dataset(self, split: str) -> SmilesExamples:
        self.setup()
        h = self.hparams
        rank, world = (
            (0, 1) if self.trainer is None else (int(self.trainer.global_rank), int(self.trainer.world_size))
        )
        train = split == "train"
        if len(self.splits[split]) < (world if train else 1):
            raise BioseqError(
                f"{', '.join(map(str, self.paths))}: empty {split} split ({len(self.splits[split])} "
                f"molecules; val_fraction={h.val_fraction}, test_fraction={h.test_fraction}, "
                f"{self.too_long} longer than max_length)"
            )
        return SmilesExamples(
            self.splits[split],
            tokenizer=self.tokenizer,
            max_length=self.max_length,
            train=train,
            context=self.splits["train"],
            molecules_per_example=h.molecules_per_example,
            add_cls=h.add_cls,
            add_eos=h.add_eos,
            seed=h.seed,
            source=str(self.paths[0]),
            rank=rank,
            world_size=world,
            batch_size=self.batch_size if train else self.eval_batch_size,
        )

    def _loader(self, split: str) -> EpochDataLoader:
        train = split == "train"
        return trainer_loader(self.dataset(split), self.trainer, train=train,
                              batch_size=self.batch_size if train else self.eval_batch_size,
                              num_workers=self.hparams.num_workers, pin_memory=self.hparams.pin_memory)

    def train_dataloader(self) -> EpochDataLoader:
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val") if self.hparams.val_fraction > 0 else []

    def test_dataloader(self):
        return self._loader("test") if self.hparams.test_fraction > 0 else []
