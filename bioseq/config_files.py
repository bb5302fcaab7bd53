"""The YAML configs shipped inside the package (``bioseq.configs``), found by name or by path.

Names are paths under the package without ``.yaml``: ``pretrain/hyenadna-tiny-hg38``,
``finetune/genomic_benchmarks/human_nontata_promoters``. :func:`find_config` also accepts the name
without the leading ``pretrain/`` / ``finetune/`` (``genomic_benchmarks/human_nontata_promoters``) and
the bare file stem when it is unique (``hyenadna-tiny-hg38``, ``human_nontata_promoters``).
Nothing here imports torch or Lightning.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from bioseq.errors import BioseqError

KINDS = ("pretrain", "finetune")


def config_root() -> Path:
    """The directory holding the shipped configs (an installed package directory, never a zip)."""
    root = resources.files("bioseq.configs")
    if not isinstance(root, os.PathLike):  # pragma: no cover - a zipped install
        raise BioseqError("bioseq.configs is not a directory on disk (zipped install?)")
    return Path(os.fspath(root))


def shipped_configs(kind: str | None = None) -> dict[str, Path]:
    """``{"pretrain/hyenadna-tiny-hg38": path, ...}`` in name order; ``kind`` keeps one top folder."""
    root = config_root()
    found = {}
    for path in sorted(root.rglob("*.yaml")):
        name = path.relative_to(root).with_suffix("").as_posix()
        if kind is None or name.split("/", 1)[0] == kind:
            found[name] = path
    return found


def find_config(value: str | os.PathLike, kind: str | None = None) -> Path:
    """An existing file ``value``, else the shipped config it names (see the module docstring).

    Raises :class:`BioseqError` naming the closest choices when neither exists.
    """
    path = Path(value)
    if path.is_file():
        return path
    if path.is_dir():
        raise BioseqError(f"--config {value}: is a directory, not a YAML file")
    name = str(value).removesuffix(".yaml").removesuffix(".yml").strip("/")
    configs = shipped_configs()
    prefixes = [f"{kind}/"] if kind else [f"{k}/" for k in KINDS]
    for candidate in [name, *(p + name for p in prefixes)]:
        if candidate in configs and (kind is None or candidate.startswith(f"{kind}/")):
            return configs[candidate]
    scope = {n: p for n, p in configs.items() if kind is None or n.startswith(f"{kind}/")}
    by_stem = [n for n in scope if n.rsplit("/", 1)[-1] == name.rsplit("/", 1)[-1]]
    if len(by_stem) == 1:
        return scope[by_stem[0]]
    hint = f"bioseq {kind} --list-configs" if kind else "bioseq pretrain --list-configs"
    if len(by_stem) > 1:
        raise BioseqError(f"--config {value}: several shipped configs match ({', '.join(by_stem)}); "
                          "give the longer name")
    raise BioseqError(f"--config {value}: no such file, and no shipped config of that name "
                      f"(list them with `{hint}`)")
