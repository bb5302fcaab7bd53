"""xLSTM backbones (mLSTM and sLSTM blocks) and the Bio-xLSTM variants (DNA-, Prot-, Chem-xLSTM).

Read top to bottom: ``XLSTMConfig`` and the presets, the small pieces (head-wise projections, per-head
norm, short convolution with a carried window, rotary embeddings), the two mixers (``MLSTMLayer``,
``SLSTMLayer``), the gated FFN, the residual ``Block`` and the ``XLSTM`` backbone; the checkpoint layouts
of the ``xlstm`` package and of the released DNA-xLSTM / Prot-xLSTM models close the file.

One block (pre-norm, residual stream ``x`` [B, L, D]; the FFN only in sLSTM blocks)::

    x = x + mixer(LN(x))
    x = x + FFN(LN_ffn(x))                  # gated: proj_down(gelu(g) * u), [g, u] = proj_up(x)

mLSTM mixer (inner width E = round(proj_factor * D), NH heads of DH = E / NH)::

    [xm, z] = proj_up(x)                                  # 2 x [B, L, E]
    xc = silu(causal_conv1d(xm))                          # depthwise, kernel 4
    q, k = headwise(xc), v = headwise(xm)                 # block-diagonal, blocks of qkv_proj_blocksize
    i, f = Linear([q, k, v]) -> [B, L, NH] each           # gate pre-activations
    h = mLSTM(q, k, v, i, f)                              # bioseq.ops.mlstm (exponential input gate)
    h = groupnorm_per_head(h) + skip * xc
    y = proj_down(h * silu(z))

sLSTM mixer (D = NH x DH)::

    xc = silu(causal_conv1d(x))
    gates: i, f from xc; z, o from x (head-wise projections), recurrence per head (bioseq.ops.slstm)
    y = groupnorm_per_head(h)

Conventions that matter for loading foreign weights (converters at the end of the file):

* The ``xlstm`` package stores LayerNorm / group-norm ``weight`` as an offset (scale = 1 + weight); bioseq
  stores the scale itself.
* In the package's sLSTM layer the parameter named ``fgate`` feeds the cell's input gate and ``igate``
  its forget gate; bioseq names them by what they feed.
* The sLSTM recurrent kernel exists in two layouts (pure-torch "vanilla" and CUDA); both are read.

Bio-xLSTM options:

* ``rope="head"`` (DNA-xLSTM): rotary embedding of q and k per head (adjacent pairs, positions 0..L-1),
  the gates see the unrotated q, k. ``rope="inner"`` (Prot-xLSTM): rotary embedding over the whole inner
  width from ``position_ids`` (restarting at every protein of a homolog context), applied before the
  gates, which see the rotated q, k.
* ``bidirectional``: every block runs as ``block(x) + flip(block(flip(x)))`` with shared weights, the flip
  taken within each sequence's length (``attention_mask``; right padding never enters the flipped pass);
  ``bidirectional_alternating``: even blocks run on the flipped sequence, odd blocks forward;
  ``mlstm_bidirectional="native"``: mLSTM blocks run once with a two-sided decay matrix (quadratic; the
  reference's parallel-backend option).
* ``rcps``: reverse-complement parameter sharing. The hidden state is ``[h | flip_LC(h_rc)]`` (2 x d_model)
  where ``h`` and ``h_rc`` are the same network run on the sequence and on its reverse complement; the
  model is exactly RC-equivariant. ``rcps_reference_slstm_norm`` reproduces the released DNA-xLSTM PS
  models, whose sLSTM group norm sees head-reversed outputs in the reverse-complement stream (not
  equivariant with more than one sLSTM head); use it only to run those weights.
* ``rc_conjoin``: post-hoc conjoining: hidden = mean of the output on the sequence and the (flipped back)
  output on its reverse complement; RC-invariant up to the flip of positions.

Recurrent state (causal configs): ``allocate_state`` / ``step`` / ``forward(..., state=...)``: the
per-block convolution windows and cell states plus the number of tokens consumed (the RoPE position).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bioseq import checkpoints as ckpt
from bioseq.errors import BioseqError
from bioseq.models.base import Backbone, BackboneConfig, Family, Layout
from bioseq.models.flips import flip_within, right_padded_lengths
from bioseq.ops.causal_conv1d import causal_conv1d
from bioseq.ops.mlstm import mlstm, mlstm_step, mlstm_zero_state
from bioseq.ops.slstm import slstm_scan, slstm_step, slstm_zero_state

ROPE_KINDS = ("none", "head", "inner")
FFN_ACTS = {"gelu": F.gelu, "relu": F.relu, "swish": F.silu, "silu": F.silu}
# DNA tokenizer ids: A7 <-> T10, C8 <-> G9; specials and N map to themselves.
DNA_COMPLEMENT = {7: 10, 8: 9, 9: 8, 10: 7}

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def proj_up_dim(factor: float, dim: int, multiple: int, round_up: bool) -> int:
    """The ``xlstm`` package's up-projection width: factor * dim rounded (up or down) to ``multiple``."""
    ratio = factor * dim / multiple
    return int((math.ceil(ratio) if round_up else math.floor(ratio)) * multiple)


@dataclass
class XLSTMConfig(BackboneConfig):
    """xLSTM hyperparameters (``xlstm`` package names where it has one; sLSTM/FFN fields prefixed).

    ``vocab_size`` rows of the embedding (rounded up to ``pad_vocab_size_multiple``; the references do
    not pad). ``slstm_at`` lists the blocks that are sLSTM blocks (with a gated FFN); the rest are mLSTM
    blocks. ``max_length`` records the training context (informational: the model takes any length).
    """

    d_model: int = 128
    n_layer: int = 4
    vocab_size: int = 12
    pad_vocab_size_multiple: int = 1
    slstm_at: list[int] = field(default_factory=list)
    # mLSTM blocks
    num_heads: int = 4
    proj_factor: float = 2.0
    round_proj_up_dim_up: bool = True
    round_proj_up_to_multiple_of: int = 64
    qkv_proj_blocksize: int = 4
    conv1d_kernel_size: int = 4
    bias: bool = False                        # biases of the mLSTM projections
    chunk_size: int = 64                      # chunk length of the chunkwise mLSTM
    mlstm_eps: float = 1e-6
    # sLSTM blocks
    slstm_num_heads: int = 4
    slstm_conv1d_kernel_size: int = 4
    slstm_bias_init: str = "powerlaw_blockdependent"
    ffn_proj_factor: float = 1.3
    ffn_round_proj_up_dim_up: bool = True
    ffn_round_proj_up_to_multiple_of: int = 64
    ffn_act: str = "gelu"
    # positions
    rope: str = "none"                        # "none" | "head" (DNA-xLSTM) | "inner" (Prot-xLSTM)
    rope_base: float = 500000.0
    max_length: int | None = None
    # direction and reverse complement
    bidirectional: bool = False
    bidirectional_alternating: bool = False
    mlstm_bidirectional: str = "shared"       # mLSTM blocks of a bidirectional model: "shared" (flip),
                                              # "native" (two-sided decay, quadratic), "causal" (forward)
    rcps: bool = False
    rcps_reference_slstm_norm: bool = False   # released DNA-xLSTM PS behaviour (not RC-equivariant)
    rc_conjoin: bool = False
    complement_map: list[int] | None = None   # None: the DNA tokenizer's (A<->T, C<->G)
    # the rest
    add_post_blocks_norm: bool = True
    tie_word_embeddings: bool = False
    dropout: float = 0.0
    norm_eps: float = 1e-5
    arch: str = "xlstm"
    alphabet: str = "dna"
    tokenizer: str | None = None              # a tokenizer name other than the alphabet's default
                                              # ("prot-xlstm": Prot-xLSTM's 38-token vocabulary)

    def __post_init__(self):
        if self.arch != "xlstm":
            raise BioseqError(f"XLSTMConfig: arch must be 'xlstm', got {self.arch!r}")
        self.slstm_at = sorted({int(i) for i in self.slstm_at})
        if any(i < 0 or i >= self.n_layer for i in self.slstm_at):
            raise BioseqError(f"XLSTMConfig: slstm_at {self.slstm_at} outside 0..{self.n_layer - 1}")
        if self.rope not in ROPE_KINDS:
            raise BioseqError(f"XLSTMConfig: rope must be one of {ROPE_KINDS}, got {self.rope!r}")
        if self.ffn_act not in FFN_ACTS:
            raise BioseqError(f"XLSTMConfig: ffn_act must be one of {sorted(FFN_ACTS)}, got {self.ffn_act!r}")
        if self.tokenizer is not None:
            from bioseq.tokenizers import get_tokenizer

            if get_tokenizer(self.tokenizer).vocab_size > self.vocab_size:
                raise BioseqError(f"XLSTMConfig: tokenizer {self.tokenizer!r} has more tokens than "
                                  f"vocab_size={self.vocab_size}")
        if self.inner_dim <= 0:
            raise BioseqError(f"XLSTMConfig: d_model {self.d_model} x proj_factor {self.proj_factor} rounds "
                              f"down to an inner width of 0 (multiple of "
                              f"{self.round_proj_up_to_multiple_of}): "
                              "raise d_model or set round_proj_up_dim_up=True")
        if self.inner_dim % self.num_heads or (self.inner_dim // self.num_heads) % 2 and self.rope == "head":
            raise BioseqError(f"XLSTMConfig: inner width {self.inner_dim} must split into {self.num_heads} "
                              "heads (of even size with rope='head')")
        if self.inner_dim % self.qkv_proj_blocksize:
            raise BioseqError(f"XLSTMConfig: inner width {self.inner_dim} is not a multiple of "
                              f"qkv_proj_blocksize={self.qkv_proj_blocksize}")
        if self.slstm_at and self.d_model % self.slstm_num_heads:
            raise BioseqError(f"XLSTMConfig: d_model {self.d_model} must split into {self.slstm_num_heads} "
                              "sLSTM heads")
        if self.rcps and self.rc_conjoin:
            raise BioseqError("XLSTMConfig: choose one of rcps and rc_conjoin")
        if self.rcps_reference_slstm_norm and not self.rcps:
            raise BioseqError("XLSTMConfig: rcps_reference_slstm_norm needs rcps=True")
        if self.mlstm_bidirectional not in ("shared", "native", "causal"):
            raise BioseqError(f"XLSTMConfig: mlstm_bidirectional must be shared, native or causal, got "
                              f"{self.mlstm_bidirectional!r}")
        if self.bidirectional_alternating and not self.bidirectional:
            raise BioseqError("XLSTMConfig: bidirectional_alternating needs bidirectional=True")
        if self.complement_map is not None and len(self.complement_map) != self.padded_vocab_size:
            raise BioseqError(f"XLSTMConfig: complement_map has {len(self.complement_map)} entries, the "
                              f"embedding {self.padded_vocab_size} rows")

    @property
    def inner_dim(self) -> int:
        return proj_up_dim(self.proj_factor, self.d_model, self.round_proj_up_to_multiple_of,
                           self.round_proj_up_dim_up)

    @property
    def ffn_dim(self) -> int:
        return proj_up_dim(self.ffn_proj_factor, self.d_model, self.ffn_round_proj_up_to_multiple_of,
                           self.ffn_round_proj_up_dim_up)

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.pad_vocab_size_multiple)
        return -(-self.vocab_size // m) * m

    def complement(self) -> list[int]:
        """Complement id of every embedding row."""
        if self.complement_map is not None:
            return [int(c) for c in self.complement_map]
        return [DNA_COMPLEMENT.get(i, i) for i in range(self.padded_vocab_size)]


def _dna(d_model: int, n_layer: int, max_length: int, **kw) -> XLSTMConfig:
    """DNA-xLSTM as released: vocab 12 unpadded, RoPE per head, biases, MLM-ready bidirectional."""
    base = dict(d_model=d_model, n_layer=n_layer, vocab_size=12, max_length=max_length, rope="head",
                bias=True, round_proj_up_dim_up=False,
                bidirectional=True, alphabet="dna")
    return XLSTMConfig(**{**base, **kw})


def _prot(d_model: int, n_layer: int, **kw) -> XLSTMConfig:
    """Prot-xLSTM: 38 tokens, mLSTM only, RoPE over the inner width (base 500000), causal."""
    base = dict(d_model=d_model, n_layer=n_layer, vocab_size=38, rope="inner", rope_base=500000.0,
                max_length=131072, alphabet="protein", tokenizer="prot-xlstm")
    return XLSTMConfig(**{**base, **kw})


def _chem(d_model: int, n_layer: int, num_heads: int, **kw) -> XLSTMConfig:
    """Chem-xLSTM: SMILES, mLSTM only, causal; the embedding holds the data-built vocabulary."""
    base = dict(d_model=d_model, n_layer=n_layer, num_heads=num_heads, vocab_size=128, alphabet="smiles")
    return XLSTMConfig(**{**base, **kw})


PRESETS: dict[str, XLSTMConfig] = {
    # CPU-sized
    "xlstm-tiny": XLSTMConfig(d_model=64, n_layer=2, vocab_size=16),
    "xlstm-tiny-slstm": XLSTMConfig(d_model=64, n_layer=2, vocab_size=16, slstm_at=[1]),
    "dna-xlstm-tiny": _dna(64, 2, 1024, bidirectional=False),
    "dna-xlstm-tiny-bidir": _dna(64, 2, 1024, slstm_at=[1]),
    "dna-xlstm-tiny-rcps": _dna(64, 2, 1024, slstm_at=[0, 1], rcps=True),
    "prot-xlstm-tiny": _prot(64, 2, max_length=2048),
    "chem-xlstm-tiny": _chem(64, 2, 1, vocab_size=128),
    # released sizes (random initialisation; weights load through the layouts below)
    "dna-xlstm-500k-1k": _dna(128, 4, 1024),
    "dna-xlstm-500k-32k": _dna(128, 4, 32768),
    "dna-xlstm-2m-1k": _dna(256, 4, 1024),
    "dna-xlstm-2m-32k": _dna(256, 4, 32768),
    "prot-xlstm-26m": _prot(512, 16),
    "prot-xlstm-102m": _prot(1024, 16),
    "chem-xlstm-1.6m": _chem(256, 4, 1, vocab_size=37),
    "chem-xlstm-14.6m": _chem(512, 9, 8, vocab_size=37),
}


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Cell states are float32 (float64 for a float64 model)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _no_decay(p: nn.Parameter) -> nn.Parameter:
    p._no_weight_decay = True
    return p


# --------------------------------------------------------------------------------------------------
# Small pieces
# --------------------------------------------------------------------------------------------------


class HeadwiseLinear(nn.Module):
    """Block-diagonal projection: ``x [..., NB * I] -> [..., NB * O]`` with ``weight [NB, O, I]``."""

    def __init__(self, features: int, num_blocks: int, bias: bool):
        super().__init__()
        self.num_blocks = num_blocks
        size = features // num_blocks
        self.weight = nn.Parameter(torch.empty(num_blocks, size, size))
        self.bias = nn.Parameter(torch.zeros(features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.einsum("...hi,hoi->...ho", x.reshape(*shape[:-1], self.num_blocks, -1), self.weight)
        y = y.reshape(shape)
        return y if self.bias is None else y + self.bias

    def channel_major(self, x: torch.Tensor) -> torch.Tensor:
        """The same map on channel-major ``x [NB * I, N]`` -> ``[NB * O, N]`` (contiguous): one batched
        product over the blocks, no transposes (N = batch x positions)."""
        NB, O, I = self.weight.shape
        y = torch.bmm(self.weight, x.reshape(NB, I, -1)).view(NB * O, -1)
        return y if self.bias is None else y + self.bias[:, None]


class _TransposeCopy(torch.autograd.Function):
    """``x [R, C] -> x^T`` as a contiguous ``[C, R]`` tensor; the backward is the same copy of the gradient.
    Both are one blocked 2-D transpose (PyTorch's fast path for it), where an elementwise op or a gradient
    sum across a channel-major and a token-major tensor would read one of them with a large stride."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.t().contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.t().contiguous()


def head_norm(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-head LayerNorm without bias: ``h [..., NH, DH]`` normalised over DH, times ``weight [NH * DH]``;
    returns ``[..., NH * DH]``."""
    y = F.layer_norm(h, h.shape[-1:], eps=eps) * weight.view(h.shape[-2:])
    return y.flatten(-2)


def short_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               window: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal depthwise conv of ``x [B, L, D]`` with ``weight [D, K]``, continuing from ``window``
    [B, K-1, D] (the previous K-1 inputs; None = zeros, no window returned). Returns (y [B, L, D],
    new window or None)."""
    K = weight.shape[-1]
    if window is None:
        return causal_conv1d(x.transpose(1, 2), weight, bias).transpose(1, 2), None
    full = torch.cat([window.to(x.dtype), x], dim=1)                      # [B, K-1+L, D]
    if x.shape[1] == 1:                                   # a recurrent step: one dot product per channel
        y = (full * weight.T).sum(1, keepdim=True)
        y = y if bias is None else y + bias
    else:
        y = causal_conv1d(full.transpose(1, 2), weight, bias).transpose(1, 2)[:, K - 1:]
    return y, full[:, full.shape[1] - (K - 1):]


def rope_tables(positions: torch.Tensor, dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [*positions.shape, dim / 2] of the rotary embedding (frequency j: base^(-2j/dim))."""
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    angles = positions.to(torch.float32)[..., None] * inv
    return angles.cos(), angles.sin()


def rope_apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (2j, 2j+1) of ``x [..., dim]`` by the angles of ``cos, sin [..., dim / 2]``
    (broadcast); computed in float32, returned in x's dtype."""
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
    return out.to(x.dtype)


def mlstm_parallel_bidirectional(q, k, v, igate, fgate, lengths=None, eps: float = 1e-6) -> torch.Tensor:
    """Native bidirectional mLSTM (DNA-xLSTM's "m_backend_bidirectional"), quadratic in L.

    q, k, v [B, NH, L, DH]; igate, fgate [B, NH, L]; lengths [B] or None (keys beyond a row's length are
    left out). With lf = logsigmoid(f): log D[t, s] = i_s + sum_{u=s+1..t} lf_u for s <= t and
    i_s + sum_{u=t..s-1} lf_u for s > t, stabilised by its row maximum m_t; h_t = sum_s (q_t . k_s /
    sqrt(DH)) D[t, s] v_s / (max(|row sum|, exp(-m_t)) + eps). Returns h [B, NH, L, DH]."""
    L, DH = q.shape[-2:]
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v, igate, fgate = (x.to(ct) for x in (q, k, v, igate, fgate))
    lf = F.logsigmoid(fgate)
    c = lf.cumsum(-1)
    t = torch.arange(L, device=q.device)
    lower = t[:, None] >= t[None, :]                                           # s <= t
    fwd = c[..., :, None] - c[..., None, :]
    bwd = (c - lf)[..., None, :] - (c - lf)[..., :, None]
    log_d = torch.where(lower, fwd, bwd) + igate[..., None, :]
    if lengths is not None:
        keep = t[None, :] < lengths[:, None]                                   # [B, L] keys
        log_d = log_d.masked_fill(~keep[:, None, None, :], float("-inf"))
    m = log_d.amax(-1, keepdim=True)
    scores = (q @ k.transpose(-1, -2)) * (DH ** -0.5) * torch.exp(log_d - m)
    normaliser = torch.maximum(scores.sum(-1, keepdim=True).abs(), torch.exp(-m)) + eps
    return ((scores / normaliser) @ v).to(v.dtype)


# --------------------------------------------------------------------------------------------------
# Mixers
# --------------------------------------------------------------------------------------------------


class MLSTMLayer(nn.Module):
    """mLSTM mixer: ``x [B, L, D] -> y [B, L, D]`` (see the module docstring for the equations)."""

    def __init__(self, config: XLSTMConfig):
        super().__init__()
        c = config
        E, NH = c.inner_dim, c.num_heads
        self.inner, self.num_heads, self.head_dim = E, NH, E // NH
        self.rope, self.rope_base = c.rope, c.rope_base
        self.chunk_size, self.eps, self.norm_eps = c.chunk_size, c.mlstm_eps, c.norm_eps
        self.proj_up = nn.Linear(c.d_model, 2 * E, bias=c.bias)
        self.conv_weight = nn.Parameter(torch.empty(E, c.conv1d_kernel_size))
        self.conv_bias = _no_decay(nn.Parameter(torch.zeros(E)))
        blocks = E // c.qkv_proj_blocksize
        self.q_proj = HeadwiseLinear(E, blocks, c.bias)
        self.k_proj = HeadwiseLinear(E, blocks, c.bias)
        self.v_proj = HeadwiseLinear(E, blocks, c.bias)
        self.igate = nn.Linear(3 * E, NH)
        self.fgate = nn.Linear(3 * E, NH)
        self.outnorm_weight = _no_decay(nn.Parameter(torch.ones(E)))
        self.skip = _no_decay(nn.Parameter(torch.ones(E)))
        self.proj_down = nn.Linear(E, c.d_model, bias=c.bias)
        self.dropout = nn.Dropout(c.dropout)

    def _branches(self, x, positions, window):
        """The mLSTM branch up to the cell.

        x [B, L, D], positions [B, L], window [B, K-1, E] or None. Returns xc [E, B * L] (convolved,
        SiLU; channel-major), z [B, L, E], q, k, v [B, NH, L, DH], gate pre-activations i, f [B, NH, L]
        and the new window."""
        B, L, _ = x.shape
        E, NH, DH = self.inner, self.num_heads, self.head_dim
        # The mLSTM branch is computed channel-major ([E, B * L]: the up-projection as W x^T) up to the
        # cell, so that the convolution, the block-diagonal projections (one bmm each) and the gates (one
        # matmul over channels) need no transposes; z stays token-major for the output gate.
        w_up, b_up = self.proj_up.weight, self.proj_up.bias
        xm = torch.mm(w_up[:E], x.reshape(B * L, -1).t())                     # [E, B * L]
        if b_up is not None:
            xm = xm + b_up[:E, None]
        xm = xm.view(E, B, L).transpose(0, 1)                                   # [B, E, L] view
        z = F.linear(x, w_up[E:], None if b_up is None else b_up[E:])          # [B, L, E]
        K = self.conv_weight.shape[-1]
        if window is None:
            xc = causal_conv1d(xm, self.conv_weight, self.conv_bias)
        else:
            full = torch.cat([window.transpose(1, 2).to(xm.dtype), xm], dim=2)   # [B, E, K-1+L]
            if L == 1:                                    # a recurrent step: one dot product per channel
                xc = (full * self.conv_weight).sum(-1, keepdim=True) + self.conv_bias[:, None]
            else:
                xc = causal_conv1d(full, self.conv_weight, self.conv_bias)[..., K - 1:]
            window = full[..., full.shape[-1] - (K - 1):].transpose(1, 2)
        xc = F.silu(xc)                                      # channel-major unless a window was prepended
        xc_cm = xc.transpose(0, 1).reshape(E, B * L)
        q, k = self.q_proj.channel_major(xc_cm), self.k_proj.channel_major(xc_cm)
        v = self.v_proj.channel_major(xm.transpose(0, 1).reshape(E, B * L))
        if self.rope == "inner":                          # Prot-xLSTM: the gates see rotated q, k
            cos, sin = rope_tables(positions, E, self.rope_base)
            q, k = (rope_apply(t.view(E, B, L).permute(1, 2, 0), cos, sin).permute(2, 0, 1).reshape(E, B * L)
                    for t in (q, k))
        w = torch.cat([self.igate.weight, self.fgate.weight])                  # [2 NH, 3 E]
        b = torch.cat([self.igate.bias, self.fgate.bias])
        gates = torch.addmm(b[:, None], w[:, :E], q).addmm_(w[:, E:2 * E], k).addmm_(w[:, 2 * E:], v)
        gates = gates.view(2 * NH, B, L).transpose(0, 1)                        # [B, 2 NH, L]
        i, f = gates[:, :NH], gates[:, NH:]
        q, k, v = (t.view(NH, DH, B, L).permute(2, 0, 3, 1) for t in (q, k, v))  # [B, NH, L, DH] views
        if self.rope == "head":                           # DNA-xLSTM: rotation after the gates
            cos, sin = rope_tables(positions, DH, self.rope_base)
            cos, sin = cos[:, None], sin[:, None]                              # same angles for every head
            q, k = rope_apply(q, cos, sin), rope_apply(k, cos, sin)
        return xc_cm, z, q, k, v, i, f, window

    def _output(self, h, xc, z):
        """h [B, NH, L, DH], xc [E, B * L] (channel-major), z [B, L, E] -> y [B, L, D]."""
        xc_t = _TransposeCopy.apply(xc).view(z.shape)                          # token-major [B, L, E]
        h = head_norm(h.transpose(1, 2), self.outnorm_weight, self.norm_eps) + self.skip * xc_t
        return self.dropout(self.proj_down(h * F.silu(z)))

    def forward(self, x: torch.Tensor, positions: torch.Tensor, state: dict | None = None,
                native_lengths=False, **_):
        """x [B, L, D], positions [B, L] (RoPE); state None or {"conv", "cell"}. Returns (y, new state).
        ``native_lengths`` (False, None or lengths [B]): run the two-sided (native bidirectional) cell."""
        xc, z, q, k, v, i, f, window = self._branches(x, positions, None if state is None else state["conv"])
        if native_lengths is not False:
            h, new = mlstm_parallel_bidirectional(q, k, v, i, f, native_lengths, self.eps), None
        elif state is None:
            h, new = mlstm(q, k, v, i, f, chunk_size=self.chunk_size, eps=self.eps), None
        else:
            h, cell = mlstm(q, k, v, i, f, chunk_size=self.chunk_size, initial_state=state["cell"],
                            return_state=True, eps=self.eps)
            new = {"conv": window, "cell": cell}
        return self._output(h, xc, z), new

    def step(self, x: torch.Tensor, positions: torch.Tensor, state: dict):
        """One token: x [B, D], positions [B]. Returns (y [B, D], new state)."""
        xc, z, q, k, v, i, f, window = self._branches(x[:, None], positions[:, None], state["conv"])
        h, cell = mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[..., 0], f[..., 0], state["cell"],
                             eps=self.eps)
        return self._output(h[:, :, None], xc, z)[:, 0], {"conv": window, "cell": cell}

    def zero_state(self, batch_size: int, device, dtype) -> dict:
        K = self.conv_weight.shape[-1]
        return {"conv": torch.zeros(batch_size, K - 1, self.inner, device=device, dtype=dtype),
                "cell": mlstm_zero_state(batch_size, self.num_heads, self.head_dim, device,
                                       _state_dtype(dtype))}


class SLSTMLayer(nn.Module):
    """sLSTM mixer: ``x [B, L, D] -> y [B, L, D]``: stabilised exponential gating, recurrence per head.

    Parameters: ``igate/fgate`` (from the convolved input), ``zgate/ogate`` (from the input), each a
    head-wise [NH, DH, DH] projection; ``recurrent_kernel`` [NH, DH_in, 4 * DH_out] (gate order i, f, z,
    o: ``R[h, d, g * DH + j]`` maps unit d of head h to unit j of gate g) and ``bias`` [4, NH, DH], the
    layouts of ``bioseq.ops.slstm``; ``norm_weight`` [D] of the per-head group norm.
    """

    def __init__(self, config: XLSTMConfig):
        super().__init__()
        c = config
        D, NH = c.d_model, c.slstm_num_heads
        self.num_heads, self.head_dim, self.norm_eps = NH, D // NH, c.norm_eps
        K = c.slstm_conv1d_kernel_size
        self.conv_weight = nn.Parameter(torch.empty(D, K)) if K > 0 else None
        self.conv_bias = _no_decay(nn.Parameter(torch.zeros(D))) if K > 0 else None
        self.igate = HeadwiseLinear(D, NH, bias=False)
        self.fgate = HeadwiseLinear(D, NH, bias=False)
        self.zgate = HeadwiseLinear(D, NH, bias=False)
        self.ogate = HeadwiseLinear(D, NH, bias=False)
        self.recurrent_kernel = _no_decay(nn.Parameter(torch.zeros(NH, self.head_dim, 4 * self.head_dim)))
        self.bias = _no_decay(nn.Parameter(torch.zeros(4, NH, self.head_dim)))
        self.norm_weight = _no_decay(nn.Parameter(torch.ones(D)))
        self.dropout = nn.Dropout(c.dropout)

    def _gates(self, x, state):
        """Gate pre-activations wx [B, L, 4, NH, DH] (i, f, z, o) and the new conv window."""
        window = None
        if self.conv_weight is not None:
            window = None if state is None else state["conv"]
            xc, window = short_conv(x, self.conv_weight, self.conv_bias, window)
            xc = F.silu(xc)
        else:
            xc = x
        wx = torch.stack([self.igate(xc), self.fgate(xc), self.zgate(x), self.ogate(x)], dim=2)
        return wx.unflatten(-1, (self.num_heads, self.head_dim)), window

    def _output(self, h, flip_head_rows):
        """h [B, L, NH, DH] -> y [B, L, D]; ``flip_head_rows`` [B] bool: rows whose group norm sees the
        heads in reverse order (the released DNA-xLSTM PS models' reverse-complement stream)."""
        h = self.dropout(h)
        if flip_head_rows is not None:
            h = torch.where(flip_head_rows[:, None, None, None], h.flip(2), h)
        return head_norm(h, self.norm_weight, self.norm_eps)

    def forward(self, x: torch.Tensor, positions=None, state: dict | None = None, flip_head_rows=None, **_):
        """x [B, L, D]; state None or {"conv", "cell"}. Returns (y [B, L, D], new state or None)."""
        wx, window = self._gates(x, state)
        h, cell = slstm_scan(wx, self.recurrent_kernel, self.bias, None if state is None else state["cell"])
        new = None if state is None else {"conv": window, "cell": cell}
        return self._output(h, flip_head_rows), new

    def step(self, x: torch.Tensor, positions, state: dict):
        """One token: x [B, D]. Returns (y [B, D], new state)."""
        wx, window = self._gates(x[:, None], state)
        h, cell = slstm_step(wx[:, 0], self.recurrent_kernel, self.bias, state["cell"])
        return self._output(h[:, None], None)[:, 0], {"conv": window, "cell": cell}

    def zero_state(self, batch_size: int, device, dtype) -> dict:
        K = 0 if self.conv_weight is None else self.conv_weight.shape[-1]
        return {"conv": torch.zeros(batch_size, max(K - 1, 0), self.num_heads * self.head_dim, device=device,
                                    dtype=dtype) if K else None,
                "cell": slstm_zero_state(batch_size, self.num_heads, self.head_dim, device,
                                       _state_dtype(dtype))}


class GatedFFN(nn.Module):
    """``proj_down(act(g) * u)`` with ``[g, u] = proj_up(x)`` (no biases)."""

    def __init__(self, config: XLSTMConfig):
        super().__init__()
        self.proj_up = nn.Linear(config.d_model, 2 * config.ffn_dim, bias=False)
        self.proj_down = nn.Linear(config.ffn_dim, config.d_model, bias=False)
        self.act = FFN_ACTS[config.ffn_act]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, u = self.proj_up(x).chunk(2, dim=-1)
        return self.dropout(self.proj_down(self.act(g) * u))


class Block(nn.Module):
    """``x += mixer(norm(x))`` (+ ``x += ffn(ffn_norm(x))`` in sLSTM blocks)."""

    def __init__(self, config: XLSTMConfig, kind: str):
        super().__init__()
        self.kind = kind
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=False)
        self.mixer = MLSTMLayer(config) if kind == "mlstm" else SLSTMLayer(config)
        if kind == "slstm":
            self.ffn_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=False)
            self.ffn = GatedFFN(config)
        else:
            self.ffn_norm = self.ffn = None

    def forward(self, x, positions, state=None, flip_head_rows=None, native_lengths=False):
        y, new = self.mixer(self.norm(x), positions=positions, state=state, flip_head_rows=flip_head_rows,
                            native_lengths=native_lengths)
        x = x + y
        if self.ffn is not None:
            x = x + self.ffn(self.ffn_norm(x))
        return x, new

    def step(self, x, positions, state):
        y, new = self.mixer.step(self.norm(x), positions, state)
        x = x + y
        if self.ffn is not None:
            x = x + self.ffn(self.ffn_norm(x))
        return x, new


class RCPSEmbedding(nn.Module):
    """``[E[x] | flip_C(E[comp(x)])]`` [B, L, 2D]: the reverse-complement-equivariant embedding."""

    def __init__(self, rows: int, dim: int, complement: list[int]):
        super().__init__()
        self.weight = _no_decay(nn.Parameter(torch.empty(rows, dim)))     # an embedding: no weight decay
        self.register_buffer("complement_map", torch.tensor(complement, dtype=torch.long), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        fwd = F.embedding(input_ids, self.weight)
        rc = F.embedding(self.complement_map[input_ids], self.weight).flip(-1)
        return torch.cat([fwd, rc], dim=-1)


# --------------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------------


class XLSTM(Backbone):
    """xLSTM backbone: token ids [B, L] -> hidden states [B, L, hidden_size] (final norm applied).

    ``hidden_size`` is d_model, or 2 x d_model with ``rcps``. Causal unless ``bidirectional``, ``rcps`` or
    ``rc_conjoin``; causal models carry a recurrent state (``supports_state``). ``position_ids`` [B, L]
    (optional) set the RoPE positions of ``rope="inner"`` models (default 0..L-1 after the state's
    position). With ``attention_mask`` the bidirectional passes flip each sequence within its length.
    """

    arch = "xlstm"

    def __init__(self, config: XLSTMConfig):
        super().__init__(config)
        c = config
        self.d_model = c.d_model
        rows = c.padded_vocab_size
        complement = c.complement()
        if c.rcps:
            self.embed_tokens = RCPSEmbedding(rows, c.d_model, complement)
        else:
            self.embed_tokens = nn.Embedding(rows, c.d_model)
        self.register_buffer("complement_map", torch.tensor(complement, dtype=torch.long), persistent=False)
        kinds = ["slstm" if i in c.slstm_at else "mlstm" for i in range(c.n_layer)]
        self.blocks = nn.ModuleList(Block(c, kind) for kind in kinds)
        self.norm_f = nn.LayerNorm(c.d_model, eps=c.norm_eps, bias=False) if c.add_post_blocks_norm else None
        self.make_lm_head(c.d_model, rows)
        self.reset_parameters()

    # -- what the backbone declares ---------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return 2 * self.d_model if self.config.rcps else self.d_model

    @property
    def causal(self) -> bool:
        c = self.config
        return not (c.bidirectional or c.rcps or c.rc_conjoin)

    @property
    def supports_state(self) -> bool:       # recurrent state only where the model is causal
        return self.causal

    @property
    def max_length(self) -> int | None:
        """None: no limit (``config.max_length`` records the training context only)."""
        return None

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The ``xlstm`` package's initialisation: small init N(0, sqrt(2 / 5D)) for embedding, head,
        up-projections and q/k/v/gate projections; Wang init N(0, 2 / n_layer / sqrt(D)) for
        down-projections; forget-gate bias linspace(3, 6) (mLSTM) or the block-dependent power law
        (sLSTM); input-gate bias N(0, 0.1); zero gate weights and recurrent kernel; unit norms and skip."""
        c = self.config
        D = c.d_model
        small = math.sqrt(2 / (5 * D))
        wang = 2 / c.n_layer / math.sqrt(D)
        nn.init.normal_(self.embed_tokens.weight, std=small)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=small)
        for idx, block in enumerate(self.blocks):
            nn.init.ones_(block.norm.weight)
            m = block.mixer
            if block.kind == "mlstm":
                nn.init.normal_(m.proj_up.weight, std=small)
                nn.init.normal_(m.proj_down.weight, std=wang)
                for lin in (m.proj_up, m.proj_down):
                    if lin.bias is not None:
                        nn.init.zeros_(lin.bias)
                for proj in (m.q_proj, m.k_proj, m.v_proj):
                    nn.init.normal_(proj.weight, std=small)
                    if proj.bias is not None:
                        nn.init.zeros_(proj.bias)
                bound = 1 / math.sqrt(m.conv_weight.shape[-1])
                nn.init.uniform_(m.conv_weight, -bound, bound)
                nn.init.uniform_(m.conv_bias, -bound, bound)
                nn.init.zeros_(m.fgate.weight)
                m.fgate.bias.copy_(torch.linspace(3.0, 6.0, m.num_heads))
                nn.init.zeros_(m.igate.weight)
                nn.init.normal_(m.igate.bias, std=0.1)
                nn.init.ones_(m.outnorm_weight)
                nn.init.ones_(m.skip)
            else:
                if m.conv_weight is not None:
                    bound = 1 / math.sqrt(m.conv_weight.shape[-1])
                    nn.init.uniform_(m.conv_weight, -bound, bound)
                    nn.init.uniform_(m.conv_bias, -bound, bound)
                for proj in (m.igate, m.fgate, m.zgate, m.ogate):
                    nn.init.normal_(proj.weight, std=small)
                nn.init.zeros_(m.recurrent_kernel)
                nn.init.zeros_(m.bias)
                if c.slstm_bias_init == "powerlaw_blockdependent":
                    ratio = idx / (c.n_layer - 1) if c.n_layer > 1 else 0.0
                    t = torch.arange(m.head_dim) / max(m.head_dim - 1, 1)
                    m.bias[1] = -(-5.0 + 12.0 * t ** (0.3 + 1.3 * ratio))     # forget gate
                elif c.slstm_bias_init == "small_init":
                    m.bias[1] = torch.linspace(3.0, 6.0, m.head_dim)
                nn.init.ones_(m.norm_weight)
                nn.init.ones_(block.ffn_norm.weight)
                nn.init.normal_(block.ffn.proj_up.weight, std=small)
                nn.init.normal_(block.ffn.proj_down.weight, std=wang)
        if self.norm_f is not None:
            nn.init.ones_(self.norm_f.weight)

    # -- the LM head ------------------------------------------------------------------------------
    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [..., vocab rows]; RCPS: ``a W^T + flip_C(b) W[comp]^T`` for hidden ``[a | b]``."""
        weight = self.lm_head.weight if self.lm_head is not None else self.embed_tokens.weight
        if not self.config.rcps:
            return F.linear(hidden, weight)
        a, b = hidden.chunk(2, dim=-1)
        return F.linear(a, weight) + F.linear(b.flip(-1), weight[self.complement_map])

    # -- forward ----------------------------------------------------------------------------------
    def _lengths(self, attention_mask: torch.Tensor | None, L: int) -> torch.Tensor | None:
        return right_padded_lengths(attention_mask, L)

    def _stack(self, x, positions, lengths, rc_rows, states):
        """Run the blocks on x [B', L, D]; returns (x, per-layer residual streams, new states)."""
        c = self.config
        hidden_states, new_states = [x], []
        compat = rc_rows if c.rcps_reference_slstm_norm else None
        for idx, block in enumerate(self.blocks):
            if not c.bidirectional:
                x, new = block(x, positions, None if states is None else states[idx], compat)
                new_states.append(new)
            elif c.bidirectional_alternating:
                if idx % 2 == 0:
                    x = flip_within(block(flip_within(x, lengths), positions, None, compat)[0], lengths)
                else:
                    x = block(x, positions, None, compat)[0]
            elif block.kind == "mlstm" and c.mlstm_bidirectional == "native":
                x = block(x, positions, None, compat, native_lengths=lengths)[0]
            elif block.kind == "mlstm" and c.mlstm_bidirectional == "causal":
                x = block(x, positions, None, compat)[0]
            else:
                both = torch.cat([x, flip_within(x, lengths)], dim=0)
                rows = None if compat is None else torch.cat([compat, compat])
                out = block(both, torch.cat([positions, positions]), None, rows)[0]
                fwd, bwd = out.chunk(2, dim=0)
                x = fwd + flip_within(bwd, lengths)
            hidden_states.append(x)
        if self.norm_f is not None:
            x = self.norm_f(x)
        return x, hidden_states, new_states

    def _join_strands(self, h: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """[h_fwd; h_rc] stacked on the batch -> RCPS ``[h_fwd | flip_LC(h_rc)]`` or conjoined
        ``(h_fwd + flip_L(h_rc)) / 2``."""
        h_fwd, h_rc = h.chunk(2, dim=0)
        if self.config.rcps:
            return torch.cat([h_fwd, flip_within(h_rc, lengths).flip(-1)], dim=-1)
        return 0.5 * (h_fwd + flip_within(h_rc, lengths))

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, output_hidden_states: bool = False, state=None,
                position_ids: torch.Tensor | None = None):
        """Args: input_ids [B, L] (or inputs_embeds [B, L, E]; E = 2 x d_model for RCPS), attention_mask
        [B, L] (right padding), position_ids [B, L] (RoPE positions; optional), state (causal models).

        Returns hidden [B, L, hidden_size]; with ``output_hidden_states`` also the embeddings and the
        residual stream after each block (before the final norm; RCPS/conjoined models: both strands
        joined as the output is); with ``state`` also the new state.
        """
        self.check_state_arg(state)
        c = self.config
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, L = x.shape[:2]
        lengths = self._lengths(attention_mask, L) if not self.causal else None
        offset = state["pos"] if state is not None else torch.zeros(B, dtype=torch.long, device=x.device)
        if position_ids is None:
            position_ids = offset[:, None] + torch.arange(L, device=x.device)[None]
        if c.rcps or c.rc_conjoin:
            if c.rcps:   # [a | b] -> streams a and flip_LC(b) = embedding of the reverse complement
                a, b = x.chunk(2, dim=-1)
                rc = flip_within(b.flip(-1), lengths)
            else:
                if inputs_embeds is not None:
                    raise BioseqError("xLSTM rc_conjoin: give input_ids (the reverse complement is taken "
                                      "on ids)")
                a = x
                rc_ids = flip_within(self.complement_map[input_ids], lengths)
                rc = self.embed_tokens(rc_ids)
            rc_rows = torch.arange(2 * B, device=x.device) >= B
            h, hs, _ = self._stack(torch.cat([a, rc]), torch.cat([position_ids, position_ids]),
                                   None if lengths is None else torch.cat([lengths, lengths]), rc_rows, None)
            h, hs = self._join_strands(h, lengths), [self._join_strands(t, lengths) for t in hs]
            new_states = None
        else:
            states = None if state is None else state["blocks"]
            h, hs, new_states = self._stack(x, position_ids, lengths, None, states)
        out = (h,)
        if output_hidden_states:
            out += (tuple(hs),)
        if state is not None:
            out += ({"pos": offset + L, "blocks": new_states},)
        return out[0] if len(out) == 1 else out

    # -- recurrent state ----------------------------------------------------------------------------
    def allocate_state(self, batch_size: int, device: torch.device | str | None = None) -> dict:
        """A fresh state: per block the conv window and the cell state, and ``pos`` [B] = 0."""
        if not self.supports_state:
            raise BioseqError("xLSTM: a bidirectional / reverse-complement model has no recurrent state")
        p = self.embed_tokens.weight
        device = p.device if device is None else torch.device(device)
        return {"pos": torch.zeros(batch_size, dtype=torch.long, device=device),
                "blocks": [b.mixer.zero_state(batch_size, device, p.dtype) for b in self.blocks]}

    def step(self, input_ids: torch.Tensor, state: dict, position_ids: torch.Tensor | None = None):
        """One token per row: input_ids [B] (position_ids [B] optional). Returns (hidden [B, H], state)."""
        if not self.supports_state:
            raise BioseqError("xLSTM: a bidirectional / reverse-complement model has no recurrent state")
        x = self.embed_tokens(input_ids)
        positions = state["pos"] if position_ids is None else position_ids
        new_states = []
        for block, s in zip(self.blocks, state["blocks"]):
            x, s = block.step(x, positions, s)
            new_states.append(s)
        if self.norm_f is not None:
            x = self.norm_f(x)
        return x, {"pos": state["pos"] + 1, "blocks": new_states}


# --------------------------------------------------------------------------------------------------
# Prot-xLSTM data layout: homolog contexts with per-protein positions, fill-in-the-middle
# --------------------------------------------------------------------------------------------------


def fim_spans(length: int, rng, max_spans: int = 5, mask_fraction: float = 0.2,
              always_mask: bool = True) -> list[tuple[int, int]]:
    """Random spans [start, end) to move for one protein of ``length`` tokens (its first token, the
    <cls>, is never masked): the number of spans ~ Poisson(1) (at most ``max_spans``; at least 1 with
    ``always_mask``), sorted distinct starts in 1..length-1, each span 1 to ``mask_fraction`` of the room
    before the next start long. ``rng``: a ``numpy.random.Generator``."""
    n = max_spans + 1
    while n > max_spans:
        n = int(rng.poisson(1.0))
    if always_mask:
        n = max(n, 1)
    n = min(n, length - 1)
    starts = sorted(int(s) for s in rng.choice(range(1, length), size=n, replace=False)) + [length]
    spans = []
    for a, nxt in zip(starts[:-1], starts[1:]):
        room = nxt - a
        spans.append((a, a + min(int(rng.integers(1, max(int(room * mask_fraction), 2))), room)))
    return spans


def fim_layout(ids: list[int], spans: list[tuple[int, int]], mask_ids: list[int], eos_id: int,
               max_position: int = 2047) -> tuple[list[int], list[int]]:
    """Fill-in-the-middle layout of one protein (``ids`` start with its <cls>; positions count from it).

    Span k [start, end) is replaced by ``mask_ids[k]`` at position ``start``; after the unmasked part come
    ``eos_id`` (position 0) and, per span, ``mask_ids[k]`` (position ``start``) then the span's tokens at
    their original positions. Without spans the protein is unchanged. Positions are clamped to
    ``max_position``. Returns (ids, position_ids)."""
    if len(spans) > len(mask_ids):
        raise BioseqError(f"fim_layout: {len(spans)} spans but only {len(mask_ids)} mask tokens")
    head, head_pos, tail, tail_pos = [], [], [], []
    cursor = 0
    for k, (a, b) in enumerate(spans):
        if not cursor <= a < b <= len(ids) or a == 0:
            raise BioseqError(f"fim_layout: span {k} = [{a}, {b}) is not inside 1..{len(ids)} after the "
                              "previous span")
        head += ids[cursor:a] + [mask_ids[k]]
        head_pos += list(range(cursor, a)) + [a]
        tail += [mask_ids[k]] + ids[a:b]
        tail_pos += [a] + list(range(a, b))
        cursor = b
    head += ids[cursor:]
    head_pos += list(range(cursor, len(ids)))
    if spans:
        head, head_pos = head + [eos_id], head_pos + [0]
    return head + tail, [min(p, max_position) for p in head_pos + tail_pos]


def homolog_context(proteins: list[list[int]], spans: list[list[tuple[int, int]]] | None = None, *,
                    mask_ids: list[int] = (33, 34, 35, 36, 37), eos_id: int = 2,
                    max_position: int = 2047) -> tuple[list[int], list[int]]:
    """Concatenate proteins (each starting with its <cls>) into one context with positions restarting at
    every protein, optionally in the fill-in-the-middle layout (``spans[i]`` for protein i; default ids
    are Prot-xLSTM's). Returns (input_ids, position_ids) to pass as ``input_ids`` / ``position_ids``."""
    ids_out, pos_out = [], []
    for i, protein in enumerate(proteins):
        ids, pos = fim_layout(list(protein), [] if spans is None else spans[i], list(mask_ids), eos_id,
                              max_position)
        ids_out += ids
        pos_out += pos
    return ids_out, pos_out


# --------------------------------------------------------------------------------------------------
# Foreign layouts: the ``xlstm`` package, DNA-xLSTM, Prot-xLSTM
# --------------------------------------------------------------------------------------------------

_NORM_RULES = [  # foreign norm weights are offsets: scale = 1 + weight
    (r"xlstm_block_stack\.post_blocks_norm\.weight", "norm_f.weight"),
    (r"xlstm_block_stack\.blocks\.(\d+)\.xlstm_norm\.weight", r"blocks.\1.norm.weight"),
    (r"xlstm_block_stack\.blocks\.(\d+)\.ffn_norm\.weight", r"blocks.\1.ffn_norm.weight"),
    (r"xlstm_block_stack\.blocks\.(\d+)\.xlstm\.mlstm_cell\.outnorm\.weight",
     r"blocks.\1.mixer.outnorm_weight"),
    (r"xlstm_block_stack\.blocks\.(\d+)\.xlstm\.group_norm\.weight", r"blocks.\1.mixer.norm_weight"),
]
_RULES = [
    (r"token_embedding(\.embedding)?\.weight", "embed_tokens.weight"),
    (r"lm_head(\.lm_head)?\.weight", "lm_head.weight"),
    (r"xlstm_block_stack\.blocks\.(\d+)\.ffn\.(proj_up|proj_down)\.(weight|bias)", r"blocks.\1.ffn.\2.\3"),
    (r"xlstm_block_stack\.blocks\.(\d+)\.xlstm\.(proj_up|proj_down|q_proj|k_proj|v_proj)\.(weight|bias)",
     r"blocks.\1.mixer.\2.\3"),
    (r"xlstm_block_stack\.blocks\.(\d+)\.xlstm\.conv1d\.conv\.bias", r"blocks.\1.mixer.conv_bias"),
    (r"xlstm_block_stack\.blocks\.(\d+)\.xlstm\.learnable_skip", r"blocks.\1.mixer.skip"),
    (r"xlstm_block_stack\.blocks\.(\d+)\.xlstm\.mlstm_cell\.(igate|fgate)\.(weight|bias)",
     r"blocks.\1.mixer.\2.\3"),
    # sLSTM: the foreign 'fgate' feeds the input gate and 'igate' the forget gate
    (r"xlstm_block_stack\.blocks\.(\d+)\.xlstm\.fgate\.weight", r"blocks.\1.mixer.igate.weight"),
    (r"xlstm_block_stack\.blocks\.(\d+)\.xlstm\.igate\.weight", r"blocks.\1.mixer.fgate.weight"),
    (r"xlstm_block_stack\.blocks\.(\d+)\.xlstm\.(zgate|ogate)\.weight", r"blocks.\1.mixer.\2.weight"),
]


def _strip(key: str) -> str:
    key = re.sub(r"^model\.", "", key)
    key = re.sub(r"^backbone\.", "", key)
    return key.replace(".submodule.", ".")


def convert_foreign_state_dict(state_dict: dict[str, torch.Tensor], config: XLSTMConfig, *,
                               grads: bool = False, source: object = None) -> dict[str, torch.Tensor]:
    """``xlstm`` package / DNA-xLSTM / Prot-xLSTM tensors -> ``XLSTM`` names and layouts.

    Accepts the ``model.`` (Lightning) and ``backbone.`` prefixes and the RCPS ``.submodule.`` wrappers.
    Norm offsets become scales (``grads=True`` converts gradients: no offset); the sLSTM recurrent kernel
    is read in the vanilla layout [NH, 4 DH, DH] or the CUDA layout [NH, DH, 4 DH] (recognised by its
    shape; the bias [4 NH DH] follows the kernel: gate-major or head-major). ``complement_map`` buffers
    must agree with the config's complement map.
    """
    out: dict[str, torch.Tensor] = {}
    slstm: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        k = _strip(key)
        m = re.fullmatch(r"(token_embedding|lm_head)\.complement_map", k)
        if m:
            want = torch.tensor(config.complement()[: value.numel()])
            if not torch.equal(value.reshape(-1).long().cpu(), want):
                raise ckpt.CheckpointError(f"{source}: {key} differs from the config's complement map")
            continue
        m = re.fullmatch(r"xlstm_block_stack\.blocks\.(\d+)\.xlstm\.conv1d\.conv\.weight", k)
        if m:
            out[f"blocks.{m.group(1)}.mixer.conv_weight"] = value.reshape(value.shape[0], -1)
            continue
        m = re.fullmatch(r"xlstm_block_stack\.blocks\.(\d+)\.xlstm\.slstm_cell\.(_recurrent_kernel_|_bias_)",
                         k)
        if m:
            slstm.setdefault(m.group(1), {})[m.group(2)] = value
            continue
        for pattern, repl in _NORM_RULES:
            if re.fullmatch(pattern, k):
                out[re.sub(pattern, repl, k)] = value if grads else value + 1.0
                break
        else:
            for pattern, repl in _RULES:
                if re.fullmatch(pattern, k):
                    out[re.sub(pattern, repl, k)] = value
                    break
            else:
                raise ckpt.CheckpointError(f"{source}: unexpected tensor {key} for an xLSTM checkpoint")
    NH = config.slstm_num_heads
    DH = config.d_model // NH
    for block, parts in slstm.items():
        if set(parts) != {"_recurrent_kernel_", "_bias_"}:
            raise ckpt.CheckpointError(f"{source}: sLSTM block {block} lacks its recurrent kernel or bias")
        R, b = parts["_recurrent_kernel_"], parts["_bias_"].reshape(-1)
        if tuple(R.shape) == (NH, 4 * DH, DH):          # vanilla: [NH, (gate, out), in], gate-major bias
            R = R.reshape(NH, 4, DH, DH).permute(0, 3, 1, 2).reshape(NH, DH, 4 * DH)
            b = b.reshape(4, NH, DH)
        elif tuple(R.shape) == (NH, DH, 4 * DH):        # CUDA: [NH, in, (gate, out)], head-major bias
            b = b.reshape(NH, 4, DH).transpose(0, 1)
        else:
            raise ckpt.CheckpointError(f"{source}: sLSTM block {block}: recurrent kernel of shape "
                                       f"{tuple(R.shape)} fits neither [{NH}, {4 * DH}, {DH}] nor "
                                       f"[{NH}, {DH}, {4 * DH}]")
        out[f"blocks.{block}.mixer.recurrent_kernel"] = R.contiguous()
        out[f"blocks.{block}.mixer.bias"] = b.contiguous()
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


def _check_supported(what: str, flags: dict[str, Any]) -> None:
    bad = [name for name, on in flags.items() if on]
    if bad:
        raise BioseqError(f"{what}: not supported by bioseq's xLSTM: {', '.join(bad)}")


def config_from_xlstm_package(d: dict, **overrides) -> XLSTMConfig:
    """An ``xlstm`` package ``xLSTMLMModelConfig`` dict -> ``XLSTMConfig``."""
    m = (d.get("mlstm_block") or {}).get("mlstm") or {}
    s = d.get("slstm_block") or {}
    sl, ff = s.get("slstm") or {}, s.get("feedforward") or {}
    n_layer = int(d["num_blocks"])
    slstm_at = d.get("slstm_at") or []
    if slstm_at == "all" or not d.get("mlstm_block"):
        slstm_at = list(range(n_layer))
    _check_supported("xlstm config", {"feedforward bias": ff.get("bias", False),
                                      "embedding dropout": d.get("add_embedding_dropout", False)})
    kw = dict(
        d_model=int(d["embedding_dim"]), n_layer=n_layer, vocab_size=int(d["vocab_size"]), slstm_at=slstm_at,
        num_heads=m.get("num_heads", 4), proj_factor=m.get("proj_factor", 2.0),
        round_proj_up_dim_up=m.get("round_proj_up_dim_up", True),
        round_proj_up_to_multiple_of=m.get("round_proj_up_to_multiple_of", 64),
        qkv_proj_blocksize=m.get("qkv_proj_blocksize", 4), conv1d_kernel_size=m.get("conv1d_kernel_size", 4),
        bias=bool(d.get("bias", False)), chunk_size=int(m.get("chunk_size", 64)),
        slstm_num_heads=sl.get("num_heads", 4), slstm_conv1d_kernel_size=sl.get("conv1d_kernel_size", 4),
        slstm_bias_init=sl.get("bias_init", "powerlaw_blockdependent"),
        ffn_proj_factor=ff.get("proj_factor", 1.3),
        ffn_round_proj_up_dim_up=ff.get("round_proj_up_dim_up", True),
        ffn_round_proj_up_to_multiple_of=ff.get("round_proj_up_to_multiple_of", 64),
        ffn_act=ff.get("act_fn", "gelu"), max_length=d.get("context_length"),
        tie_word_embeddings=bool(d.get("tie_weights", False)),
        add_post_blocks_norm=bool(d.get("add_post_blocks_norm", True)), dropout=float(d.get("dropout", 0.0)),
    )
    if kw["max_length"] is not None and kw["max_length"] <= 0:
        kw["max_length"] = None
    return XLSTMConfig(**{**kw, **overrides})


def config_from_prot_xlstm(d: dict, **overrides) -> XLSTMConfig:
    """A Prot-xLSTM ``config.json`` -> ``XLSTMConfig`` (mLSTM blocks, RoPE over the inner width)."""
    pos = d.get("position_embeddings", "none")
    if pos not in ("rot_1d", "none"):
        raise BioseqError(f"Prot-xLSTM config: position_embeddings {pos!r} is not supported (rot_1d, none)")
    base = config_from_xlstm_package({**d, "slstm_at": [], "slstm_block": None})
    kw = dict(rope="inner" if pos == "rot_1d" else "none",
              rope_base=float(d.get("rope_base_frequency", 500000)),
              alphabet="protein", tokenizer="prot-xlstm")
    return base.replace(**{**kw, **overrides})


def config_from_dna_xlstm(d: dict, **overrides) -> XLSTMConfig:
    """A DNA-xLSTM ``xLSTMConfig`` dict (``d_model``, ``m_*``, ``s_*`` fields) -> ``XLSTMConfig``."""
    if isinstance(d.get("config"), dict):            # hydra model config: {"_name_": ..., "config": {...}}
        d = d["config"]
    _check_supported("DNA-xLSTM config", {
        "s_position_embeddings": d.get("s_position_embeddings", False),
        "m_conv1d_causal=false": not d.get("m_conv1d_causal", True),
        "s_conv1d_causal=false": not d.get("s_conv1d_causal", True)})
    cmap = d.get("complement_map")
    complement = None
    vocab = int(d.get("vocab_size", 12))
    if cmap:
        table = {int(k): int(v) for k, v in cmap.items()}
        complement = [table.get(i, i) for i in range(vocab)]
    kw = dict(
        d_model=int(d["d_model"]), n_layer=int(d["n_layer"]), vocab_size=vocab,
        slstm_at=list(d.get("s_lstm_at") or []), num_heads=d.get("m_num_heads", 4),
        proj_factor=d.get("m_proj_factor", 2.0), round_proj_up_dim_up=False, round_proj_up_to_multiple_of=64,
        qkv_proj_blocksize=d.get("m_qkv_proj_blocksize", 4),
        conv1d_kernel_size=d.get("m_conv1d_kernel_size", 4),
        bias=bool(d.get("m_bias", False)), chunk_size=int(d.get("m_chunk_size", 64)),
        slstm_num_heads=d.get("s_num_heads", 4), slstm_conv1d_kernel_size=d.get("s_conv1d_kernel_size", 4),
        ffn_proj_factor=d.get("s_proj_factor", 1.3),
        ffn_round_proj_up_dim_up=d.get("s_round_proj_up_dim_up", True),
        ffn_round_proj_up_to_multiple_of=d.get("s_round_proj_up_to_multiple_of", 64),
        rope="head" if d.get("m_position_embeddings", False) else "none", rope_base=500000.0,
        max_length=d.get("max_length"), bidirectional=bool(d.get("bidirectional", False)),
        bidirectional_alternating=bool(d.get("bidirectional_alternating", False)),
        # the reference's native bidirectional mLSTM exists in its parallel backend only; its chunkwise
        # backend ignores the flag and runs those blocks forward only
        mlstm_bidirectional=("shared" if not d.get("m_backend_bidirectional", False) else
                             "native" if d.get("m_backend", "parallel") == "parallel" else "causal"),
        rcps=bool(d.get("rcps", False)), rcps_reference_slstm_norm=bool(d.get("rcps", False)),
        complement_map=complement, tie_word_embeddings=bool(d.get("tie_weights", False)),
        dropout=float(d.get("dropout", 0.0)), alphabet="dna",
    )
    return XLSTMConfig(**{**kw, **overrides})


def _is_dna(raw: dict | None) -> bool:
    if raw is None:
        return False
    inner = raw.get("config") if isinstance(raw.get("config"), dict) else raw
    return "d_model" in inner and ("m_num_heads" in inner or "s_lstm_at" in inner)


def _is_prot(raw: dict | None) -> bool:
    return raw is not None and "position_embeddings" in raw and "mlstm_block" in raw and "arch" not in raw


def _is_package(raw: dict | None) -> bool:
    return (raw is not None and "embedding_dim" in raw and "num_blocks" in raw and "arch" not in raw
            and ("mlstm_block" in raw or "slstm_block" in raw) and "position_embeddings" not in raw)


def _load_with(make_config):
    def load(directory: Path, raw: dict, overrides: dict) -> XLSTM:
        cfg = make_config(raw, **overrides)
        path = ckpt.weights_file(directory)
        state = convert_foreign_state_dict(ckpt.load_state_dict_file(path), cfg, source=path)
        model = XLSTM(cfg)
        model.load_converted_state_dict(state, source=path)
        return model
    return load


def _has_weights(directory: Path) -> bool:
    try:
        ckpt.weights_file(directory)
    except ckpt.CheckpointError:
        return False
    return True


LAYOUTS = (
    Layout("dna-xlstm", "DNA-xLSTM: config.json with d_model / m_* / s_* fields + Lightning .ckpt or "
           "pytorch_model.bin ('model.backbone.' keys; vanilla or CUDA sLSTM kernel; RCPS wrappers)",
           lambda d, raw: _is_dna(raw) and _has_weights(d), _load_with(config_from_dna_xlstm)),
    Layout("prot-xlstm", "Prot-xLSTM: config.json with position_embeddings + pytorch_model.bin "
           "('backbone.' keys)", lambda d, raw: _is_prot(raw) and _has_weights(d),
           _load_with(config_from_prot_xlstm)),
    Layout("xlstm-package", "xlstm package: xLSTMLMModelConfig as config.json + the xLSTMLMModel state_dict",
           lambda d, raw: _is_package(raw) and _has_weights(d), _load_with(config_from_xlstm_package)),
)

FAMILY = Family(arch="xlstm", config=XLSTMConfig, module=XLSTM, presets=PRESETS, layouts=LAYOUTS)
