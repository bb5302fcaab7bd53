"""What a new user trips on in the first hour (issue: wrong resume path, unmarked random weights,
tracebacks, destroyed inputs, slow noisy start), through the real ``bioseq`` console script.

Every test runs on tiny synthetic data made here; the Lightning runs use a 1-layer, 16-wide backbone.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bioseq import cli, synthetic

BIOSEQ = str(Path(sys.executable).with_name("bioseq"))
REPO = Path(__file__).resolve().parents[2]
TINY = '{"d_model": 16, "n_layer": 1, "d_inner": 32, "l_max": 130}'
CHATTER = ("tensorboardX", "litlogger", "litmodels", "Tip:", "GPU available", "LOCAL_RANK", "Seed set")


def bioseq(*args, cwd: Path, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("BIOSEQ_VERBOSE", "BIOSEQ_DEBUG")}
    return subprocess.run([BIOSEQ, *map(str, args)], cwd=cwd, capture_output=True, text=True, input=stdin,
                          timeout=timeout, env=env)


def one_error_line(out: subprocess.CompletedProcess, command: str) -> str:
    """The run failed with exit 2 and printed exactly one line, ``bioseq <command>: error: ...``."""
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"bioseq {command}: error: "), out.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("first_hour")
    config = dataclasses.replace(synthetic.SyntheticConfig(), chromosomes=(("c1", 20_000), ("c2", 10_000)))
    genome, _ = synthetic.generate_genome(config)
    paths = {"fasta": synthetic.write_fasta(out / "genome.fa", genome)}
    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):  # three classes, each marked by a repeated base in the middle
        y = i % 3
        seq = "".join(rng.choice(list("ACGT"), 30)) + "ACG"[y] * 12 + "".join(rng.choice(list("ACGT"), 30))
        rows.append((seq, y))
    for name, part in (("train3", rows[:90]), ("test3", rows[90:])):
        paths[name] = out / f"{name}.tsv"
        paths[name].write_text("sequence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in part))
    (out / "gb" / "three_classes").mkdir(parents=True)
    paths["gb"] = out / "gb"
    with gzip.open(out / "gb" / "three_classes" / "test.tsv.gz", "wt") as fh:
        fh.write("sequence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    records = [(f"r{i}", "".join(rng.choice(list("ACGT"), 50 + i))) for i in range(6)]
    paths["seqs"] = out / "seqs.fa"
    paths["seqs"].write_text("".join(f">{r}\n{s}\n" for r, s in records))
    return paths


def pretrain_args(data) -> list[str]:
    return ["pretrain", "fit", "--config", "hyenadna-tiny-ecoli", "--data.fasta", data["fasta"],
            "--data.max_length", "64", "--data.batch_size", "2", "--data.max_eval_windows", "2",
            "--model.backbone_config", TINY, "--model.total_steps", "8", "--trainer.enable_progress_bar",
            "false", "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1"]


# ------------------------------------------------------------------------------- 1: resume path
def test_resume_last_continues_the_newest_real_run(data, tmp_path):
    """fast_dev_run writes no checkpoint; a real run saves runs/<config>/version_0/checkpoints/last.ckpt;
    ``--ckpt_path last`` resumes that run's last step (not a one-step smoke model)."""
    root = tmp_path / "runs" / "hyenadna-tiny-ecoli"
    smoke = bioseq("-v", *pretrain_args(data), "--trainer.fast_dev_run=true", cwd=tmp_path)
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    assert "fast_dev_run" in smoke.stderr  # -v shows Lightning's own lines
    assert not list(tmp_path.rglob("*.ckpt"))

    first = bioseq(*pretrain_args(data), "--trainer.max_steps", "4", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    last = root / "version_0" / "checkpoints" / "last.ckpt"
    assert last.is_file() and f"run directory {root.relative_to(tmp_path)}/version_0" in first.stderr
    assert not any(word in first.stdout + first.stderr for word in CHATTER), first.stderr

    resumed = bioseq(*pretrain_args(data), "--trainer.max_steps", "6", "--ckpt_path", "last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {last.relative_to(tmp_path)}" in resumed.stderr
    new = root / "version_1"
    assert (new / "checkpoints" / "last.ckpt").is_file()
    assert any("step=6" in p.name for p in (new / "checkpoints").glob("*.ckpt"))
    steps = [int(line.split(",")[header.index("step")])
             for header in [(new / "metrics.csv").read_text().splitlines()[0].split(",")]
             for line in (new / "metrics.csv").read_text().splitlines()[1:]]
    assert min(steps) >= 4  # continued from step 4, not from the start


def test_resume_last_without_a_run_is_one_line(tmp_path):
    assert cli.main(["pretrain", "fit", "--config", "hyenadna-tiny-hg38", "--data.fasta", "x.fa",
                     "--trainer.default_root_dir", str(tmp_path / "nothing"), "--ckpt_path", "last"]) == 2


# ------------------------------------------------------------------------------- 8: config errors
@pytest.fixture
def bad_configs(tmp_path) -> dict[str, Path]:
    good = (REPO / "configs" / "pretrain" / "hyenadna-tiny-ecoli.yaml").read_text()
    files = {
        "unknown_key": good.replace("  lr: 3.0e-3", "  lr: 3.0e-3\n  frobnicate: 3"),
        "broken_yaml": "model:\n  arch: hyena\n  lr: [1\ndata: x: y\n",
        "bad_value": good.replace("    batch_size: 4", "    batch_size: four"),
        "unknown_data_key": good.replace("    max_length: 1024", "    max_lenght: 1024"),
    }
    out = {}
    for name, text in files.items():
        out[name] = tmp_path / f"{name}.yaml"
        out[name].write_text(text)
    return out


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


@pytest.mark.parametrize("case", ["unknown_key", "broken_yaml", "bad_value", "unknown_data_key",
                                  "unknown_flag", "bad_flag_value", "no_such_config"])
def test_config_errors_name_file_key_and_line(case, bad_configs, capsys):
    if case in bad_configs:
        argv = ["--config", str(bad_configs[case])]
    else:
        argv = ["--config", "hyenadna-tiny-ecoli", *{"unknown_flag": ["--trainer.max_stepz", "3"],
                                                     "bad_flag_value": ["--trainer.max_steps", "abc"],
                                                     "no_such_config": ["--config", "nosuch"]}[case]]
    assert cli.main(["pretrain", "fit", *argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("bioseq pretrain: error: "), err
    line = err[0]
    expected = {
        "unknown_key": f"{bad_configs['unknown_key']}:{_line_of(bad_configs['unknown_key'], 'frobnicate')}: "
                       "unknown key 'model.frobnicate'",
        "broken_yaml": f"{bad_configs['broken_yaml']}:4: not valid YAML",
        "bad_value": f"{bad_configs['bad_value']}:{_line_of(bad_configs['bad_value'], 'four')}: "
                     "bad value for 'data.batch_size': expected int, got 'four'",
        "unknown_data_key": f"{bad_configs['unknown_data_key']}:"
                            f"{_line_of(bad_configs['unknown_data_key'], 'lenght')}: unknown key "
                            "'data.max_lenght'",
        "unknown_flag": "unknown option --trainer.max_stepz",
        "bad_flag_value": "--trainer.max_steps: bad value for 'trainer.max_steps': expected int, got 'abc'",
        "no_such_config": "--config nosuch: no such file, and no shipped config of that name",
    }[case]
    assert expected in line, line


def test_missing_required_key_is_one_line_through_the_console_script(tmp_path):
    out = bioseq("pretrain", "fit", "--config", "hyenadna-tiny-hg38", cwd=tmp_path)
    line = one_error_line(out, "pretrain")
    assert "--data.fasta is required" in line and "hyenadna-tiny-hg38.yaml" in line
    assert "Namespace" not in out.stderr


# ------------------------------------------------------------------------------- 9: fast, quiet start
@pytest.mark.parametrize("argv", [["--help"], ["pretrain", "--help"], ["finetune", "--help"],
                                  ["pretrain", "--list-configs"]], ids=" ".join)
def test_help_imports_neither_torch_nor_lightning(argv):
    code = ("import sys; from bioseq.cli import main; main(sys.argv[1:]); "
            "print('heavy:', [m for m in ('torch', 'lightning') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "heavy: []"
    if argv[0] != "--help":
        names = ("hyenadna-tiny-hg38", "genomic_benchmarks/human_nontata_promoters")
        assert any(name in out.stdout for name in names)


def test_finetune_three_classes_from_the_data_quiet_with_a_checkpoint(data, tmp_path):
    """Item 9 and 11: the class count comes from the table (3) although the config's dataset had 2; the run
    is quiet, writes its checkpoints under runs/<config>/version_0/ (no lightning_logs/ in the current
    directory) and says which weights it tested."""
    out = bioseq("finetune", "fit", "--config", "nucleotide_transformer/H3",
                 "--data.train_file", data["train3"], "--data.test_file", data["test3"],
                 "--data.batch_size", "16", "--trainer.max_epochs", "1",
                 "--model.backbone", "null", "--model.preset", "hyenadna-tiny-1k",
                 "--model.backbone_overrides", TINY, "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "H3" / "version_0"
    assert "num_classes: 3" in (run / "hparams.yaml").read_text()
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert f"testing the best validation checkpoint ({best.relative_to(tmp_path)}" in out.stderr
    assert "test/accuracy" in out.stdout
    assert not (tmp_path / "lightning_logs").exists()
    assert not any(word in out.stdout + out.stderr for word in CHATTER), out.stderr
    warnings = [line for line in out.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "random weights" in warnings[0]  # item 2: a preset is flagged


def test_explicit_class_count_is_refused_in_one_line(capsys):
    argv = ["finetune", "fit", "--config", "human_nontata_promoters", "--model.num_classes", "3"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.num_classes is taken from the data" in err[0]


def test_finetune_real_script_takes_the_class_count_from_the_data(data, tmp_path):
    """Item 11: benchmarks/finetune_real.py on a three-class table (it built a 2-class model before)."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "finetune_real.py"), "--datasets", "three_classes",
           "--data-dir", str(data["gb"]), "--pretrain-minutes", "0", "--epochs", "1", "--d-model", "16",
           "--n-layer", "1", "--d-inner", "32", "--threads", "1", "--batch-size", "16", "--kmer", "4",
           "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    hyena = json.loads((tmp_path / "finetune_real.json").read_text())["results"]["three_classes"]["hyena"]
    assert hyena["num_classes"] == 3 and 0.0 <= hyena["test_accuracy"] <= 1.0


# ------------------------------------------------------------------------------- 2: random weights
def test_embed_flags_random_weights_on_stderr_and_in_the_metadata(data, tmp_path):
    from bioseq.embed import read_embeddings

    out = bioseq("embed", "-m", "hyenadna-tiny-1k", data["seqs"], "-o", tmp_path / "e.h5", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("bioseq embed: warning: hyenadna-tiny-1k")
    assert "random weights" in warnings[0]
    assert read_embeddings(tmp_path / "e.h5")["metadata"]["random_weights"] is True


def test_benchmark_table_marks_random_weights_and_smoke_runs(data, tmp_path, capsys):
    rows = (data["train3"].read_text().splitlines()[1:] + data["test3"].read_text().splitlines()[1:])
    two = [r for r in rows if not r.endswith("\t2")]
    for name, part in (("tr.tsv", two[:50]), ("te.tsv", two[50:])):
        (tmp_path / name).write_text("sequence\tlabel\n" + "\n".join(part) + "\n")
    assert cli.main(["benchmark", "human_nontata_promoters", "--data-file",
                     f"human_nontata_promoters:train={tmp_path / 'tr.tsv'},test={tmp_path / 'te.tsv'}",
                     "--override", "trainer.fast_dev_run=true", "--seeds", "0", "--kmer", "0",
                     "--out", str(tmp_path / "res")]) == 0
    out = capsys.readouterr()
    md = (tmp_path / "res" / "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| dataset"))
    assert "hyenadna-tiny-1k (random weights) (smoke run: fast_dev_run)" in header
    assert "Not comparable with the published numbers" in md
    assert "random weights" in out.err


# ------------------------------------------------------------------------------- 3: no tracebacks
def test_embed_into_an_unwritable_place_is_one_line(data, tmp_path):
    line = one_error_line(bioseq("embed", "-m", "hyenadna-tiny-1k", data["seqs"], "-o", "/proc/bioseq-x.h5",
                                 cwd=tmp_path), "embed")
    assert "cannot write in /proc" in line


def test_embed_output_that_is_a_directory_is_one_line_and_leaves_nothing(data, tmp_path):
    (tmp_path / "outdir").mkdir()
    line = one_error_line(bioseq("embed", "-m", "hyenadna-tiny-1k", data["seqs"], "-o", "outdir",
                                 "--overwrite", cwd=tmp_path), "embed")
    assert "outdir: is a directory" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outdir"]  # no outdir.tmp, no .outdir.parts


def test_probe_empty_label_cell_is_one_line(data, tmp_path):
    lines = data["train3"].read_text().splitlines()
    lines[5] = lines[5].split("\t")[0] + "\t"
    (tmp_path / "tr.tsv").write_text("\n".join(lines) + "\n")
    out = bioseq("probe", "--train", "tr.tsv", "--test", data["test3"], "--k", "2", "--out", "p",
                 cwd=tmp_path)
    assert "tr.tsv: record 4 has an empty label" in one_error_line(out, "probe")


def test_finetune_download_without_network_is_one_line(tmp_path, capsys):
    argv = ["finetune", "fit", "--config", "human_nontata_promoters", "--data.data_dir", str(tmp_path),
            "--data.download=true", "--data.download_url", "http://127.0.0.1:9/none.tar.gz",
            "--trainer.fast_dev_run=true"]
    assert cli.main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "--data.download: cannot download" in err[0]


# ------------------------------------------------------------------------------- 4: inputs are safe
def test_embed_refuses_to_write_over_its_input(data, tmp_path):
    fa = tmp_path / "in.fa"
    fa.write_bytes(data["seqs"].read_bytes())
    line = one_error_line(bioseq("embed", "-m", "hyenadna-tiny-1k", "in.fa", "-o", "in.fa", "--overwrite",
                                 cwd=tmp_path), "embed")
    assert "that is an input file" in line
    assert fa.read_bytes() == data["seqs"].read_bytes()


def test_failed_embed_leaves_no_parts_directory(data, tmp_path, capsys):
    out = tmp_path / "l.h5"
    assert cli.main(["embed", "-q", "-m", "hyenadna-tiny-1k", str(data["seqs"]), "-o", str(out),
                     "--layers", "99"]) == 2
    assert "--layers 99 out of range" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- 5: hints name real flags
def test_fasta_error_hints_name_the_commands_own_flags(tmp_path, capsys):
    dup, empty = tmp_path / "dup.fa", tmp_path / "empty.fa"
    dup.write_text(">a\nACGT\n>a\nACGA\n")
    empty.write_text(">a\n>b\nACGT\n")
    for k, (command, path, flag) in enumerate((("embed", dup, "--dedupe"), ("embed", empty, "--skip-empty"),
                                               ("inspect", dup, "--allow-duplicates"),
                                               ("inspect", empty, "--skip-empty"))):
        out = str(tmp_path / f"x{k}.h5")
        extra = ["-q", "-m", "hyenadna-tiny-1k", "-o", out] if command == "embed" else []
        assert cli.main([command, str(path), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert flag in err and "CLI:" not in err and "=True" not in err, err
        assert cli.main([command, str(path), *extra, flag]) == 0, capsys.readouterr().err  # the flag exists
        capsys.readouterr()


# ------------------------------------------------------------------------------- 6: pipes, stdin, folders
def test_inspect_and_embed_read_stdin_and_pipes(data, tmp_path):
    text = data["seqs"].read_text()
    for arg in ("-", "/dev/stdin"):
        out = bioseq("inspect", arg, cwd=tmp_path, stdin=text)
        assert out.returncode == 0, out.stderr
        assert "records           6" in out.stdout
    out = bioseq("embed", "-q", "-m", "hyenadna-tiny-1k", "-", "-o", "s.h5", cwd=tmp_path, stdin=text)
    assert out.returncode == 0, out.stderr
    from bioseq.embed import read_embeddings

    assert read_embeddings(tmp_path / "s.h5")["ids"] == [f"r{i}" for i in range(6)]


def test_directory_input_says_directory(tmp_path, capsys):
    embed = ["embed", "-m", "hyenadna-tiny-1k", str(tmp_path), "-o", "x.h5"]
    for argv in (["inspect", str(tmp_path)], embed):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "is a directory, not a FASTA file" in err and "no such" not in err


def test_embed_argument_checks_need_no_torch():
    import bioseq.embed
    import bioseq.pooling
    from bioseq.commands import embed

    assert embed.POOLS == bioseq.pooling.POOLS and embed.LONG_POLICIES == bioseq.embed.LONG_POLICIES
    code = ("import sys; from bioseq.cli import main; rc = main(['embed', '-m', 'x', 'missing.fa', '-o', "
            "'o.h5']); print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["2", "False"], out.stderr


# ------------------------------------------------------------------------------- 7: alphabet named up front
def test_pretrain_names_the_first_bad_character(tmp_path, capsys):
    rng = np.random.default_rng(1)
    seq = "".join(rng.choice(list("ACGT"), 5000))
    seq = seq[:309] + "J" + seq[310:]
    (tmp_path / "bad.fa").write_text(">chr1\n" + "\n".join(seq[i:i + 60] for i in range(0, 5000, 60)) + "\n")
    assert cli.main(["pretrain", "fit", "--config", "hyenadna-tiny-ecoli", "--data.fasta",
                     str(tmp_path / "bad.fa"), "--trainer.fast_dev_run=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.fa, record 'chr1', position 310: invalid DNA character 'J'" in err[0]


def test_pretrain_on_protein_says_protein(tmp_path, capsys):
    rng = np.random.default_rng(2)
    residues = list("ACDEFGHIKLMNPQRSTVWY")
    records = [f">p{i}\nM{''.join(rng.choice(residues, 80))}\n" for i in range(20)]
    (tmp_path / "p.faa").write_text("".join(records))
    assert cli.main(["pretrain", "fit", "--config", "hyenadna-tiny-ecoli", "--data.fasta",
                     str(tmp_path / "p.faa"), "--trainer.fast_dev_run=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "record 'p0'" in err[0] and "invalid DNA character" in err[0]
    assert "looks like protein" in err[0] and "empty" not in err[0]


# ------------------------------------------------------------------------------- 10: setup and labels
def test_make_demo_installs_no_dev_extras(tmp_path):
    venv = tmp_path / "venv"
    demo = subprocess.run(["make", "-n", "demo", f"VENV={venv}"], cwd=REPO, capture_output=True, text=True)
    test = subprocess.run(["make", "-n", "test", f"VENV={venv}"], cwd=REPO, capture_output=True, text=True)
    assert demo.returncode == 0 and test.returncode == 0, demo.stderr + test.stderr
    assert "pip install" in demo.stdout and "[dev]" not in demo.stdout and "triton" not in demo.stdout
    assert '".[dev]"' in test.stdout


def test_probe_refuses_train_and_test_of_different_datasets(data, tmp_path, capsys):
    for name in ("human_ocr_ensembl", "human_enhancers_cohn"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "data.tsv").write_bytes(data["train3"].read_bytes())
    argv = ["probe", "--train", str(tmp_path / "human_ocr_ensembl" / "data.tsv"), "--test",
            str(tmp_path / "human_enhancers_cohn" / "data.tsv"), "--k", "2", "--out", str(tmp_path / "p")]
    assert cli.main(argv) == 2
    assert "--train is human_ocr_ensembl but --test is human_enhancers_cohn" in capsys.readouterr().err
    spec = f"human_ocr_ensembl:train={argv[2]},test={argv[4]}"
    line = one_error_line(bioseq("benchmark", "human_ocr_ensembl", "--data-file", spec, cwd=tmp_path),
                          "benchmark")
    assert "is from human_enhancers_cohn, not human_ocr_ensembl" in line


def test_probe_names_the_dataset_from_the_path_and_shows_published_numbers(data, tmp_path, capsys):
    d = tmp_path / "data" / "human_nontata_promoters_files"
    d.mkdir(parents=True)
    (d / "human_nontata_promoters_train.tsv").write_bytes(data["train3"].read_bytes())
    (d / "human_nontata_promoters_test.tsv").write_bytes(data["test3"].read_bytes())
    assert cli.main(["probe", "--train", str(d / "human_nontata_promoters_train.tsv"), "--test",
                     str(d / "human_nontata_promoters_test.tsv"), "--k", "2",
                     "--out", str(tmp_path / "p")]) == 0
    md = (tmp_path / "p" / "results.md").read_text()
    assert "| human_nontata_promoters |" in md and "- GB-CNN:" in md
