"""Every file of the bad-input corpus (``tests/bad_inputs/``, described in its README table) through every
entry point that reads it, via the real console script ``.venv/bin/bioseq``.

Each run must: exit 2; print exactly one stderr line, ``bioseq <command>: error: ...``, naming the file
(and its position when the README's "Where" column gives one); show no traceback; leave no output behind
(the run's working directory, where every output goes, stays empty); and change no input file.

The README table is the manifest: ``| file | what is wrong | where | fast | slow |``; "fast" lists the
entry points run in every ``make test`` (one cheap one per file, mostly), "slow" the others
(``make test-slow``). Checkpoint cases are generated here at run time (no pickles are committed; the
malicious one is written by ``torch.save`` into the test's temporary directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

CORPUS = REPO / "tests" / "bad_inputs"
BIOSEQ = REPO / ".venv" / "bin" / "bioseq"
GOOD_TABLE = CORPUS / "tables" / "_good.tsv"
GOOD_GENOME = CORPUS / "fasta" / "_good_genome.fa"
LIGHTNING = ["--trainer.accelerator", "cpu", "--trainer.fast_dev_run", "1", "--trainer.enable_progress_bar",
             "false", "--trainer.default_root_dir", "runs"]
TINY = '{"d_model": 16, "n_layer": 1}'


@dataclass(frozen=True)
class Case:
    file: str  # relative to the corpus; "(generated)" entries are made by `generated`
    problem: str
    where: str
    fast: tuple[str, ...]
    slow: tuple[str, ...]


def manifest() -> list[Case]:
    cases = []
    for line in (CORPUS / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[0].startswith("`"):
            continue
        fast, slow = (tuple(x.strip() for x in cell.split(",") if x.strip() not in ("", "-"))
                      for cell in cells[3:5])
        cases.append(Case(cells[0].split()[0].strip("`"), cells[1], cells[2], fast, slow))
    return cases


CASES = manifest()


def test_manifest_matches_the_corpus():
    listed = {c.file for c in CASES}
    on_disk = {p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*")
               if p.is_file() and p.name != "README.md" and not p.name.startswith("_")}
    assert on_disk <= listed, f"undocumented corpus files: {sorted(on_disk - listed)}"
    missing = {f for f in listed - on_disk if not f.startswith(("ckpt/", "lightning/"))}
    assert not missing, f"README rows without a file: {sorted(missing)}"
    assert len(on_disk) >= 40
    assert all(c.fast or c.slow for c in CASES)
    assert {e for c in CASES for e in c.fast + c.slow} <= set(ENTRY_POINTS)


# --------------------------------------------------------------------------------------------------
# generated inputs: models the commands load, and the checkpoint cases
# --------------------------------------------------------------------------------------------------
class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="session")
def generated(tmp_path_factory) -> Path:
    """Good tiny models (so no 'random weights' warning line) and the checkpoint cases of the README."""
    import torch

    from bioseq import models
    from bioseq.checkpoints import save_safetensors
    from bioseq.models.lm import LanguageModel

    root = tmp_path_factory.mktemp("generated")

    def save(preset, name, **kw):
        model = models.build_backbone(preset=preset, **kw)
        model.save_pretrained(root / name, tokenizer=models.load_tokenizer_for(model))
        return model

    hyena = save("hyenadna-tiny-1k", "good/hyena", d_model=16, n_layer=1)
    shutil.copy2(GOOD_GENOME, root / "good" / "genome.fa")  # copies: an index may be written beside them
    shutil.copy2(GOOD_TABLE, root / "good" / "table.tsv")
    save("mamba-tiny", "good/mamba")
    save("chem-xlstm-tiny", "good/chem")
    ck = root / "ckpt"
    # truncated weights
    save("hyenadna-tiny-1k", "ckpt/truncated_weights", d_model=16, n_layer=1)
    w = ck / "truncated_weights" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    # config of another architecture over HyenaDNA weights
    (ck / "wrong_arch").mkdir(parents=True)
    (ck / "wrong_arch" / "config.json").write_text(json.dumps(models.build_backbone(preset="mamba-tiny")
                                                              .config.to_dict()))
    save_safetensors(hyena.state_dict(), ck / "wrong_arch" / "model.safetensors")
    # same architecture, other width
    (ck / "shape_mismatch").mkdir()
    (ck / "shape_mismatch" / "config.json").write_text(json.dumps({**hyena.config.to_dict(), "d_model": 24}))
    save_safetensors(hyena.state_dict(), ck / "shape_mismatch" / "model.safetensors")
    # broken config.json
    (ck / "bad_config_json").mkdir()
    (ck / "bad_config_json" / "config.json").write_text('{"arch": "hyena",\n "d_model": 16\n "n_layer": 1}\n')
    save_safetensors(hyena.state_dict(), ck / "bad_config_json" / "model.safetensors")
    # a layout nobody registers
    (ck / "unknown_layout").mkdir()
    (ck / "unknown_layout" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 16}))
    save_safetensors(hyena.state_dict(), ck / "unknown_layout" / "model.safetensors")
    # an unknown config field
    (ck / "unknown_config_field").mkdir()
    (ck / "unknown_config_field" / "config.json").write_text(json.dumps({**hyena.config.to_dict(),
                                                                         "d_modle": 16}))
    save_safetensors(hyena.state_dict(), ck / "unknown_config_field" / "model.safetensors")
    # no weights at all
    (ck / "no_weights").mkdir()
    (ck / "no_weights" / "config.json").write_text(json.dumps(hyena.config.to_dict()))
    # a weights file whose unpickling would run a command (-hf layout: config + pytorch_model.bin)
    (ck / "malicious_pickle").mkdir()
    (ck / "malicious_pickle" / "config.json").write_text(json.dumps(
        {"model_type": "hyenadna", "d_model": 16, "n_layer": 1, "max_seq_len": 1026, "vocab_size": 12}))
    torch.save({"hyena." + k: v for k, v in hyena.state_dict().items()} | {"x": Evil(root / "PWNED")},
               ck / "malicious_pickle" / "pytorch_model.bin")
    # Lightning checkpoints for --ckpt_path
    lt = root / "lightning"
    lt.mkdir()
    lm = LanguageModel(arch="hyena", backbone_config={"d_model": 24, "n_layer": 1}, tokenizer="dna")
    base = {"state_dict": lm.state_dict(), "pytorch-lightning_version": "2.6.0", "epoch": 0, "global_step": 0,
            "hyper_parameters": dict(lm.hparams)}
    narrow = LanguageModel(arch="hyena", backbone_config={"d_model": 16, "n_layer": 1}, tokenizer="dna")
    torch.save({**base, "state_dict": narrow.state_dict()}, lt / "shape_mismatch.ckpt")
    torch.save(base, lt / "truncated.ckpt")
    data = (lt / "truncated.ckpt").read_bytes()
    (lt / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (lt / "not_a_checkpoint.ckpt").write_text("epoch: 3\nstate_dict: nope\n")
    torch.save({**base, "hyper_parameters": {"x": Evil(root / "PWNED")}}, lt / "malicious.ckpt")
    return root


# --------------------------------------------------------------------------------------------------
# entry points: (command, path) -> argv
# --------------------------------------------------------------------------------------------------
def _pretrain_genome(path, g, *extra):
    return ["pretrain", "fit", "--model.arch", "hyena", "--model.backbone_config", TINY,
            "--data.class_path", "bioseq.datamodules.genome.GenomeDataModule", "--data.max_length", "64",
            *extra, *LIGHTNING]


def table(g: Path) -> str:
    return str(g / "good" / "table.tsv")


def genome(g: Path) -> str:
    return str(g / "good" / "genome.fa")


ENTRY_POINTS = {
    "inspect": lambda p, g: ["inspect", str(p)],
    "embed": lambda p, g: ["embed", "-m", str(g / "good" / "hyena"), str(p), "-o", "out.h5"],
    "embed-smiles": lambda p, g: ["embed", "--smiles", "-m", str(g / "good" / "chem"), str(p),
                                  "-o", "out.h5"],
    "embed-model": lambda p, g: ["embed", "-m", str(p), genome(g), "-o", "out.h5"],
    "generate": lambda p, g: ["generate", "-m", str(g / "good" / "mamba"), "--prompt-file", str(p),
                              "--max-new-tokens", "4", "-o", "out.fa"],
    "generate-smiles": lambda p, g: ["generate", "-m", str(g / "good" / "chem"), "--prompt-file", str(p),
                                     "--max-new-tokens", "4", "-o", "out.smi"],
    "generate-model": lambda p, g: ["generate", "-m", str(p), "--prompt", "ACGT", "--max-new-tokens", "4",
                                    "-o", "out.fa"],
    "pretrain": lambda p, g: _pretrain_genome(p, g, "--data.fasta", str(p)),
    "pretrain-bed": lambda p, g: _pretrain_genome(p, g, "--data.fasta", genome(g),
                                                  "--data.bed", str(p)),
    "pretrain-smiles": lambda p, g: ["pretrain", "fit", "--model.pretrained", str(g / "good" / "chem"),
                                     "--data.class_path", "bioseq.datamodules.smiles.SmilesDataModule",
                                     "--data.data", json.dumps([str(p)]), *LIGHTNING],
    "pretrain-config": lambda p, g: ["pretrain", "fit", "--data.class_path",  # (the config overrides these)
                                     "bioseq.datamodules.genome.GenomeDataModule", "--data.fasta", genome(g),
                                     "--data.max_length", "64", "--config", str(p), *LIGHTNING],
    "pretrain-model": lambda p, g: ["pretrain", "fit", "--model.pretrained", str(p), "--data.class_path",
                                    "bioseq.datamodules.genome.GenomeDataModule", "--data.fasta",
                                    genome(g), "--data.max_length", "64", *LIGHTNING],
    "pretrain-ckpt": lambda p, g: ["pretrain", "validate", "--model.arch", "hyena", "--model.backbone_config",
                                   TINY, "--data.class_path", "bioseq.datamodules.genome.GenomeDataModule",
                                   "--data.fasta", genome(g), "--data.max_length", "64",
                                   "--data.val_fraction", "0.5", *LIGHTNING, "--ckpt_path", str(p)],
    "finetune": lambda p, g: ["finetune", "fit", "--model.backbone", str(g / "good" / "hyena"),
                              "--data.train_file", str(p), *LIGHTNING],
    "finetune-config": lambda p, g: ["finetune", "fit", "--config", str(p), "--model.backbone",
                                     str(g / "good" / "hyena"), *LIGHTNING],
    "finetune-model": lambda p, g: ["finetune", "fit", "--model.backbone", str(p), "--data.train_file",
                                    table(g), *LIGHTNING],
    "finetune-ckpt": lambda p, g: ["finetune", "validate", "--model.backbone", str(g / "good" / "hyena"),
                                   "--data.train_file", table(g), *LIGHTNING, "--ckpt_path", str(p)],
    "probe": lambda p, g: ["probe", "--train", str(p), "--test", table(g), "--features", "kmer",
                           "--k", "2", "--out", "probe"],
    "probe-model": lambda p, g: ["probe", "--train", table(g), "--test", table(g), "--features",
                                 "embeddings", "--backbone", str(p), "--out", "probe"],
    "benchmark": lambda p, g: ["benchmark", "human_nontata_promoters", "--data-file",
                               f"human_nontata_promoters:train={p},test={table(g)}", "--backbone",
                               str(g / "good" / "hyena"), "--seeds", "0", "--kmer", "0", "--override",
                               "trainer.fast_dev_run=1", "--out", "bench"],
    "soft-prompt": lambda p, g: ["soft-prompt", "--train", str(p), "--test", table(g), "--backbone",
                                 str(g / "good" / "hyena"), "--prompt-tokens", "2", "--epochs", "1",
                                 "--out", "sp"],
    "icl": lambda p, g: ["icl", "kshot", "--train", str(p), "--test", table(g), "--backbone",
                         str(g / "good" / "hyena"), "--shots", "1", "--out", "icl"],
    "icl-smiles": lambda p, g: ["icl", "smiles", "--smiles", str(p), "--backbone", str(g / "good" / "chem"),
                                "--context", "0", "--out", "icl"],
}


def corpus_path(case: Case, generated: Path) -> Path:
    path = generated / case.file.rstrip("/") if case.file.startswith(("ckpt/", "lightning/")) \
        else CORPUS / case.file
    assert path.exists(), path
    return path


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def check(case: Case, entry: str, generated: Path, workdir: Path) -> None:
    """Run one entry point on a copy of the case (an index such as ``.fai`` may appear beside a FASTA; it
    must never land in the repository)."""
    source = corpus_path(case, generated)
    path = workdir.parent / "inputs" / case.file.rstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, path)
    else:
        shutil.copy2(source, path)
    before = digest(path if path.is_dir() else path.parent)
    env = {k: v for k, v in os.environ.items() if k not in ("BIOSEQ_DEBUG", "BIOSEQ_VERBOSE", "LOCAL_RANK")}
    env["BIOSEQ_CACHE"] = str(workdir.parent / "cache")
    argv = [str(BIOSEQ), *ENTRY_POINTS[entry](path, generated)]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=workdir, env=env, timeout=600)
    lines = out.stderr.splitlines()
    shown = f"{' '.join(argv[1:])}\n--- stderr ---\n{out.stderr[-3000:]}"
    assert out.returncode == 2, shown
    assert "Traceback" not in out.stderr, shown
    assert len(lines) == 1, shown
    command = argv[1]
    assert lines[0].startswith(f"bioseq {command}: error: "), shown
    tokens = [t.strip() for t in case.where.split(";") if t.strip() and t.strip() != "-"]
    named = [t[len("names="):] for t in tokens if t.startswith("names=")]
    for expected in named or [str(path)]:
        assert expected in lines[0], f"expected {expected!r}\n{shown}"
    for token in tokens:
        if not token.startswith("names="):
            expected = f"{path}{token}" if token.startswith((":", "/")) else token
            assert expected in lines[0], f"expected {expected!r}\n{shown}"
    left = [p.name for p in workdir.iterdir() if p.name != "runs" or any(p.rglob("*.ckpt"))]
    assert not left, f"output left behind: {left}\n{shown}"
    after = digest(path if path.is_dir() else path.parent)
    assert {k: after.get(k) for k in before} == before, "an input file was changed"
    assert not (generated / "PWNED").exists()


def params(slow: bool):
    out = []
    for case in CASES:
        for entry in (case.slow if slow else case.fast):
            marks = [pytest.mark.slow] if slow else []
            out.append(pytest.param(case, entry, id=f"{entry}:{case.file}", marks=marks))
    return out


@pytest.mark.parametrize("case, entry", params(slow=False))
def test_bad_input(case, entry, generated, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    check(case, entry, generated, work)


@pytest.mark.parametrize("case, entry", params(slow=True))
def test_bad_input_every_entry_point(case, entry, generated, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    check(case, entry, generated, work)


def test_where_column_is_checked():
    with_position = [c for c in CASES if re.search(r"[:']", c.where)]
    assert len(with_position) >= 15  # most text inputs name their line / record
