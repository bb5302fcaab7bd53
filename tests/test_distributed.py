"""Two-process DDP (gloo, CPU) through the real ``bioseq pretrain fit`` / ``bioseq finetune fit`` commands.

Each test runs the same tiny job twice: one process with batch 2B, and ``--trainer.strategy ddp
--trainer.devices 2 --trainer.accelerator cpu`` with batch B per rank (the same global batch). A test
callback writes the dataset positions (``batch["index"]``) of every batch each rank sees. Checked:

* every rank sees disjoint items, and at each step the two ranks' items together are exactly the single
  process's items of that step (training), or every validation item exactly once (no padding duplicates);
* the logged training loss curve matches the single-process curve within ``LOSS_TOL`` (absolute): the
  same arithmetic up to the order of the gradient all-reduce (measured differences are ~1e-7);
* validation metrics reduced over the ranks (finetune: accuracy, MCC, F1, macro-F1, AUROC, loss;
  pretrain: perplexity) equal the single-process values within ``METRIC_TOL``.

The commands mirror the README's "Many GPUs and nodes" launch lines.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from bioseq import synthetic
from tests.conftest import REPO

BIOSEQ = REPO / ".venv" / "bin" / "bioseq"
STEPS = 6
LOSS_TOL = 1e-4
METRIC_TOL = 1e-5
TINY = '{"d_model": 32, "n_layer": 1, "l_max": 130, "embed_dropout": 0.0}'


def env() -> dict:
    drop = ("BIOSEQ_DEBUG", "BIOSEQ_VERBOSE", "BIOSEQ_RUN_VERSION", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE",
            "MASTER_ADDR", "MASTER_PORT")
    e = {k: v for k, v in os.environ.items() if k not in drop}
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def launch(kind: str, args: list[str], root: Path, devices: int, record: Path) -> Path:
    """Run ``bioseq <kind> fit`` with ``devices`` CPU processes; returns the run directory."""
    dist = ["--trainer.strategy", "ddp"] if devices > 1 else []
    argv = [str(BIOSEQ), kind, "fit", *args, "--trainer.accelerator", "cpu",
            "--trainer.devices", str(devices), *dist, "--trainer.default_root_dir", str(root),
            "--seed_everything", "7",
            "--trainer.deterministic", "true", "--trainer.max_steps", str(STEPS),
            "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--trainer.callbacks+=tests.lightning_callbacks.RecordBatches",
            "--trainer.callbacks.prefix", str(record)]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=root.parent, env=env(), timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "Traceback" not in out.stderr
    return root / "version_0"


def batches(record: Path, rank: int, stage: str) -> list[dict]:
    path = Path(f"{record}.rank{rank}.jsonl")
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["stage"] == stage]


def metrics(run_dir: Path) -> tuple[dict[int, float], dict[str, float]]:
    """(train/loss by step, the last row's val/* values)."""
    train, val = {}, {}
    with open(run_dir / "metrics.csv") as fh:
        for row in csv.DictReader(fh):
            if row.get("train/loss"):
                train[int(row["step"])] = float(row["train/loss"])
            for k, v in row.items():
                if k.startswith("val/") and v:
                    val[k] = float(v)
    return train, val


def check_sharding(single: Path, ddp: Path) -> None:
    one = batches(single, 0, "train")
    ranks = [batches(ddp, r, "train") for r in (0, 1)]
    assert len(one) == STEPS and all(len(r) == STEPS for r in ranks)
    seen = [set(), set()]
    for step in range(STEPS):
        a, b = set(ranks[0][step]["index"]), set(ranks[1][step]["index"])
        assert not a & b, step  # disjoint within the step
        assert sorted(a | b) == sorted(one[step]["index"]), step  # together: the single process's batch
        seen[0] |= a
        seen[1] |= b
    assert not seen[0] & seen[1]  # and over the whole run
    assert len({r["pid"] for r in ranks[0]} | {r["pid"] for r in ranks[1]}) == 2  # two processes


def check_validation_items(single: Path, ddp: Path) -> None:
    one = [i for r in batches(single, 0, "val") for i in r["index"]]
    parts = [[i for r in batches(ddp, rank, "val") for i in r["index"]] for rank in (0, 1)]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(one) == sorted(set(one))  # each item once, none padded


def check_curves(single_dir: Path, ddp_dir: Path, val_keys: list[str]) -> dict:
    (t1, v1), (t2, v2) = metrics(single_dir), metrics(ddp_dir)
    assert sorted(t1) == sorted(t2) == list(range(STEPS))
    diffs = {s: abs(t1[s] - t2[s]) for s in t1}
    assert max(diffs.values()) <= LOSS_TOL, {s: (t1[s], t2[s]) for s in t1}
    assert t1[STEPS - 1] != t1[0]  # the curve moves
    for key in val_keys:
        assert key in v1 and key in v2, (key, sorted(v1))
        assert v2[key] == pytest.approx(v1[key], abs=METRIC_TOL), key
    return {"max_loss_diff": max(diffs.values())}


@pytest.mark.slow
def test_ddp_pretrain_matches_single_process(tmp_path):
    config = dataclasses.replace(synthetic.SyntheticConfig(), chromosomes=(("c1", 20_000), ("c2", 12_000)))
    fasta = synthetic.write_fasta(tmp_path / "g.fa", synthetic.generate_genome(config)[0])

    def args(batch: int) -> list[str]:
        return ["--model.arch", "hyena", "--model.backbone_config", TINY, "--model.lr", "3e-3",
                "--model.warmup_steps", "2", "--model.total_steps", str(STEPS),
                "--data.class_path", "bioseq.datamodules.genome.GenomeDataModule", "--data.fasta", str(fasta),
                "--data.max_length", "64", "--data.batch_size", str(batch), "--data.add_eos", "true",
                "--data.val_fraction", "0.1", "--data.max_eval_windows", "21",
                "--trainer.val_check_interval", str(STEPS)]

    single = launch("pretrain", args(8), tmp_path / "one", 1, tmp_path / "one-batches")
    ddp = launch("pretrain", args(4), tmp_path / "two", 2, tmp_path / "two-batches")
    check_sharding(tmp_path / "one-batches", tmp_path / "two-batches")
    check_validation_items(tmp_path / "one-batches", tmp_path / "two-batches")
    print(check_curves(single, ddp, ["val/ppl", "val/loss", "val/tokens"]))


@pytest.mark.slow
def test_ddp_finetune_matches_single_process(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = ["sequence\tlabel"]
    for i in range(470):  # a third positive: 47 validation items, so the ranks hold 24 and 23
        seq = "".join("ACGT"[int(j)] for j in torch.randint(4, (36,), generator=g))
        label = int(i % 3 == 0)
        rows.append(f"{seq[:8] + 'GATTACA' + seq[15:] if label else seq}\t{label}")
    table = tmp_path / "train.tsv"
    table.write_text("\n".join(rows) + "\n")

    def args(batch: int) -> list[str]:
        return ["--model.backbone", "hyenadna-tiny-1k", "--model.backbone_overrides", TINY,
                "--model.lr", "3e-3", "--data.train_file", str(table), "--data.batch_size", str(batch),
                "--data.eval_batch_size", "5",
                "--test_after_fit", "false", "--trainer.val_check_interval", str(STEPS)]

    single = launch("finetune", args(8), tmp_path / "one", 1, tmp_path / "one-batches")
    ddp = launch("finetune", args(4), tmp_path / "two", 2, tmp_path / "two-batches")
    check_sharding(tmp_path / "one-batches", tmp_path / "two-batches")
    check_validation_items(tmp_path / "one-batches", tmp_path / "two-batches")
    assert len({i for r in batches(tmp_path / "one-batches", 0, "val") for i in r["index"]}) == 47
    print(check_curves(single, ddp, ["val/accuracy", "val/mcc", "val/f1", "val/f1_macro", "val/auroc",
                                     "val/loss"]))
