"""Genome windows for DNA language-model pretraining: :class:`GenomeDataModule`.

Windows of ``max_length`` tokens are read from a FASTA through :class:`bioseq.fasta.IndexedFasta`
(plain or BGZF; a plain-gzip file such as NCBI's ``*.fna.gz`` or UCSC's ``hg38.fa.gz`` is decompressed
once into the cache, see :func:`indexable_fasta`). The index is built in ``prepare_data``; each
DataLoader worker opens its own file handle lazily.

Splits (choose one way):

* ``bed``: a BED file ``chrom start end split`` (split = train / valid|val / test; the
  HyenaDNA/Caduceus/Enformer ``sequences.bed`` convention). One item per interval: an interval longer
  than the window gives a random sub-window when training and the centred one when evaluating; a
  shorter one is widened around its centre; either way the window is shifted to stay inside the
  chromosome.
* ``train_chroms`` / ``val_chroms`` / ``test_chroms``: whole chromosomes (train defaults to all
  chromosomes not listed for val/test).
* ``val_fraction`` / ``test_fraction``: the last ``test_fraction`` of every chromosome is test, the
  ``val_fraction`` before it is validation, the rest is training (e.g. ``val_fraction=0.1`` holds out
  the last 10% of each chromosome).
* none of these: every chromosome is training data, no validation.

Windows. Training windows tile each region with a random phase and come in a random order, both
drawn from ``(seed, epoch)``: within one pass they never overlap, and each epoch differs. An epoch
has ``samples_per_epoch`` windows (default: as many as one pass has); it reads passes ``(epoch, 0)``,
``(epoch, 1)``, ... in turn. Validation/test windows tile each region deterministically from its
start (the last tile of a region may be shorter: every base is scored once). Windows whose fraction
of non-ACGT bases (N, IUPAC codes) exceeds ``max_n_fraction`` are skipped (decided from a map of
N runs built in ``setup``); the others keep N as token 11. Lowercase (soft-masked) bases are folded to
uppercase. With ``rc_prob`` a training window is reverse-complemented with that probability.

With ``add_eos`` a window is ``max_length - 1`` bases plus ``[SEP]``; otherwise ``max_length`` bases.
Batches are :mod:`datamodules.collate` LM batches: ``labels`` is ``input_ids`` with pad -> -100,
unshifted (the causal LanguageModel shifts; for masked-LM pretraining the LanguageModel masks).

Sharding across DDP ranks and DataLoader workers is explicit (see
:class:`datamodules.collate.ShardedIterable`): no two (rank, worker) pairs ever produce the same
window position, and every rank gets the same number of training batches.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np

from bioseq.alphabets import FASTA_ALPHABETS
from bioseq.datamodules.collate import EpochDataLoader, ShardedIterable, check_positive, trainer_loader
from bioseq.errors import BioseqError, locate
from bioseq.fasta import FastaError, IndexedFasta, cache_root, detect_compression, ensure_index
from bioseq.tokenizers import DnaTokenizer

__all__ = ["GenomeDataModule", "GenomeWindows", "Regions", "NMap", "indexable_fasta", "read_bed"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
_NOT_ACGT = bytes(0 if chr(b) in "ACGTacgt" else 1 for b in range(256))
#: Letters the DNA tokenizer accepts (ACGTN, IUPAC codes, U; either case): 0 = accepted, 1 = not.
_DNA_OK = FASTA_ALPHABETS["dna"] + "U"
_NOT_DNA = bytes(0 if chr(b).upper() in _DNA_OK and chr(b).isalpha() else 1 for b in range(256))
_PROTEIN_ONLY = set("EFILPQ*")  # amino-acid letters that are no DNA code


# ----------------------------------------------------------------------------------------------- files


def _decompressed_path(path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:20]
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name + ".fa"
    return cache_root() / "decompressed" / key / name


def indexable_fasta(path: str | os.PathLike, *, create: bool = True) -> Path:
    """The path to index for ``path``: itself when plain or BGZF; for plain gzip, a decompressed copy
    under ``$BIOSEQ_CACHE/decompressed/<key>/`` (key = hash of absolute path, size, mtime), written once
    (``create=True``) and reused. Missing file -> BioseqError."""
    path = Path(path)
    try:
        compression = detect_compression(path)
    except FastaError:
        raise
    if compression != "gzip":
        return path
    target = _decompressed_path(path)
    if target.exists() or not create:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    log.info("decompressing %s to %s for random access (once)", path, target)
    try:
        with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
    except (OSError, EOFError) as exc:
        tmp.unlink(missing_ok=True)
        raise BioseqError(
            f"{path}: cannot decompress ({exc}); the gzip file is truncated or corrupt"
        ) from None
    os.replace(tmp, target)
    return target


def _open_indexed(original: Path, indexable: Path) -> IndexedFasta:
    """IndexedFasta on ``indexable``; errors about a decompressed copy name the original file."""
    try:
        return IndexedFasta(indexable)
    except FastaError as exc:
        if indexable == original:
            raise
        raise BioseqError(str(exc).replace(str(indexable), f"{original} (decompressed copy)")) from None


def _raise_not_dna(path, record: str, pos0: int, char: str, chunk: bytes) -> None:
    shown = repr(char) if char.isprintable() and char.strip() else f"byte {ord(char):#04x}"
    hint = ""
    if _PROTEIN_ONLY & set(chunk[:4096].decode("ascii", "replace").upper()):
        hint = (" (this looks like protein: use bioseq.datamodules.protein.ProteinDataModule, e.g. "
                "--config hyena-tiny-protein-ecoli)")
    raise BioseqError(f"{locate(path, record, position=pos0 + 1)}: invalid DNA character {shown}; "
                      f"allowed: ACGTN, IUPAC codes RYSWKMBDHV, U (either case){hint}")


def _open_text(path: Path):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rt") if magic == b"\x1f\x8b" else open(path)


# ----------------------------------------------------------------------------------------------- regions


@dataclass
class Regions:
    """Half-open intervals ``[start, end)`` on chromosomes ``chrom`` (index into ``names``);
    ``line`` = 1-based BED line or -1. All arrays have the same length."""

    chrom: np.ndarray
    start: np.ndarray
    end: np.ndarray
    line: np.ndarray

    @classmethod
    def from_lists(cls, rows: list[tuple[int, int, int, int]]) -> Regions:
        arr = np.array(rows, dtype=np.int64).reshape(-1, 4)
        return cls(arr[:, 0].astype(np.int32), arr[:, 1].copy(), arr[:, 2].copy(), arr[:, 3].copy())

    def __len__(self) -> int:
        return len(self.chrom)

    def select(self, keep: np.ndarray) -> Regions:
        return Regions(self.chrom[keep], self.start[keep], self.end[keep], self.line[keep])

    @property
    def bases(self) -> int:
        return int((self.end - self.start).sum())


def read_bed(
    path: str | os.PathLike, lengths: dict[str, int], names: list[str], window: int, fasta: object = None
) -> dict[str, Regions]:
    """Read ``chrom start end split`` rows (0-based half-open, tab or space separated; ``#``, ``track``
    and ``browser`` lines skipped). Every error is a one-line BioseqError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise BioseqError(f"{path}: BED file not found")
    index = {n: i for i, n in enumerate(names)}
    rows: dict[str, list] = {s: [] for s in SPLITS}
    try:
        return _read_bed_rows(path, lengths, window, fasta, index, rows)
    except UnicodeDecodeError as exc:
        raise BioseqError(f"{path}: not a BED text file ({exc.reason} at byte {exc.start})") from None
    except (OSError, EOFError) as exc:
        raise BioseqError(f"{path}: cannot read ({exc})") from None


def _read_bed_rows(path: Path, lengths: dict[str, int], window: int, fasta: object, index: dict[str, int],
                   rows: dict[str, list]) -> dict[str, Regions]:
    with _open_text(path) as fh:
        for lineno, text in enumerate(fh, 1):
            text = text.strip()
            if not text or text.startswith(("#", "track", "browser")):
                continue
            fields = text.split()
            where = locate(path, line=lineno)
            if len(fields) < 4:
                raise BioseqError(f"{where}: expected 4 columns 'chrom start end split', got {len(fields)}")
            chrom, start, end, split = fields[:4]
            try:
                start, end = int(start), int(end)
            except ValueError:
                raise BioseqError(
                    f"{where}: start/end must be integers, got {fields[1]!r} {fields[2]!r}"
                ) from None
            if split.lower() not in _SPLIT_NAMES:
                raise BioseqError(f"{where}: unknown split {split!r} (use train, valid/val or test)")
            if chrom not in index:
                raise BioseqError(f"{where}: chromosome {chrom!r} is not in the FASTA {fasta or ''}".rstrip())
            n = lengths[chrom]
            if not 0 <= start < end <= n:
                raise BioseqError(
                    f"{where}: interval {chrom}:{start}-{end} is outside the chromosome (length {n}) or empty"
                )
            if n < window:
                raise BioseqError(
                    f"{where}: window of {window} bases is longer than chromosome {chrom!r} ({n} bases)"
                )
            rows[_SPLIT_NAMES[split.lower()]].append((index[chrom], start, end, lineno))
    return {s: Regions.from_lists(r) for s, r in rows.items()}


# ----------------------------------------------------------------------------------------------- N map


class NMap:
    """Runs of non-ACGT bases (N and IUPAC codes, either case) per chromosome, for counting them in any
    window without reading it. Built by one chunked pass over the sequence (memory: one chunk)."""

    def __init__(self, runs: dict[int, tuple[np.ndarray, np.ndarray]]):
        self.starts: dict[int, np.ndarray] = {}
        self.cum: dict[int, np.ndarray] = {}
        self.lens: dict[int, np.ndarray] = {}
        for chrom, (s, e) in runs.items():
            if len(s):
                self.starts[chrom] = s
                self.lens[chrom] = e - s
                self.cum[chrom] = np.concatenate([[0], np.cumsum(e - s)])

    @property
    def total(self) -> int:
        return int(sum(c[-1] for c in self.cum.values()))

    @classmethod
    def scan(cls, fasta: IndexedFasta, names: list[str], chrom_ids: list[int], chunk: int = 1 << 22,
             check: str | os.PathLike | None = None) -> NMap:
        """N runs of the chromosomes ``chrom_ids``. With ``check`` (the FASTA's name in messages), the same
        pass also checks every base against the DNA alphabet and raises a :class:`BioseqError` naming the
        record and 1-based position of the first character the tokenizer would refuse."""
        runs = {}
        for ci in chrom_ids:
            name = names[ci]
            n = fasta.lengths[name]
            starts, ends = [], []
            for a in range(0, n, chunk):
                b = min(n, a + chunk)
                text = fasta.fetch(name, a, b).encode("ascii", "replace")
                if check is not None:
                    bad = text.translate(_NOT_DNA).find(1)
                    if bad >= 0:
                        _raise_not_dna(check, name, a + bad, text[bad:bad + 1].decode("ascii", "replace"),
                                       text)
                raw = text.translate(_NOT_ACGT)
                if raw.find(1) < 0:
                    continue
                d = np.diff(np.frombuffer(raw, dtype=np.int8), prepend=np.int8(0), append=np.int8(0))
                s = list(np.flatnonzero(d == 1) + a)
                e = list(np.flatnonzero(d == -1) + a)
                if ends and ends[-1] == s[0]:  # a run continuing over the chunk boundary
                    ends[-1] = e.pop(0)
                    s.pop(0)
                starts += s
                ends += e
            runs[ci] = (np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64))
        return cls(runs)

    def _before(self, chrom: int, x: np.ndarray) -> np.ndarray:
        s = self.starts[chrom]
        i = np.searchsorted(s, x, side="right") - 1
        ic = np.clip(i, 0, None)
        inside = np.clip(x - s[ic], 0, self.lens[chrom][ic])
        return np.where(i >= 0, self.cum[chrom][ic] + inside, 0)

    def count(self, chrom: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Number of non-ACGT bases in each window ``[start, end)`` of ``chrom`` (arrays)."""
        out = np.zeros(len(chrom), dtype=np.int64)
        for c in np.unique(chrom):
            if int(c) not in self.starts:
                continue
            sel = chrom == c
            out[sel] = self._before(int(c), end[sel]) - self._before(int(c), start[sel])
        return out


# ----------------------------------------------------------------------------------------------- dataset


class GenomeWindows(ShardedIterable):
    """Windows from ``regions`` of ``fasta`` as LM items ``{"input_ids", "index", "chrom", "start", "rc"}``.

    Args:
        fasta: an :class:`IndexedFasta` (safe to share with workers).
        regions: the split's :class:`Regions`.
        window: bases per window (``max_length - add_eos``).
        train: random phase/order/RC per epoch (True) or deterministic tiling (False).
        intervals: one window per region (BED) instead of tiling.
        samples_per_epoch: global windows per epoch (training; default one pass's worth).
        max_items: cap on the global windows per epoch (length-warmup stage ends; evaluation subsets).
        n_map, max_n_fraction: the N filter (``n_map=None`` disables it).
        rank, world_size, batch_size: see :class:`ShardedIterable`.
    """

    def __init__(
        self,
        fasta: IndexedFasta,
        names: list[str],
        regions: Regions,
        window: int,
        *,
        train: bool,
        intervals: bool = False,
        tokenizer: DnaTokenizer | None = None,
        add_eos: bool = False,
        rc_prob: float = 0.0,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        max_items: int | None = None,
        n_map: NMap | None = None,
        max_n_fraction: float = 1.0,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int | None = None,
    ):
        super().__init__(rank=rank, world_size=world_size, batch_size=batch_size, even=train)
        self.fasta = fasta
        self.names = names
        self.regions = regions
        self.lengths = np.array([fasta.lengths[n] for n in names], dtype=np.int64)
        self.window = check_positive("window", window)
        self.train = train
        self.intervals = intervals
        self.tokenizer = tokenizer or DnaTokenizer()
        self.add_eos = add_eos
        self.rc_prob = float(rc_prob)
        self.seed = int(seed)
        self.samples_per_epoch = samples_per_epoch
        self.max_items = max_items
        self.n_map = n_map if (n_map is not None and n_map.total and max_n_fraction < 1.0) else None
        self.max_n_fraction = max_n_fraction
        self._passes: dict[tuple[int, int], tuple] = {}

    # -- window lists
    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def _candidates(self, rng: np.random.Generator | None):
        """(chrom, start, length) of every candidate window of one pass, before N filtering/shuffling."""
        r, w = self.regions, self.window
        n = r.end - r.start
        if self.intervals:
            if rng is None:
                start = r.start + np.maximum(n - w, 0) // 2
            else:
                start = r.start + np.floor(rng.random(len(r)) * (np.maximum(n - w, 0) + 1)).astype(np.int64)
            start = np.where(n < w, (r.start + r.end) // 2 - w // 2, start)
            start = np.clip(start, 0, self.lengths[r.chrom] - w)
            return r.chrom, start, np.full(len(r), w, dtype=np.int64)
        if rng is None:  # deterministic tiling, the last tile of a region may be short
            count = -(-n // w)
            reg = np.repeat(np.arange(len(r)), count)
            k = np.arange(len(reg)) - np.repeat(np.cumsum(count) - count, count)
            start = r.start[reg] + k * w
            return r.chrom[reg], start, np.minimum(w, r.end[reg] - start)
        count = np.where(n >= 2 * w, (n - w) // w, (n >= w).astype(np.int64))
        slack = np.where(n >= 2 * w, w - 1, n - w)
        offset = np.floor(rng.random(len(r)) * (np.maximum(slack, 0) + 1)).astype(np.int64)
        reg = np.repeat(np.arange(len(r)), count)
        k = np.arange(len(reg)) - np.repeat(np.cumsum(count) - count, count)
        return r.chrom[reg], r.start[reg] + offset[reg] + k * w, np.full(len(reg), w, dtype=np.int64)

    def _filter(self, chrom, start, length):
        if self.n_map is None or not len(chrom):
            return np.ones(len(chrom), dtype=bool)
        return self.n_map.count(chrom, start, start + length) <= self.max_n_fraction * length

    def window_pass(self, epoch: int, part: int = 0) -> tuple[np.ndarray, ...]:
        """``(chrom, start, length, rc)`` arrays of one pass: training pass ``(epoch, part)`` (random
        phase, order and strands) or, for evaluation, the fixed tiling (arguments ignored)."""
        key = (epoch, part) if self.train else (0, 0)
        if key not in self._passes:
            if len(self._passes) > 4:
                self._passes.clear()
            rng = self._rng(epoch, part, 0x6E0) if self.train else None
            chrom, start, length = self._candidates(rng)
            keep = self._filter(chrom, start, length)
            chrom, start, length = chrom[keep], start[keep], length[keep]
            if self.train:
                order = rng.permutation(len(chrom))
                chrom, start, length = chrom[order], start[order], length[order]
                rc = rng.random(len(chrom)) < self.rc_prob if self.rc_prob > 0 else np.zeros(len(chrom), bool)
            else:
                rc = np.zeros(len(chrom), dtype=bool)
            self._passes[key] = (chrom, start, length, rc)
        return self._passes[key]

    def pass_size(self) -> int:
        return len(self.window_pass(0, 0)[0])

    def num_items(self) -> int:
        n = self.samples_per_epoch if (self.train and self.samples_per_epoch) else self.pass_size()
        if self.train and n and not self.pass_size():
            n = 0
        return n if self.max_items is None else min(n, self.max_items)

    def locate_item(self, position: int) -> tuple[int, int, int, bool]:
        """``(chrom index, start, length, rc)`` of the window at ``position`` of the current epoch."""
        if not self.train:
            if self.max_items is not None and self.max_items < self.pass_size():  # evenly spaced subset
                position = position * self.pass_size() // self.max_items
            part, j = 0, position
        else:
            part, j = 0, position
            while True:
                n = len(self.window_pass(self.epoch, part)[0])
                if j < n:
                    break
                part, j = part + 1, j - n
        chrom, start, length, rc = self.window_pass(self.epoch, part)
        return int(chrom[j]), int(start[j]), int(length[j]), bool(rc[j])

    def make_item(self, position: int) -> dict:
        chrom, start, length, rc = self.locate_item(position)
        name = self.names[chrom]
        seq = self.fasta.fetch(name, start, start + length)
        ids = self.tokenizer.encode(seq, path=self.fasta.path, record=name, offset=start)
        if rc:
            ids = self.tokenizer.reverse_complement(ids)
        if self.add_eos:
            ids = np.append(ids, self.tokenizer.eos_id)
        return {"input_ids": ids, "index": position, "chrom": chrom, "start": start, "rc": rc}


# ----------------------------------------------------------------------------------------------- module


class GenomeDataModule(pl.LightningDataModule):
    """Windows of a genome FASTA for causal/masked LM pretraining (see the module docstring).

    Args:
        fasta: plain, BGZF or plain-gzip FASTA (the last is decompressed once into the cache).
        max_length: tokens per window (bases + the optional EOS); must be > 0 (> 1 with ``add_eos``).
        batch_size: windows per training batch (per device); ``eval_batch_size`` for val/test
            (default: ``batch_size``).
        bed: BED file ``chrom start end split`` defining the splits (exclusive with the options below).
        train_chroms, val_chroms, test_chroms: chromosome lists per split.
        val_fraction, test_fraction: held-out fraction at the end of every chromosome.
        rc_prob: probability of reverse-complementing a training window.
        max_n_fraction: skip windows with more than this fraction of non-ACGT bases (1.0 = keep all,
            and no N scan is done).
        add_eos: end each window with ``[SEP]``.
        num_workers: DataLoader workers (each opens its own file handle).
        samples_per_epoch: training windows per epoch over all ranks (default: one full pass).
        max_eval_windows: evaluate on at most this many evenly spaced val/test windows.
        seed: seeds training phases, orders and strands (with the epoch).
        length_warmup, length_warmup_unit: a sequence-length warmup schedule (see
            :mod:`datamodules.length_warmup`; the ``SequenceLengthWarmup`` callback sets it too).
    """

    def __init__(
        self,
        fasta: str,
        max_length: int = 1024,
        batch_size: int = 8,
        bed: str | None = None,
        train_chroms: list[str] | None = None,
        val_chroms: list[str] | None = None,
        test_chroms: list[str] | None = None,
        val_fraction: float | None = None,
        test_fraction: float | None = None,
        rc_prob: float = 0.0,
        max_n_fraction: float = 0.1,
        add_eos: bool = False,
        num_workers: int = 0,
        samples_per_epoch: int | None = None,
        max_eval_windows: int | None = None,
        eval_batch_size: int | None = None,
        seed: int = 0,
        pin_memory: bool = False,
        length_warmup: list | None = None,
        length_warmup_unit: str = "epochs",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.fasta_path = Path(fasta)
        self.max_length = check_positive("max_length", max_length, "GenomeDataModule")
        if add_eos and max_length < 2:
            raise BioseqError(f"GenomeDataModule: max_length must be >= 2 with add_eos, got {max_length}")
        self.batch_size = check_positive("batch_size", batch_size, "GenomeDataModule")
        self.eval_batch_size = check_positive(
            "eval_batch_size", eval_batch_size or batch_size, "GenomeDataModule"
        )
        self.bed = None if bed is None else Path(bed)
        self.chroms = {"train": train_chroms, "val": val_chroms, "test": test_chroms}
        self.fractions = {"val": val_fraction or 0.0, "test": test_fraction or 0.0}
        for name, f in self.fractions.items():
            if not 0.0 <= f < 1.0:
                raise BioseqError(f"GenomeDataModule: {name}_fraction must be in [0, 1), got {f}")
        if sum(self.fractions.values()) >= 1.0:
            raise BioseqError("GenomeDataModule: val_fraction + test_fraction must be < 1")
        uses_chroms = any(v is not None for v in self.chroms.values())
        uses_fraction = any(self.fractions.values())
        if sum([self.bed is not None, uses_chroms, uses_fraction]) > 1:
            raise BioseqError("GenomeDataModule: give the splits one way: bed, *_chroms or *_fraction")
        if not 0.0 <= rc_prob <= 1.0 or not 0.0 <= max_n_fraction <= 1.0:
            raise BioseqError("GenomeDataModule: rc_prob and max_n_fraction must be in [0, 1]")
        if samples_per_epoch is not None:
            check_positive("samples_per_epoch", samples_per_epoch, "GenomeDataModule")
        self.rc_prob = rc_prob
        self.max_n_fraction = max_n_fraction
        self.add_eos = add_eos
        self.num_workers = num_workers
        self.samples_per_epoch = samples_per_epoch
        self.max_eval_windows = max_eval_windows
        self.seed = seed
        self.pin_memory = pin_memory
        self.tokenizer = DnaTokenizer()
        self.train_length_schedule = None
        self.current_train_stage = None
        if length_warmup:
            from bioseq.datamodules.length_warmup import LengthSchedule

            self.train_length_schedule = LengthSchedule(length_warmup, unit=length_warmup_unit)
        self.fasta: IndexedFasta | None = None
        self.names: list[str] = []
        self.regions: dict[str, Regions] = {}
        self.n_map: NMap | None = None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def window(self) -> int:
        """Bases per evaluation window (``max_length`` minus the EOS)."""
        return self.max_length - int(self.add_eos)

    # -- Lightning hooks
    def prepare_data(self) -> None:
        """Decompress a plain-gzip FASTA (once) and build the index (once); rank 0 only."""
        ensure_index(indexable_fasta(self.fasta_path))

    def setup(self, stage: str | None = None) -> None:
        if self.fasta is not None:
            return
        path = indexable_fasta(self.fasta_path)
        fasta = _open_indexed(self.fasta_path, path)
        names = list(fasta.names)
        # One pass over every record: the alphabet is checked before anything else (a protein FASTA or a
        # stray character is named here, not as an empty split or when a window is first read), and the
        # N runs are mapped on the way.
        n_map = NMap.scan(fasta, names, list(range(len(names))), check=self.fasta_path)
        self.fasta, self.names = fasta, names
        self.regions = self._build_regions()
        if self.max_n_fraction < 1.0:
            self.n_map = n_map

    def _build_regions(self) -> dict[str, Regions]:
        lengths = self.fasta.lengths
        w = self.window
        if self.bed is not None:
            return read_bed(self.bed, lengths, self.names, w, self.fasta_path)
        index = {n: i for i, n in enumerate(self.names)}
        rows: dict[str, list] = {s: [] for s in SPLITS}
        if any(v is not None for v in self.chroms.values()):
            listed = {}
            for split, chroms in self.chroms.items():
                for c in chroms or []:
                    if c not in index:
                        raise BioseqError(
                            f"{self.fasta_path}: {split}_chroms names chromosome {c!r}, which is not "
                            f"in the FASTA (has {', '.join(self.names[:8])}"
                            f"{'...' if len(self.names) > 8 else ''})"
                        )
                    if c in listed:
                        raise BioseqError(
                            f"GenomeDataModule: chromosome {c!r} is in both {listed[c]}_chroms "
                            f"and {split}_chroms"
                        )
                    listed[c] = split
            if self.chroms["train"] is None:
                for c in self.names:
                    if c not in listed and lengths[c] >= w:
                        listed[c] = "train"
            for c, split in listed.items():
                if lengths[c] < w:
                    raise BioseqError(
                        f"{self.fasta_path}: window of {w} bases is longer than chromosome {c!r} "
                        f"({lengths[c]} bases) in {split}_chroms"
                    )
                rows[split].append((index[c], 0, lengths[c], -1))
            return {s: Regions.from_lists(r) for s, r in rows.items()}
        fv, ft = self.fractions["val"], self.fractions["test"]
        skipped = []
        for c in self.names:
            n = lengths[c]
            test_start = n - int(round(n * ft))
            val_start = test_start - int(round(n * fv))
            for split, a, b in (
                ("train", 0, val_start),
                ("val", val_start, test_start),
                ("test", test_start, n),
            ):
                if b - a >= w:
                    rows[split].append((index[c], a, b, -1))
                elif b > a:
                    skipped.append(f"{c}:{split}")
        if skipped:
            warnings.warn(
                f"{self.fasta_path}: {len(skipped)} chromosome parts shorter than the {w}-base window "
                f"were left out ({', '.join(skipped[:5])}{'...' if len(skipped) > 5 else ''})",
                stacklevel=2,
            )
        return {s: Regions.from_lists(r) for s, r in rows.items()}

    # -- data loaders
    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _split_defined(self, split: str) -> bool:
        if self.bed is not None:
            return split == "train" or len(self.regions[split]) > 0
        if any(v is not None for v in self.chroms.values()):
            return split == "train" or bool(self.chroms[split])
        return split == "train" or bool(self.fractions.get(split))

    def dataset(
        self,
        split: str,
        *,
        window: int | None = None,
        batch_size: int | None = None,
        max_items: int | None = None,
    ) -> GenomeWindows:
        """The :class:`GenomeWindows` of ``split`` for this rank (``setup`` is called if needed)."""
        self.setup()
        rank, world = self._rank()
        train = split == "train"
        ds = GenomeWindows(
            self.fasta,
            self.names,
            self.regions[split],
            window or self.window,
            train=train,
            intervals=self.bed is not None,
            tokenizer=self.tokenizer,
            add_eos=self.add_eos,
            rc_prob=self.rc_prob if train else 0.0,
            seed=self.seed,
            samples_per_epoch=self.samples_per_epoch if train else None,
            max_items=max_items if train else self.max_eval_windows,
            n_map=self.n_map,
            max_n_fraction=self.max_n_fraction,
            rank=rank,
            world_size=world,
            batch_size=batch_size or (self.batch_size if train else self.eval_batch_size),
        )
        if ds.num_items() < (world if train else 1):
            what = (
                "no windows"
                if not len(self.regions[split])
                else "too few windows (all too short or too many N)"
            )
            raise BioseqError(
                f"{self.bed or self.fasta_path}: empty {split} split: {what} of {ds.window} bases "
                f"for {world} rank(s)"
            )
        return ds

    def _loader(self, ds: GenomeWindows, batch_size: int, train: bool) -> EpochDataLoader:
        return trainer_loader(ds, self.trainer, batch_size=batch_size, train=train,
                              num_workers=self.num_workers, pin_memory=self.pin_memory)

    def train_dataloader(self) -> EpochDataLoader:
        seq_len, batch_size, max_items = self.max_length, self.batch_size, None
        schedule = self.train_length_schedule
        if schedule is not None:
            trainer = self.trainer
            progress = (
                0
                if trainer is None
                else (trainer.current_epoch if schedule.unit == "epochs" else trainer.global_step)
            )
            _, stage, left = schedule.stage_at(progress)
            self.current_train_stage = stage
            seq_len, batch_size = stage.seq_len, stage.batch_size
            if seq_len > self.max_length:
                raise BioseqError(
                    f"length warmup stage seq_len {seq_len} exceeds max_length {self.max_length}"
                )
            if schedule.unit == "steps" and left is not None:
                accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
                max_items = left * accumulate * batch_size * self._rank()[1]
        ds = self.dataset(
            "train", window=seq_len - int(self.add_eos), batch_size=batch_size, max_items=max_items
        )
        return self._loader(ds, batch_size, train=True)

    def val_dataloader(self):
        if not self._split_defined("val"):
            return []
        return self._loader(self.dataset("val"), self.eval_batch_size, train=False)

    def test_dataloader(self):
        if not self._split_defined("test"):
            return []
        return self._loader(self.dataset("test"), self.eval_batch_size, train=False)

    def teardown(self, stage: str | None = None) -> None:
        if self.fasta is not None:
            self.fasta.close()
