"""Backbones and the registry that builds / loads them by architecture name.

``ARCHITECTURES`` maps an ``arch`` string (the ``arch`` field of every backbone config) to
``(ConfigClass, BackboneClass)``. Every backbone class has ``from_pretrained(dir)``, a ``PRESETS``
dict in its module, and configs with ``to_dict()/from_dict()``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch.nn as nn

from bioseq.errors import BioseqError
from bioseq.models.hyena import PRESETS as HYENA_PRESETS
from bioseq.models.hyena import HyenaConfig, HyenaDNA

ARCHITECTURES: dict[str, tuple[type, type[nn.Module]]] = {
    "hyena": (HyenaConfig, HyenaDNA),
}

PRESETS: dict[str, tuple[str, object]] = {name: ("hyena", cfg) for name, cfg in HYENA_PRESETS.items()}

__all__ = ["ARCHITECTURES", "PRESETS", "build_backbone", "load_backbone", "load_tokenizer_for",
           "HyenaConfig", "HyenaDNA"]


def build_backbone(arch: str = "hyena", preset: str | None = None, **overrides) -> nn.Module:
    """A randomly initialised backbone: ``arch``'s default config, or ``preset``, with field overrides."""
    if preset is not None:
        if preset not in PRESETS:
            raise BioseqError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        arch, config = PRESETS[preset]
        config = dataclasses.replace(config, **overrides)
    else:
        if arch not in ARCHITECTURES:
            raise BioseqError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
        config = ARCHITECTURES[arch][0](**overrides)
    return ARCHITECTURES[arch][1](config)


def _arch_of_dir(directory: Path) -> str:
    """``arch`` of a checkpoint directory; official / -hf HyenaDNA configs have none and mean hyena."""
    try:
        cfg = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BioseqError(f"{directory / 'config.json'}: cannot read ({e})") from None
    return cfg.get("arch", "hyena")


def load_backbone(spec: str | Path, *, return_extras: bool = False, **overrides):
    """A backbone from a checkpoint directory (any supported layout), a preset name (random init), or
    an ``owner/name`` Hugging Face Hub id (downloaded when huggingface_hub is installed and online).

    ``return_extras=True`` also returns a dict of non-backbone tensors from the checkpoint, e.g. an
    untied ``lm_head.weight`` of a -hf model (empty for presets and bioseq directories).
    """
    path = Path(spec)
    if path.is_dir():
        arch = _arch_of_dir(path)
        if arch not in ARCHITECTURES:
            raise BioseqError(f"{path}: unknown architecture {arch!r}")
        model, extras = ARCHITECTURES[arch][1].from_pretrained(path, return_extras=True, **overrides)
    elif str(spec) in PRESETS:
        model, extras = build_backbone(preset=str(spec), **overrides), {}
    elif str(spec).count("/") == 1 and not path.exists() and not str(spec).startswith((".", "/")):
        # owner/name: a Hugging Face Hub repository (needs huggingface_hub and network)
        model, extras = HyenaDNA.from_pretrained(str(spec), return_extras=True, **overrides)
    else:
        raise BioseqError(f"{spec}: neither a checkpoint directory nor a preset ({', '.join(PRESETS)})")
    return (model, extras) if return_extras else model


def load_tokenizer_for(backbone_or_dir):
    """The tokenizer saved beside the weights (``tokenizer.json``), else the default for the alphabet."""
    from bioseq import tokenizers

    if isinstance(backbone_or_dir, (str, Path)):
        directory = Path(backbone_or_dir)
        alphabet = None
        if (directory / "config.json").is_file():
            alphabet = json.loads((directory / "config.json").read_text()).get("alphabet")
    else:
        directory = getattr(backbone_or_dir, "_source_dir", None)
        alphabet = getattr(backbone_or_dir.config, "alphabet", None)
    if directory is not None and (Path(directory) / "tokenizer.json").is_file():
        return tokenizers.load_tokenizer(Path(directory) / "tokenizer.json")
    return tokenizers.get_tokenizer(alphabet or "dna")
