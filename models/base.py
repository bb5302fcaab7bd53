"""The backbone contract, written once, and the registry that builds, saves and loads every family.

A backbone maps token ids to final-normed hidden states. Every family (``hyena``, ``mamba``, ``xlstm``,
...) subclasses :class:`Backbone`, keeps its hyperparameters in a dataclass that mixes in
:class:`BackboneConfig`, and describes itself with one :class:`Family` record (config class, module
class, presets, the foreign checkpoint layouts it can read). ``bioseq.models`` lists the families;
nothing else needs to know which ones exist.

What every backbone is and declares::

    Backbone(config)                          config: <Arch>Config dataclass, JSON-serialisable,
                                              unknown keys rejected (BackboneConfig.from_dict)
    arch                                      registry key, also config.arch and config.json["arch"]
    hidden_size                               width of the hidden states (RCPS models: 2 x d_model)
    causal                                    True: position t sees tokens 0..t only (CLM is allowed)
    vocab_size                                rows of the input embedding (padded vocabulary)
    alphabet                                  tokenizer alphabet ("dna", "protein", "smiles")
    embed_tokens(input_ids [B, L]) -> [B, L, E]        (soft prompts enter through inputs_embeds)
    forward(input_ids=None, attention_mask=None, inputs_embeds=None, output_hidden_states=False,
            state=None)
        -> hidden [B, L, hidden_size]
           (hidden, hidden_states)                 with output_hidden_states
           (hidden, new_state)                     when a state is given (recurrent families)
           (hidden, hidden_states, new_state)      both
    lm_logits(hidden [B, L, hidden_size]) -> [B, L, vocab_size]
        tied to embed_tokens unless config.tie_word_embeddings is False (then ``lm_head`` is a
        parameter of the backbone, saved and loaded with it); families with a structured head
        (RCPS) override it.
    recurrent families (supports_state = True):
        allocate_state(batch_size, device=None) -> state
        step(input_ids [B], state) -> (hidden [B, hidden_size], state)
        forward(..., state=state) runs the parallel/chunked path from ``state`` and returns the new
        state, so step-by-step == chunked-with-state == one full forward.
    save_pretrained(dir, tokenizer=None) / from_pretrained(dir)     (config.json + model.safetensors)

``weights_origin`` on a built or loaded backbone says where its weights came from: ``"random"`` for a
preset or a config (random initialisation), else the checkpoint directory.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bioseq import checkpoints as ckpt
from bioseq.errors import BioseqError

RANDOM = "random"


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def _plain(value):
    """Tuples -> lists recursively (JSON/YAML friendly)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class BackboneConfig:
    """Mixin for the per-family config dataclasses: plain-data round trip with unknown keys rejected."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def check_keys(cls, d: dict[str, Any]) -> None:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(d) - names)
        if unknown:
            raise BioseqError(f"{cls.__name__}: unknown field(s) {unknown} "
                              f"(known: {', '.join(sorted(names))})")

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Build from a config dict; unknown keys are an error (they would be silently lost)."""
        cls.check_keys(d)
        return cls(**d)

    def replace(self, **overrides):
        """A copy with some fields replaced; unknown field names are an error."""
        type(self).check_keys(overrides)
        return dataclasses.replace(self, **overrides)


# --------------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------------


class Backbone(nn.Module):
    """Base class of every backbone (see the module docstring for the contract)."""

    arch: ClassVar[str] = ""
    supports_state: ClassVar[bool] = False

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        self.weights_origin = RANDOM

    # -- what the backbone declares -------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.config.d_model)

    @property
    def causal(self) -> bool:
        return True

    @property
    def alphabet(self) -> str:
        return getattr(self.config, "alphabet", "dna")

    @property
    def vocab_size(self) -> int:
        return int(self.embed_tokens.weight.shape[0])

    @property
    def tie_word_embeddings(self) -> bool:
        return bool(getattr(self.config, "tie_word_embeddings", True))

    @property
    def max_length(self) -> int | None:
        """Longest input in tokens, or None when the family has no limit."""
        return None

    def num_parameters(self) -> int:
        """Parameters (buffers excluded; tied tensors counted once)."""
        return sum(p.numel() for p in self.parameters())

    # -- the LM head ----------------------------------------------------------------------------
    def make_lm_head(self, width: int, rows: int) -> None:
        """Create the untied head ``lm_head`` (no bias) when the config unties it; call from __init__."""
        self.lm_head = None if self.tie_word_embeddings else nn.Linear(width, rows, bias=False)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden [..., hidden_size] -> logits [..., vocab_size]`` (padding rows included)."""
        head = getattr(self, "lm_head", None)
        if head is not None:
            return head(hidden)
        return F.linear(hidden, self.embed_tokens.weight)

    # -- recurrent state ------------------------------------------------------------------------
    def allocate_state(self, batch_size: int, device: torch.device | str | None = None):
        raise BioseqError(f"{type(self).__name__} has no recurrent state (supports_state is False)")

    def step(self, input_ids: torch.Tensor, state):
        raise BioseqError(f"{type(self).__name__} has no recurrent state (supports_state is False)")

    def check_state_arg(self, state) -> None:
        if state is not None and not self.supports_state:
            raise BioseqError(f"{type(self).__name__} has no recurrent state: forward(state=...) is not "
                              "supported")

    # -- checkpoints ----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, tokenizer=None) -> Path:
        return save_pretrained(self, directory, tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path, **config_overrides):
        """Pretrained weights: a checkpoint directory of any known layout, or a preset name / ``owner/name``
        Hub id of this family's released weights, downloaded with huggingface_hub (needs network)."""
        directory = ckpt.resolve_pretrained(path, _FAMILIES[cls.arch].hub_repos if cls.arch in _FAMILIES
                                            else None)
        model = load_directory(directory, **config_overrides)
        if not isinstance(model, cls):
            raise BioseqError(f"{path}: holds a '{model.arch}' backbone, not {cls.__name__}")
        return model

    def load_converted_state_dict(self, state: dict[str, torch.Tensor], *, strict: bool = True,
                                  source: object = None) -> None:
        """``load_state_dict`` for tensors already under bioseq names, with a one-line error."""
        own = self.state_dict()
        wrong = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if wrong:
            k = wrong[0]
            more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
            raise ckpt.CheckpointError(f"{source}: checkpoint does not match the config: {k} has shape "
                                       f"{list(state[k].shape)} in the checkpoint, {list(own[k].shape)} in "
                                       f"the config{more}")
        missing, unexpected = self.load_state_dict(state, strict=False)
        if strict and (missing or unexpected):
            raise ckpt.CheckpointError(f"{source}: checkpoint does not match the config: missing "
                                       f"{missing[:5]}, unexpected {unexpected[:5]}")


# --------------------------------------------------------------------------------------------------
# Families and foreign layouts
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """A foreign checkpoint layout (an official release format) one family can read.

    ``detect(directory, config_json)`` says whether ``directory`` is in this layout (``config_json`` is
    the parsed ``config.json``, or None when the directory has none); ``load(directory, config_json,
    overrides)`` returns the backbone with its weights.
    """

    name: str
    description: str
    detect: Callable[[Path, dict | None], bool]
    load: Callable[[Path, dict | None, dict], Backbone]


@dataclass(frozen=True)
class Family:
    """What a backbone family registers: one of these in ``bioseq.models.FAMILIES``."""

    arch: str
    config: type
    module: type
    presets: dict[str, Any] = field(default_factory=dict)
    layouts: tuple[Layout, ...] = ()
    hub_repos: dict[str, str] = field(default_factory=dict)   # preset -> Hub id of released weights


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family to the registry (``bioseq.models`` registers the built-in ones)."""
    if family.module.arch != family.arch:
        raise ValueError(f"{family.module.__name__}.arch is {family.module.arch!r}, not {family.arch!r}")
    clash = set(family.presets) & {p for f in _FAMILIES.values() if f.arch != family.arch for p in f.presets}
    if clash:
        raise ValueError(f"preset name(s) {sorted(clash)} already registered by another family")
    _FAMILIES[family.arch] = family
    return family


def families() -> dict[str, Family]:
    return dict(_FAMILIES)


def architectures() -> dict[str, tuple[type, type]]:
    """arch -> (ConfigClass, BackboneClass)."""
    return {a: (f.config, f.module) for a, f in _FAMILIES.items()}


def presets() -> dict[str, tuple[str, Any]]:
    """preset name -> (arch, config)."""
    return {name: (f.arch, cfg) for f in _FAMILIES.values() for name, cfg in f.presets.items()}


def family(arch: str) -> Family:
    if arch not in _FAMILIES:
        raise BioseqError(f"unknown architecture {arch!r}; known: {', '.join(_FAMILIES)}")
    return _FAMILIES[arch]


def known_layouts() -> list[str]:
    """One line per readable layout, for error messages and docs."""
    lines = ["bioseq (config.json with \"arch\" + model.safetensors)"]
    for f in _FAMILIES.values():
        lines += [f"{lay.name} ({lay.description})" for lay in f.layouts]
    return lines


# --------------------------------------------------------------------------------------------------
# Build / save / load: the one place for every family
# --------------------------------------------------------------------------------------------------


def config_from_dict(d: dict[str, Any], **overrides):
    """A config object from a dict naming its ``arch``; unknown keys are an error."""
    d = {**d, **overrides}
    if "arch" not in d:
        raise BioseqError(f"backbone config has no 'arch' field (known: {', '.join(_FAMILIES)})")
    return family(d["arch"]).config.from_dict(d)


def build_backbone(arch: str | None = None, preset: str | None = None, config: dict | Any = None,
                   **overrides) -> Backbone:
    """A randomly initialised backbone, from (first that is given) a ``config`` (dict naming its
    ``arch``, or a config object), a ``preset`` name, or ``arch``'s default config; ``overrides``
    replace config fields (unknown names are an error)."""
    if config is not None:
        if isinstance(config, dict):
            cfg = config_from_dict(config, **overrides)
        else:
            cfg = config.replace(**overrides)
        if preset is not None:
            raise BioseqError("give either a preset or a backbone config, not both")
    elif preset is not None:
        table = presets()
        if preset not in table:
            raise BioseqError(f"unknown preset {preset!r}; known: {', '.join(table)}")
        preset_arch, base = table[preset]
        if arch is not None and arch != preset_arch:
            raise BioseqError(f"preset {preset!r} is a '{preset_arch}' model, not '{arch}'")
        cfg = base.replace(**overrides)
    else:
        cfg = family(arch or "hyena").config.from_dict(overrides)
    model = family(cfg.arch).module(cfg)
    model.weights_origin = RANDOM
    return model


def save_pretrained(model: Backbone, directory: str | Path, tokenizer=None) -> Path:
    """Write ``config.json`` (with ``arch``) + ``model.safetensors`` (+ ``tokenizer.json`` when given)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    ckpt.save_safetensors(model.state_dict(), directory / "model.safetensors",
                          metadata={"format": "bioseq", "arch": model.arch})
    if tokenizer is not None:
        tokenizer.save(directory / "tokenizer.json")
    return directory


def _read_config(directory: Path) -> dict | None:
    path = directory / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ckpt.CheckpointError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except OSError as e:
        raise ckpt.CheckpointError(f"{path}: cannot read ({e.strerror})") from None


def _load_bioseq_dir(directory: Path, raw: dict, overrides: dict) -> Backbone:
    try:
        cfg = config_from_dict(raw, **overrides)
    except ckpt.CheckpointError:
        raise
    except BioseqError as err:
        raise ckpt.CheckpointError(f"{directory / 'config.json'}: {err}") from None
    model = family(cfg.arch).module(cfg)
    state = ckpt.load_state_dict_file(directory / "model.safetensors")
    model.load_converted_state_dict(state, strict=True, source=directory)
    return model


def load_directory(directory: str | Path, **overrides) -> Backbone:
    """A backbone from a checkpoint directory: the bioseq layout, or the first registered foreign
    layout that recognises it; one error line naming the known layouts otherwise."""
    directory = Path(directory)
    raw = _read_config(directory)
    if raw is not None and "arch" in raw and (directory / "model.safetensors").is_file():
        model = _load_bioseq_dir(directory, raw, overrides)
    else:
        for fam in _FAMILIES.values():
            match = next((lay for lay in fam.layouts if lay.detect(directory, raw)), None)
            if match is not None:
                model = match.load(directory, raw, overrides)
                break
        else:
            raise ckpt.CheckpointError(f"{directory}: not a checkpoint layout bioseq knows; known: "
                                       + "; ".join(known_layouts()))
    model.weights_origin = str(directory)
    model._source_dir = directory
    return model


def load_backbone(spec: str | Path, **overrides) -> Backbone:
    """A backbone from a checkpoint directory (any registered layout), a preset name (random
    initialisation; ``weights_origin == "random"``), or an ``owner/name`` Hugging Face Hub id (downloaded
    when huggingface_hub is installed and online, then read like a directory)."""
    path = Path(spec)
    if path.is_dir():
        return load_directory(path, **overrides)
    if str(spec) in presets():
        return build_backbone(preset=str(spec), **overrides)
    if path.exists():
        raise ckpt.CheckpointError(f"{path}: expected a checkpoint directory or a preset name, got a file")
    text = str(spec)
    if text.count("/") == 1 and not text.startswith((".", "/")):
        return load_directory(ckpt.resolve_pretrained(text), **overrides)
    raise BioseqError(f"{spec}: neither a checkpoint directory nor a preset ({', '.join(presets())})")


def resolve_backbone(backbone: str | Path | nn.Module | None = None, *, arch: str | None = None,
                     preset: str | None = None, config: dict | None = None,
                     overrides: dict | None = None) -> Backbone:
    """The one way pretraining, finetuning, ``embed`` and ``probe`` get their backbone.

    First that applies: ``backbone`` as a module (used as is); ``config`` (a config dict: with a
    ``preset`` its fields override the preset, else it is a whole config naming its ``arch`` or taking
    ``arch``); ``backbone`` as a string (``load_backbone``: checkpoint directory, preset name or Hub
    id); ``preset`` / ``arch`` (random initialisation). ``overrides`` replace config fields in every
    case but the module one; unknown field names are an error everywhere.
    """
    overrides = dict(overrides or {})
    if isinstance(backbone, nn.Module):
        if overrides or config:
            raise BioseqError("config overrides apply to a backbone that is built or loaded here, not to a "
                              "module passed in")
        return backbone
    if config:
        config = dict(config)
        if preset is not None:
            if config.pop("arch", arch) not in (None, presets().get(preset, (None,))[0]):
                raise BioseqError(f"preset {preset!r} does not match the config's arch")
            return build_backbone(arch, preset, **config, **overrides)
        config.setdefault("arch", arch or "hyena")
        return build_backbone(config=config, **overrides)
    if backbone is not None:
        return load_backbone(backbone, **overrides)
    if preset is None and arch is None:
        raise BioseqError("no backbone given: name a checkpoint directory or preset, or a config")
    return build_backbone(arch, preset, **overrides)
