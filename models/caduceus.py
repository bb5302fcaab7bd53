"""Caduceus: the bidirectional, reverse-complement-equivariant DNA Mamba, weight-compatible with the release.

Read top to bottom: ``CaduceusConfig`` and the presets, sequence flips, the embedding, BiMamba, the
RCPS helpers, the block, the ``Caduceus`` backbone, and the released layout (``FAMILY`` at the end).

BiMamba (one mixer; the Mamba-1 mixer of ``models.mamba``)::

    y = mamba_fwd(x) + F(mamba_rev(F(x)))        F = flip along the sequence, each row within its own
                                                 length (right padding never reaches the reverse pass)

With ``bidirectional_weight_tie`` (the release) the two directions share in_proj and out_proj; conv1d,
x_proj, dt_proj, A_log and D are their own. The shared projections are applied once: in_proj before
the split into directions, out_proj after their sum.

Blocks (pre-norm with Mamba's add-then-norm order; ``r`` is the residual stream, ``h`` the mixer
output, ``r = h`` before the first block)::

    r = r + h;  h = mixer(norm(r))               ...   hidden = norm_f(r + h)

RCPS (``rcps=True``, reverse-complement parameter sharing; hidden_size = 2 d_model). With
``flipC`` = flip along channels and ``flipLC`` = flip along sequence (within length) and channels:

    embedding   [E[x], flipC(E[comp[x]])]                      (comp: A<->T, C<->G, others fixed)
    norm        [norm(a), flipC(norm(flipC(b)))]               for input [a, b]
    mixer       [f(a), flipLC(f(flipLC(b)))]                   (both halves run as one 2B batch)
    LM head     logits = a W^T + flipC(b) W[comp]^T

so that hidden(rc(x)) = flipLC(hidden(x)) and logits(rc(x)) = flip(logits(x))[..., comp] exactly.
``fused_add_norm`` (the released checkpoints) reproduces the reference's fused path, which swaps the
halves of the residual stream before each block's norm: the block sees ``[r2, r1]``. The model stays
equivariant either way, but the two settings compute different functions; ``norm_f`` never swaps.

Post-hoc conjoining (``conjoin=True``, eval mode only): the output is
``(hidden(x) + F(hidden(rc(x)))) / 2`` (rc within each row's length): every position gets the same
features whichever strand is read. The LM head is not meant for conjoined outputs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from bioseq import checkpoints as ckpt
from bioseq.errors import BioseqError
from bioseq.models.base import Backbone, BackboneConfig, Family, Layout
from bioseq.models.flips import flip_index, flip_within, right_padded_lengths
from bioseq.models.mamba import Mamba1Mixer, make_norm

# DNA ids (bioseq.tokenizers.DnaTokenizer, identical to the release): A7 C8 G9 T10; everything else
# (specials, N, padding rows) is its own complement.
DNA_COMPLEMENT = {7: 10, 8: 9, 9: 8, 10: 7}

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclass
class CaduceusConfig(BackboneConfig):
    """Caduceus hyperparameters (release field names; the Mamba ones flattened out of ``ssm_cfg``).

    ``complement_map``: complement id of each token id (None = the DNA map above); extended with
    identities to the padded vocabulary.
    """

    d_model: int = 256
    n_layer: int = 4
    vocab_size: int = 12
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None            # None = ceil(d_model / 16)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    rms_norm: bool = True
    norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    fused_add_norm: bool = True           # the released checkpoints' semantics (RCPS half swap)
    rcps: bool = True
    bidirectional_strategy: str = "add"   # "add" or "ew_multiply"
    bidirectional_weight_tie: bool = True
    complement_map: list[int] | None = None
    conjoin: bool = False                 # post-hoc conjoining in eval mode
    pad_vocab_size_multiple: int = 8
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    rescale_prenorm_residual: bool = True
    gradient_checkpointing: bool = False
    arch: str = "caduceus"
    alphabet: str = "dna"

    def __post_init__(self):
        if self.arch != "caduceus":
            raise BioseqError(f"CaduceusConfig: arch must be 'caduceus', got {self.arch!r}")
        if self.bidirectional_strategy not in ("add", "ew_multiply"):
            raise BioseqError(f"CaduceusConfig: bidirectional_strategy must be 'add' or 'ew_multiply', got "
                              f"{self.bidirectional_strategy!r}")
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.d_model / 16)
        if self.dt_init not in ("random", "constant"):
            raise BioseqError(f"CaduceusConfig: dt_init must be 'random' or 'constant', got {self.dt_init!r}")
        if self.complement_map is not None:
            comp = [int(c) for c in self.complement_map]
            if len(comp) > self.padded_vocab_size or any(not 0 <= c < len(comp) for c in comp) or any(
                    comp[c] != i for i, c in enumerate(comp)):
                raise BioseqError("CaduceusConfig: complement_map must be an involution of the token ids "
                                  f"0..{self.padded_vocab_size - 1}")
            self.complement_map = comp

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.pad_vocab_size_multiple)
        return -(-self.vocab_size // m) * m

    def complement_ids(self) -> torch.Tensor:
        """[padded_vocab_size] long: the complement of every token id."""
        comp = list(range(self.padded_vocab_size))
        if self.complement_map is None:
            for a, b in DNA_COMPLEMENT.items():
                if b < len(comp):
                    comp[a] = b
        else:
            comp[: len(self.complement_map)] = self.complement_map
        return torch.tensor(comp, dtype=torch.long)


def _caduceus(d_model: int, n_layer: int, rcps: bool, **kw) -> CaduceusConfig:
    return CaduceusConfig(d_model=d_model, n_layer=n_layer, rcps=rcps, fused_add_norm=True, **kw)


# Released checkpoints (kuleshov-group on the Hugging Face Hub) and CPU-sized models.
PRESETS: dict[str, CaduceusConfig] = {
    "caduceus-ph-131k": _caduceus(256, 16, False),
    "caduceus-ps-131k": _caduceus(256, 16, True),
    "caduceus-ph-1k": _caduceus(256, 4, False),
    "caduceus-ps-1k": _caduceus(256, 4, True),
    "caduceus-ph-1k-d118": _caduceus(118, 4, False),
    "caduceus-ps-1k-d118": _caduceus(118, 4, True),
    "caduceus-ph-tiny": _caduceus(64, 4, False),
    "caduceus-ps-tiny": _caduceus(64, 4, True),
}

HUB_REPOS: dict[str, str] = {
    "caduceus-ph-131k": "kuleshov-group/caduceus-ph_seqlen-131k_d_model-256_n_layer-16",
    "caduceus-ps-131k": "kuleshov-group/caduceus-ps_seqlen-131k_d_model-256_n_layer-16",
    "caduceus-ph-1k": "kuleshov-group/caduceus-ph_seqlen-1k_d_model-256_n_layer-4_lr-8e-3",
    "caduceus-ps-1k": "kuleshov-group/caduceus-ps_seqlen-1k_d_model-256_n_layer-4_lr-8e-3",
    "caduceus-ph-1k-d118": "kuleshov-group/caduceus-ph_seqlen-1k_d_model-118_n_layer-4_lr-8e-3",
    "caduceus-ps-1k-d118": "kuleshov-group/caduceus-ps_seqlen-1k_d_model-118_n_layer-4_lr-8e-3",
}


# --------------------------------------------------------------------------------------------------
# Flips
# --------------------------------------------------------------------------------------------------


class SeqFlip:
    """Reverses each row of [B, L, ...] within its own length (right padding stays where it is).

    ``lengths`` None = every row is full (a plain flip). ``doubled()`` is the same flip for a batch
    stacked twice along dim 0 (the two RCPS streams).
    """

    def __init__(self, lengths: torch.Tensor | None, L: int):
        self.lengths, self.L = lengths, L
        self.index = None if lengths is None else flip_index(lengths, L)   # [B, L]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return flip_within(x, self.lengths, self.index)

    def doubled(self) -> SeqFlip:
        return self if self.lengths is None else SeqFlip(torch.cat([self.lengths, self.lengths]), self.L)


def flip_c(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.chunk(2, dim=-1)


# --------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------


class CaduceusEmbedding(nn.Module):
    """``weight`` [V, d_model]; forward(ids [B, L]) -> E[ids] [B, L, d], or with ``rcps`` the
    equivariant [E[ids], flipC(E[comp[ids]])] [B, L, 2d]."""

    def __init__(self, config: CaduceusConfig):
        super().__init__()
        self.rcps = config.rcps
        self.weight = nn.Parameter(torch.empty(config.padded_vocab_size, config.d_model))
        self.register_buffer("complement_map", config.complement_ids(), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        e = F.embedding(input_ids, self.weight)
        if not self.rcps:
            return e
        return torch.cat([e, flip_c(F.embedding(self.complement_map[input_ids], self.weight))], dim=-1)


class BiMamba(nn.Module):
    """``mamba_fwd(x) + F(mamba_rev(F(x)))`` (or the product, ``ew_multiply``); x [B, L, d_model]."""

    def __init__(self, config: CaduceusConfig):
        super().__init__()
        self.tied = config.bidirectional_weight_tie
        self.strategy = config.bidirectional_strategy
        self.mamba_fwd = Mamba1Mixer(config)
        self.mamba_rev = Mamba1Mixer(config, with_projections=not self.tied)

    def reset_parameters(self, n_layer: int, rescale: bool) -> None:
        self.mamba_fwd.reset_parameters(n_layer, rescale)
        self.mamba_rev.reset_parameters(n_layer, rescale)

    def forward(self, u: torch.Tensor, flip: SeqFlip) -> torch.Tensor:
        fwd, rev = self.mamba_fwd, self.mamba_rev
        if not self.tied:
            a, b = fwd(u), flip(rev(flip(u)))
            return a + b if self.strategy == "add" else a * b
        xz = fwd.in_proj(u)                                      # shared in_proj, applied once
        y_f = fwd.scan(xz)
        y_r = flip(rev.scan(flip(xz)))
        if self.strategy == "ew_multiply":
            return fwd.project_out(y_f) * fwd.project_out(y_r)
        out = fwd.project_out(y_f + y_r)                          # shared out_proj, applied once
        if fwd.out_proj.bias is not None:                         # (its bias counts for both)
            out = out + fwd.out_proj.bias
        return out


def rc_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """RCPS norm: [norm(a), flipC(norm(flipC(b)))] (a position-wise norm needs no flip along L)."""
    a, b = halves(x)
    return torch.cat([norm(a), flip_c(norm(flip_c(b)))], dim=-1)


def rc_mixer(mixer: BiMamba, x: torch.Tensor, flip: SeqFlip) -> torch.Tensor:
    """RCPS mixer: [f(a), flipLC(f(flipLC(b)))], both halves as one batch of 2B rows."""
    a, b = halves(x)
    out = mixer(torch.cat([a, flip_c(flip(b))], dim=0), flip.doubled())
    fa, fb = out.chunk(2, dim=0)
    return torch.cat([fa, flip_c(flip(fb))], dim=-1)


class Block(nn.Module):
    """``r = r + h; h = mixer(norm(r))`` -> (h, r); RCPS wraps the norm and the mixer (see module doc)."""

    def __init__(self, config: CaduceusConfig):
        super().__init__()
        self.norm = make_norm(config.d_model, config.rms_norm, config.norm_epsilon)
        self.mixer = BiMamba(config)
        self.rcps, self.fused = config.rcps, config.fused_add_norm
        self.residual_in_fp32 = config.residual_in_fp32

    def forward(self, h: torch.Tensor, residual: torch.Tensor | None, flip: SeqFlip):
        residual = h if residual is None else residual + h
        if self.residual_in_fp32:
            residual = residual.float()
        if not self.rcps:
            return self.mixer(self.norm(residual), flip), residual
        if self.fused:  # the released fused add-norm feeds the reverse-complement half first
            r1, r2 = halves(residual)
            residual = torch.cat([r2, r1], dim=-1)
        return rc_mixer(self.mixer, rc_norm(self.norm, residual), flip), residual


class Caduceus(Backbone):
    """Caduceus backbone: token ids [B, L] -> hidden [B, L, hidden_size] (final norm applied);
    hidden_size = 2 d_model for RCPS ([forward half, reverse-complement half]).

    Bidirectional (``causal`` False) and without recurrent state. ``attention_mask`` marks right
    padding: each row is flipped within its own length, so padding never changes a real token's output.
    """

    arch = "caduceus"

    def __init__(self, config: CaduceusConfig):
        super().__init__(config)
        self.d_model = config.d_model
        self.embed_tokens = CaduceusEmbedding(config)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = make_norm(config.d_model, config.rms_norm, config.norm_epsilon)
        self.make_lm_head(config.d_model, config.padded_vocab_size)
        self.reset_parameters()

    @property
    def hidden_size(self) -> int:
        return 2 * self.d_model if self.config.rcps else self.d_model

    @property
    def causal(self) -> bool:
        return False

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The release's init: embedding N(0, initializer_range), norms 1, Mamba's own init in every
        mixer (out_proj rescaled by 1/sqrt(n_layer))."""
        nn.init.normal_(self.embed_tokens.weight, std=self.config.initializer_range)
        for block in self.layers:
            block.mixer.reset_parameters(self.config.n_layer, self.config.rescale_prenorm_residual)
            block.norm.reset_parameters()
        self.norm_f.reset_parameters()
        if self.lm_head is not None:
            self.lm_head.reset_parameters()

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., hidden_size] -> [..., padded vocab]; RCPS: ``a W^T + flipC(b) W[comp]^T`` (no bias)."""
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        if not self.config.rcps:
            return F.linear(hidden, weight)
        a, b = halves(hidden)
        return F.linear(a, weight) + F.linear(flip_c(b), weight[self.embed_tokens.complement_map])

    def reverse_complement(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None
                           ) -> torch.Tensor:
        """Reverse complement of each row of ids [B, L] within its length (None = whole rows)."""
        return self.embed_tokens.complement_map[SeqFlip(lengths, input_ids.shape[1])(input_ids)]

    def _run(self, x: torch.Tensor, flip: SeqFlip, output_hidden_states: bool):
        h, residual = x, None
        states = [x]
        use_ckpt = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.layers:
            if use_ckpt:
                h, residual = checkpoint(block, h, residual, flip, use_reentrant=False)
            else:
                h, residual = block(h, residual, flip)
            if output_hidden_states:
                states.append(residual + h)
        residual = residual + h if residual is not None else h
        if self.config.rcps:
            out = rc_norm(self.norm_f, residual)
        else:
            out = self.norm_f(residual)
        return out, states

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, output_hidden_states: bool = False, state=None):
        """Args: input_ids [B, L] (or inputs_embeds [B, L, hidden_size], e.g. ``embed_tokens(ids)`` with
        soft prompts); attention_mask [B, L] (right padding).

        Returns hidden [B, L, hidden_size]; with ``output_hidden_states`` also n_layer + 1 tensors (the
        embeddings and the residual stream after each block, before the final norm).
        """
        self.check_state_arg(state)
        L = (input_ids if inputs_embeds is None else inputs_embeds).shape[1]
        lengths = right_padded_lengths(attention_mask, L)
        flip = SeqFlip(lengths, L)
        if self.config.conjoin and not self.training:
            if input_ids is None:
                raise BioseqError("Caduceus: conjoining needs input_ids (it runs the reverse complement)")
            both = torch.cat([input_ids, self.reverse_complement(input_ids, lengths)], dim=0)
            h, states = self._run(self.embed_tokens(both), flip.doubled(), output_hidden_states)
            h = (h[: len(input_ids)] + flip(h[len(input_ids):])) / 2
            states = [(s[: len(input_ids)] + flip(s[len(input_ids):])) / 2 for s in states]
        else:
            x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
            h, states = self._run(x, flip, output_hidden_states)
        return (h, tuple(states)) if output_hidden_states else h


# --------------------------------------------------------------------------------------------------
# The released layout (HF CaduceusForMaskedLM) and the family record
# --------------------------------------------------------------------------------------------------


def config_from_release(d: dict[str, Any], **overrides) -> CaduceusConfig:
    """The release's config.json (``CaduceusConfig`` of the Caduceus repository) -> CaduceusConfig."""
    if not d.get("bidirectional", True):
        raise BioseqError("config.json: a unidirectional Caduceus is a plain Mamba; use arch 'mamba'")
    ssm = dict(d.get("ssm_cfg") or {})
    kw: dict[str, Any] = {}
    for k in ("d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale",
              "dt_init_floor", "conv_bias", "bias"):
        if k in ssm:
            value = ssm.pop(k)
            kw[k] = None if (k == "dt_rank" and value == "auto") else value
    ssm.pop("use_fast_path", None)
    ssm.pop("layer_idx", None)
    if ssm:
        raise BioseqError(f"config.json: ssm_cfg field(s) {sorted(ssm)} are not supported")
    init = d.get("initializer_cfg") or {}
    if init.get("n_residuals_per_layer", 1) != 1:
        raise BioseqError("config.json: initializer_cfg.n_residuals_per_layer must be 1")
    comp = d.get("complement_map")
    if isinstance(comp, dict):
        comp = [int(comp[k]) for k in sorted(comp, key=int)]
    kw.update(
        d_model=d["d_model"], n_layer=d["n_layer"], vocab_size=d["vocab_size"],
        rms_norm=d.get("rms_norm", True), norm_epsilon=d.get("norm_epsilon", 1e-5),
        residual_in_fp32=d.get("residual_in_fp32", True), fused_add_norm=d.get("fused_add_norm", True),
        rcps=d.get("rcps", False), bidirectional_strategy=d.get("bidirectional_strategy") or "add",
        bidirectional_weight_tie=d.get("bidirectional_weight_tie", True), complement_map=comp,
        pad_vocab_size_multiple=d.get("pad_vocab_size_multiple", 8),
        tie_word_embeddings=d.get("tie_word_embeddings", True),
        initializer_range=init.get("initializer_range", 0.02),
        rescale_prenorm_residual=init.get("rescale_prenorm_residual", True),
    )
    kw.update(overrides)
    return CaduceusConfig(**kw)


_TIED_REV = r"layers\.\d+\.mixer\.mamba_rev\.(in|out)_proj\.\w+"   # aliases of the mamba_fwd tensors


def convert_release_state(state: dict[str, torch.Tensor], config: CaduceusConfig
                          ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Released keys -> bioseq keys; returns (state, untied LM head weight or None).

    ``caduceus.backbone.embeddings.word_embeddings[.embedding].weight`` -> ``embed_tokens.weight``;
    the RCPS wrappers' ``.submodule`` disappears (``mixer.submodule.mamba_fwd`` -> ``mixer.mamba_fwd``,
    ``norm.submodule.weight`` -> ``norm.weight``); tied aliases (``mamba_rev.in_proj/out_proj``, the LM
    head) must equal their canonical tensor and are dropped; complement maps must match the config's.
    """
    comp = config.complement_ids()
    out: dict[str, torch.Tensor] = {}
    head = None
    aliases: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = re.sub(r"^model\.", "", key)
        if k.endswith("complement_map"):
            given = value.long().reshape(-1)
            if not torch.equal(given, comp[: len(given)]) or len(given) > len(comp):
                raise ckpt.CheckpointError(f"{key}: complement map differs from config.json's")
            continue
        if k in ("lm_head.weight", "lm_head.lm_head.weight"):
            head = value
            continue
        if not k.startswith("caduceus.backbone."):
            raise ckpt.CheckpointError(f"unexpected key {key!r} in a Caduceus checkpoint")
        k = k[len("caduceus.backbone."):].replace(".submodule.", ".")
        k = re.sub(r"^norm_f\.submodule\.", "norm_f.", k)
        if k in ("embeddings.word_embeddings.weight", "embeddings.word_embeddings.embedding.weight"):
            k = "embed_tokens.weight"
        if config.bidirectional_weight_tie and re.fullmatch(_TIED_REV, k):
            aliases[k] = value
            continue
        out[k] = value
    for k, value in aliases.items():
        canonical = out.get(k.replace("mamba_rev", "mamba_fwd"))
        if canonical is None or not torch.equal(canonical, value):
            raise ckpt.CheckpointError(f"{k}: bidirectional_weight_tie is set but the reverse projection "
                                       "differs from the forward one")
    if "embed_tokens.weight" not in out:
        raise ckpt.CheckpointError("not a Caduceus state dict: no "
                                   "caduceus.backbone.embeddings.word_embeddings")
    emb = out["embed_tokens.weight"]
    if head is not None and head.shape == emb.shape and torch.equal(head, emb):
        head = None
    return out, head


def _is_release(directory: Path, raw: dict | None) -> bool:
    if raw is None or not (raw.get("model_type") == "caduceus" or ("rcps" in raw and "ssm_cfg" in raw)):
        return False
    return (directory / "model.safetensors").is_file() or (directory / "pytorch_model.bin").is_file()


def _load_release(directory: Path, raw: dict, overrides: dict) -> Caduceus:
    cfg = config_from_release(raw, **overrides)
    state, head = convert_release_state(ckpt.load_state_dict_file(ckpt.weights_file(directory)), cfg)
    if head is not None and cfg.tie_word_embeddings:
        cfg = cfg.replace(tie_word_embeddings=False)
    model = Caduceus(cfg)
    if head is not None:
        state["lm_head.weight"] = head
    model.load_converted_state_dict(state, source=directory)
    return model


LAYOUTS = (
    Layout("caduceus-release", "Caduceus release (CaduceusForMaskedLM): config.json with model_type "
           "'caduceus' + model.safetensors or pytorch_model.bin", _is_release, _load_release),
)

FAMILY = Family(arch="caduceus", config=CaduceusConfig, module=Caduceus, presets=PRESETS, layouts=LAYOUTS,
                hub_repos=HUB_REPOS)
