"""Readers of labelled-sequence benchmark files (Genomic Benchmarks, NT, GUE), and their download.

Plain Python and numpy: ``bioseq probe`` and the suite read these files without importing Lightning;
the DataModule over them is in ``datamodules/benchmarks.py``.

Every reader returns a :class:`LabeledSequences` (sequences, integer or float labels, sorted class
names, record ids). Class indices always follow the **sorted** class names, never directory or file
listing order (Genomic Benchmarks: ``negative=0, positive=1``; ``enhancer=0, ocr=1, promoter=2``).

Supported on-disk forms
-----------------------
* Genomic Benchmarks package layout: ``<root>/<dataset>/{train,test}/<class>/<id>.txt`` (one sequence
  per file) -- :func:`read_gb_layout`.
* Genomic Benchmarks interval form (the upstream repository): ``<root>/<dataset>/{train,test}/<class>.csv.gz``
  with columns ``id,region,start,end,strand`` (0-based, half-open; empty strand = ``+``), plus
  ``metadata.yaml`` and a reference FASTA -- :func:`read_gb_intervals`.
* Nucleotide Transformer original ``.fna`` files with ``>name|label`` headers -- :func:`read_labeled_fasta`.
* Tables: CSV/TSV (optionally gzip) or parquet with a sequence and a label column: the NT revised form
  (``sequence,name,label[,task]``), GUE (``sequence,label``; ``train/dev/test``) and any generic table --
  :func:`read_table`.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import re
import shutil
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bioseq.alphabets import reverse_complement_text
from bioseq.errors import BioseqError, locate


class BenchmarkDataError(BioseqError):
    """Bad or missing benchmark data (message names the file, and the line/record where known)."""


# --------------------------------------------------------------------------------------------------
# Known datasets
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GBDataset:
    """A Genomic Benchmarks dataset: sorted class names and the sequence length range in bp."""

    name: str
    classes: tuple[str, ...]
    max_length: int
    train_size: int
    test_size: int


GENOMIC_BENCHMARKS: dict[str, GBDataset] = {
    d.name: d
    for d in [
        GBDataset(
            "demo_coding_vs_intergenomic_seqs", ("coding_seqs", "intergenomic_seqs"), 200, 75_000, 25_000
        ),
        GBDataset("demo_human_or_worm", ("human", "worm"), 200, 75_000, 25_000),
        GBDataset("drosophila_enhancers_stark", ("negative", "positive"), 3237, 5_184, 1_730),
        GBDataset("dummy_mouse_enhancers_ensembl", ("negative", "positive"), 4776, 968, 242),
        GBDataset("human_enhancers_cohn", ("negative", "positive"), 500, 20_843, 6_948),
        GBDataset("human_enhancers_ensembl", ("negative", "positive"), 573, 123_872, 30_970),
        GBDataset("human_ensembl_regulatory", ("enhancer", "ocr", "promoter"), 802, 231_348, 57_713),
        GBDataset("human_nontata_promoters", ("negative", "positive"), 251, 27_097, 9_034),
        GBDataset("human_ocr_ensembl", ("negative", "positive"), 593, 139_804, 34_952),
    ]
}


@dataclass(frozen=True)
class NTTask:
    """A Nucleotide Transformer (v1, 18 tasks) task: classes, metric, and the max length used by
    HyenaDNA/Caduceus finetuning (bp)."""

    name: str
    num_classes: int
    metric: str  # "mcc" | "f1" | "accuracy"
    max_length: int


_HISTONE = ["H3", "H3K14ac", "H3K36me3", "H3K4me1", "H3K4me2", "H3K4me3", "H3K79me3", "H3K9ac", "H4", "H4ac"]
NT_TASKS: dict[str, NTTask] = {
    t.name: t
    for t in (
        [NTTask(h, 2, "mcc", 500) for h in _HISTONE]
        + [
            NTTask("enhancers", 2, "mcc", 200),
            NTTask("enhancers_types", 3, "mcc", 200),
            NTTask("promoter_all", 2, "f1", 300),
            NTTask("promoter_no_tata", 2, "f1", 300),
            NTTask("promoter_tata", 2, "f1", 300),
            NTTask("splice_sites_acceptors", 2, "f1", 600),
            NTTask("splice_sites_donors", 2, "f1", 600),
            NTTask("splice_sites_all", 3, "accuracy", 400),
        ]
    )
}

# download=True: the Genomic Benchmarks package caches six datasets as zips of the package layout on
# Google Drive (file ids from genomic_benchmarks/loc2seq/cloud_caching.py). No checksums are published,
# so none are pinned here; pass ``download_sha256`` to check one, or ``download_url`` for a mirror.
GB_CLOUD_CACHE_IDS = {
    "human_nontata_promoters": "1VdUg0Zu8yfLS6QesBXwGz1PIQrTW3Ze4",
    "demo_coding_vs_intergenomic_seqs": "1cpXg0ULuTGF7h1_HTYvc6p8M-ee43t-v",
    "demo_human_or_worm": "1Vuc44bXRISqRDXNrxt5lGYLpLsJbrSg8",
    "human_enhancers_cohn": "176563cDPQ5Y094WyoSBF02QjoVQhWuCh",
    "human_enhancers_ensembl": "1gZBEV_RGxJE8EON5OObdrp5Tp8JL0Fxb",
}
GB_CLOUD_URL = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"


# --------------------------------------------------------------------------------------------------
# Container and helpers
# --------------------------------------------------------------------------------------------------
@dataclass
class LabeledSequences:
    """Sequences with labels. ``labels`` int64 class ids (classification) or float32 (regression)."""

    sequences: list[str]
    labels: np.ndarray
    class_names: list[str] | None = None
    ids: list[str] = field(default_factory=list)
    source: str = ""

    def __post_init__(self):
        if not self.ids:
            self.ids = [str(i) for i in range(len(self.sequences))]
        if len(self.sequences) != len(self.labels) or len(self.ids) != len(self.sequences):
            raise BenchmarkDataError(
                f"{self.source}: {len(self.sequences)} sequences but "
                f"{len(self.labels)} labels / {len(self.ids)} ids"
            )

    def __len__(self) -> int:
        return len(self.sequences)

    def subset(self, idx: Sequence[int] | np.ndarray) -> LabeledSequences:
        idx = np.asarray(idx, dtype=np.int64)
        return LabeledSequences(
            [self.sequences[i] for i in idx],
            self.labels[idx],
            self.class_names,
            [self.ids[i] for i in idx],
            self.source,
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else int(self.labels.max()) + 1


def _open_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _labels_from_values(
    values: list[str], path: object, class_names: Sequence[str] | None = None, regression: bool = False
) -> tuple[np.ndarray, list[str] | None]:
    """Map raw label strings to ids. Integer-valued labels keep their value; other strings are indexed
    by their sorted order (or by ``class_names`` when given)."""
    if regression:
        try:
            return np.asarray([float(v) for v in values], dtype=np.float32), None
        except ValueError as err:
            raise BenchmarkDataError(f"{path}: non-numeric regression target ({err})") from None
    if class_names is not None:
        lookup = {c: i for i, c in enumerate(class_names)}
        if all(v in lookup for v in values):
            return np.asarray([lookup[v] for v in values], dtype=np.int64), list(class_names)
    if all(re.fullmatch(r"-?\d+(\.0+)?", v) for v in values):
        ids = np.asarray([int(float(v)) for v in values], dtype=np.int64)
        if ids.size and ids.min() < 0:
            raise BenchmarkDataError(f"{path}: negative class label {ids.min()}")
        names = list(class_names) if class_names is not None else None
        if names is not None and ids.size and ids.max() >= len(names):
            raise BenchmarkDataError(f"{path}: label {ids.max()} out of range for {len(names)} classes")
        return ids, names
    names = sorted(set(values)) if class_names is None else list(class_names)
    lookup = {c: i for i, c in enumerate(names)}
    bad = [v for v in values if v not in lookup]
    if bad:
        raise BenchmarkDataError(f"{path}: unknown class label '{bad[0]}' (known: {', '.join(names)})")
    return np.asarray([lookup[v] for v in values], dtype=np.int64), names


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


# --------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------
def read_gb_layout(root: str | os.PathLike, split: str, dataset: str | None = None) -> LabeledSequences:
    """Genomic Benchmarks package layout ``<root>[/<dataset>]/<split>/<class>/<id>.txt``.

    Classes are the sorted sub-directory names; files within a class in natural order of their names.
    """
    base = Path(root) / dataset if dataset else Path(root)
    split_dir = base / split
    if not split_dir.is_dir():
        raise BenchmarkDataError(
            f"{split_dir}: no such split directory (expected <dataset>/{split}/<class>/)"
        )
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise BenchmarkDataError(f"{split_dir}: no class sub-directories")
    known = GENOMIC_BENCHMARKS.get(dataset or base.name)
    if known is not None and tuple(classes) != known.classes:
        raise BenchmarkDataError(
            f"{split_dir}: classes {classes} differ from {dataset or base.name}'s {list(known.classes)}"
        )
    seqs, labels, ids = [], [], []
    for label, cls in enumerate(classes):
        files = sorted(
            (p for p in (split_dir / cls).iterdir() if p.suffix == ".txt"), key=lambda p: _natural_key(p.name)
        )
        for p in files:
            seq = p.read_text().strip()
            if not seq:
                raise BenchmarkDataError(f"{p}: empty sequence file")
            seqs.append(seq)
            labels.append(label)
            ids.append(f"{cls}/{p.stem}")
    return LabeledSequences(seqs, np.asarray(labels, dtype=np.int64), classes, ids, str(split_dir))


def _read_metadata_classes(meta: Path) -> list[str] | None:
    if not meta.exists():
        return None
    import yaml

    data = yaml.safe_load(meta.read_text()) or {}
    classes = data.get("classes")
    return sorted(classes) if isinstance(classes, dict) else None


def _resolve_contig(fasta, region: str) -> str | None:
    lengths = fasta.lengths
    for name in (region, region[3:] if region.startswith("chr") else "chr" + region):
        if name in lengths:
            return name
    if region in ("chrM", "MT") and ("MT" in lengths or "chrM" in lengths):
        return "MT" if "MT" in lengths else "chrM"
    return None


def read_gb_intervals(
    root: str | os.PathLike,
    split: str,
    reference: str | os.PathLike | dict,
    dataset: str | None = None,
    limit_per_class: int | None = None,
) -> LabeledSequences:
    """Genomic Benchmarks interval form ``<root>[/<dataset>]/<split>/<class>.csv.gz`` + a reference FASTA.

    Rows are ``id,region,start,end,strand`` (0-based half-open); ``-`` strands are reverse-complemented
    and an empty strand means ``+``. Chromosome names are matched as given, then with/without a ``chr``
    prefix (Ensembl FASTAs name them ``1..22, X, Y, MT``). ``reference`` is a FASTA path or a dict
    ``{class_name: path}`` (e.g. ``demo_coding_vs_intergenomic_seqs`` uses a cDNA file for one class).
    """
    from bioseq.fasta import IndexedFasta

    base = Path(root) / dataset if dataset else Path(root)
    split_dir = base / split
    files = (
        {re.sub(r"\.csv(\.gz)?$", "", p.name): p for p in split_dir.glob("*.csv*")}
        if split_dir.is_dir()
        else {}
    )
    if not files:
        raise BenchmarkDataError(f"{split_dir}: no <class>.csv(.gz) interval files")
    classes = _read_metadata_classes(base / "metadata.yaml") or sorted(files)
    missing = [c for c in classes if c not in files]
    if missing:
        raise BenchmarkDataError(f"{split_dir}: metadata.yaml lists class '{missing[0]}' with no CSV")
    handles: dict[str, object] = {}

    def fasta_for(cls: str):
        path = reference.get(cls) if isinstance(reference, dict) else reference
        if path is None:
            raise BenchmarkDataError(f"{base}: no reference FASTA given for class '{cls}'")
        key = str(path)
        if key not in handles:
            handles[key] = IndexedFasta(path)
        return handles[key]

    seqs, labels, ids = [], [], []
    for label, cls in enumerate(classes):
        fasta = fasta_for(cls)
        with _open_text(files[cls]) as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:5]] != [
                "id",
                "region",
                "start",
                "end",
                "strand",
            ]:
                raise BenchmarkDataError(
                    f"{locate(files[cls], line=1)}: expected header id,region,start,end,strand"
                )
            for n, row in enumerate(reader, start=2):
                if limit_per_class is not None and n - 2 >= limit_per_class:
                    break
                if len(row) < 4:
                    raise BenchmarkDataError(
                        f"{locate(files[cls], line=n)}: expected 5 columns, got {len(row)}"
                    )
                rid, region = row[0], row[1]
                strand = row[4].strip() if len(row) > 4 else ""
                try:
                    start, end = int(row[2]), int(row[3])
                except ValueError:
                    raise BenchmarkDataError(f"{locate(files[cls], line=n)}: non-integer start/end") from None
                contig = _resolve_contig(fasta, region)
                if contig is None:
                    raise BenchmarkDataError(
                        f"{locate(files[cls], record=rid, line=n)}: region '{region}' not "
                        f"in the reference FASTA"
                    )
                if not 0 <= start < end <= fasta.lengths[contig]:
                    raise BenchmarkDataError(
                        f"{locate(files[cls], record=rid, line=n)}: interval {start}-{end} "
                        f"outside {contig} (length {fasta.lengths[contig]})"
                    )
                seq = fasta.fetch(contig, start, end).upper()
                if strand == "-":
                    seq = reverse_complement(seq)
                elif strand not in ("", "+"):
                    raise BenchmarkDataError(f"{locate(files[cls], record=rid, line=n)}: strand '{strand}'")
                seqs.append(seq)
                labels.append(label)
                ids.append(rid)
    return LabeledSequences(seqs, np.asarray(labels, dtype=np.int64), classes, ids, str(split_dir))




reverse_complement = reverse_complement_text  # IUPAC codes complemented, case kept (bioseq.alphabets)


_SEQ_COLUMNS = ("sequence", "seq", "sequences", "dna", "smiles")
_LABEL_COLUMNS = ("label", "labels", "target", "y", "class")


def read_table(
    path: str | os.PathLike,
    sequence_column: str | None = None,
    label_column: str | None = None,
    task: str | None = None,
    task_column: str = "task",
    class_names: Sequence[str] | None = None,
    regression: bool = False,
) -> LabeledSequences:
    """CSV/TSV (plain or gzip; delimiter sniffed from the header) or parquet with sequence + label columns.

    Columns are found by name (``sequence``/``seq`` and ``label``/``target``...) unless given. ``task``
    keeps only rows whose ``task_column`` equals it (the NT revised files with several tasks in one
    table). A ``name`` column (NT revised) becomes the record ids.
    """
    path = Path(path)
    if not path.exists():
        raise BenchmarkDataError(f"{path}: no such file")
    if path.suffix == ".parquet":
        rows, header = _read_parquet(path)
    else:
        try:
            with _open_text(path) as fh:
                first = fh.readline()
                delim = "\t" if "\t" in first else ","
                header = [h.strip() for h in next(csv.reader([first], delimiter=delim), [])]
                rows = list(csv.reader(fh, delimiter=delim))
        except UnicodeDecodeError as exc:
            raise BenchmarkDataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}): "
                                     "binary data, not a CSV/TSV table") from None
        except csv.Error as exc:
            raise BenchmarkDataError(f"{path}: not a CSV/TSV table ({exc})") from None
        except (OSError, EOFError, zlib.error) as exc:
            corrupt = isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile))
            what = "truncated or corrupt gzip file" if corrupt else "cannot read"
            raise BenchmarkDataError(f"{path}: {what} ({exc})") from None
    lower = [h.lower() for h in header]

    def find(name: str | None, candidates: tuple[str, ...], what: str) -> int:
        if name is not None:
            if name not in header:
                raise BenchmarkDataError(f"{path}: no column '{name}' (columns: {', '.join(header)})")
            return header.index(name)
        for c in candidates:
            if c in lower:
                return lower.index(c)
        raise BenchmarkDataError(
            f"{path}: no {what} column (looked for {', '.join(candidates)}; columns: {', '.join(header)})"
        )

    si = find(sequence_column, _SEQ_COLUMNS, "sequence")
    li = find(label_column, _LABEL_COLUMNS, "label")
    ni = lower.index("name") if "name" in lower else (lower.index("id") if "id" in lower else None)
    ti = lower.index(task_column.lower()) if task is not None and task_column.lower() in lower else None
    if task is not None and ti is None:
        raise BenchmarkDataError(
            f"{path}: task '{task}' requested but the table has no '{task_column}' column"
        )
    seqs, raw, ids = [], [], []
    for n, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise BenchmarkDataError(f"{locate(path, line=n)}: {len(row)} fields, header has {len(header)}")
        if ti is not None and row[ti] != task:
            continue
        seq = row[si].strip()
        if not seq:
            raise BenchmarkDataError(f"{locate(path, line=n)}: empty sequence")
        seqs.append(seq)
        raw.append(row[li].strip())
        ids.append(row[ni] if ni is not None else str(n - 2))
    if not seqs:
        raise BenchmarkDataError(f"{path}: no rows" + (f" for task '{task}'" if task else ""))
    labels, names = _labels_from_values(raw, path, class_names, regression)
    return LabeledSequences(seqs, labels, names, ids, str(path))


def _read_parquet(path: Path) -> tuple[list[list[str]], list[str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BenchmarkDataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    table = pq.read_table(path)
    cols = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return [[str(c[r]) for c in cols] for r in range(table.num_rows)], list(table.column_names)


def read_labeled_fasta(
    path: str | os.PathLike, class_names: Sequence[str] | None = None, regression: bool = False
) -> LabeledSequences:
    """FASTA whose header carries the label: ``>name|label`` (NT original ``.fna``), or ``label=X`` anywhere
    in the header line."""
    from bioseq.fasta import read_fasta

    seqs, raw, ids = [], [], []
    for rec in read_fasta(path, allow_duplicates=True):
        header = f"{rec.id} {rec.description}".strip()
        m = re.search(r"(?:^|\s)label=(\S+)", header)
        if m:
            value, name = m.group(1), rec.id
        elif "|" in rec.id:
            name, value = rec.id.rsplit("|", 1)
        else:
            raise BenchmarkDataError(
                f"{locate(path, record=rec.id, line=rec.line)}: no label in the header "
                f"(expected '>name|label' or 'label=X')"
            )
        seqs.append(rec.seq)
        raw.append(value)
        ids.append(name)
    if not seqs:
        raise BenchmarkDataError(f"{path}: no records")
    labels, names = _labels_from_values(raw, path, class_names, regression)
    return LabeledSequences(seqs, labels, names, ids, str(path))


def read_labels_file(path: str | os.PathLike) -> dict[str, str]:
    """A two-column ``id<TAB or comma>label`` file (header optional) -> {id: label string}."""
    out: dict[str, str] = {}
    with _open_text(Path(path)) as fh:
        for n, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            parts = re.split(r"[\t,]", line)
            if len(parts) < 2:
                raise BenchmarkDataError(f"{locate(path, line=n)}: expected 'id<TAB>label'")
            if n == 1 and parts[1].lower() in _LABEL_COLUMNS:
                continue
            out[parts[0]] = parts[1]
    return out


# --------------------------------------------------------------------------------------------------
# Splits and dataset resolution
# --------------------------------------------------------------------------------------------------
def stratified_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: returns (keep_idx, held_out_idx), both sorted.

    For each class, ``round(fraction * n_class)`` items (at least 1 when the class has 2+ items) are held
    out, chosen by a ``numpy`` generator seeded with ``seed``. Regression labels are split unstratified.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = []
    if labels.dtype.kind == "f":
        n = len(labels)
        held = list(rng.permutation(n)[: int(round(fraction * n))])
    else:
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            k = int(round(fraction * len(idx)))
            if len(idx) >= 2:
                k = min(max(k, 1), len(idx) - 1)
            else:
                k = 0
            held.extend(rng.permutation(idx)[:k])
    held_arr = np.sort(np.asarray(held, dtype=np.int64))
    keep = np.setdiff1d(np.arange(len(labels)), held_arr)
    return keep, held_arr


_SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid", "validation", "dev"), "test": ("test",)}
_TABLE_EXT = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".parquet", ".txt.gz")
_FASTA_EXT = (".fna", ".fna.gz", ".fa", ".fa.gz", ".fasta", ".fasta.gz")


def find_split_file(directory: str | os.PathLike, split: str, task: str | None = None) -> Path | None:
    """Find ``<dir>/<split>.<ext>`` or ``<dir>/<task>_<split>.<ext>`` (table or FASTA), else None."""
    directory = Path(directory)
    stems = []
    for name in _SPLIT_NAMES[split]:
        stems += [name] + ([f"{task}_{name}"] if task else [])
    for stem in stems:
        for ext in _TABLE_EXT + _FASTA_EXT:
            p = directory / f"{stem}{ext}"
            if p.exists():
                return p
    return None


def read_file(
    path: str | os.PathLike,
    *,
    task: str | None = None,
    sequence_column: str | None = None,
    label_column: str | None = None,
    class_names: Sequence[str] | None = None,
    regression: bool = False,
) -> LabeledSequences:
    """Dispatch on the file name: FASTA extensions -> :func:`read_labeled_fasta`, else :func:`read_table`."""
    name = str(path)
    if name.endswith(_FASTA_EXT):
        return read_labeled_fasta(path, class_names, regression)
    return read_table(
        path, sequence_column, label_column, task=task, class_names=class_names, regression=regression
    )


# --------------------------------------------------------------------------------------------------
# Download (online users only; never used by tests)
# --------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_url(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` (overridable in tests)."""
    with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as out:  # noqa: S310
        shutil.copyfileobj(resp, out)


def download_archive(url: str, dest_dir: str | os.PathLike, sha256: str | None = None) -> Path:
    """Fetch a zip/tar archive and unpack it into ``dest_dir`` atomically.

    The archive goes to a temporary file in ``dest_dir``'s parent; its sha256 is checked when given (a
    mismatch raises and leaves nothing behind); it is unpacked into a temporary directory that is renamed
    onto ``dest_dir`` only when complete. An existing ``dest_dir`` is returned untouched.
    """
    dest_dir = Path(dest_dir)
    if dest_dir.exists():
        return dest_dir
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", dir=dest_dir.parent))
    try:
        archive = tmp_root / "archive"
        fetch_url(url, archive)
        if sha256 is not None:
            got = _sha256(archive)
            if got != sha256:
                raise BenchmarkDataError(f"{url}: sha256 {got} does not match the expected {sha256}")
        unpacked = tmp_root / "unpacked"
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise BenchmarkDataError(f"{url}: unsafe path '{member}' in the archive")
                zf.extractall(unpacked)
        else:
            import tarfile

            with tarfile.open(archive) as tf:
                tf.extractall(unpacked, filter="data")
        entries = list(unpacked.iterdir())
        src = (
            entries[0]
            if len(entries) == 1 and entries[0].is_dir() and entries[0].name == dest_dir.name
            else unpacked
        )
        os.replace(src, dest_dir)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return dest_dir


def download_genomic_benchmark(
    name: str, root: str | os.PathLike, url: str | None = None, sha256: str | None = None
) -> Path:
    """Download a Genomic Benchmarks dataset in the package layout into ``<root>/<name>``."""
    if name not in GENOMIC_BENCHMARKS:
        raise BenchmarkDataError(
            f"unknown Genomic Benchmarks dataset '{name}' (known: {', '.join(GENOMIC_BENCHMARKS)})"
        )
    if url is None:
        if name not in GB_CLOUD_CACHE_IDS:
            raise BenchmarkDataError(
                f"no published archive for '{name}': build it with the genomic_benchmarks "
                f"package (loc2seq) or pass download_url=<zip of {name}/train,test/...>"
            )
        url = GB_CLOUD_URL.format(id=GB_CLOUD_CACHE_IDS[name])
    return download_archive(url, Path(root) / name, sha256)


def peek_header(path: Path) -> list[str]:
    """Lower-cased column names of a CSV/TSV file's first line ([] for FASTA and parquet)."""
    if str(path).endswith(_FASTA_EXT) or path.suffix == ".parquet":
        return []
    with _open_text(path) as fh:
        first = fh.readline()
    return [h.strip().lower() for h in re.split(r"[\t,]", first)]
