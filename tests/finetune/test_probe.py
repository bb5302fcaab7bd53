"""k-mer features, the logistic-regression probe, `bioseq probe` (k-mer, in-process, HDF5 embeddings)."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest

from bioseq.cli import main as cli
from bioseq.finetune.probe import classification_metrics, fit_probe, kmer_features, labels_for_ids
from tests.conftest import shared_path


def _naive_counts(seq: str, k: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in range(len(seq) - k + 1):
        w = seq[i : i + k].upper()
        if set(w) <= set("ACGT"):
            out[w] = out.get(w, 0) + 1
    return out


@pytest.mark.parametrize("k", [1, 3, 6])
def test_kmer_features_match_naive_counts(k):
    rng = np.random.default_rng(k)
    seqs = [
        "".join(rng.choice(list("ACGTN") if i % 3 == 0 else list("ACGT"), int(n)))
        for i, n in enumerate(rng.integers(0, 40, 12))
    ]
    seqs[1] = "acgtAC"  # lowercase counts like uppercase
    x = kmer_features(seqs, k, normalize=False).toarray()
    kmers = ["".join(p) for p in itertools.product("ACGT", repeat=k)]
    for row, s in zip(x, seqs):
        expected = np.zeros(4**k)
        for w, c in _naive_counts(s, k).items():
            expected[kmers.index(w)] = c
        assert np.array_equal(row, expected), s
    freq = kmer_features(seqs, k).toarray()
    sums = freq.sum(1)
    assert np.allclose(sums[x.sum(1) > 0], 1.0) and np.all(sums[x.sum(1) == 0] == 0)


def test_fit_probe_picks_c_on_train_and_scores_test():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = (x[:, 0] + 0.1 * rng.normal(size=300) > 0).astype(int)
    res = fit_probe(x[:200], y[:200], x[200:], y[200:], Cs=(0.001, 1.0))
    assert res["accuracy"] > 0.85 and res["C"] in (0.001, 1.0) and 0 < res["cv_score"] <= 1
    assert {"mcc", "f1", "f1_macro", "auroc"} <= set(res)


def test_classification_metrics_binary_and_multiclass():
    m = classification_metrics(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]))
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(2 / 3)
    m3 = classification_metrics(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 2]))
    assert m3["f1"] == m3["f1_macro"]


def test_labels_for_ids():
    assert labels_for_ids(["a|1", "b|0"]) == ["1", "0"]
    assert labels_for_ids(["a", "b|x"], {"a": "pos", "b": "neg"}) == ["pos", "neg"]
    with pytest.raises(Exception, match="labels file"):
        labels_for_ids(["c"], {"a": "pos"})


def test_probe_cli_kmer_on_real_gue(tmp_path, capsys):
    root = shared_path("data", "nt_gue", "gue", "prom_core_tata")
    out = tmp_path / "out"
    rc = cli(
        [
            "probe",
            "--train",
            str(root / "dev.csv.gz"),
            "--test",
            str(root / "test.csv.gz"),
            "--features",
            "kmer",
            "--k",
            "4",
            "--metric",
            "mcc",
            "--cv",
            "3",
            "--name",
            "prom_core_tata",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    md = (out / "results.md").read_text()
    assert "prom_core_tata" in md and "4-mer LR" in md
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and float(rows[0]["value"]) > 0.2  # 4-mer MCC on TATA promoters is well above 0
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_probe_cli_reads_bioseq_embed_files_and_in_process(tmp_path):
    from bioseq.embed import EmbedOptions, embed_to_file, iter_fasta
    from bioseq.models import build_backbone
    from bioseq.tokenizers import get_tokenizer

    rng = np.random.default_rng(0)
    backbone = build_backbone(preset="hyenadna-tiny-1k", d_model=16, n_layer=1, d_inner=32, l_max=66)
    tok = get_tokenizer("dna")
    files = {}
    for split in ("train", "test"):
        fa = tmp_path / f"{split}.fa"
        with open(fa, "w") as fh:
            for i in range(30):
                body = "".join(rng.choice(list("ACGT"), 30))
                seq = body if i % 2 else "GC" * 15  # class 0 is trivially separable
                fh.write(f">{split}{i}|{i % 2}\n{seq}\n")
        h5 = tmp_path / f"{split}.h5"
        embed_to_file(
            lambda fa=fa: iter_fasta([fa]),
            h5,
            backbone,
            tok,
            EmbedOptions(pools=("mean", "last")),
            progress=False,
        )
        files[split] = (fa, h5)
    out = tmp_path / "h5"
    assert (
        cli(
            [
                "probe",
                "--train-embeddings",
                str(files["train"][1]),
                "--test-embeddings",
                str(files["test"][1]),
                "--pooling",
                "last",
                "--cv",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "| train |" in (out / "results.md").read_text()
    labels = tmp_path / "labels.tsv"
    labels.write_text(
        "id\tlabel\n" + "".join(f"{s}{i}\t{'ab'[i % 2]}\n" for s in ("train", "test") for i in range(30))
    )
    out2 = tmp_path / "h5_labels"
    assert (
        cli(
            [
                "probe",
                "--train-embeddings",
                str(files["train"][1]),
                "--test-embeddings",
                str(files["test"][1]),
                "--labels",
                str(labels),
                "--cv",
                "3",
                "--out",
                str(out2),
            ]
        )
        == 0
    )
    with open(out2 / "results.csv") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["value"]) == 1.0 and row["metric"] == "accuracy"
    backbone.save_pretrained(tmp_path / "bb")
    out3 = tmp_path / "inproc"
    assert (
        cli(
            [
                "probe",
                "--train",
                str(files["train"][0]),
                "--test",
                str(files["test"][0]),
                "--features",
                "embeddings",
                "--backbone",
                str(tmp_path / "bb"),
                "--cv",
                "3",
                "--out",
                str(out3),
            ]
        )
        == 0
    )
    # in-process mean pooling equals the embed engine's mean pooling on the same sequences
    from bioseq.finetune.probe import embedding_features, load_embedding_file

    ids, x_file = load_embedding_file(files["test"][1], "mean")
    seqs = [r.seq for r in iter_fasta([files["test"][0]])]
    x_inproc = embedding_features(backbone, tok, seqs, pooling="mean", batch_size=7)
    assert np.allclose(x_inproc, x_file, atol=1e-5)
