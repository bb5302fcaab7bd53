"""Suite resolution, results tables/chart, resumability, and `bioseq benchmark` end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from bioseq.cli import main as cli
from bioseq.datamodules.benchmark_files import NT_TASKS, read_table, stratified_split
from bioseq.finetune import suite
from tests.conftest import shared_path


def test_resolve_named_suites_and_metrics():
    gb = suite.resolve_suite("genomic-benchmarks")
    assert len(gb) == 9 and {i.metric for i in gb} == {"accuracy"}
    nt = suite.resolve_suite("nucleotide-transformer")
    assert len(nt) == 18
    assert {i.name: i.metric for i in nt} == {n: t.metric for n, t in NT_TASKS.items()}
    mixed = suite.resolve_suite("human_nontata_promoters,H3")
    assert [i.name for i in mixed] == ["human_nontata_promoters", "H3"] and mixed[1].metric == "mcc"
    with pytest.raises(Exception, match="unknown suite item"):
        suite.resolve_suite(["no_such_dataset"])


def test_write_results_table_and_png(tmp_path):
    rows = [
        {
            "dataset": "human_nontata_promoters",
            "seed": s,
            "backbone": "bb",
            "metric": "accuracy",
            "value": v,
            "best_val": v,
            "minutes": 1.0,
            "mcc": 0.5,
        }
        for s, v in enumerate([0.90, 0.92])
    ]
    rows.append(
        {
            "dataset": "H3",
            "seed": 0,
            "backbone": "bb",
            "metric": "mcc",
            "value": 0.7,
            "best_val": 0.7,
            "minutes": 1.0,
        }
    )
    suite.write_results(rows, tmp_path, baselines={"human_nontata_promoters": {"value": 0.85}}, label="tiny")
    md = (tmp_path / "results.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| human_nontata_promoters"))
    assert "0.910 ± 0.014 (2)" in line and "0.850" in line and "0.966" in line  # ours, k-mer, HyenaDNA paper
    h3 = next(x for x in md.splitlines() if x.startswith("| H3 "))
    assert "0.700 ± 0.000 (1)" in h3 and "0.799" in h3  # Caduceus-PS MCC
    assert "arXiv:2403.03234" in md and "arXiv:2306.15794" in md
    with open(tmp_path / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 3
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_run_suite_is_resumable(tmp_path, monkeypatch):
    calls = []

    def fake_run(item, seed, backbone, run_dir, data_args, overrides):
        calls.append((item.name, seed))
        if len(calls) == 3:
            raise RuntimeError("killed")
        return {
            "dataset": item.name,
            "seed": seed,
            "backbone": backbone,
            "metric": item.metric,
            "value": 0.5 + seed / 10,
            "best_val": 0.5,
            "minutes": 0.0,
        }

    monkeypatch.setattr(suite, "_run_one", fake_run)
    items = ["human_nontata_promoters", "human_enhancers_cohn"]
    with pytest.raises(RuntimeError):
        suite.run_suite(items, "bb", tmp_path, seeds=(0, 1), kmer=None, log=lambda *_: None)
    assert calls == [
        ("human_nontata_promoters", 0),
        ("human_nontata_promoters", 1),
        ("human_enhancers_cohn", 0),
    ]
    calls.clear()
    rows = suite.run_suite(items, "bb", tmp_path, seeds=(0, 1), kmer=None, log=lambda *_: None)
    assert calls == [("human_enhancers_cohn", 0), ("human_enhancers_cohn", 1)]  # finished runs skipped
    assert len(rows) == 4 and (tmp_path / "results.md").exists()
    assert (
        json.loads((tmp_path / "runs" / "human_enhancers_cohn" / "seed1" / "result.json").read_text())["seed"]
        == 1
    )


def _split_real(tmp_path, name: str, n: int | None = None):
    data = read_table(shared_path("data", "genomic_benchmarks", "sequences", name, "test.tsv.gz"))
    if n is not None:  # a stratified subsample keeps the CPU test short
        _, keep = stratified_split(data.labels, n / len(data), 0)
        data = data.subset(keep)
    tr, te = stratified_split(data.labels, 0.2, 0)
    files = {}
    for split, idx in (("train", tr), ("test", te)):
        path = tmp_path / name / f"{split}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as fh:
            fh.write("seq\tlabel\n" + "".join(f"{data.sequences[i]}\t{data.labels[i]}\n" for i in idx))
        files[split] = path
    return files


def test_benchmark_cli_tiny_run(tmp_path, capsys):
    from bioseq.models import build_backbone

    files = _split_real(tmp_path, "human_nontata_promoters", n=200)
    # any backbone directory of the contract works; a tiny one keeps this test short
    build_backbone(preset="hyenadna-tiny-1k", d_model=16, n_layer=1, d_inner=32).save_pretrained(
        tmp_path / "bb"
    )
    out = tmp_path / "out"
    args = [
        "benchmark",
        "human_nontata_promoters",
        "--backbone",
        str(tmp_path / "bb"),
        "--seeds",
        "0",
        "--data-dir",
        str(tmp_path),
        "--out",
        str(out),
        "--kmer",
        "3",
        "--override",
        "trainer.max_epochs=1",
        "--override",
        "trainer.limit_train_batches=2",
        "--override",
        "data.batch_size=16",
    ]
    assert cli(args) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["value"]) <= 1.0 and rows[0]["auroc"]
    assert (out / "results.png").exists() and "3-mer LR" in (out / "results.md").read_text()
    assert files["train"].exists()
    assert cli(args) == 0  # resumed: nothing re-run
    assert "[skip] human_nontata_promoters seed 0" in capsys.readouterr().out


@pytest.mark.slow
def test_benchmark_and_probe_two_real_datasets(tmp_path):
    from bioseq.models import build_backbone

    names = ["human_nontata_promoters", "human_enhancers_cohn"]
    for name in names:
        _split_real(tmp_path, name, n=1000)
    bb = tmp_path / "bb"
    build_backbone(preset="hyenadna-tiny-1k", d_model=32, n_layer=2, d_inner=64).save_pretrained(bb)
    out = tmp_path / "bench"
    assert (
        cli(
            [
                "benchmark",
                ",".join(names),
                "--backbone",
                str(bb),
                "--seeds",
                "0",
                "1",
                "--data-dir",
                str(tmp_path),
                "--out",
                str(out),
                "--override",
                "trainer.max_epochs=2",
                "--override",
                "data.batch_size=32",
            ]
        )
        == 0
    )
    md = (out / "results.md").read_text()
    for name in names:
        assert f"| {name} |" in md
    assert len(list(csv.DictReader(open(out / "results.csv")))) == 4
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    d = tmp_path / "human_nontata_promoters"
    for feats in (["--features", "kmer"], ["--features", "embeddings", "--backbone", str(bb)]):
        pout = tmp_path / ("probe_" + feats[1])
        assert (
            cli(
                [
                    "probe",
                    "--train",
                    str(d / "train.tsv"),
                    "--test",
                    str(d / "test.tsv"),
                    *feats,
                    "--out",
                    str(pout),
                ]
            )
            == 0
        )
        acc = float(next(csv.DictReader(open(pout / "results.csv")))["value"])
        assert np.isfinite(acc) and acc > (0.7 if feats[1] == "kmer" else 0.5)
        assert (pout / "results.png").exists()


def test_plot_titles_wrap_long_checkpoint_paths():
    from bioseq.finetune.sweep_report import wrap_title

    title = ("Soft prompting: test accuracy against prompt tokens K "
             "(/work/runs/icl/full-cohn/cohn/backbone_dir)")
    lines = wrap_title(title).splitlines()
    assert len(lines) == 2 and all(len(line) <= 80 for line in lines)
    assert "".join(lines).replace(" ", "") == title.replace(" ", "")
    assert wrap_title("short") == "short"
