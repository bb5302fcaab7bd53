"""The dependency direction of DESIGN.md section 1, checked on the source text.

bioseq (core) never imports lightning or the sibling packages, except the wiring layer
(bioseq/cli.py and bioseq/commands/). datamodules and models import only bioseq; finetune imports
models and bioseq (and datamodules); nothing imports upwards.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SIBLINGS = {"datamodules", "models", "finetune"}
ALLOWED = {
    "bioseq": set(),
    "datamodules": {"bioseq"},
    "models": {"bioseq"},
    "finetune": {"bioseq", "models", "datamodules"},
}


def _layer(module: str) -> str:
    """The layer an imported module belongs to: "models" for bioseq.models.*, "bioseq" for the core,
    else its top-level name (torch, lightning, ...)."""
    parts = module.split(".")
    if parts[0] == "bioseq" and len(parts) > 1 and parts[1] in SIBLINGS:
        return parts[1]
    return parts[0]


def _raw_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            if node.module == "bioseq":  # from bioseq import models
                names += [f"bioseq.{a.name}" for a in node.names]
    return names


def _imports(path: Path) -> set[str]:
    return {_layer(name) for name in _raw_imports(path)}


def _sources():
    for package in ALLOWED:
        for path in sorted((REPO / package).rglob("*.py")):
            yield package, path


def test_no_top_level_sibling_imports():
    """models/, datamodules/, finetune/ install as bioseq.models, ...: a bare `import models` would pick
    up whatever `models` a user has on their path."""
    bad = []
    for path in sorted(REPO.rglob("*.py")):
        if ".venv" in path.parts or "build" in path.parts:
            continue
        bad += [f"{path.relative_to(REPO)}: {name}" for name in _raw_imports(path)
                if name.split(".")[0] in SIBLINGS]
    assert not bad, bad


@pytest.mark.parametrize("package,path", list(_sources()), ids=lambda v: str(v).split("/main/")[-1])
def test_dependency_direction(package, path):
    rel = path.relative_to(REPO).as_posix()
    imported = _imports(path)
    if rel == "bioseq/cli.py" or rel.startswith("bioseq/commands/"):
        return  # the wiring layer may import everything
    forbidden = (SIBLINGS - ALLOWED[package] - {package})
    if package != "finetune" and package != "models" and package != "datamodules":
        forbidden |= {"lightning", "pytorch_lightning"}
    bad = sorted(imported & forbidden)
    assert not bad, f"{rel} imports {bad}: against the dependency direction in DESIGN.md"
