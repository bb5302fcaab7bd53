"""Mamba-1 and Mamba-2: causal selective state-space LM backbones with an exact recurrent state.

Read top to bottom: ``MambaConfig`` and the presets, the norms, the two mixers (``Mamba1Mixer``,
``Mamba2Mixer``), the block, the ``Mamba`` backbone, and the foreign checkpoint layouts
(transformers and ``mamba_ssm``) registered in ``FAMILY`` at the end.

One block (pre-norm; the residual stream ``x`` [B, L, d_model] is kept in float32 when
``residual_in_fp32``)::

    x = x + Mixer(RMSNorm(x))                       final: hidden = RMSNorm_f(x)

Mamba-1 mixer (d_inner = expand * d_model, R = dt_rank, N = d_state), on u = RMSNorm(x)::

    x, z   = split(in_proj(u))                      # [B, L, d_inner] each
    x      = silu(causal_conv1d(x, conv1d))         # depthwise, kernel d_conv, with bias
    dt, B, C = split(x_proj(x), [R, N, N])
    delta  = softplus(dt_proj(dt))                  # dt_proj.bias is the delta bias
    A      = -exp(A_log)                            # [d_inner, N]
    h_t    = exp(delta_t A) h_{t-1} + delta_t B_t x_t,   y_t = C_t . h_t + D x_t
    out    = out_proj(y * silu(z))

Mamba-2 mixer (H = d_inner / headdim heads of width P = headdim, G groups of B/C, scalar A per head)::

    z, xBC, dt = split(in_proj(u), [d_inner, d_inner + 2 G N, H])
    x, B, C    = split(silu(causal_conv1d(xBC, conv1d)), [d_inner, G N, G N])
    dt         = softplus(dt + dt_bias);  A = -exp(A_log)  [H]
    h_t        = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T   (per head, [P, N]);  y_t = h_t C_t + D x_t
    out        = out_proj(RMSNorm_grouped(y * silu(z)))      # G groups of d_inner / G channels

The scans are ``bioseq.ops.selective_scan`` / ``bioseq.ops.ssd`` (Triton kernel on CUDA, chunked
reference on CPU). The recurrent state of one layer is ``(conv, ssm)``: ``conv`` [B, conv_channels,
d_conv - 1] holds the last d_conv - 1 inputs of the short convolution, ``ssm`` the scan state
(float32; [B, d_inner, N] for Mamba-1, [B, H, P, N] for Mamba-2). ``forward(..., state=s)`` runs the
parallel scan starting from ``s`` and returns the state after the last real token of each row, so
stepping token by token, chunked forwards with the state, and one full forward agree.

Initialisation is the official one: S4D-real ``A_log = log(1..N)`` (Mamba-1) or ``log U(1, 16)``
(Mamba-2), ``dt`` bias = inverse softplus of a log-uniform time step in [dt_min, dt_max], D = 1,
embedding N(0, 0.02), out_proj rescaled by 1/sqrt(n_layer). ``A_log``, ``D`` and the dt bias are
marked ``_no_weight_decay``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from bioseq import checkpoints as ckpt
from bioseq.errors import BioseqError
from bioseq.models.base import Backbone, BackboneConfig, Family, Layout
from bioseq.models.flips import right_padded_lengths
from bioseq.ops.causal_conv1d import causal_conv1d
from bioseq.ops.selective_scan import selective_scan, selective_state_update
from bioseq.ops.ssd import ssd, ssd_state_update

SSM_LAYERS = ("mamba1", "mamba2")

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclass
class MambaConfig(BackboneConfig):
    """Mamba-1 / Mamba-2 hyperparameters (``mamba_ssm`` field names).

    ``vocab_size`` is the tokenizer's vocabulary; the embedding has ``padded_vocab_size`` rows.
    ``ssm_layer`` picks the mixer: ``"mamba1"`` (selective scan, per-channel A) or ``"mamba2"`` (SSD,
    scalar A per head, grouped B/C, gated grouped RMSNorm).
    """

    d_model: int = 256
    n_layer: int = 4
    vocab_size: int = 12
    ssm_layer: str = "mamba1"
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None            # Mamba-1; None = ceil(d_model / 16)
    headdim: int = 64                     # Mamba-2 head width P
    ngroups: int = 1                      # Mamba-2 groups of B/C (and of the gated norm)
    chunk_size: int = 256                 # Mamba-2 SSD chunk (does not change the result)
    A_init_range: list[float] = field(default_factory=lambda: [1.0, 16.0])   # Mamba-2
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"               # Mamba-1 dt_proj.weight: "random" (uniform) or "constant"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False                    # in_proj / out_proj biases
    rms_norm: bool = True                 # block norms: RMSNorm (True) or LayerNorm
    norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    pad_vocab_size_multiple: int = 8
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    rescale_prenorm_residual: bool = True
    gradient_checkpointing: bool = False
    arch: str = "mamba"
    alphabet: str = "dna"

    def __post_init__(self):
        if self.arch != "mamba":
            raise BioseqError(f"MambaConfig: arch must be 'mamba', got {self.arch!r}")
        if self.ssm_layer not in SSM_LAYERS:
            raise BioseqError(f"MambaConfig: ssm_layer must be one of {SSM_LAYERS}, got {self.ssm_layer!r}")
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.d_model / 16)
        if self.d_conv < 1:
            raise BioseqError(f"MambaConfig: d_conv must be >= 1, got {self.d_conv}")
        if self.dt_init not in ("random", "constant"):
            raise BioseqError(f"MambaConfig: dt_init must be 'random' or 'constant', got {self.dt_init!r}")
        self.A_init_range = [float(v) for v in self.A_init_range]
        if self.ssm_layer == "mamba2":
            if self.d_inner % self.headdim:
                raise BioseqError(f"MambaConfig: d_inner={self.d_inner} (expand * d_model) is not a multiple "
                                  f"of headdim={self.headdim}")
            if self.nheads % self.ngroups or self.d_inner % self.ngroups:
                raise BioseqError(f"MambaConfig: ngroups={self.ngroups} must divide the {self.nheads} heads")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.pad_vocab_size_multiple)
        return -(-self.vocab_size // m) * m


def _mamba(d_model: int, n_layer: int, ssm_layer: str = "mamba1", **kw) -> MambaConfig:
    return MambaConfig(d_model=d_model, n_layer=n_layer, ssm_layer=ssm_layer, **kw)


PRESETS: dict[str, MambaConfig] = {
    # CPU-sized models (about HyenaDNA-tiny's 0.44 M parameters: d_model 128, 4 layers)
    "mamba-tiny": _mamba(128, 4),
    "mamba2-tiny": _mamba(128, 4, "mamba2", headdim=32, ngroups=1, chunk_size=64),
    # small DNA models (the benchmark's shape: d_model 256, 4 layers, d_state 16)
    "mamba-small": _mamba(256, 4),
    "mamba2-small": _mamba(256, 4, "mamba2", headdim=64),
}


def _no_decay(p: nn.Parameter) -> nn.Parameter:
    p._no_weight_decay = True
    return p


# --------------------------------------------------------------------------------------------------
# Norms
# --------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dim, computed in float32; output in the
    weight's dtype (the block feeds the float32 residual stream through it)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(self.weight.dtype)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` that casts its input to the weight's dtype (the residual stream may be float32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype))


def make_norm(dim: int, rms_norm: bool, eps: float) -> nn.Module:
    return RMSNorm(dim, eps) if rms_norm else LayerNorm(dim, eps=eps)


class GatedRMSNorm(nn.Module):
    """Mamba-2's output norm: ``RMSNorm_grouped(y * silu(z)) * weight`` with ``groups`` groups of
    consecutive channels, each normalised on its own (float32 inside; output in y's dtype)."""

    def __init__(self, dim: int, groups: int, eps: float = 1e-5):
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = y.dtype
        h = y.float() * F.silu(z.float())
        h = h.unflatten(-1, (self.groups, -1))
        h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        return (h * self.weight.float()).to(dtype)


# --------------------------------------------------------------------------------------------------
# Helpers shared by the mixers
# --------------------------------------------------------------------------------------------------


def init_dt_bias(bias: torch.Tensor, dt_min: float, dt_max: float, floor: float) -> None:
    """bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max] (clamped below at ``floor``)."""
    dt = torch.exp(torch.rand_like(bias, dtype=torch.float32) * (math.log(dt_max) - math.log(dt_min))
                   + math.log(dt_min)).clamp(min=floor)
    bias.copy_(dt + torch.log(-torch.expm1(-dt)))


def valid_positions(lengths: torch.Tensor | None, L: int) -> torch.Tensor | None:
    """[B, L] bool: position < length (None when every row is full)."""
    if lengths is None:
        return None
    return torch.arange(L, device=lengths.device) < lengths[:, None]


def conv_with_state(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    conv_state: torch.Tensor | None, lengths: torch.Tensor | None, want_state: bool):
    """silu(causal conv) of x [B, C, L] that continues after ``conv_state`` [B, C, K-1] (zeros = a fresh
    start). Returns (y [B, C, L], new conv state or None): the last K-1 inputs up to each row's length."""
    K = weight.shape[-1]
    if conv_state is None:
        y = causal_conv1d(x, weight, bias, "silu")
        if not want_state:
            return y, None
        conv_state = x.new_zeros(x.shape[0], x.shape[1], K - 1)
        full = torch.cat([conv_state, x], dim=-1)
    else:
        full = torch.cat([conv_state.to(x.dtype), x], dim=-1)                 # [B, C, K-1+L]
        y = causal_conv1d(full, weight, bias, "silu")[..., K - 1:]
    if lengths is None:
        new = full[..., full.shape[-1] - (K - 1):]
    else:  # the K-1 inputs ending at each row's last real token
        idx = lengths[:, None] + torch.arange(K - 1, device=x.device)          # [B, K-1]
        new = full.gather(-1, idx[:, None, :].expand(-1, full.shape[1], -1))
    return y, new.contiguous()


def conv_step(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv_state: torch.Tensor):
    """One token of the causal conv: x [B, C], conv_state [B, C, K-1] -> (silu(y) [B, C], new state)."""
    window = torch.cat([conv_state.to(x.dtype), x.unsqueeze(-1)], dim=-1)     # [B, C, K]
    y = (window * weight.to(x.dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(x.dtype)
    return F.silu(y), window[..., 1:].contiguous()


# --------------------------------------------------------------------------------------------------
# Mamba-1 mixer
# --------------------------------------------------------------------------------------------------


class Mamba1Mixer(nn.Module):
    """Mamba-1 selective SSM: [B, L, d_model] -> [B, L, d_model] (causal).

    ``config`` needs d_model, d_state, d_conv, expand, dt_rank, bias, conv_bias and the dt init fields
    (``MambaConfig`` and ``CaduceusConfig`` both have them). ``with_projections=False`` builds the
    core only (conv, x_proj, dt_proj, A_log, D): Caduceus' reverse direction borrows the forward
    direction's in_proj / out_proj.
    """

    def __init__(self, config: Any, with_projections: bool = True):
        super().__init__()
        c = config
        self.d_inner, self.d_state, self.dt_rank = c.expand * c.d_model, c.d_state, c.dt_rank
        di = self.d_inner
        self.in_proj = nn.Linear(c.d_model, 2 * di, bias=c.bias) if with_projections else None
        self.conv1d = nn.Conv1d(di, di, c.d_conv, groups=di, padding=c.d_conv - 1, bias=c.conv_bias)
        self.x_proj = nn.Linear(di, c.dt_rank + 2 * c.d_state, bias=False)
        self.dt_proj = nn.Linear(c.dt_rank, di, bias=True)
        self.A_log = _no_decay(nn.Parameter(torch.empty(di, c.d_state)))
        self.D = _no_decay(nn.Parameter(torch.empty(di)))
        _no_decay(self.dt_proj.bias)
        self.out_proj = nn.Linear(di, c.d_model, bias=c.bias) if with_projections else None
        self._init = dict(dt_min=c.dt_min, dt_max=c.dt_max, dt_init=c.dt_init, dt_scale=c.dt_scale,
                          dt_init_floor=c.dt_init_floor)

    @torch.no_grad()
    def reset_parameters(self, n_layer: int, rescale: bool = True) -> None:
        """The official init: PyTorch defaults for the linears/conv, zero projection biases, dt_proj
        weight U(+-dt_rank^-0.5 * dt_scale) (or constant), dt bias = softplus^-1(dt), A_log = log(1..N),
        D = 1, out_proj kaiming-uniform / sqrt(n_layer) when ``rescale``."""
        i = self._init
        for lin in (self.in_proj, self.x_proj, self.dt_proj, self.out_proj):
            if lin is not None:
                lin.reset_parameters()
        self.conv1d.reset_parameters()
        for lin in (self.in_proj, self.out_proj):
            if lin is not None and lin.bias is not None:
                lin.bias.zero_()
        std = self.dt_rank ** -0.5 * i["dt_scale"]
        if i["dt_init"] == "constant":
            self.dt_proj.weight.fill_(std)
        else:
            self.dt_proj.weight.uniform_(-std, std)
        init_dt_bias(self.dt_proj.bias, i["dt_min"], i["dt_max"], i["dt_init_floor"])
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)
        if rescale and self.out_proj is not None:
            self.out_proj.weight.div_(math.sqrt(n_layer))

    @property
    def conv_channels(self) -> int:
        return self.d_inner

    def allocate_state(self, batch: int, device=None, dtype=torch.float32):
        K = self.conv1d.weight.shape[-1]
        return (torch.zeros(batch, self.d_inner, K - 1, device=device, dtype=dtype),
                torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=torch.float32))

    def scan(self, xz: torch.Tensor, state=None, lengths: torch.Tensor | None = None,
             want_state: bool = False):
        """The mixer between the projections: xz [B, L, 2 d_inner] (in_proj output) -> y [B, L, d_inner]
        (gated by silu(z), before out_proj); with ``want_state`` also the new (conv, ssm) state."""
        L = xz.shape[1]
        x, z = xz.transpose(1, 2).chunk(2, dim=1)                               # [B, d_inner, L] each
        conv_state, ssm_state = (None, None) if state is None else state
        x, new_conv = conv_with_state(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, conv_state, lengths,
                                      want_state)
        # channel-major projections: no transposed copies of x (kept for backward once, by the scan)
        dbc = torch.matmul(self.x_proj.weight, x)                               # [B, R + 2N, L]
        dt, B, C = dbc.split([self.dt_rank, self.d_state, self.d_state], dim=1)
        delta = torch.matmul(self.dt_proj.weight, dt)                           # [B, d_inner, L]
        A = -torch.exp(self.A_log.float())
        valid = valid_positions(lengths, L) if want_state else None
        if valid is None:
            delta_bias, softplus = self.dt_proj.bias.float(), True
        else:  # padded steps get delta = 0: they neither decay nor feed the state
            delta = F.softplus(delta.float() + self.dt_proj.bias.float()[:, None]) * valid[:, None, :]
            delta_bias, softplus = None, False
        out = selective_scan(x, delta, A, B, C, self.D.float(), z=z,
                             delta_bias=delta_bias, delta_softplus=softplus, initial_state=ssm_state,
                             return_state=want_state)
        if want_state:
            y, new_ssm = out
            return y.transpose(1, 2), (new_conv, new_ssm)
        return out.transpose(1, 2)

    def forward(self, u: torch.Tensor, state=None, lengths: torch.Tensor | None = None,
                want_state: bool = False):
        """u [B, L, d_model] -> [B, L, d_model] (and the new state with ``want_state``)."""
        out = self.scan(self.in_proj(u), state, lengths, want_state)
        if want_state:
            return self.project_out(out[0]), out[1]
        return self.project_out(out)

    def project_out(self, y: torch.Tensor) -> torch.Tensor:
        """out_proj of y [B, L, d_inner] (the scan's channel-major output, transposed) without copying y."""
        out = torch.matmul(self.out_proj.weight, y.transpose(1, 2)).transpose(1, 2)
        return out if self.out_proj.bias is None else out + self.out_proj.bias

    def step(self, u: torch.Tensor, state):
        """One token: u [B, d_model], state (conv, ssm) -> (y [B, d_model], new state)."""
        x, z = self.in_proj(u).chunk(2, dim=-1)                                  # [B, d_inner]
        conv_state, ssm_state = state
        x, new_conv = conv_step(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, conv_state)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight)
        A = -torch.exp(self.A_log.float())
        y, new_ssm = selective_state_update(ssm_state, x, delta, A, B, C, self.D.float(), z=z,
                                            delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(y), (new_conv, new_ssm)


# --------------------------------------------------------------------------------------------------
# Mamba-2 mixer
# --------------------------------------------------------------------------------------------------


class Mamba2Mixer(nn.Module):
    """Mamba-2 (SSD) mixer: [B, L, d_model] -> [B, L, d_model] (causal)."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        c = config
        self.d_inner, self.d_state, self.ngroups = c.d_inner, c.d_state, c.ngroups
        self.nheads, self.headdim, self.chunk_size = c.nheads, c.headdim, c.chunk_size
        self.conv_dim = c.d_inner + 2 * c.ngroups * c.d_state
        self.in_proj = nn.Linear(c.d_model, c.d_inner + self.conv_dim + c.nheads, bias=c.bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, c.d_conv, groups=self.conv_dim,
                                padding=c.d_conv - 1, bias=c.conv_bias)
        self.dt_bias = _no_decay(nn.Parameter(torch.empty(c.nheads)))
        self.A_log = _no_decay(nn.Parameter(torch.empty(c.nheads)))
        self.D = _no_decay(nn.Parameter(torch.empty(c.nheads)))
        self.norm = GatedRMSNorm(c.d_inner, c.ngroups, eps=c.norm_epsilon)
        self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=c.bias)
        self._init = dict(dt_min=c.dt_min, dt_max=c.dt_max, dt_init_floor=c.dt_init_floor,
                          A_init_range=tuple(c.A_init_range))

    @torch.no_grad()
    def reset_parameters(self, n_layer: int, rescale: bool = True) -> None:
        """The official init: PyTorch defaults for in_proj/conv, zero biases, dt_bias =
        softplus^-1(dt), A_log = log U(A_init_range), D = 1, norm = 1, out_proj / sqrt(n_layer)."""
        i = self._init
        self.in_proj.reset_parameters()
        self.conv1d.reset_parameters()
        self.out_proj.reset_parameters()
        for lin in (self.in_proj, self.out_proj):
            if lin.bias is not None:
                lin.bias.zero_()
        init_dt_bias(self.dt_bias, i["dt_min"], i["dt_max"], i["dt_init_floor"])
        lo, hi = i["A_init_range"]
        self.A_log.copy_(torch.log(torch.empty(self.nheads).uniform_(lo, hi)))
        self.D.fill_(1.0)
        self.norm.weight.fill_(1.0)
        if rescale:
            self.out_proj.weight.div_(math.sqrt(n_layer))

    @property
    def conv_channels(self) -> int:
        return self.conv_dim

    def allocate_state(self, batch: int, device=None, dtype=torch.float32):
        K = self.conv1d.weight.shape[-1]
        return (torch.zeros(batch, self.conv_dim, K - 1, device=device, dtype=dtype),
                torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device,
                            dtype=torch.float32))

    def _split_xbc(self, xbc: torch.Tensor):
        G, N = self.ngroups, self.d_state
        x, B, C = xbc.split([self.d_inner, G * N, G * N], dim=-1)
        return x.unflatten(-1, (self.nheads, self.headdim)), B.unflatten(-1, (G, N)), C.unflatten(-1, (G, N))

    def forward(self, u: torch.Tensor, state=None, lengths: torch.Tensor | None = None,
                want_state: bool = False):
        """u [B, L, d_model] -> [B, L, d_model] (and the new (conv, ssm) state with ``want_state``)."""
        Bsz, L, _ = u.shape
        z, xbc, dt = self.in_proj(u).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        conv_state, ssm_state = (None, None) if state is None else state
        xbc, new_conv = conv_with_state(xbc.transpose(1, 2), self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                        conv_state, lengths, want_state)
        x, B, C = self._split_xbc(xbc.transpose(1, 2))              # [B, L, H, P], [B, L, G, N] x2
        A = -torch.exp(self.A_log.float())
        valid = valid_positions(lengths, L) if want_state else None
        if valid is None:
            dt_bias, softplus = self.dt_bias, True
        else:  # padded steps get dt = 0: they neither decay nor feed the state
            dt = F.softplus(dt.float() + self.dt_bias.float()) * valid[..., None]
            dt_bias, softplus = None, False
        out = ssd(x, dt, A, B, C, chunk_size=self.chunk_size, D=self.D, dt_bias=dt_bias, dt_softplus=softplus,
                  initial_state=ssm_state, return_state=want_state)
        y, new_ssm = out if want_state else (out, None)
        y = self.out_proj(self.norm(y.reshape(Bsz, L, self.d_inner), z))
        return (y, (new_conv, new_ssm)) if want_state else y

    def step(self, u: torch.Tensor, state):
        """One token: u [B, d_model], state (conv, ssm) -> (y [B, d_model], new state)."""
        z, xbc, dt = self.in_proj(u).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        conv_state, ssm_state = state
        xbc, new_conv = conv_step(xbc, self.conv1d.weight.squeeze(1), self.conv1d.bias, conv_state)
        x, B, C = self._split_xbc(xbc)                                           # [B, H, P], [B, G, N] x2
        A = -torch.exp(self.A_log.float())
        y, new_ssm = ssd_state_update(ssm_state, x, dt, A, B, C, D=self.D, dt_bias=self.dt_bias,
                                      dt_softplus=True)
        y = self.out_proj(self.norm(y.reshape(u.shape[0], self.d_inner), z))
        return y, (new_conv, new_ssm)


# --------------------------------------------------------------------------------------------------
# Block and backbone
# --------------------------------------------------------------------------------------------------


class Block(nn.Module):
    """``x = x + mixer(norm(x))``; x (the residual stream) is float32 when ``residual_in_fp32``."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.norm = make_norm(config.d_model, config.rms_norm, config.norm_epsilon)
        self.mixer = Mamba1Mixer(config) if config.ssm_layer == "mamba1" else Mamba2Mixer(config)
        self.residual_in_fp32 = config.residual_in_fp32

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() if self.residual_in_fp32 else x

    def forward(self, x: torch.Tensor, state=None, lengths: torch.Tensor | None = None,
                want_state: bool = False):
        x = self._residual(x)
        out = self.mixer(self.norm(x), state, lengths, want_state)
        if want_state:
            return x + out[0], out[1]
        return x + out

    def step(self, x: torch.Tensor, state):
        x = self._residual(x)
        y, state = self.mixer.step(self.norm(x), state)
        return x + y, state


class MambaState(NamedTuple):
    """Recurrent state of a ``Mamba`` backbone: per layer the conv inputs ``conv[i]`` [B, C, d_conv-1]
    and the scan state ``ssm[i]`` (float32; [B, d_inner, N] or [B, H, P, N]). A named tuple of lists,
    so ``torch.utils._pytree`` and ``torch.compile`` see plain tensors."""

    conv: list[torch.Tensor]
    ssm: list[torch.Tensor]

    @property
    def batch_size(self) -> int:
        return int(self.ssm[0].shape[0])

    def to(self, device) -> MambaState:
        return MambaState([t.to(device) for t in self.conv], [t.to(device) for t in self.ssm])


class Mamba(Backbone):
    """Mamba-1 / Mamba-2 backbone: token ids [B, L] -> hidden [B, L, d_model] (final norm applied).

    Causal: right padding never changes a real token's output. ``attention_mask`` (right padding) only
    matters with a ``state``: the new state is taken at each row's last real token.
    """

    arch = "mamba"
    supports_state = True

    def __init__(self, config: MambaConfig):
        super().__init__(config)
        self.d_model = config.d_model
        self.embed_tokens = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = make_norm(config.d_model, config.rms_norm, config.norm_epsilon)
        self.make_lm_head(config.d_model, config.padded_vocab_size)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Embedding N(0, initializer_range), norms 1, each mixer's official init (see the mixers)."""
        nn.init.normal_(self.embed_tokens.weight, std=self.config.initializer_range)
        for block in self.layers:
            block.mixer.reset_parameters(self.config.n_layer, self.config.rescale_prenorm_residual)
            block.norm.reset_parameters()
        self.norm_f.reset_parameters()
        if self.lm_head is not None:
            self.lm_head.reset_parameters()

    # -- recurrent state ----------------------------------------------------------------------------
    def allocate_state(self, batch_size: int, device: torch.device | str | None = None) -> MambaState:
        """Zero state (= the start of a sequence) for ``batch_size`` rows."""
        device = device if device is not None else self.embed_tokens.weight.device
        dtype = self.embed_tokens.weight.dtype
        states = [block.mixer.allocate_state(batch_size, device, dtype) for block in self.layers]
        return MambaState([s[0] for s in states], [s[1] for s in states])

    def step(self, input_ids: torch.Tensor, state: MambaState, inputs_embeds: torch.Tensor | None = None):
        """One token per row: input_ids [B] (or inputs_embeds [B, d_model]) -> (hidden [B, d_model],
        new state); ``state`` is not modified."""
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        conv, ssm = [], []
        for i, block in enumerate(self.layers):
            x, (c, s) = block.step(x, (state.conv[i], state.ssm[i]))
            conv.append(c)
            ssm.append(s)
        return self.norm_f(x), MambaState(conv, ssm)

    # -- forward --------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, output_hidden_states: bool = False,
                state: MambaState | None = None):
        """Args: input_ids [B, L] (or inputs_embeds [B, L, d_model]); attention_mask [B, L] (right
        padding); state: a ``MambaState`` to continue from (chunked streaming).

        Returns hidden [B, L, d_model]; with ``output_hidden_states`` also n_layer + 1 tensors (the
        embeddings and the residual stream after each block); with ``state`` also the new state.
        """
        self.check_state_arg(state)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        want_state = state is not None
        lengths = right_padded_lengths(attention_mask, x.shape[1]) if want_state else None
        if want_state and state.batch_size != x.shape[0]:
            raise BioseqError(f"state holds {state.batch_size} rows, input has {x.shape[0]}")
        hidden_states = [x]
        conv, ssm = [], []
        use_ckpt = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.layers):
            if want_state:
                x, (c, s) = block(x, (state.conv[i], state.ssm[i]), lengths, True)
                conv.append(c)
                ssm.append(s)
            elif use_ckpt:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if output_hidden_states:
                hidden_states.append(x)
        h = self.norm_f(x)
        out = (h,)
        if output_hidden_states:
            out += (tuple(hidden_states),)
        if want_state:
            out += (MambaState(conv, ssm),)
        return out[0] if len(out) == 1 else out


# --------------------------------------------------------------------------------------------------
# Foreign layouts: transformers (MambaForCausalLM / Mamba2ForCausalLM) and mamba_ssm
# --------------------------------------------------------------------------------------------------


def config_from_hf(d: dict[str, Any], **overrides) -> MambaConfig:
    """A transformers ``MambaConfig`` / ``Mamba2Config`` dict -> MambaConfig (vocab taken as is)."""
    kind = d.get("model_type")
    if kind not in ("mamba", "mamba2"):
        raise BioseqError(f"config.json: model_type {kind!r} is not 'mamba' or 'mamba2'")
    kw = dict(
        d_model=d["hidden_size"], n_layer=d["num_hidden_layers"], vocab_size=d["vocab_size"],
        d_state=d.get("state_size", 16), d_conv=d.get("conv_kernel", 4), expand=d.get("expand", 2),
        bias=d.get("use_bias", False), conv_bias=d.get("use_conv_bias", True),
        norm_epsilon=d.get("layer_norm_epsilon", 1e-5), residual_in_fp32=d.get("residual_in_fp32", True),
        dt_min=d.get("time_step_min", 0.001), dt_max=d.get("time_step_max", 0.1),
        dt_init_floor=d.get("time_step_floor", 1e-4), pad_vocab_size_multiple=1,
        tie_word_embeddings=d.get("tie_word_embeddings", True),
        initializer_range=d.get("initializer_range", 0.02),
    )
    if d.get("hidden_act", "silu") != "silu":
        raise BioseqError(f"config.json: hidden_act {d['hidden_act']!r} is not supported (silu only)")
    if kind == "mamba":
        rank = d.get("time_step_rank")
        kw.update(ssm_layer="mamba1", dt_rank=None if rank == "auto" else rank,
                  dt_scale=d.get("time_step_scale", 1.0), dt_init=d.get("time_step_init_scheme", "random"))
        inner = d.get("intermediate_size", kw["expand"] * kw["d_model"])
        if inner != kw["expand"] * kw["d_model"]:
            raise BioseqError(f"config.json: intermediate_size {inner} != expand * hidden_size")
    else:
        limit = d.get("time_step_limit", [0.0, float("inf")])
        if limit and (float(limit[0]) != 0.0 or float(limit[1]) != float("inf")):
            raise BioseqError(f"config.json: time_step_limit {limit} is not supported (only (0, inf))")
        if not d.get("rms_norm", True):
            raise BioseqError("config.json: Mamba-2 without the gated RMSNorm (rms_norm false) is not "
                              "supported")
        kw.update(ssm_layer="mamba2", headdim=d.get("head_dim", 64), ngroups=d.get("n_groups", 1),
                  chunk_size=d.get("chunk_size", 256))
        heads = d.get("num_heads")
        if heads is not None and heads * kw["headdim"] != kw["expand"] * kw["d_model"]:
            raise BioseqError(f"config.json: num_heads * head_dim = {heads * kw['headdim']} != expand * "
                              f"hidden_size = {kw['expand'] * kw['d_model']}")
    kw.update(overrides)
    return MambaConfig(**kw)


def config_from_mamba_ssm(d: dict[str, Any], **overrides) -> MambaConfig:
    """A ``mamba_ssm`` MambaConfig dict (d_model, n_layer, ssm_cfg, ...) -> MambaConfig."""
    ssm = dict(d.get("ssm_cfg") or {})
    layer = ssm.pop("layer", "Mamba1")
    if layer not in ("Mamba1", "Mamba2"):
        raise BioseqError(f"config.json: ssm_cfg.layer {layer!r} is not Mamba1 or Mamba2")
    if d.get("d_intermediate", 0):
        raise BioseqError("config.json: MLP layers (d_intermediate > 0) are not supported")
    if d.get("attn_layer_idx"):
        raise BioseqError("config.json: attention layers (attn_layer_idx) are not supported")
    kw = dict(d_model=d["d_model"], n_layer=d["n_layer"], vocab_size=d["vocab_size"],
              ssm_layer="mamba1" if layer == "Mamba1" else "mamba2",
              rms_norm=d.get("rms_norm", True), residual_in_fp32=d.get("residual_in_fp32", True),
              pad_vocab_size_multiple=d.get("pad_vocab_size_multiple", 8),
              tie_word_embeddings=d.get("tie_embeddings", True), norm_epsilon=d.get("norm_epsilon", 1e-5))
    known = {"d_state", "d_conv", "expand", "dt_rank", "headdim", "ngroups", "chunk_size", "A_init_range",
             "dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor", "conv_bias", "bias"}
    ignored = {"use_fast_path", "layer_idx", "dt_limit", "learnable_init_states", "activation", "rmsnorm",
               "norm_before_gate", "d_ssm", "sequence_parallel", "process_group", "D_has_hdim",
               "use_mem_eff_path"}
    for k, v in ssm.items():
        if k in known:
            kw[k] = None if (k == "dt_rank" and v == "auto") else v
        elif k == "d_ssm" and v is not None:
            raise BioseqError("config.json: ssm_cfg.d_ssm is not supported")
        elif k in ("D_has_hdim", "learnable_init_states", "norm_before_gate") and v:
            raise BioseqError(f"config.json: ssm_cfg.{k}=true is not supported")
        elif k == "rmsnorm" and not v:
            raise BioseqError("config.json: Mamba-2 without the gated RMSNorm is not supported")
        elif k == "activation" and v not in ("silu", "swish"):
            raise BioseqError(f"config.json: ssm_cfg.activation {v!r} is not supported (silu only)")
        elif k == "dt_limit" and (float(v[0]) != 0.0 or float(v[1]) != float("inf")):
            raise BioseqError(f"config.json: ssm_cfg.dt_limit {v} is not supported (only (0, inf))")
        elif k not in ignored:
            raise BioseqError(f"config.json: ssm_cfg.{k} is not supported")
    kw.update(overrides)
    return MambaConfig(**kw)


def convert_foreign_state(state: dict[str, torch.Tensor]
                          ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """transformers / mamba_ssm keys -> bioseq keys; returns (state, lm_head weight or None when tied).

    ``backbone.embeddings.weight`` (transformers) / ``backbone.embedding.weight`` (mamba_ssm) ->
    ``embed_tokens.weight``; ``backbone.layers.*`` -> ``layers.*``; ``backbone.norm_f`` -> ``norm_f``.
    """
    out: dict[str, torch.Tensor] = {}
    head = None
    for key, value in state.items():
        k = key[len("model."):] if key.startswith("model.") else key
        if k in ("backbone.embeddings.weight", "backbone.embedding.weight"):
            out["embed_tokens.weight"] = value
        elif k.startswith("backbone."):
            out[k[len("backbone."):]] = value
        elif k == "lm_head.weight":
            head = value
        else:
            raise ckpt.CheckpointError(f"unexpected key {key!r} in a Mamba checkpoint")
    if "embed_tokens.weight" not in out:
        raise ckpt.CheckpointError("not a Mamba state dict: no backbone.embeddings.weight / "
                                   "backbone.embedding.weight")
    emb = out["embed_tokens.weight"]
    if head is not None and head.shape == emb.shape and torch.equal(head, emb):
        head = None
    return out, head


def _has_weights(directory: Path) -> bool:
    return (directory / "model.safetensors").is_file() or (directory / "pytorch_model.bin").is_file()


def _is_hf(directory: Path, raw: dict | None) -> bool:
    return raw is not None and raw.get("model_type") in ("mamba", "mamba2") and _has_weights(directory)


def _is_mamba_ssm(directory: Path, raw: dict | None) -> bool:
    return (raw is not None and "ssm_cfg" in raw and "d_model" in raw and "n_layer" in raw
            and raw.get("model_type") != "caduceus" and "bidirectional" not in raw
            and _has_weights(directory))


def _load_foreign(make_config):
    def load(directory: Path, raw: dict, overrides: dict) -> Mamba:
        state, head = convert_foreign_state(ckpt.load_state_dict_file(ckpt.weights_file(directory)))
        cfg = make_config(raw, **{"tie_word_embeddings": head is None, **overrides})
        model = Mamba(cfg)
        if head is not None and model.lm_head is not None:
            state["lm_head.weight"] = head
        model.load_converted_state_dict(state, source=directory)
        return model
    return load


LAYOUTS = (
    Layout("mamba-hf", "transformers MambaForCausalLM / Mamba2ForCausalLM: config.json with model_type "
           "'mamba' or 'mamba2' + model.safetensors or pytorch_model.bin", _is_hf,
           _load_foreign(config_from_hf)),
    Layout("mamba-ssm", "mamba_ssm MambaLMHeadModel: config.json with d_model, n_layer, ssm_cfg + "
           "pytorch_model.bin or model.safetensors", _is_mamba_ssm, _load_foreign(config_from_mamba_ssm)),
)

FAMILY = Family(arch="mamba", config=MambaConfig, module=Mamba, presets=PRESETS, layouts=LAYOUTS)
