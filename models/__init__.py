"""Backbones and the registry that builds / saves / loads them (the contract is in ``models/base.py``).

``FAMILIES`` lists every backbone family; adding one is one import and one entry here (see
``models/README.md``). ``ARCHITECTURES`` maps an ``arch`` string to ``(ConfigClass, BackboneClass)``;
``PRESETS`` maps a preset name to ``(arch, config)`` (random initialisation).
"""

from __future__ import annotations

import json
from pathlib import Path

from bioseq.models import base
from bioseq.models.base import (
    Backbone,
    BackboneConfig,
    Family,
    Layout,
    build_backbone,
    config_from_dict,
    known_layouts,
    load_backbone,
    resolve_backbone,
    save_pretrained,
)
from bioseq.models.caduceus import FAMILY as CADUCEUS
from bioseq.models.hyena import FAMILY as HYENA
from bioseq.models.hyena import HyenaConfig, HyenaDNA
from bioseq.models.mamba import FAMILY as MAMBA
from bioseq.models.xlstm import FAMILY as XLSTM

FAMILIES: tuple[Family, ...] = (HYENA, MAMBA, CADUCEUS, XLSTM)
for _family in FAMILIES:
    base.register(_family)

ARCHITECTURES = base.architectures()
PRESETS = base.presets()

__all__ = ["ARCHITECTURES", "PRESETS", "FAMILIES", "Backbone", "BackboneConfig", "Family", "Layout",
           "build_backbone", "config_from_dict", "load_backbone", "resolve_backbone", "save_pretrained",
           "known_layouts", "load_tokenizer_for", "register", "HyenaConfig", "HyenaDNA"]


def register(family: Family) -> Family:
    """Register a family at run time (plugins, tests); ``ARCHITECTURES`` and ``PRESETS`` follow."""
    base.register(family)
    ARCHITECTURES.clear()
    ARCHITECTURES.update(base.architectures())
    PRESETS.clear()
    PRESETS.update(base.presets())
    return family


def load_tokenizer_for(backbone_or_dir):
    """The tokenizer saved beside the weights (``tokenizer.json``), else the one the config names
    (``tokenizer``, e.g. Prot-xLSTM's ``"prot-xlstm"``), else the default for its alphabet."""
    from bioseq import tokenizers

    if isinstance(backbone_or_dir, (str, Path)):
        directory = Path(backbone_or_dir)
        alphabet = None
        if (directory / "config.json").is_file():
            saved = json.loads((directory / "config.json").read_text())
            alphabet = saved.get("tokenizer") or saved.get("alphabet")
    else:
        directory = getattr(backbone_or_dir, "_source_dir", None)
        config = backbone_or_dir.config
        alphabet = getattr(config, "tokenizer", None) or getattr(config, "alphabet", None)
    if directory is not None and (Path(directory) / "tokenizer.json").is_file():
        return tokenizers.load_tokenizer(Path(directory) / "tokenizer.json")
    return tokenizers.get_tokenizer(alphabet or "dna")
