"""Killed and stopped training runs of the real console script, and their resumes.

For ``bioseq pretrain fit`` and ``bioseq finetune fit`` (tiny models, data made here, deterministic mode):

* ``SIGKILL`` mid-epoch (after a periodic checkpoint, with steps done after it), then ``--ckpt_path last``:
  the resumed run's losses equal the uninterrupted run's from the checkpoint's step on (|diff| <= 1e-6,
  the same arithmetic in the same order: in practice bit-identical).
* ``SIGTERM`` mid-epoch: the run stops at the next batch boundary, saves ``last.ckpt`` there, says so on
  one line and exits 143; the resume reproduces the uninterrupted losses the same way.
* A NaN loss (weights poisoned at a given step by a test callback) stops the run before the update with
  one line naming the step and the last checkpoint, exit 2; that checkpoint holds finite weights.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from bioseq import synthetic
from tests.conftest import REPO

BIOSEQ = REPO / ".venv" / "bin" / "bioseq"
STEPS = 24
TOL = 1e-6
CB = "--trainer.callbacks+=tests.lightning_callbacks."
TINY = '{"d_model": 32, "n_layer": 1, "l_max": 130}'



def env() -> dict:
    drop = ("BIOSEQ_DEBUG", "BIOSEQ_VERBOSE", "BIOSEQ_RUN_VERSION", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE")
    e = {k: v for k, v in os.environ.items() if k not in drop}
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("data")
    config = dataclasses.replace(synthetic.SyntheticConfig(), chromosomes=(("c1", 30_000), ("c2", 20_000)))
    fasta = synthetic.write_fasta(out / "tiny.fa", synthetic.generate_genome(config)[0])
    g = torch.Generator().manual_seed(0)
    rows = ["sequence\tlabel"]
    for i in range(480):
        seq = "".join("ACGT"[int(j)] for j in torch.randint(4, (40,), generator=g))
        label = i % 2
        if label:
            seq = seq[:10] + "GATTACA" + seq[17:]
        rows.append(f"{seq}\t{label}")
    table = out / "train.tsv"
    table.write_text("\n".join(rows) + "\n")
    return {"fasta": fasta, "table": table}


def command(kind: str, data: dict, root: Path, *extra: str) -> list[str]:
    common = ["--trainer.accelerator", "cpu", "--trainer.devices", "1",
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--trainer.default_root_dir", str(root),
              "--seed_everything", "7", "--trainer.deterministic", "true", "--trainer.max_steps", str(STEPS),
              "--trainer.log_every_n_steps", "1",
              "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
              "--trainer.callbacks.every_n_train_steps", "4"]
    if kind == "pretrain":
        args = ["--model.arch", "hyena", "--model.backbone_config", TINY,
                "--model.lr", "3e-3", "--model.warmup_steps", "2", "--model.total_steps", str(STEPS),
                "--data.class_path", "bioseq.datamodules.genome.GenomeDataModule",
                "--data.fasta", str(data["fasta"]),
                "--data.max_length", "64", "--data.batch_size", "4", "--data.add_eos", "true"]
    else:
        args = ["--model.backbone", "hyenadna-tiny-1k", "--model.backbone_overrides", TINY,
                "--model.lr", "3e-3", "--model.dropout", "0.1", "--data.train_file", str(data["table"]),
                "--data.batch_size", "8", "--test_after_fit", "false"]
    return [str(BIOSEQ), kind, "fit", *args, *common, *extra]


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env(), timeout=900)


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    with open(run_dir / "metrics.csv") as fh:
        for row in csv.DictReader(fh):
            if row.get("train/loss"):
                out[int(row["step"])] = float(row["train/loss"])
    return out


def checkpoint_steps(run_dir: Path) -> list[int]:
    steps = []
    for p in (run_dir / "checkpoints").glob("epoch=*-step=*.ckpt"):
        steps.append(int(p.stem.rsplit("step=", 1)[1].split("-")[0]))
    return sorted(steps)


def start_and_interrupt(argv: list[str], cwd: Path, run_dir: Path, sig: int, after_step: int):
    """Start the run, wait for a periodic checkpoint at ``after_step`` or later, let ~2 more steps run,
    then send ``sig``; returns the finished process's (returncode, stderr)."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 600
    while not any(s >= after_step for s in checkpoint_steps(run_dir)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"run ended before its step-{after_step} checkpoint: {err[-3000:]}")
        time.sleep(0.05)
    time.sleep(0.5)  # Throttle(0.25): about two more steps, not checkpointed
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=600)
    return proc.returncode, err


def compare(reference: dict[int, float], resumed: dict[int, float], first: int) -> None:
    assert sorted(resumed) == list(range(first, STEPS)), sorted(resumed)
    worst = max(abs(resumed[s] - reference[s]) for s in resumed)
    assert worst <= TOL, {s: (resumed[s], reference[s]) for s in resumed}
    assert len({round(v, 6) for v in resumed.values()}) > 1  # distinct batches, not one repeated


def ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


@pytest.fixture(scope="module", params=["pretrain", "finetune"])
def reference(request, data, tmp_path_factory):
    kind = request.param
    root = tmp_path_factory.mktemp(f"{kind}-full")
    out = run(command(kind, data, root / "runs", f"{CB}Throttle", "--trainer.callbacks.seconds", "0"), root)
    assert out.returncode == 0, out.stderr[-3000:]
    ref = losses(root / "runs" / "version_0")
    assert sorted(ref) == list(range(STEPS))
    return kind, ref


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_interrupted_run_resumes_with_the_same_losses(reference, data, tmp_path, sig):
    kind, ref = reference
    root = tmp_path / "runs"
    argv = command(kind, data, root, f"{CB}Throttle", "--trainer.callbacks.seconds", "0.25")
    code, err = start_and_interrupt(argv, tmp_path, root / "version_0", sig, after_step=8)
    last = root / "version_0" / "checkpoints" / "last.ckpt"
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        start = ckpt_step(last)
        assert start == max(checkpoint_steps(root / "version_0")) and start % 4 == 0
    else:
        assert code == 143, err[-3000:]
        lines = err.strip().splitlines()
        stop = [line for line in lines if "stopped by SIGTERM" in line]
        assert len(stop) == 1 and str(last) in stop[0] and "Traceback" not in err, err[-3000:]
        start = ckpt_step(last)
        assert f"after step {start};" in stop[0]
    assert 8 <= start < STEPS - 2  # mid-epoch: an epoch has far more batches than STEPS
    out = run(argv[:-2] + ["--trainer.callbacks.seconds", "0", "--ckpt_path", "last"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming from {last}" in out.stderr
    compare(ref, losses(root / "version_1"), start)


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(data, tmp_path, kind):
    root = tmp_path / "runs"
    out = run(command(kind, data, root, f"{CB}PoisonAt", "--trainer.callbacks.step", "10"), tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    last = root / "version_0" / "checkpoints" / "last.ckpt"
    lines = out.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"bioseq {kind}: error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "training loss is nan at step 10" in errors[0] and str(last) in errors[0], errors[0]
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 8
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert json.dumps(sorted(checkpoint_steps(root / "version_0"))) == "[8]"
