"""Real-data learning (slow): a tiny HyenaDNA from scratch on CPU vs the k-mer baselines of the same run.

Runs ``benchmarks/finetune_real.py`` (its table goes to benchmarks/RESULTS.md). The settings are the tuned
defaults of that script; the wall-clock budget is 15 minutes of training per dataset.
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
@pytest.mark.parametrize("name,floor", [("human_nontata_promoters", 4), ("human_enhancers_cohn", 4)])
def test_tiny_hyena_from_scratch_reaches_the_kmer_baseline(tmp_path, name, floor):
    shared_path("data", "genomic_benchmarks", "sequences", name, "test.tsv.gz")
    assert _script().main(["--datasets", name, "--out", str(tmp_path)]) == 0
    res = json.loads(Path(tmp_path, "finetune_real.json").read_text())["results"][name]
    assert res["hyena"]["fit_minutes"] <= 16.0
    assert res["hyena"]["test_accuracy"] >= res["kmer"][str(floor)]["accuracy"]
