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


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _sources():
    for package in ALLOWED:
        for path in sorted((REPO / package).rglob("*.py")):
            yield package, path


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
