"""``bioseq demo`` end to end at a toy size (the full-size run is the README's demo)."""

from __future__ import annotations

import json

import torch

from bioseq import cli


def test_demo_small_run(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--steps", "3", "--max-length", "128", "--batch-size", "4",
            "--eval-windows", "4", "--genome-scale", "0.02", "--no-progress"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "bioseq demo summary", "val ppl"):
        assert step in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3
    assert summary["val_ppl_after"] < summary["val_ppl_before"]  # 3 steps at lr 3e-3 already help
    assert 3.0 < summary["markov_order3_ppl"] < summary["markov_order0_ppl"] < 4.0
    for name in ("genome.fa", "splits.bed", "features.bed", "motif_train.tsv", "motif_test.tsv"):
        assert (out / "data" / name).is_file()

    from bioseq import models
    backbone = models.load_backbone(str(out / "model")).eval()
    assert models.load_tokenizer_for(str(out / "model")).name == "dna"
    assert backbone(torch.tensor([[7, 8, 9, 10]])).shape == (1, 4, 128)

    # a second run reuses the generated genome
    assert cli.main(argv[:-1] + ["--steps", "1", "--no-progress"]) == 0
    assert "synthetic genome reused" in capsys.readouterr().out
