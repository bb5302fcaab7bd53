"""Real-data learning (slow): a tiny HyenaDNA from scratch on CPU vs the k-mer baselines of the same run;
and a fast synthetic run of the same script's pretrain -> finetune path.

Runs ``benchmarks/finetune_real.py`` (its table goes to benchmarks/RESULTS.md). The settings are the tuned
defaults of that script; the wall-clock budget is 15 minutes per dataset for next-token pretraining on the
training split's sequences (40 M tokens, or 9 minutes on a slow machine) and finetuning together.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import REPO, shared_path


def _script():
    spec = importlib.util.spec_from_file_location("finetune_real", REPO / "benchmarks" / "finetune_real.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.parametrize("name", ["human_nontata_promoters", "human_enhancers_cohn"])
def test_tiny_hyena_reaches_the_4mer_baseline(tmp_path, name):
    shared_path("data", "genomic_benchmarks", "sequences", name, "test.tsv.gz")
    assert _script().main(["--datasets", name, "--out", str(tmp_path)]) == 0
    res = json.loads(Path(tmp_path, "finetune_real.json").read_text())["results"][name]
    h = res["hyena"]
    assert h["fit_minutes"] + (h["pretrain"] or {}).get("minutes", 0.0) <= 16.0
    assert h["test_accuracy"] >= res["kmer"]["4"]["accuracy"]


def test_pretrain_then_finetune_pipeline_runs(tmp_path):
    """The script's pretrain -> finetune path end to end on a small synthetic task (seconds, not slow);
    with a token budget, a second run gives the same numbers."""
    import argparse

    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("train", 160), ("test", 40)):
        with open(tmp_path / f"{split}.tsv", "w") as fh:
            fh.write("sequence\tlabel\n")
            for i in range(n):
                label = i % 2
                seq = "".join(rng.choice(list("ACGT"), 48))
                if label:  # a motif the classifier can find
                    seq = seq[:20] + "GGGCGGGG" + seq[28:]
                fh.write(f"{seq}\t{label}\n")
    mod = _script()
    args = argparse.Namespace(
        threads=1, batch_size=16, rc_augment=0.5, d_model=16, n_layer=1, d_inner=32, dropout=0.0,
        pooling="mean", select="loss", lr=2e-3, weight_decay=0.1, rc_average=True, epochs=1, minutes=1.0,
        pretrain_minutes=1.0, pretrain_tokens=4000, pretrain_lr=3e-3, out=str(tmp_path / "run"),
    )
    res = mod.model_run(tmp_path / "train.tsv", tmp_path / "test.tsv", 48, args)
    pre = res["pretrain"]
    assert pre["stopped_by"] == "tokens" and 4000 <= pre["tokens"] < 4000 + 16 * 49 and pre["steps"] == 6
    assert np.isfinite(res["pretrain"]["final_train_ppl"]) and res["pretrain"]["final_train_ppl"] < 16
    assert res["epochs_done"] == 1 and 0.0 <= res["test_accuracy"] <= 1.0
    assert res["tested_epoch"] == 0 and res["selected_on"] == "val/loss" and res["tested_val_loss"] > 0
    again = mod.model_run(tmp_path / "train.tsv", tmp_path / "test.tsv", 48,
                          argparse.Namespace(**{**vars(args), "out": str(tmp_path / "run2")}))
    for key in ("test_accuracy", "test_auroc", "tested_val_loss"):
        assert again[key] == res[key], key
    assert again["pretrain"]["final_train_ppl"] == pre["final_train_ppl"]
    last = mod.model_run(tmp_path / "train.tsv", tmp_path / "test.tsv", 48, argparse.Namespace(
        **{**vars(args), "select": "last", "epochs": 2, "out": str(tmp_path / "run3")}))
    assert last["selected_on"] == "last epoch" and last["tested_epoch"] == 1 == last["epochs_done"] - 1
    assert [h["epoch"] for h in last["val_history"]] == [0, 1]
    cmp = last["comparison"]
    assert cmp["rule"] == "val/loss" and cmp["epoch"] in (0, 1) and 0.0 <= cmp["test_accuracy"] <= 1.0
    assert res["comparison"] is None


@pytest.mark.parametrize("model,objective,width", [("mamba", "clm", 16), ("caduceus-ph", "mlm", 16),
                                                   ("dna-xlstm", "clm", 32)])
def test_every_family_runs_the_same_protocol(tmp_path, model, objective, width):
    """``--model``: each tiny family pretrains with its own objective and head (masked tokens for the
    bidirectional Caduceus), then finetunes through the same pipeline (synthetic task, seconds)."""
    import argparse

    import numpy as np

    rng = np.random.default_rng(1)
    for split, n in (("train", 64), ("test", 16)):
        with open(tmp_path / f"{split}.tsv", "w") as fh:
            fh.write("sequence\tlabel\n")
            for i in range(n):
                fh.write("".join(rng.choice(list("ACGT"), 37 + i % 5)) + f"\t{i % 2}\n")
    mod = _script()
    args = argparse.Namespace(
        model=model, threads=1, batch_size=16, rc_augment=0.5, d_model=width, n_layer=1, d_inner=32,
        dropout=0.1, pooling="mean", select="last", lr=2e-3, weight_decay=0.1, rc_average=True, epochs=1,
        minutes=2.0,
        pretrain_minutes=1.0, pretrain_tokens=1500, pretrain_lr=3e-3, out=str(tmp_path / "run"),
    )
    res = mod.model_run(tmp_path / "train.tsv", tmp_path / "test.tsv", 41, args)
    pre = res["pretrain"]
    assert pre["objective"] == objective and pre["stopped_by"] == "tokens" and pre["tokens"] >= 1500
    assert np.isfinite(pre["final_train_ppl"]) and 1.0 < pre["final_train_ppl"] < 64  # vocab ~12-16
    assert res["epochs_done"] == 1 and 0.0 <= res["test_accuracy"] <= 1.0
    assert res["params"] > 0 and mod.MODELS[model][0] in ("mamba", "caduceus", "xlstm")
