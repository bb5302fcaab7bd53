"""The synthetic genome and toy task: deterministic, fast, and with the documented features."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from bioseq import synthetic as syn

SMALL = dataclasses.replace(syn.SyntheticConfig(), chromosomes=(("chrA", 300_000), ("chrB", 200_000)),
                            task_train=200, task_test=100)


@pytest.fixture(scope="module")
def small():
    return syn.generate_genome(SMALL)


def test_deterministic_and_seeded(small):
    again, feats = syn.generate_genome(SMALL)
    assert all(np.array_equal(small[0][c], again[c]) for c in again) and feats == small[1]
    other, _ = syn.generate_genome(dataclasses.replace(SMALL, seed=1))
    assert not np.array_equal(other["chrA"], again["chrA"])
    assert syn.generate_motif_task(SMALL) == syn.generate_motif_task(SMALL)


def test_default_genome_is_fast_and_realistic():
    start = time.perf_counter()
    genome, features = syn.generate_genome()
    assert time.perf_counter() - start < 5.0
    assert [len(s) for s in genome.values()] == [n for _, n in syn.SyntheticConfig().chromosomes]
    allseq = np.concatenate(list(genome.values()))
    assert 0.35 < syn.gc_fraction(allseq) < 0.45
    assert syn.cpg_observed_expected(allseq) < 0.6  # CpG depleted background
    assert 0.08 < (allseq >= ord("a")).mean() < 0.25  # soft-masked repeats
    assert set(np.unique(allseq & 0xDF).tolist()) <= set(b"ACGTN")
    names = {f[3] for f in features}
    assert names == {"CpG_island", "TATA_box", "SINE", "LTR", "LINE", "microsatellite", "minisatellite",
                     "gap"}


def test_features_are_where_the_bed_says(small):
    genome, features = small
    for chrom, start, end, name, _ in features:
        piece = genome[chrom][start:end]
        if name == "gap":
            assert (piece == ord("N")).all()
    # islands are GC rich and not CpG depleted (checked where not overwritten later: most of them)
    islands = [genome[c][s:e] for c, s, e, n, _ in features if n == "CpG_island"]
    assert np.median([syn.gc_fraction(x) for x in islands]) > 0.6
    assert np.median([syn.cpg_observed_expected(x) for x in islands]) > 0.8
    # TATA boxes: at least the ones not overwritten by repeats read TATAWAWR (or its reverse complement)
    boxes = [(bytes(genome[c][s:e]).decode(), st) for c, s, e, n, st in features if n == "TATA_box"]
    ok = [syn.TATA_REGEX.fullmatch(b if st == "+" else bytes(syn.reverse_complement(
        np.frombuffer(b.encode(), dtype=np.uint8))).decode()) for b, st in boxes]
    assert sum(x is not None for x in ok) >= 0.7 * len(boxes)
    # a SINE copy shares most bases with other SINE copies (same family consensus)
    sines = np.stack([genome[c][s:e] & 0xDF for c, s, e, n, st in features if n == "SINE" and st == "+"])
    consensus = np.array([np.bincount(col).argmax() for col in sines.T])
    assert np.median((sines == consensus).mean(axis=1)) > 0.8


def test_splits_tile_chromosomes():
    rows = syn.split_intervals(SMALL)
    for chrom, length in SMALL.chromosomes:
        mine = [r for r in rows if r[0] == chrom]
        assert mine[0][1] == 0 and mine[-1][2] == length
        assert all(a[2] == b[1] for a, b in zip(mine, mine[1:]))
        held = [r for r in mine if r[3] != "train"]
        assert sum(e - s for _, s, e, _ in held) == length - int(length * 0.9)
        assert {r[3] for r in held} == {"valid", "test"}


def test_motif_task_labels_match_content():
    train, test = syn.generate_motif_task(SMALL)
    assert len(train) == 200 and len(test) == 100
    rows = train + test
    labels = np.array([y for _, y in rows])
    assert labels.sum() == len(rows) // 2
    has = syn._has_tata(np.stack([np.frombuffer(s.encode(), dtype=np.uint8) for s, _ in rows]))
    assert np.array_equal(has, labels == 1)
    assert all(len(s) == SMALL.task_length and set(s) <= set("ACGT") for s, _ in rows)


def test_write_synthetic(tmp_path):
    files = syn.write_synthetic(tmp_path, SMALL)
    text = files.fasta.read_text().splitlines()
    assert text[0] == ">chrA" and all(len(line) == 80 for line in text[1:3750])
    seq = "".join(text[1:text.index(">chrB")])
    assert len(seq) == 300_000
    assert files.splits_bed.read_text().splitlines()[0] == "chrA\t0\t16384\ttrain"
    header, first = files.task_train.read_text().splitlines()[:2]
    assert header == "seq\tlabel" and first.split("\t")[1] in ("0", "1")
    assert len(files.features_bed.read_text().splitlines()[0].split("\t")) == 6
