"""The README's commands cannot drift: its walkthrough block runs as written (with a smaller model, fewer
batches and, for ``embed``, the first 2 kb of each demo chromosome), and every other ``bioseq`` line names a
real command, real shipped configs and options the command accepts."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bioseq import cli
from bioseq.config_files import find_config

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BIOSEQ = str(Path(sys.executable).with_name("bioseq"))
MARKER = "<!-- readme-walkthrough: run by tests/test_readme.py -->"
TINY = '{"d_model": 16, "n_layer": 1, "d_inner": 32, "l_max": 130}'

# Appended to the walkthrough's commands: the same commands, smaller (a test must take seconds).
SMALLER = {
    ("pretrain", "fit"): ["--model.backbone_config", TINY, "--data.max_length", "64",
                          "--data.batch_size", "2", "--data.max_eval_windows", "2",
                          "--trainer.val_check_interval", "10", "--trainer.enable_progress_bar", "false"],
    # (2, not 1: jsonargparse reads these as floats, and 1.0 means all batches)
    ("finetune", "fit"): ["--data.batch_size", "8", "--trainer.limit_train_batches", "2",
                          "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2",
                          "--trainer.enable_progress_bar", "false"],
    ("embed",): ["-q", "--batch-tokens", "4096"],
}


def commands(block: str) -> list[str]:
    """``bioseq ...`` lines of a fenced block, continuation lines joined, comments dropped."""
    text = block.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith("bioseq "):
            out.append(line)
        elif "| bioseq " in line:
            out.append(line.split("| ", 1)[1])
    return out


def fenced_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash)?\n(.*?)```", text, re.S)


def walkthrough() -> list[str]:
    after = README.split(MARKER, 1)[1]
    return commands(fenced_blocks(after)[0])


def other_commands() -> list[str]:
    before, after = README.split(MARKER, 1)
    rest = after.split("```", 2)[2]  # everything after the walkthrough block
    return [c for b in fenced_blocks(before + rest) for c in commands(b)]


def smaller(argv: list[str]) -> list[str]:
    if argv[0] == "embed":
        argv = ["small.fa" if a == "bioseq-demo/data/genome.fa" else a for a in argv]
    for key, extra in SMALLER.items():
        if tuple(argv[: len(key)]) == key:
            return argv + extra
    return argv


def test_walkthrough_runs_as_written(tmp_path):
    steps = walkthrough()
    assert [s.split()[1] for s in steps] == ["inspect", "pretrain", "pretrain", "finetune", "embed"]
    demo = ["demo", "--steps", "3", "--max-length", "128", "--batch-size", "4", "--eval-windows", "4",
            "--genome-scale", "0.02", "--no-progress", "--out", str(tmp_path / "bioseq-demo")]
    assert cli.main(demo) == 0
    from bioseq.fasta import read_fasta

    records = read_fasta(tmp_path / "bioseq-demo" / "data" / "genome.fa")
    (tmp_path / "small.fa").write_text("".join(f">{r.id}\n{r.seq[:2000]}\n" for r in records))
    runs = tmp_path / "runs" / "hyenadna-tiny-ecoli"
    for step in steps:
        argv = shlex.split(step)[1:]
        out = subprocess.run([BIOSEQ, *smaller(argv)], cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, f"{step}\n{out.stderr[-3000:]}"
        if "--ckpt_path" in argv:
            assert f"resuming from {runs.relative_to(tmp_path)}/version_0/checkpoints/last.ckpt" in out.stderr
            assert any("step=40" in p.name for p in (runs / "version_1" / "checkpoints").glob("*.ckpt"))
        elif argv[0] == "pretrain":
            assert (runs / "version_0" / "checkpoints" / "last.ckpt").is_file()
        if argv[0] == "finetune":
            assert "testing the best validation checkpoint" in out.stderr
    assert (tmp_path / "genome.h5").is_file()


@pytest.mark.parametrize("line", other_commands())
def test_every_readme_command_names_real_commands_configs_and_options(line):
    argv = shlex.split(line)[1:]
    if argv[0] in ("--help", "-h"):
        return
    assert argv[0] in cli.COMMANDS, line
    if argv[0] in ("pretrain", "finetune"):
        if len(argv) > 1 and argv[1] != "--help":
            assert argv[1] in ("fit", "validate", "test", "predict"), line
        for i, arg in enumerate(argv):
            if arg == "--config" and argv[i + 1] != "...":
                find_config(argv[i + 1], argv[0])  # raises for a config that is not shipped
            if arg == "--ckpt_path":
                assert argv[i + 1] == "last" or argv[i + 1].endswith(".ckpt"), line
    if argv[0] == "embed" and "..." not in argv:
        from bioseq.commands.embed import build_parser

        build_parser().parse_args(argv[1:])
