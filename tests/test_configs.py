"""Every YAML under configs/ runs: ``bioseq <pretrain|finetune> fit --config X`` with ``fast_dev_run`` on
tiny data made here, on CPU.

Convention (shared with the finetune configs): every data path in a config can be overridden on the
command line. Pretraining configs are pointed at tiny files by their data module's ``class_path``
(``DATA_OVERRIDES``; a config with a data module not listed there fails with a message saying so);
finetuning configs (``configs/finetune/**``) get ``--data.train_file/--data.test_file`` with the
synthetic motif task. A new config directory needs a line in ``command_for``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from bioseq import cli, synthetic

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted(CONFIGS.rglob("*.yaml"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tiny")
    config = dataclasses.replace(synthetic.SyntheticConfig(), chromosomes=(("c1", 12_000), ("c2", 8_000)),
                                 task_train=24, task_test=8, task_length=100)
    genome, _ = synthetic.generate_genome(config)
    train, test = synthetic.generate_motif_task(config)
    paths = {"fasta": synthetic.write_fasta(out / "genome.fa", genome)}
    for name, rows in (("train", train), ("test", test)):
        paths[name] = out / f"{name}.tsv"
        paths[name].write_text("sequence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    rng = np.random.default_rng(0)
    residues = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)
    paths["protein"] = out / "proteins.faa"
    paths["protein"].write_text("".join(
        f">p{i} protein {i}\nM{bytes(rng.choice(residues, int(rng.integers(30, 90)))).decode()}\n"
        for i in range(40)))
    smiles = ["CCO", "c1ccccc1", "CC(=O)O", "CCN(CC)CC", "O=C(O)c1ccccc1O", "C1CCCCC1", "CC(C)Cl",
              "[Na+].[Cl-]", "CC#N", "COc1ccc(Br)cc1"] * 4
    paths["smiles"] = out / "mols.csv"
    paths["smiles"].write_text("name,smiles\n" + "".join(f"m{i},{s}\n" for i, s in enumerate(smiles)))
    paths["out"] = out
    return paths


DATA_OVERRIDES = {
    "bioseq.datamodules.genome.GenomeDataModule": lambda p: [
        "--data.fasta", str(p["fasta"]), "--data.max_length", "128", "--data.batch_size", "2",
        "--data.num_workers", "0", "--data.max_eval_windows", "2"],
    "bioseq.datamodules.protein.ProteinDataModule": lambda p: [
        "--data.fasta", str(p["protein"]), "--data.max_length", "64", "--data.batch_size", "2",
        "--data.num_workers", "0", "--data.val_fraction", "0.2"],
    "bioseq.datamodules.smiles.SmilesDataModule": lambda p: [
        "--data.data", str(p["smiles"]), "--data.max_length", "32", "--data.batch_size", "2",
        "--data.num_workers", "0", "--data.val_fraction", "0.2",
        "--data.vocab_path", str(p["out"] / "smiles_vocab.json")],
}


def trainer_overrides(cfg: dict, root: Path) -> list[str]:
    args = ["--trainer.fast_dev_run", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false"]
    trainer = cfg.get("trainer") or {}
    if trainer.get("strategy") not in (None, "auto"):
        args += ["--trainer.strategy", "auto"]
    if str(trainer.get("precision")) in ("16", "16-mixed"):  # fp16 autocast is CUDA-only
        args += ["--trainer.precision", "bf16-mixed"]
    return args


def command_for(path: Path, cfg: dict, tiny: dict[str, Path]) -> list[str]:
    kind = path.relative_to(CONFIGS).parts[0]
    if kind == "pretrain":
        data_class = (cfg.get("data") or {}).get("class_path")
        if data_class not in DATA_OVERRIDES:
            pytest.fail(f"{path}: tests/test_configs.py cannot make tiny data for {data_class!r}"
                        " (add it to DATA_OVERRIDES)")
        return ["pretrain", "fit", "--config", str(path), *DATA_OVERRIDES[data_class](tiny)]
    if kind == "finetune":
        return ["finetune", "fit", "--config", str(path), "--data.train_file", str(tiny["train"]),
                "--data.test_file", str(tiny["test"]), "--data.batch_size", "2", "--data.max_length", "100"]
    pytest.fail(f"{path}: unknown config directory '{kind}' (teach tests/test_configs.py how to run it)")


def test_configs_exist():
    names = {p.relative_to(CONFIGS).as_posix() for p in ALL}
    assert {"pretrain/hyenadna-tiny-hg38.yaml", "pretrain/hyenadna-tiny-ecoli.yaml",
            "pretrain/hyena-tiny-protein-ecoli.yaml", "pretrain/hyena-tiny-smiles.yaml"} <= names


def test_hg38_recipe_values():
    cfg = yaml.safe_load((CONFIGS / "pretrain/hyenadna-tiny-hg38.yaml").read_text())
    assert cfg["model"]["preset"] == "hyenadna-tiny-1k" and cfg["model"]["objective"] == "clm"
    assert cfg["model"]["lr"] == 6e-4 and cfg["model"]["weight_decay"] == 0.1
    assert cfg["data"]["init_args"]["max_length"] == 1024 and cfg["data"]["init_args"]["batch_size"] == 256
    assert "fasta" not in cfg["data"]["init_args"]  # the user must give the genome
    assert cfg["trainer"]["gradient_clip_val"] == 1.0


@pytest.mark.parametrize("path", ALL, ids=[p.relative_to(CONFIGS).as_posix() for p in ALL])
def test_config_fast_dev_run(path: Path, tiny, tmp_path):
    cfg = yaml.safe_load(path.read_text())
    argv = command_for(path, cfg, tiny) + trainer_overrides(cfg, tmp_path)
    assert cli.main(argv) == 0, " ".join(argv)


# ------------------------------------------------------------------ shipped configs, found by name
def test_configs_ship_inside_the_package_and_are_found_by_name():
    from importlib import resources

    from bioseq.config_files import config_root, find_config, shipped_configs
    from bioseq.finetune import suite

    root = Path(str(resources.files("bioseq.configs")))
    assert config_root() == root and suite.CONFIG_ROOT == root / "finetune"
    assert set(shipped_configs()) == {p.relative_to(CONFIGS).with_suffix("").as_posix() for p in ALL}
    hg38 = root / "pretrain" / "hyenadna-tiny-hg38.yaml"
    nontata = root / "finetune" / "genomic_benchmarks" / "human_nontata_promoters.yaml"
    assert find_config("hyenadna-tiny-hg38", "pretrain") == hg38
    assert find_config("pretrain/hyenadna-tiny-hg38.yaml") == hg38
    for name in ("human_nontata_promoters", "genomic_benchmarks/human_nontata_promoters",
                 "finetune/genomic_benchmarks/human_nontata_promoters"):
        assert find_config(name, "finetune") == nontata
    assert find_config(str(hg38), "finetune") == hg38  # a path is taken as it is
    from bioseq.errors import BioseqError

    with pytest.raises(BioseqError, match="no shipped config of that name"):
        find_config("hyenadna-tiny-hg38", "finetune")


def test_list_configs(capsys):
    assert cli.main(["finetune", "--list-configs"]) == 0
    listed = capsys.readouterr().out.split()
    assert "genomic_benchmarks/human_nontata_promoters" in listed and "nucleotide_transformer/H3" in listed
    assert cli.main(["pretrain", "--help"]) == 0
    assert "hyenadna-tiny-ecoli" in capsys.readouterr().out
