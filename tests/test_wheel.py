"""The built wheel, installed (not editable) into a fresh virtual environment, works from a folder that
holds its own ``models.py`` and ``finetune/`` (names a user's ML project often has): the distribution
installs no top-level package but ``bioseq`` and ships its configs.

The fresh environment sees this environment's third-party packages (torch, lightning, ...) through a
path file, so nothing is downloaded; the project itself comes only from the wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(cmd, cwd, env, timeout=300):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd} -> {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
         str(REPO)], cwd=tmp, env=os.environ.copy())
    wheels = list(dist.glob("bioseq-*.whl"))
    assert len(wheels) == 1
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # third-party packages of this environment, as a plain path entry (its .pth files, among them the
    # editable install's finder, are not processed)
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
         str(wheels[0])], cwd=tmp, env=os.environ.copy())
    user = tmp / "user_project"
    (user / "finetune").mkdir(parents=True)
    trap = "raise ImportError('the user project\\'s own {} was imported')\n"
    (user / "models.py").write_text(trap.format("models.py"))
    (user / "finetune" / "__init__.py").write_text(trap.format("finetune/"))
    (user / "seqs.fa").write_text(">a\nACGTACGTAC\n>b\nGGGTTTAAACCC\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return {"wheel": wheels[0], "py": py, "bin": env_dir / "bin", "user": user, "env": env,
            "site": Path(site)}


def test_wheel_has_only_the_bioseq_package(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"bioseq"}
    for must in ("bioseq/models/base.py", "bioseq/datamodules/genome.py", "bioseq/finetune/classifier.py",
                 "bioseq/configs/pretrain/hyenadna-tiny-hg38.yaml",
                 "bioseq/configs/finetune/genomic_benchmarks/human_nontata_promoters.yaml"):
        assert must in names, must
    installed_top = {p.name for p in installed["site"].iterdir()
                     if not p.name.endswith((".dist-info", ".pth"))}
    assert installed_top - {"__pycache__", "_distutils_hack"} == {"bioseq"}


def test_installed_commands_from_a_user_folder(installed):
    user, env, bin_ = installed["user"], installed["env"], installed["bin"]
    out = run([str(bin_ / "bioseq"), "--help"], user, env).stdout
    assert "embed" in out and "pretrain" in out
    code = "import bioseq.models, bioseq.finetune; print(bioseq.models.__file__)"
    where = run([str(installed["py"]), "-c", code], user, env).stdout.strip()
    assert where.startswith(str(installed["site"]))
    run([str(bin_ / "bioseq"), "embed", "-m", "hyenadna-tiny-1k", "seqs.fa", "-o", "e.h5", "-q"], user, env)
    assert (user / "e.h5").is_file()
    cfg = run([str(bin_ / "bioseq"), "pretrain", "fit", "--config", "hyenadna-tiny-hg38", "--print_config"],
              user, env).stdout
    assert "bioseq.datamodules.genome.GenomeDataModule" in cfg
