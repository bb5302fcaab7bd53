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
