"""Readers (datamodules/benchmark_files.py) and DataModule (datamodules/benchmarks.py), on real files
from ../shared where possible."""

from __future__ import annotations

import csv
import gzip
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bioseq.datamodules import benchmark_files as bm
from bioseq.datamodules.benchmark_files import (
    GENOMIC_BENCHMARKS,
    NT_TASKS,
    BenchmarkDataError,
    read_gb_intervals,
    read_gb_layout,
    read_labeled_fasta,
    read_table,
    reverse_complement,
    stratified_split,
)
from bioseq.datamodules.benchmarks import SequenceClassificationDataModule
from tests.conftest import shared_path

GB = ("data", "genomic_benchmarks")


# ---------------------------------------------------------------- Genomic Benchmarks package layout
EVERY = 45  # extract every 45th file (~200 of 9,034): the full extraction takes ~1 min on a busy disk


@pytest.fixture(scope="module")
def nontata_layout(tmp_path_factory):
    tar = shared_path(*GB, "sequences", "human_nontata_promoters_test_layout.tar.gz")
    root = tmp_path_factory.mktemp("gb_layout")
    with tarfile.open(tar) as tf:
        members = [m for m in tf.getmembers() if m.isfile()]
        picked = [m for m in members if int(Path(m.name).stem) % EVERY == 0]
        tf.extractall(root, members=picked, filter="data")
    counts = {c: sum(f"/{c}/" in m.name for m in members) for c in ("negative", "positive")}
    return root, counts


def test_gb_layout_real_tarball_matches_tsv(nontata_layout):
    root, counts = nontata_layout
    assert counts == {"negative": 4119, "positive": 4915}  # the whole archive, by listing
    data = read_gb_layout(root, "test", dataset="human_nontata_promoters")
    tsv = read_table(shared_path(*GB, "sequences", "human_nontata_promoters", "test.tsv.gz"))
    rows = np.arange(0, len(tsv), EVERY)
    assert data.class_names == ["negative", "positive"]
    assert len(data) == len(rows)
    # files are named by row index: natural (not lexical) order reproduces the TSV row order and labels
    assert data.sequences == [tsv.sequences[i] for i in rows]
    assert np.array_equal(data.labels, tsv.labels[rows])
    assert data.ids[:3] == ["negative/0", f"negative/{EVERY}", f"negative/{2 * EVERY}"]


def test_gb_layout_labels_follow_sorted_class_names_not_directory_order(tmp_path):
    for cls, seqs in [("zeta", ["AAAA", "AAAC"]), ("alpha", ["CCCC"]), ("mid", ["GGGG"])]:
        d = tmp_path / "toy" / "train" / cls
        d.mkdir(parents=True)
        for i, s in enumerate(seqs):
            (d / f"{i}.txt").write_text(s)
    data = read_gb_layout(tmp_path, "train", dataset="toy")
    assert data.class_names == ["alpha", "mid", "zeta"]
    assert dict(zip(data.sequences, data.labels.tolist())) == {"CCCC": 0, "GGGG": 1, "AAAA": 2, "AAAC": 2}


def test_gb_layout_errors(tmp_path):
    with pytest.raises(BenchmarkDataError, match="no such split"):
        read_gb_layout(tmp_path, "train", dataset="human_nontata_promoters")
    (tmp_path / "human_nontata_promoters" / "train" / "yes").mkdir(parents=True)
    with pytest.raises(BenchmarkDataError, match="differ from"):
        read_gb_layout(tmp_path, "train", dataset="human_nontata_promoters")


# ---------------------------------------------------------------- Genomic Benchmarks interval form
def _real_rows(path: Path, max_end: int) -> list[list[str]]:
    with gzip.open(path, "rt", newline="") as fh:
        rows = list(csv.reader(fh))
    return [rows[0]] + [r for r in rows[1:] if int(r[3]) <= max_end]


def _make_interval_dataset(tmp_path: Path, name: str, max_end: int):
    """Real rows (end <= max_end) of ``name``'s test split + a synthetic genome covering them, with
    Ensembl-style chromosome names (no 'chr'), as in the GB reference FASTAs."""
    src = shared_path(*GB, "coordinates", name)
    dst = tmp_path / name
    (dst / "test").mkdir(parents=True)
    (dst / "metadata.yaml").write_text((src / "metadata.yaml").read_text())
    rows_by_class = {}
    for f in sorted((src / "test").glob("*.csv.gz")):
        rows = _real_rows(f, max_end)
        rows_by_class[f.name[: -len(".csv.gz")]] = rows[1:]
        with gzip.open(dst / "test" / f.name, "wt", newline="") as out:
            csv.writer(out).writerows(rows)
    chroms = sorted({r[1] for rows in rows_by_class.values() for r in rows})
    rng = np.random.default_rng(0)
    genome = {
        c: np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, max_end + 50)].tobytes().decode()
        for c in chroms
    }
    fasta = tmp_path / "genome.fa"
    with open(fasta, "w") as out:
        for c, s in genome.items():
            out.write(f">{c.removeprefix('chr')} synthetic\n")
            out.writelines(s[i : i + 60] + "\n" for i in range(0, len(s), 60))
    return dst, fasta, genome, rows_by_class


@pytest.mark.parametrize(
    "name,max_end", [("human_nontata_promoters", 600_000), ("human_ensembl_regulatory", 60_000)]
)
def test_gb_intervals_real_rows_synthetic_genome(tmp_path, name, max_end):
    dst, fasta, genome, rows_by_class = _make_interval_dataset(tmp_path, name, max_end=max_end)
    data = read_gb_intervals(tmp_path, "test", fasta, dataset=name)
    classes = list(GENOMIC_BENCHMARKS[name].classes)
    assert data.class_names == classes
    expected = []
    for label, cls in enumerate(classes):
        for rid, region, start, end, strand in rows_by_class[cls]:
            s = genome[region][int(start) : int(end)]
            expected.append((rid, s if strand != "-" else reverse_complement(s), label))
    assert len(expected) >= 10
    assert list(zip(data.ids, data.sequences, data.labels.tolist())) == expected
    strands = {r[4] for rows in rows_by_class.values() for r in rows}
    if name == "human_nontata_promoters":
        assert strands == {"+", "-"}  # both strands exercised
    else:
        assert strands == {""}  # empty strand means '+'


def test_gb_intervals_errors(tmp_path):
    dst, fasta, genome, _ = _make_interval_dataset(tmp_path, "human_nontata_promoters", max_end=100_000)
    small = tmp_path / "small.fa"
    small.write_text(">16\nACGT\n")
    with pytest.raises(BenchmarkDataError, match=r"outside|not in the reference"):
        read_gb_intervals(tmp_path, "test", small, dataset="human_nontata_promoters")


def test_gb_metadata_classes_of_all_nine_datasets():
    import yaml

    root = shared_path(*GB, "coordinates")
    assert len(GENOMIC_BENCHMARKS) == 9
    for name, spec in GENOMIC_BENCHMARKS.items():
        meta = yaml.safe_load((root / name / "metadata.yaml").read_text())
        assert tuple(sorted(meta["classes"])) == spec.classes, name
        files = sorted(p.name[: -len(".csv.gz")] for p in (root / name / "test").glob("*.csv.gz"))
        assert tuple(files) == spec.classes


def test_gb_interval_row_counts_match_registry():
    root = shared_path(*GB, "coordinates")
    for name in ("human_nontata_promoters", "dummy_mouse_enhancers_ensembl", "drosophila_enhancers_stark"):
        spec = GENOMIC_BENCHMARKS[name]
        for split, n in (("train", spec.train_size), ("test", spec.test_size)):
            total = sum(
                sum(1 for _ in gzip.open(f, "rt")) - 1 for f in (root / name / split).glob("*.csv.gz")
            )
            assert total == n, (name, split)


# ---------------------------------------------------------------- tables
@pytest.mark.parametrize(
    "rel,n,counts",
    [
        (("human_nontata_promoters", "test.tsv.gz"), 9034, [4119, 4915]),
        (("human_enhancers_cohn", "test.tsv.gz"), 6948, [3474, 3474]),
        (("human_ensembl_regulatory", "train_subsample1500.tsv.gz"), 1500, [500, 500, 500]),
        (("human_ocr_ensembl", "train_subsample1000.tsv.gz"), 1000, [500, 500]),
    ],
)
def test_gb_sequence_tsvs(rel, n, counts):
    data = read_table(shared_path(*GB, "sequences", *rel))
    assert len(data) == n
    assert np.bincount(data.labels).tolist() == counts
    assert set("".join(data.sequences[:50])) <= set("ACGTN")


def test_gue_csvs():
    root = shared_path("data", "nt_gue", "gue", "prom_300_tata")
    sizes = {s: len(read_table(root / f"{s}.csv.gz")) for s in ("train", "dev", "test")}
    assert sizes == {"train": 4904, "dev": 613, "test": 613}
    test = read_table(root / "test.csv.gz")
    assert {len(s) for s in test.sequences} == {300} and set(test.labels.tolist()) == {0, 1}


def test_nt_revised_sample_task_filter():
    path = shared_path("data", "nt_gue", "nt_revised_toy", "train_subsample1500.tsv.gz")
    prom = read_table(path, task="promoter_all")
    assert len(prom) == 71 and {len(s) for s in prom.sequences} == {300}
    assert prom.ids[0].endswith(f"|{prom.labels[0]}")  # the NT name carries the label
    splice = read_table(path, task="splice_sites_all")
    assert len(splice) == 503 and set(splice.labels.tolist()) == {0, 1, 2}
    with pytest.raises(BenchmarkDataError, match="no rows for task"):
        read_table(path, task="no_such_task")


def test_table_errors(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("seqq,label\nACGT,1\n")
    with pytest.raises(BenchmarkDataError, match="no sequence column"):
        read_table(p)
    p.write_text("sequence,label\nACGT,1\nACGT\n")
    with pytest.raises(BenchmarkDataError, match=r"x.csv:3"):
        read_table(p)
    p.write_text("sequence,label\nACGT,yes\nACGT,no\n")
    data = read_table(p)
    assert data.class_names == ["no", "yes"] and data.labels.tolist() == [1, 0]
    p.write_text("sequence,target\nACGT,0.5\nACGT,-1.25\n")
    assert read_table(p, regression=True).labels.tolist() == [0.5, -1.25]


# ---------------------------------------------------------------- FASTA with labels
def test_nt_fna_and_label_fasta(tmp_path):
    fna = tmp_path / "promoter_tata_train.fna"
    fna.write_text(">seq_a|1\nACGTACGT\n>seq_b|0\nGGGG\nCC\n>seq_c|1\nTTTT\n")
    data = read_labeled_fasta(fna)
    assert data.ids == ["seq_a", "seq_b", "seq_c"]
    assert data.sequences == ["ACGTACGT", "GGGGCC", "TTTT"] and data.labels.tolist() == [1, 0, 1]
    fa = tmp_path / "x.fa"
    fa.write_text(">r1 label=enh\nACGT\n>r2 something label=prom\nAC\n")
    assert read_labeled_fasta(fa).labels.tolist() == [0, 1]
    fa.write_text(">r1\nACGT\n")
    with pytest.raises(BenchmarkDataError, match="r1"):
        read_labeled_fasta(fa)


def test_nt_task_registry():
    assert len(NT_TASKS) == 18
    assert {t.metric for t in NT_TASKS.values()} == {"mcc", "f1", "accuracy"}
    assert NT_TASKS["splice_sites_all"].metric == "accuracy" and NT_TASKS["splice_sites_all"].num_classes == 3
    assert NT_TASKS["promoter_tata"].metric == "f1" and NT_TASKS["H3K4me3"].metric == "mcc"
    assert sorted({t.max_length for t in NT_TASKS.values()}) == [200, 300, 400, 500, 600]


# ---------------------------------------------------------------- splits
def test_stratified_split_is_deterministic_and_stratified():
    y = np.array([0] * 90 + [1] * 10 + [2] * 3)
    keep, held = stratified_split(y, 0.2, seed=0)
    keep2, held2 = stratified_split(y, 0.2, seed=0)
    assert np.array_equal(held, held2) and np.array_equal(keep, keep2)
    assert not set(keep) & set(held) and len(keep) + len(held) == len(y)
    assert np.bincount(y[held]).tolist() == [18, 2, 1]
    assert not np.array_equal(stratified_split(y, 0.2, seed=1)[1], held)


# ---------------------------------------------------------------- download (no network)
def _zip_dataset(tmp_path: Path) -> Path:
    z = tmp_path / "ds.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("human_nontata_promoters/train/negative/0.txt", "ACGT")
        zf.writestr("human_nontata_promoters/train/positive/0.txt", "GGCC")
    return z


def test_download_atomic_and_checksummed(tmp_path):
    z = _zip_dataset(tmp_path)
    root = tmp_path / "data"
    with pytest.raises(BenchmarkDataError, match="sha256"):
        bm.download_genomic_benchmark("human_nontata_promoters", root, url=z.as_uri(), sha256="0" * 64)
    assert not (root / "human_nontata_promoters").exists()
    assert [p.name for p in root.iterdir()] == []  # no partial download left behind
    out = bm.download_genomic_benchmark("human_nontata_promoters", root, url=z.as_uri(), sha256=bm._sha256(z))
    assert read_gb_layout(out.parent, "train", dataset="human_nontata_promoters").sequences == [
        "ACGT",
        "GGCC",
    ]


def test_download_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken(url, dest):
        dest.write_bytes(b"partial")
        raise OSError("connection reset")

    monkeypatch.setattr(bm, "fetch_url", broken)
    with pytest.raises(OSError):
        bm.download_genomic_benchmark("human_enhancers_cohn", tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BenchmarkDataError, match="no published archive"):
        bm.download_genomic_benchmark("human_ocr_ensembl", tmp_path)


def test_datamodule_download_uses_local_url(tmp_path):
    z = _zip_dataset(tmp_path)
    dm = SequenceClassificationDataModule(
        data_dir=str(tmp_path / "d"),
        dataset="human_nontata_promoters",
        benchmark="genomic_benchmarks",
        download=True,
        download_url=z.as_uri(),
        val_fraction=0.0,
    )
    dm.prepare_data()
    dm.setup("fit")
    assert dm.class_names == ["negative", "positive"] and len(dm.datasets["train"]) == 2


# ---------------------------------------------------------------- DataModule
def test_datamodule_batches_gue_with_dev_split():
    root = shared_path("data", "nt_gue", "gue", "prom_core_tata")
    dm = SequenceClassificationDataModule(data_dir=str(root), benchmark="gue", batch_size=16, max_length=50)
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.datasets["val"]) == 613 and len(dm.datasets["train"]) == 4904  # dev used, not carved
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (16, 50) and batch["input_ids"].dtype.is_floating_point is False
    assert batch["attention_mask"].all() and batch["labels"].shape == (16,) and batch["index"].shape == (16,)
    tb = next(iter(dm.test_dataloader()))
    assert tb["index"].tolist() == list(range(16))  # evaluation order is the file order


def test_datamodule_carves_val_and_pads_right(tmp_path):
    path = shared_path(*GB, "sequences", "human_ocr_ensembl", "train_subsample1000.tsv.gz")
    dm = SequenceClassificationDataModule(
        train_file=str(path),
        test_file=str(path),
        val_fraction=0.1,
        split_seed=3,
        batch_size=8,
        eval_batch_size=8,
    )
    dm.setup("fit")
    assert len(dm.datasets["val"]) == 100 and len(dm.datasets["train"]) == 900
    assert np.bincount(dm.data["val"].labels).tolist() == [50, 50]
    assert not set(dm.data["val"].ids) & set(dm.data["train"].ids)
    b = next(iter(dm.val_dataloader()))
    lengths = b["attention_mask"].sum(1)
    for row, n in zip(b["input_ids"], lengths.tolist()):
        assert (row[n:] == 4).all() and (row[:n] != 4).all()
    assert b["attention_mask"][0, : lengths[0]].all()


def test_datamodule_nt_fna_layout_and_rc_augment(tmp_path):
    task_dir = tmp_path / "promoter_tata"
    task_dir.mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        with open(task_dir / f"promoter_tata_{split}.fna", "w") as out:
            for i in range(40):
                out.write(f">s{i}|{i % 2}\n{''.join(rng.choice(list('ACGT'), 30))}\n")
    dm = SequenceClassificationDataModule(
        data_dir=str(tmp_path),
        dataset="promoter_tata",
        benchmark="nucleotide_transformer",
        batch_size=40,
        rc_augment=1.0,
    )
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 40 and len(dm.datasets["test"]) == 40
    b = next(iter(dm.train_dataloader()))
    tok = dm.tokenizer
    for row, idx in zip(b["input_ids"], b["index"].tolist()):
        original = dm.datasets["train"].items[idx]
        assert np.array_equal(row.numpy()[::-1], np.asarray(tok.complement_map)[original])


def test_datamodule_nt_revised_table_picks_task(tmp_path):
    path = shared_path("data", "nt_gue", "nt_revised_toy", "train_subsample1500.tsv.gz")
    dm = SequenceClassificationDataModule(train_file=str(path), task="enhancers_types", max_length=400)
    dm.setup("fit")
    assert len(dm.data["train"]) + len(dm.data["val"]) == 91 and dm.num_classes == 3


def test_readers_import_neither_lightning_nor_torch():
    """``bioseq probe`` reads benchmark files through benchmark_files: it must stay a light import."""
    import subprocess
    import sys

    code = ("import sys, datamodules.benchmark_files, bioseq.commands.probe; "
            "print(sorted(m for m in ('lightning', 'torch') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
