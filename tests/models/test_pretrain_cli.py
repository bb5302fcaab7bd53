"""``bioseq pretrain`` (LightningCLI): help, print_config, fit/validate on a tiny genome, bad input, and a
mid-epoch resume that reproduces the uninterrupted run's losses."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from bioseq import cli, synthetic

TINY_BACKBONE = '{"d_model": 32, "n_layer": 1, "l_max": 130}'


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("genome")
    config = dataclasses.replace(synthetic.SyntheticConfig(), chromosomes=(("c1", 30_000), ("c2", 20_000)))
    genome, _ = synthetic.generate_genome(config)
    return synthetic.write_fasta(out / "tiny.fa", genome)


def base_args(fasta: Path, root: Path, *extra: str) -> list[str]:
    return [
        "--model.arch", "hyena", "--model.backbone_config", TINY_BACKBONE, "--model.lr", "3e-3",
        "--model.warmup_steps", "2", "--model.total_steps", "12",
        "--data.class_path", "bioseq.datamodules.genome.GenomeDataModule", "--data.fasta", str(fasta),
        "--data.max_length", "64", "--data.batch_size", "4", "--data.add_eos", "true",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(root), *extra,
    ]


def run(argv: list[str]):
    from bioseq.commands.pretrain import build_cli

    return build_cli(argv)


def test_help_lists_subcommands(capsys):
    assert cli.main(["pretrain", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: bioseq [-v] pretrain" in out and "{fit,validate,test}" in out and "predict" not in out
    assert "hyenadna-tiny-hg38" in out  # the shipped configs are listed


def test_fit_help_is_lightning_full_help(capsys):
    with pytest.raises(SystemExit) as exc:
        run(["fit", "--help"])
    assert exc.value.code in (0, None)
    assert "--trainer.max_steps" in capsys.readouterr().out


def test_print_config(genome, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run(["fit", *base_args(genome, tmp_path), "--print_config"])
    assert exc.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["backbone_config"] == {"d_model": 32, "n_layer": 1, "l_max": 130}
    assert cfg["data"]["class_path"] == "bioseq.datamodules.genome.GenomeDataModule"
    assert cfg["data"]["init_args"]["fasta"] == str(genome)


def test_fit_then_validate_from_checkpoint(genome, tmp_path):
    args = base_args(genome, tmp_path, "--data.val_fraction", "0.2", "--data.max_eval_windows", "8",
                     "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
                     "--trainer.logger", "false")
    c = run(["fit", *args])
    assert c.trainer.global_step == 3
    ppl = c.trainer.callback_metrics["val/ppl"].item()
    assert 1.0 < ppl < 16.0
    ckpt = next(Path(tmp_path).rglob("*.ckpt"))
    v = run(["validate", *args, "--ckpt_path", str(ckpt)])
    assert v.trainer.callback_metrics["val/ppl"].item() == pytest.approx(ppl, rel=1e-5)


def test_bad_input_is_one_line_exit_2(tmp_path):
    argv = ["pretrain", "fit", *base_args(tmp_path / "missing.fa", tmp_path), "--trainer.fast_dev_run", "1"]
    out = subprocess.run([sys.executable, "-m", "bioseq.cli", *argv], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("bioseq pretrain: error:")]
    assert len(errors) == 1 and "missing.fa" in errors[0]


def losses(log_dir: Path) -> dict[int, float]:
    rows = {}
    for path in log_dir.rglob("metrics.csv"):
        with open(path) as fh:
            for row in csv.DictReader(fh):
                if row.get("train/loss"):
                    rows[int(row["step"])] = float(row["train/loss"])
    return rows


def test_mid_epoch_resume_reproduces_losses(genome, tmp_path):
    def args(name, *extra):
        root = tmp_path / name
        return ["fit", *base_args(genome, root, "--seed_everything", "7", "--trainer.deterministic", "true",
                                  "--trainer.max_steps", "8", "--trainer.log_every_n_steps", "1",
                                  "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
                                  "--trainer.logger.save_dir", str(root), *extra)]

    checkpoints = tmp_path / "ckpts"
    full = run(args("full", "--trainer.callbacks", "lightning.pytorch.callbacks.ModelCheckpoint",
                    "--trainer.callbacks.dirpath", str(checkpoints),
                    "--trainer.callbacks.every_n_train_steps", "4", "--trainer.callbacks.save_top_k", "-1"))
    batches_per_epoch = len(full.trainer.train_dataloader)
    assert batches_per_epoch > 8  # the checkpoint at step 4 is mid-epoch
    mid = next(p for p in checkpoints.glob("*.ckpt") if "step=4" in p.name)
    run(args("resumed", "--ckpt_path", str(mid)))
    uninterrupted, resumed = losses(tmp_path / "full"), losses(tmp_path / "resumed")
    assert sorted(resumed) == [4, 5, 6, 7] and sorted(uninterrupted) == list(range(8))
    for step in resumed:
        assert resumed[step] == pytest.approx(uninterrupted[step], abs=1e-6), step
    assert len({round(v, 6) for v in resumed.values()}) == 4  # distinct batches, not a repeated one


# ---------------------------------------------------------------------------------- slow: real data
def val_curve(log_dir: Path) -> list[tuple[int, float]]:
    rows = []
    for path in log_dir.rglob("metrics.csv"):
        with open(path) as fh:
            rows += [(int(r["step"]), float(r["val/ppl"])) for r in csv.DictReader(fh) if r.get("val/ppl")]
    return sorted(rows)


def short_run(config: str, root: Path, steps: int, *extra: str):
    argv = ["fit", "--config", str(Path(__file__).resolve().parents[2] / "configs/pretrain" / config),
            "--trainer.max_steps", str(steps), "--model.total_steps", str(steps),
            "--trainer.val_check_interval", str(steps // 2), "--trainer.log_every_n_steps", "1",
            "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(root),
            "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false", *extra]
    c = run(argv)
    train = [v for _, v in sorted(losses(root).items())]
    curve = val_curve(root)
    print(f"\n{config}: {c.trainer.global_step} steps; train loss {train[0]:.3f} -> {train[-1]:.3f}; "
          f"val ppl by step {curve}")
    return c, train, curve


@pytest.mark.slow
def test_protein_pretraining_learns(shared, tmp_path):
    fasta = shared("data", "protein", "ecoli_k12_proteome_GCF_000005845.2.faa.gz")
    c, train, curve = short_run("hyena-tiny-protein-ecoli.yaml", tmp_path, 300, "--data.fasta", str(fasta),
                                "--data.batch_size", "8", "--data.max_length", "256")
    assert c.trainer.global_step == 300
    # from ~ln(35) = 3.56 at step 0 to about the residue entropy (~2.9 nats) within 300 steps
    assert np.mean(train[-5:]) < train[0] - 0.5
    assert curve[-1][1] < 18.5 and curve[-1][1] < curve[0][1]


@pytest.mark.slow
def test_smiles_pretraining_learns(shared, tmp_path):
    files = [str(shared("data", "smiles", n)) for n in ("BBBP.csv.gz", "Lipophilicity.csv.gz",
                                                          "delaney-processed.csv.gz")]
    c, train, curve = short_run("hyena-tiny-smiles.yaml", tmp_path, 300, "--data.data", json.dumps(files))
    assert c.trainer.global_step == 300
    assert c.model.tokenizer.vocab_size < 128 and c.model.tokenizer.vocab_size != 98  # the data's vocabulary
    assert np.mean(train[-5:]) < train[0] - 1.5
    assert curve[-1][1] < curve[0][1] and curve[-1][1] < 6.0


@pytest.mark.slow
def test_ecoli_beats_order2_markov(shared, tmp_path):
    """The must-show: 10 CPU-minutes of HyenaDNA-tiny beat the order-2 Markov model on the held-out 10%."""
    fasta = shared("data", "genome", "ecoli_k12_mg1655_GCF_000005845.2.fna.gz")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.pretrain_ecoli import main as bench

    result = bench(["--fasta", str(fasta), "--cpu-minutes", "10", "--out", str(tmp_path)])
    assert result["markov"][2] == pytest.approx(3.90, abs=0.01)
    assert result["markov"][6] == pytest.approx(3.82, abs=0.01)
    assert result["heldout_ppl"] < result["markov"][2]
