"""benchmarks/run_all.py: sections run in subprocesses, a dated report, RESULTS.md keeps the latest block."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_run_all():
    spec = importlib.util.spec_from_file_location("run_all", REPO / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_and_results_block_replaced_not_appended(tmp_path, monkeypatch):
    run_all = load_run_all()
    outputs = iter([("table one", 1.0, 0), ("table two", 1.0, 3)])
    monkeypatch.setattr(run_all, "run_section", lambda args, limit: next(outputs))
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nkept text\n")
    args = ["--only", "tokenizer", "--reports", str(tmp_path / "r"), "--results", str(results)]
    assert run_all.main(args) == 0
    first = results.read_text()
    assert "kept text" in first and "table one" in first and first.count(run_all.BEGIN) == 1
    assert run_all.main(args) == 1
    second = results.read_text()
    assert "table two" in second and "table one" not in second and second.count(run_all.BEGIN) == 1
    assert "exit 3" in second
    assert len(list((tmp_path / "r").glob("*.md"))) == 1


def test_a_real_section_runs(tmp_path):
    run_all = load_run_all()
    out, seconds, rc = run_all.run_section(["tokenizer_speed.py", "--mb", "0.5", "--baseline-mb", "0.1",
                                            "--repeats", "1"], 300)
    assert rc in (0, 1), out  # 1: the script's own throughput goals are not met at this tiny size
    assert "bioseq MB/s" in out and "dna encode" in out
