"""Safe loading: no code path can unpickle code, and a crafted checkpoint is refused with one line.

* A scan of every Python source of the project (``ast``, not text search) fails on ``torch.load``
  without ``weights_only=True``, a call of the ``eval`` / ``exec`` builtins, any ``trust_remote_code``,
  ``numpy.load(allow_pickle=True)``, and any pickle load (``pickle.load(s)``, ``Unpickler``,
  ``pandas.read_pickle``, ``joblib.load``, ...) outside the restricted unpickler in
  ``bioseq/checkpoints.py``. Tests may round-trip their own objects (``pickle.loads(pickle.dumps(x))``).
* For every checkpoint layout the loaders accept (``bioseq`` plus each family's ``layouts``), a
  directory whose weights file would run a shell command when unpickled is refused by
  ``models.load_backbone`` and by the CLI: one line naming the file, exit 2, nothing executed.
  The same directory with the genuine weights loads (so the refusal is the weights file's).
* A Lightning checkpoint given to ``--ckpt_path`` that would run code is refused the same way.
* Exported weights are safetensors.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import subprocess
from pathlib import Path

import pytest
import torch

from bioseq import checkpoints as ckpt
from bioseq import models
from bioseq.errors import BioseqError
from tests.conftest import REPO

BIOSEQ = REPO / ".venv" / "bin" / "bioseq"
SKIP_DIRS = {".venv", "venv", "build", "dist", ".git", "__pycache__", "node_modules", ".tox"}
RESTRICTED_UNPICKLER = Path("bioseq/checkpoints.py")
REMOTE_CODE = "trust_" + "remote_code"  # spelled apart so this file does not flag itself

# calls that unpickle (qualified names after resolving imports)
PICKLE_LOADS = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "_pickle.Unpickler",
    "cPickle.load", "cPickle.loads", "dill.load", "dill.loads", "cloudpickle.load", "cloudpickle.loads",
    "joblib.load", "pandas.read_pickle", "shelve.open", "marshal.load", "marshal.loads",
    "torch.serialization._load", "torch._weights_only_unpickler.load",
}
TORCH_LOADS = {"torch.load", "torch.serialization.load"}


# --------------------------------------------------------------------------------------------------
# the source scan
# --------------------------------------------------------------------------------------------------
def project_sources() -> list[Path]:
    out = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs
                   if d not in SKIP_DIRS and not d.startswith(".") and not d.endswith(".egg-info")]
        out += [Path(root, f) for f in files if f.endswith(".py")]
    return sorted(out)


class Scanner(ast.NodeVisitor):
    """Collects ``(line, problem)`` for one module; import aliases are resolved to qualified names."""

    def __init__(self, rel: Path):
        self.rel = rel
        self.aliases: dict[str, str] = {}
        self.problems: list[tuple[int, str]] = []
        self.is_test = rel.parts[0] == "tests"

    def qualified(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.qualified(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.asname:
                self.aliases[a.asname] = a.name
            else:
                self.aliases.setdefault(a.name.split(".")[0], a.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for a in node.names:
            if node.module:
                self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"

    def flag(self, node: ast.AST, what: str) -> None:
        self.problems.append((getattr(node, "lineno", 0), what))

    def visit_keyword(self, node: ast.keyword) -> None:
        if node.arg == REMOTE_CODE:
            self.flag(node, f"{REMOTE_CODE}= argument")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id == REMOTE_CODE:
            self.flag(node, f"name {REMOTE_CODE}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr == REMOTE_CODE:
            self.flag(node, f"attribute {REMOTE_CODE}")
        self.generic_visit(node)

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return  # a docstring (prose) is not a use
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and REMOTE_CODE in node.value:
            self.flag(node, f"string mentioning {REMOTE_CODE}")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for b in node.bases:
            if self.qualified(b) in PICKLE_LOADS and self.rel != RESTRICTED_UNPICKLER:
                self.flag(node, f"subclass of {self.qualified(b)} outside the restricted unpickler")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = self.qualified(node.func)
        kw = {k.arg: k.value for k in node.keywords}
        builtin = isinstance(node.func, ast.Name) and node.func.id not in self.aliases
        if builtin and node.func.id in ("eval", "exec"):
            self.flag(node, f"{node.func.id}() builtin")
        elif name in ("builtins.eval", "builtins.exec"):
            self.flag(node, f"{name}()")
        elif name in TORCH_LOADS:
            wo = kw.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                self.flag(node, f"{name} without weights_only=True")
        elif name in PICKLE_LOADS and not self.allowed_pickle(node, name):
            self.flag(node, f"{name}() outside the restricted unpickler")
        elif name in ("numpy.load", "np.load"):
            ap = kw.get("allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                self.flag(node, "numpy.load with allow_pickle")
        self.generic_visit(node)

    def allowed_pickle(self, node: ast.Call, name: str) -> bool:
        if self.rel == RESTRICTED_UNPICKLER:
            return False  # the restricted unpickler subclasses Unpickler; it never calls pickle.load(s)
        if self.is_test and name == "pickle.loads" and len(node.args) == 1:
            inner = node.args[0]  # pickle.loads(pickle.dumps(obj)): a round trip of the test's own object
            return isinstance(inner, ast.Call) and self.qualified(inner.func) == "pickle.dumps"
        return False


def scan(path: Path) -> list[str]:
    rel = path.relative_to(REPO)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))
    s = Scanner(rel)
    s.visit(tree)
    return [f"{rel}:{line}: {what}" for line, what in s.problems]


def test_scan_covers_the_packages():
    rels = {p.relative_to(REPO).as_posix() for p in project_sources()}
    for must in ("bioseq/checkpoints.py", "bioseq/cli.py", "models/lm.py", "finetune/classifier.py",
                 "datamodules/genome.py", "tests/test_security.py"):
        assert must in rels
    assert not any(r.startswith((".venv/", "build/")) for r in rels)


def test_no_unsafe_loading_or_code_execution_in_sources():
    problems = [p for path in project_sources() for p in scan(path)]
    assert not problems, "unsafe calls:\n" + "\n".join(problems)


@pytest.mark.parametrize("source, expected", [
    ("import torch\ntorch.load('x')", "torch.load without weights_only=True"),
    ("import torch as T\nT.load('x', weights_only=False)", "torch.load without weights_only=True"),
    ("from torch import load\nload('x', map_location='cpu')", "torch.load without weights_only=True"),
    ("eval('1+1')", "eval() builtin"),
    ("exec('x=1')", "exec() builtin"),
    ("import pickle\npickle.load(open('f', 'rb'))", "pickle.load() outside"),
    ("from pickle import loads\nloads(b'')", "pickle.loads() outside"),
    ("import pickle\nclass U(pickle.Unpickler):\n    pass", "subclass of pickle.Unpickler"),
    ("import pandas as pd\npd.read_pickle('f')", "pandas.read_pickle() outside"),
    ("import numpy as np\nnp.load('f', allow_pickle=True)", "numpy.load with allow_pickle"),
    (f"f(x, {REMOTE_CODE}=True)", f"{REMOTE_CODE}= argument"),
], ids=["torch.load", "torch-alias-false", "from-torch-import-load", "eval", "exec", "pickle.load",
        "from-pickle-loads", "unpickler-subclass", "read_pickle", "np.load-pickle", "remote-code"])
def test_scanner_catches(source, expected):
    s = Scanner(Path("pkg/x.py"))  # as a package module (tests may round-trip pickles, packages may not)
    s.visit(ast.parse(source))
    assert any(expected in what for _, what in s.problems), s.problems


def test_scanner_accepts_safe_forms():
    s = Scanner(Path("pkg/x.py"))
    s.visit(ast.parse("import torch\nimport pickle\ntorch.load('x', weights_only=True)\n"
                      "pickle.dumps(1)\nmodel.eval()\nnp.load('f')\n"))
    assert s.problems == []


# --------------------------------------------------------------------------------------------------
# crafted checkpoints, one per layout
# --------------------------------------------------------------------------------------------------
class Evil:
    """Unpickling this runs ``touch <marker>`` (it must never happen)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _fixture(shared, name):
    return torch.load(shared("fixtures", name), weights_only=True)


HF_HYENA = {  # the -hf port's config.json for hyenadna-tiny-1k-seqlen-hf (the fixture's sizes)
    "model_type": "hyenadna", "vocab_size": 12, "d_model": 128, "d_inner": 512, "n_layer": 2,
    "max_seq_len": 1026, "emb_dim": 5, "filter_order": 64, "num_inner_mlps": 2, "hyena_order": 2,
    "short_filter_order": 3, "activation_freq": 10, "train_freq": True, "use_bias": True,
    "embed_dropout": 0.1, "hyena_dropout": 0.0, "hyena_filter_dropout": 0.0, "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02, "pad_vocab_size_multiple": 8,
}


def _mamba_ssm(fx):
    c = fx["config"]
    ssm_cfg = dict(layer="Mamba1", d_state=c["state_size"], d_conv=c["conv_kernel"], expand=c["expand"],
                   dt_rank=c["time_step_rank"])
    config = dict(d_model=c["hidden_size"], d_intermediate=0, n_layer=c["num_hidden_layers"],
                  vocab_size=c["vocab_size"], ssm_cfg=ssm_cfg, attn_layer_idx=[], attn_cfg={}, rms_norm=True,
                  residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=8, tie_embeddings=True)
    return config, {fx["key_map_to_mamba_ssm"][k]: v for k, v in fx["state_dict"].items()}


def layout_case(shared, name: str) -> tuple[dict, str, object]:
    """``(config.json content, weights file name, genuine weights object)`` of one layout."""
    if name == "bioseq":
        model = models.build_backbone(preset="hyenadna-tiny-1k", d_model=32, n_layer=1)
        return model.config.to_dict(), "model.safetensors", model.state_dict()
    if name in ("hyena-official", "hyena-hf"):
        fx = _fixture(shared, "fixture_hyena_tiny.pt")
        if name == "hyena-official":
            state = {"model." + k: v for k, v in fx["state_dict"].items()}
            return fx["config"], "weights.ckpt", {"state_dict": state}
        return HF_HYENA, "pytorch_model.bin", {"hyena." + k: v for k, v in fx["state_dict"].items()}
    if name == "mamba-hf":
        fx = _fixture(shared, "fixture_mamba_tiny.pt")
        return fx["config"], "pytorch_model.bin", dict(fx["state_dict"])
    if name == "mamba-ssm":
        config, state = _mamba_ssm(_fixture(shared, "fixture_mamba_tiny.pt"))
        return config, "pytorch_model.bin", state
    if name == "caduceus-release":
        fx = _fixture(shared, "fixture_caduceus_ph_tiny.pt")
        return {**fx["config"], "model_type": "caduceus"}, "pytorch_model.bin", dict(fx["state_dict"])
    if name == "dna-xlstm":
        fx = _fixture(shared, "fixture_dnaxlstm_causal_tiny.pt")
        return fx["config"], "last.ckpt", {"state_dict": {"model." + k: v for k, v in
                                                           fx["state_dict"].items()}}
    if name == "prot-xlstm":
        fx = _fixture(shared, "fixture_protxlstm_tiny.pt")
        return fx["config"], "pytorch_model.bin", dict(fx["state_dict"])
    if name == "xlstm-package":
        fx = _fixture(shared, "fixture_xlstm_tiny.pt")
        return fx["config"], "pytorch_model.bin", dict(fx["state_dict"])
    raise KeyError(name)


LAYOUTS = ["bioseq", "hyena-official", "hyena-hf", "mamba-hf", "mamba-ssm", "caduceus-release", "dna-xlstm",
           "prot-xlstm", "xlstm-package"]


def test_every_registered_layout_is_covered():
    registered = {"bioseq"} | {lay.name for fam in models.FAMILIES for lay in fam.layouts}
    assert registered == set(LAYOUTS), "add the new layout to LAYOUTS / layout_case"
    assert len(models.known_layouts()) == len(LAYOUTS)


def write_weights(path: Path, genuine, payload: str, marker: Path) -> None:
    """``genuine``: the real weights; ``hidden``: the real weights plus an object whose unpickling runs a
    command, in a torch zip archive; ``whole``: the file is nothing but such a pickle (legacy format)."""
    if payload == "genuine":
        if path.suffix == ".safetensors":
            ckpt.save_safetensors(genuine, path)
        else:
            torch.save(genuine, path)
    elif payload == "hidden":
        torch.save({**genuine, "extra": Evil(marker)} if "state_dict" in genuine
                   else {"state_dict": genuine, "hyper_parameters": {"x": Evil(marker)}}, path)
    else:
        path.write_bytes(pickle.dumps({"state_dict": Evil(marker)}, protocol=2))


def make_dir(shared, tmp_path: Path, layout: str, payload: str) -> tuple[Path, Path, Path]:
    config, weights, genuine = layout_case(shared, layout)
    directory = tmp_path / f"{layout}-{payload}"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    marker = tmp_path / f"PWNED-{layout}-{payload}"
    write_weights(directory / weights, genuine, payload, marker)
    return directory, directory / weights, marker


@pytest.mark.parametrize("layout", LAYOUTS)
def test_crafted_weights_are_refused_by_load_backbone(shared, tmp_path, layout):
    directory, _, _ = make_dir(shared, tmp_path, layout, "genuine")
    assert isinstance(models.load_backbone(directory), models.Backbone)  # the layout really is read
    for payload in ("hidden", "whole"):
        directory, weights, marker = make_dir(shared, tmp_path, layout, payload)
        with pytest.raises(BioseqError) as err:
            models.load_backbone(directory)
        message = str(err.value)
        assert "\n" not in message and str(weights) in message, message
        if payload == "hidden" and weights.suffix != ".safetensors":
            assert "refused" in message and "system" in message, message
        assert not marker.exists()


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("BIOSEQ_DEBUG", "BIOSEQ_VERBOSE")}
    return subprocess.run([str(BIOSEQ), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def assert_one_line_refusal(out: subprocess.CompletedProcess, path: Path) -> None:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in out.stderr, out.stderr[-2000:]


def _embed_refuses(shared, tmp_path, layout):
    directory, weights, marker = make_dir(shared, tmp_path, layout, "hidden")
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nACGTACGTAC\n")
    out = run_cli("embed", "-m", str(directory), str(fasta), "-o", str(tmp_path / "out.h5"), cwd=tmp_path)
    assert_one_line_refusal(out, weights)
    assert not marker.exists() and not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("layout", ["hyena-official", "bioseq"])
def test_crafted_weights_are_refused_by_the_cli(shared, tmp_path, layout):
    _embed_refuses(shared, tmp_path, layout)


@pytest.mark.slow
@pytest.mark.parametrize("layout", [x for x in LAYOUTS if x not in ("hyena-official", "bioseq")])
def test_crafted_weights_are_refused_by_the_cli_every_layout(shared, tmp_path, layout):
    _embed_refuses(shared, tmp_path, layout)


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_crafted_lightning_checkpoint_is_refused(tmp_path, kind):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"x": Evil(marker)}}, evil)
    fasta = tmp_path / "g.fa"
    fasta.write_text(">c1\n" + "ACGT" * 200 + "\n")
    table = tmp_path / "t.tsv"
    table.write_text("sequence\tlabel\n" + "".join(f"ACGTAC{'GT' * (i % 3)}\t{i % 2}\n" for i in range(20)))
    if kind == "pretrain":
        args = ["--model.preset", "hyenadna-tiny-1k", "--data.class_path",
                "bioseq.datamodules.genome.GenomeDataModule", "--data.fasta", str(fasta),
                "--data.max_length", "64"]
    else:
        args = ["--model.backbone", "hyenadna-tiny-1k", "--data.train_file", str(table)]
    out = run_cli(kind, "validate", *args, "--trainer.accelerator", "cpu", "--trainer.default_root_dir",
                  str(tmp_path / "runs"), "--ckpt_path", str(evil), cwd=tmp_path)
    assert_one_line_refusal(out, evil)
    assert "refused" in out.stderr and "system" in out.stderr
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# exports
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["hyenadna-tiny-1k", "mamba-tiny", "caduceus-ph-tiny", "xlstm-tiny"])
def test_exported_weights_are_safetensors(tmp_path, preset):
    if preset not in models.PRESETS:
        pytest.skip(f"no preset {preset}")
    model = models.build_backbone(preset=preset)
    model.save_pretrained(tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["config.json", "model.safetensors"]
    with open(tmp_path / "m" / "model.safetensors", "rb") as fh:  # safetensors: u64 header size + JSON
        size = int.from_bytes(fh.read(8), "little")
        assert json.loads(fh.read(size))["__metadata__"]["format"] == "bioseq"
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "m" / "model.safetensors"))) <= set(model.state_dict())


def test_language_model_export_is_safetensors(tmp_path):
    from bioseq.models.lm import LanguageModel

    lm = LanguageModel(preset="hyenadna-tiny-1k", backbone_config={"d_model": 32, "n_layer": 1})
    lm.export(tmp_path / "e")
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["config.json", "model.safetensors",
                                                                  "tokenizer.json"]
    assert not any(p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl") for p in (tmp_path / "e").rglob("*"))
