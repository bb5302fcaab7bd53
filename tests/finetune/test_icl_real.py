"""Soft-prompt and k-shot sweeps on real data (slow): ``benchmarks/icl_real.py`` with its full protocol;
the DHFR homolog-context curve: ``benchmarks/icl_protein.py``.

A tiny HyenaDNA pretrained on the training split (the real-data check's protocol) is evaluated frozen by
``bioseq soft-prompt`` (K = 0, 2, 32, 128) and ``bioseq icl kshot`` (k = 0, 1, 2, 4) on the 80/20 split of
``human_nontata_promoters`` and ``human_enhancers_cohn``. The sweeps must run to completion, write their
tables and plots, and soft prompting with K >= 32 must beat K = 0 on the held-out test split.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import REPO, shared_path


def _script():
    spec = importlib.util.spec_from_file_location("icl_real", REPO / "benchmarks" / "icl_real.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.parametrize("name", ["human_nontata_promoters", "human_enhancers_cohn"])
def test_soft_prompt_and_kshot_sweeps_on_real_data(tmp_path, name):
    """The full protocol of benchmarks/icl_real.py (label tokens A/G: the pretraining data holds no N)."""
    shared_path("data", "genomic_benchmarks", "sequences", name, "test.tsv.gz")
    assert _script().main(["--datasets", name, "--out", str(tmp_path)]) == 0
    res = json.loads(Path(tmp_path, "icl_real.json").read_text())["results"][name]
    for sweep in ("soft_prompt", "kshot"):
        for suffix in ("csv", "md", "png"):
            assert (tmp_path / name / sweep / f"results.{suffix}").stat().st_size > 0
    assert sorted(int(k) for k in res["soft_prompt"]) == [0, 2, 32, 128]
    assert sorted(int(k) for k in res["kshot"]) == [0, 1, 2, 4]
    assert res["soft_prompt_beats_k0"], res["soft_prompt"]


def _protein_script():
    spec = importlib.util.spec_from_file_location("icl_protein", REPO / "benchmarks" / "icl_protein.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_dhfr_perplexity_falls_with_homologs_in_context(tmp_path):
    """A tiny protein model trained 8 minutes in homolog-context mode: held-out targets are less perplexing
    with 16 homologs in context than with none (the curve 0, 1, 4, 16, 64 is written as tables and a plot)."""
    alignment = shared_path("data", "protein", "DHFR_ecoli_homologs_plmc.a2m.gz")
    assert _protein_script().main(["--alignment", str(alignment), "--minutes", "8", "--threads", "1",
                                   "--out", str(tmp_path)]) == 0
    res = json.loads(Path(tmp_path, "icl_protein.json").read_text())
    assert sorted(int(k) for k in res["curve"]) == [0, 1, 4, 16, 64]
    for suffix in ("csv", "md", "png"):
        assert (tmp_path / "homology" / f"results.{suffix}").stat().st_size > 0
    assert res["curve"]["16"] < res["curve"]["0"], res["curve"]


def test_script_runs_end_to_end_on_a_tiny_synthetic_dataset(tmp_path):
    """The whole script (split, pretraining through ``finetune_real.pretrain_lm``, both sweeps, JSON and
    table) on a synthetic two-class table, in seconds: the fast suite's guard that the script still runs."""
    import gzip

    import numpy as np

    rng = np.random.default_rng(0)
    table = tmp_path / "data" / "toy" / "test.tsv.gz"
    table.parent.mkdir(parents=True)
    with gzip.open(table, "wt") as fh:
        fh.write("seq\tlabel\n")
        for i in range(60):
            fh.write("".join(rng.choice(list("ACGT" if i % 2 else "AAGT"), 30 + i % 7)) + f"\t{i % 2}\n")
    out = tmp_path / "out"
    argv = ["--datasets", "toy", "--data-dir", str(tmp_path / "data"), "--out", str(out), "--threads", "1",
            "--pretrain-minutes", "1", "--pretrain-tokens", "3000", "--prompt-tokens", "0", "2",
            "--shots", "0", "1", "--epochs", "1", "--patience", "1", "--batch-size", "8"]
    assert _script().main(argv) == 0
    res = json.loads((out / "icl_real.json").read_text())["results"]["toy"]
    assert res["pretrain"]["objective"] == "clm" and res["pretrain"]["stopped_by"] == "tokens"
    assert sorted(int(k) for k in res["soft_prompt"]) == [0, 2]
    assert sorted(int(k) for k in res["kshot"]) == [0, 1]
    for sweep in ("soft_prompt", "kshot"):
        assert (out / "toy" / sweep / "results.csv").stat().st_size > 0
    assert isinstance(res["soft_prompt_beats_k0"], bool)
    # --pretrained reuses that backbone (no second pretraining); --label-tokens reaches both commands
    again = ["--label-tokens", "C,G", "--pretrained", str(out), "--out", str(tmp_path / "again")]
    assert _script().main([*argv[:argv.index("--out")], *argv[argv.index("--out") + 2:], *again]) == 0
    res2 = json.loads((tmp_path / "again" / "icl_real.json").read_text())["results"]["toy"]
    assert res2["pretrain"] == res["pretrain"]
    assert not (tmp_path / "again" / "toy" / "backbone").exists()
    for sweep in ("soft_prompt", "kshot"):
        assert "C,G" in (tmp_path / "again" / "toy" / sweep / "results.csv").read_text()
