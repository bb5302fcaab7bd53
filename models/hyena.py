"""HyenaDNA: a causal long-convolution LM backbone, weight-compatible with the released checkpoints.

Read top to bottom: ``HyenaConfig`` and the presets, then the modules from the inside out
(``HyenaFilter`` -> ``HyenaOperator`` -> ``Block``) and finally the ``HyenaDNA`` backbone.

One block (pre-norm, residual stream ``x`` [B, L, D]):

    x = x + Hyena(LN1(x))
    x = x + MLP(LN2(x))                     # MLP: D -> d_inner -> D, GELU (tanh)

The Hyena operator of order N (released models: N = 2), on u = LN1(x):

    z = in_proj(u)                          # [B, L, (N+1)D]
    z = causal_conv1d(z, short filter)      # depthwise, kernel 3, on all (N+1)D channels
    x0, x1, ..., x_{N-1}, v = split(z)      # each [B, D, L]
    for i = N-1 .. 1:  v = fftconv(v * x_i, k_i) + (v * x_i) * bias_i     # long causal conv
    y = out_proj(v * x0)

The long filters ``k`` [(N-1)D, L] are an implicit MLP of fixed positional features of position t
(``z_t = [t/(l_max-1), cos(2 pi f t/l_max), sin(-2 pi f t/l_max)]``, f = linspace(1e-4, bands-1, bands)),
with one shared ``sin(freq * .)`` activation, times an exponential decay window
``exp(-t |delta_d|) + shift`` per channel. The features are built once for l_max and the first L rows
are used, so a length-L input sees exactly the filter the released model saw.

The filter does not depend on the input. In eval mode (and without gradients for the filter
parameters) it is computed once per (length, dtype, device) and cached; the cache is dropped on
``train()`` and whenever a filter parameter is modified (keyed on the tensors' version counters
and storage pointers).

Official checkpoints (Lightning ``weights.ckpt``, the ``-hf`` port) are the two foreign layouts this
family registers (``FAMILY`` at the end); ``bioseq.models.load_backbone`` reads them, key conversion
lives in ``bioseq.checkpoints``.
"""

from __future__ import annotations

import math
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
from bioseq.ops.causal_conv1d import causal_conv1d
from bioseq.ops.fftconv import fftconv, fftconv_backend, filter_spectrum

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclass
class HyenaConfig(BackboneConfig):
    """HyenaDNA hyperparameters (official field names where the official code has one).

    ``vocab_size`` is the tokenizer's vocabulary (12 for DNA); the embedding has
    ``padded_vocab_size`` rows (a multiple of ``pad_vocab_size_multiple``). ``l_max`` is the longest
    input (tokens, including any special tokens) and fixes the filter's positional features.
    """

    d_model: int = 128
    n_layer: int = 2
    d_inner: int | None = None            # MLP width; None = 4 * d_model
    vocab_size: int = 12
    l_max: int = 1026
    # implicit long filter
    emb_dim: int = 5                      # positional features: t + (emb_dim-1)/2 cos/sin bands
    filter_order: int = 64                # width of the filter MLP
    num_inner_mlps: int = 2               # hidden Linear+Sin layers after the first one
    activation_freq: float = 10.0         # official `w`: initial frequency of the shared Sin
    train_freq: bool = True
    modulate: bool = True
    modulation_shift: float = 0.05        # 0.05 in standalone/HF code (fixtures); 0.0 in the training code
    fast_decay_pct: float = 0.3
    slow_decay_pct: float = 1.5
    decay_target: float = 1e-2
    # operator
    short_filter_order: int = 3
    hyena_order: int = 2
    # regularisation / numerics
    embed_dropout: float = 0.1
    resid_dropout: float = 0.0
    hyena_dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    pad_vocab_size_multiple: int = 8
    initializer_range: float = 0.02
    gradient_checkpointing: bool = False  # recompute each block in backward (memory at long L)
    tie_word_embeddings: bool = True      # False: an own lm_head (the -hf port saves one)
    # bioseq
    arch: str = "hyena"
    alphabet: str = "dna"

    def __post_init__(self):
        if self.d_inner is None:
            self.d_inner = 4 * self.d_model
        if self.emb_dim < 3 or self.emb_dim % 2 == 0:
            raise BioseqError(f"HyenaConfig: emb_dim must be odd and >= 3, got {self.emb_dim}")
        if self.hyena_order < 2:
            raise BioseqError(f"HyenaConfig: hyena_order must be >= 2, got {self.hyena_order}")
        if self.arch != "hyena":
            raise BioseqError(f"HyenaConfig: arch must be 'hyena', got {self.arch!r}")

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.pad_vocab_size_multiple)
        return -(-self.vocab_size // m) * m

    @classmethod
    def from_official(cls, d: dict[str, Any], **overrides) -> HyenaConfig:
        """Map an official config.json: the Lightning/standalone one (``layer`` sub-dict) or the ``-hf`` one.

        The modulation shift is not stored in either: the standalone and HF code use 0.05 (the
        default here, and what the fixtures reproduce), the training code used 0.0; pass
        ``modulation_shift=0.0`` to get the training-time function.
        """
        if d.get("arch") == "hyena":  # already ours
            return cls.from_dict({**d, **overrides})
        if "layer" in d:  # official (hydra) model config
            layer = dict(d["layer"])
            if layer.get("_name_", "hyena") != "hyena":
                raise BioseqError(f"official config: layer {layer.get('_name_')!r} is not a Hyena layer")
            if d.get("attn_layer_idx"):
                raise BioseqError("official config: attention layers (attn_layer_idx) are not supported")
            kw = dict(
                d_model=d["d_model"], n_layer=d["n_layer"], d_inner=d.get("d_inner"),
                vocab_size=d["vocab_size"], l_max=layer["l_max"], emb_dim=layer.get("emb_dim", 3),
                filter_order=layer.get("filter_order", 64), num_inner_mlps=layer.get("num_inner_mlps", 2),
                activation_freq=float(layer.get("w", 1)), modulate=layer.get("modulate", True),
                short_filter_order=layer.get("short_filter_order", 3), hyena_order=layer.get("order", 2),
                embed_dropout=d.get("embed_dropout", 0.1), resid_dropout=d.get("resid_dropout", 0.0),
                hyena_dropout=layer.get("dropout", 0.0),
                layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
                residual_in_fp32=d.get("residual_in_fp32", False),
                pad_vocab_size_multiple=d.get("pad_vocab_size_multiple", 1),
            )
            if "shift" in layer:
                kw["modulation_shift"] = float(layer["shift"])
        elif "max_seq_len" in d:  # the -hf port's HyenaConfig
            kw = dict(
                d_model=d["d_model"], n_layer=d["n_layer"], d_inner=d.get("d_inner"),
                vocab_size=d.get("vocab_size", 12), l_max=d["max_seq_len"], emb_dim=d.get("emb_dim", 3),
                filter_order=d.get("filter_order", 64), num_inner_mlps=d.get("num_inner_mlps", 2),
                activation_freq=float(d.get("activation_freq", 10)), train_freq=d.get("train_freq", True),
                short_filter_order=d.get("short_filter_order", 3), hyena_order=d.get("hyena_order", 2),
                embed_dropout=d.get("embed_dropout", 0.1), hyena_dropout=d.get("hyena_dropout", 0.0),
                layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5), residual_in_fp32=True,
                pad_vocab_size_multiple=d.get("pad_vocab_size_multiple", 8),
                initializer_range=d.get("initializer_range", 0.02),
            )
        else:
            raise BioseqError("config.json is neither a bioseq, an official HyenaDNA nor a -hf HyenaDNA "
                              "config")
        kw.update(overrides)
        return cls(**kw)


def _preset(d_model: int, n_layer: int, l_max: int) -> HyenaConfig:
    return HyenaConfig(d_model=d_model, n_layer=n_layer, d_inner=4 * d_model, l_max=l_max,
                       residual_in_fp32=True, pad_vocab_size_multiple=8)


# Released checkpoints (LongSafari/<name>-seqlen on the Hugging Face Hub). l_max = max length + 2.
PRESETS: dict[str, HyenaConfig] = {
    "hyenadna-tiny-1k": _preset(128, 2, 1026),
    "hyenadna-tiny-1k-d256": _preset(256, 2, 1026),
    "hyenadna-tiny-16k": _preset(128, 2, 16386),
    "hyenadna-small-32k": _preset(256, 4, 32770),
    "hyenadna-medium-160k": _preset(256, 8, 160002),
    "hyenadna-medium-450k": _preset(256, 8, 450002),
    "hyenadna-large-1m": _preset(256, 8, 1_000_002),
    # not released: tiny HyenaDNA shapes for the other alphabets (random weights, for pretraining)
    "hyena-tiny-protein": _preset(128, 2, 1026).replace(alphabet="protein", vocab_size=35),
    "hyena-tiny-smiles": _preset(128, 2, 258).replace(alphabet="smiles", vocab_size=128),
}

# Hub repositories of the released weights (official layout: config.json + weights.ckpt).
HUB_REPOS: dict[str, str] = {
    "hyenadna-tiny-1k": "LongSafari/hyenadna-tiny-1k-seqlen",
    "hyenadna-tiny-1k-d256": "LongSafari/hyenadna-tiny-1k-seqlen-d256",
    "hyenadna-tiny-16k": "LongSafari/hyenadna-tiny-16k-seqlen-d128",
    "hyenadna-small-32k": "LongSafari/hyenadna-small-32k-seqlen",
    "hyenadna-medium-160k": "LongSafari/hyenadna-medium-160k-seqlen",
    "hyenadna-medium-450k": "LongSafari/hyenadna-medium-450k-seqlen",
    "hyenadna-large-1m": "LongSafari/hyenadna-large-1m-seqlen",
}


def get_preset(name: str, **overrides) -> HyenaConfig:
    if name not in PRESETS:
        raise BioseqError(f"unknown HyenaDNA preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)


def _no_decay(p: nn.Parameter) -> nn.Parameter:
    p._no_weight_decay = True
    return p


# --------------------------------------------------------------------------------------------------
# Implicit long filter
# --------------------------------------------------------------------------------------------------


def positional_features(l_max: int, emb_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Filter inputs: z [l_max, emb_dim] = [t, cos bands, sin bands] and t [l_max, 1] in [0, 1].

    Computed in float32 exactly as the reference does (the released buffers are these values).
    """
    t = torch.linspace(0, 1, l_max, dtype=torch.float32)[:, None]
    bands = (emb_dim - 1) // 2
    w = 2 * math.pi * torch.linspace(0, l_max - 1, l_max, dtype=torch.float32)[:, None] / l_max
    f = torch.linspace(1e-4, bands - 1, bands, dtype=torch.float32)[None, :]
    zc = torch.exp(-1j * f * w)
    return torch.cat([t, zc.real, zc.imag], dim=-1), t


def modulation_deltas(channels: int, fast_pct: float, slow_pct: float, target: float) -> torch.Tensor:
    """Per-channel decay rates [channels]: from log(target)/slow_pct to log(target)/fast_pct."""
    return torch.linspace(math.log(target) / slow_pct, math.log(target) / fast_pct, channels,
                          dtype=torch.float32)


class HyenaFilter(nn.Module):
    """Implicit filter: ``forward(L) -> k [channels, L]`` (no dependence on the input).

    Parameters: ``linears`` (emb_dim -> order -> ... -> channels, last without bias), ``freq`` [order]
    (one Sin frequency shared by every hidden layer) and ``bias`` [channels] (the fftconv skip weight,
    ``y = k * u + bias * u``). Buffers ``z``, ``t``, ``deltas`` are functions of the config and are not
    saved (they are recomputed; loading checks that a checkpoint's copies agree).
    """

    def __init__(self, config: HyenaConfig, channels: int):
        super().__init__()
        c = config
        self.channels, self.l_max = channels, c.l_max
        self.modulate, self.shift = c.modulate, c.modulation_shift
        z, t = positional_features(c.l_max, c.emb_dim)
        self.register_buffer("z", z, persistent=False)                 # [l_max, emb_dim]
        self.register_buffer("t", t, persistent=False)                 # [l_max, 1]
        self.register_buffer("deltas", modulation_deltas(channels, c.fast_decay_pct, c.slow_decay_pct,
                                                         c.decay_target), persistent=False)  # [channels]
        dims = [c.emb_dim] + [c.filter_order] * (c.num_inner_mlps + 1)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.linears.append(nn.Linear(c.filter_order, channels, bias=False))
        freq = torch.full((c.filter_order,), float(c.activation_freq))
        if c.train_freq:
            self.freq = nn.Parameter(freq)
        else:
            self.register_buffer("freq", freq)
        self.bias = nn.Parameter(torch.randn(channels))
        for p in self.parameters():
            _no_decay(p)
        self.cache_enabled = True
        self._cache: dict[tuple, torch.Tensor] = {}
        self._cache_stamp: tuple = ()

    def compute(self, L: int) -> torch.Tensor:
        """The filter for the first L positions, [channels, L], in the parameters' dtype (no autocast)."""
        dtype = self.linears[0].weight.dtype
        with torch.autocast(self.z.device.type, enabled=False):
            h = self.z[:L].to(dtype)
            for lin in self.linears[:-1]:
                h = torch.sin(self.freq.to(dtype) * lin(h))
            h = self.linears[-1](h)                                      # [L, channels]
            if self.modulate:
                decay = torch.exp(-self.t[:L].to(dtype) * self.deltas.to(dtype).abs())
                h = h * (decay + self.shift)
        return h.transpose(0, 1)

    def _stamp(self) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in [*self.parameters(), *self.buffers()])

    def _cacheable(self) -> bool:
        return self.cache_enabled and not self.training and not (
            torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))

    def _cached(self, what: str, L: int, make):
        stamp = self._stamp()
        if stamp != self._cache_stamp:
            self._cache, self._cache_stamp = {}, stamp
        key = (what, L, self.linears[0].weight.dtype, self.z.device, torch.is_inference_mode_enabled())
        if key not in self._cache:
            if len(self._cache) >= 8:                                   # a few lengths at most
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = make()
        return self._cache[key]

    def forward(self, L: int) -> torch.Tensor:
        if not self._cacheable():
            return self.compute(L)
        return self._cached("k", L, lambda: self.compute(L))

    def spectrum(self, L: int) -> torch.Tensor | None:
        """``filter_spectrum(self(L), L)`` [channels, n // 2 + 1] from the eval-mode cache; None when the
        filter is not cacheable (training, grads enabled, cache off), so callers fall back to k."""
        if not self._cacheable():
            return None
        return self._cached("k_f", L, lambda: filter_spectrum(self.forward(L), L))

    def clear_cache(self) -> None:
        self._cache, self._cache_stamp = {}, ()

    def train(self, mode: bool = True):
        self.clear_cache()
        return super().train(mode)

    def _apply(self, fn, recurse=True):                                # .to() / .cuda() / .half()
        self.clear_cache()
        return super()._apply(fn, recurse)


# --------------------------------------------------------------------------------------------------
# Hyena operator, MLP, block
# --------------------------------------------------------------------------------------------------


class HyenaOperator(nn.Module):
    """Order-N Hyena mixer: [B, L, D] -> [B, L, D] (causal)."""

    def __init__(self, config: HyenaConfig):
        super().__init__()
        d, n = config.d_model, config.hyena_order
        self.d_model, self.order = d, n
        self.in_proj = nn.Linear(d, (n + 1) * d)
        self.short_filter = nn.Conv1d((n + 1) * d, (n + 1) * d, config.short_filter_order,
                                      groups=(n + 1) * d)               # weight [(N+1)D, 1, K]
        self.filter_fn = HyenaFilter(config, (n - 1) * d)
        self.dropout = nn.Dropout(config.hyena_dropout)
        self.out_proj = nn.Linear(d, d)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        B, L, D = u.shape
        z = self.in_proj(u).transpose(1, 2)                              # [B, (N+1)D, L]
        z = causal_conv1d(z, self.short_filter.weight.squeeze(1), self.short_filter.bias)
        *xs, v = z.split(D, dim=1)                                       # x0..x_{N-1}, v: [B, D, L]
        k = self.filter_fn(L).view(self.order - 1, D, L)                 # [N-1, D, L]
        bias = self.filter_fn.bias.view(self.order - 1, D)
        k_f = self.filter_fn.spectrum(L) if fftconv_backend(v, k[0]) == "ref" else None
        for i, x_i in enumerate(reversed(xs[1:])):
            v = self.dropout(v * x_i)
            v = fftconv(v, k[i], bias[i], None if k_f is None else k_f.view(self.order - 1, D, -1)[i])
        y = (v * xs[0]).transpose(1, 2)                                  # [B, L, D]
        return self.out_proj(y)


class _GeluLinear(torch.autograd.Function):
    """``F.linear(gelu_tanh(h), W, b)`` that saves h only and recomputes the GELU in backward.

    Plain autograd keeps both h and gelu(h) ([B, L, d_inner] each) until backward; this keeps one.
    """

    @staticmethod
    def forward(ctx, h, weight, bias):
        ctx.save_for_backward(h, weight)
        return F.linear(F.gelu(h, approximate="tanh"), weight, bias)

    @staticmethod
    def backward(ctx, grad):
        h, weight = ctx.saved_tensors
        grad2d = grad.reshape(-1, grad.shape[-1])
        a = F.gelu(h, approximate="tanh")
        grad_w = grad2d.T @ a.reshape(-1, a.shape[-1])
        del a  # free the recomputed activation before the [B, L, d_inner] input gradient exists
        grad_b = grad2d.sum(0)
        grad_h = torch.ops.aten.gelu_backward(grad @ weight, h, approximate="tanh")
        return grad_h, grad_w, grad_b


def _autocast_enabled(x: torch.Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


class MLP(nn.Module):
    """``fc2(gelu_tanh(fc1(x)))``; in training the GELU is recomputed in backward to save memory."""

    def __init__(self, config: HyenaConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, config.d_inner)
        self.fc2 = nn.Linear(config.d_inner, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if torch.is_grad_enabled() and not _autocast_enabled(h) and h.dtype == self.fc2.weight.dtype:
            return _GeluLinear.apply(h, self.fc2.weight, self.fc2.bias)
        return self.fc2(F.gelu(h, approximate="tanh"))


class Block(nn.Module):
    """``x += drop(Hyena(LN1(x))); x += drop(MLP(LN2(x)))``; the residual stays fp32 when asked."""

    def __init__(self, config: HyenaConfig):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.norm1 = nn.LayerNorm(config.d_model, eps=eps)
        self.mixer = HyenaOperator(config)
        self.norm2 = nn.LayerNorm(config.d_model, eps=eps)
        self.mlp = MLP(config)
        self.dropout1 = nn.Dropout(config.resid_dropout)
        self.dropout2 = nn.Dropout(config.resid_dropout)
        self.residual_in_fp32 = config.residual_in_fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual_in_fp32 and x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        x = x + self.dropout1(self.mixer(self.norm1(x.to(self.norm1.weight.dtype))))
        x = x + self.dropout2(self.mlp(self.norm2(x.to(self.norm2.weight.dtype))))
        return x


# --------------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------------


class HyenaDNA(Backbone):
    """HyenaDNA backbone: token ids [B, L] -> hidden states [B, L, d_model] (final LayerNorm applied).

    Causal: position t sees tokens 0..t only, so right padding never changes a real token's output.
    Left padding is processed as ordinary tokens (as in the reference); ``attention_mask`` is
    accepted for interface compatibility and does not change the computation. No recurrent state
    (the long convolution has none), so ``supports_state`` is False.
    """

    arch = "hyena"

    def __init__(self, config: HyenaConfig):
        super().__init__(config)
        self.d_model = config.d_model
        self.embed_tokens = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.drop_emb = nn.Dropout(config.embed_dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.make_lm_head(config.d_model, config.padded_vocab_size)
        self.reset_parameters()

    @property
    def max_length(self) -> int:
        return int(self.config.l_max)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference initialisation: N(0, 0.02) linears/embedding, zero biases, output projections
        scaled by 1/sqrt(2 n_layer), filter skip bias ~ N(0, 1), Sin frequency = activation_freq."""
        std = self.config.initializer_range
        for m in self.modules():  # (an untied lm_head is a bias-free Linear: N(0, std) as well)
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for block in self.layers:
            for lin in (block.mixer.out_proj, block.mlp.fc2):
                nn.init.normal_(lin.weight, std=std / math.sqrt(2 * self.config.n_layer))
            filt = block.mixer.filter_fn
            filt.bias.normal_()
            filt.freq.fill_(float(self.config.activation_freq))

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, output_hidden_states: bool = False, state=None):
        """Args: input_ids [B, L] (or inputs_embeds [B, L, D]); attention_mask [B, L] (unused, see class doc).

        Returns hidden [B, L, D]; with ``output_hidden_states`` also a tuple of n_layer + 1 tensors
        [B, L, D]: the embeddings and the residual stream after each block (before ``ln_f``).
        """
        self.check_state_arg(state)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        L = x.shape[1]
        if L > self.config.l_max:
            raise BioseqError(f"HyenaDNA: input length {L} exceeds l_max={self.config.l_max} of this model")
        x = self.drop_emb(x)
        states = [x]
        use_ckpt = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.layers:
            x = checkpoint(block, x, use_reentrant=False) if use_ckpt else block(x)
            if output_hidden_states:
                states.append(x)
        h = self.ln_f(x.to(self.ln_f.weight.dtype))
        return (h, tuple(states)) if output_hidden_states else h

    # --- conveniences -----------------------------------------------------------------------------

    def enable_filter_cache(self, enabled: bool = True) -> None:
        """Switch the eval-mode implicit-filter cache on or off (on by default)."""
        for block in self.layers:
            block.mixer.filter_fn.cache_enabled = enabled
            block.mixer.filter_fn.clear_cache()

    def load_converted_state_dict(self, state: dict[str, torch.Tensor], *, strict: bool = True,
                                  source: object = None) -> None:
        """``load_state_dict`` for bioseq-named tensors; a checkpoint's copies of the recomputed buffers
        (``filter_fn.z/t/deltas``) must agree with ours (they are config-determined constants)."""
        state = dict(state)
        own_buffers = {k: v for k, v in self.named_buffers() if k.split(".")[-1] in ("z", "t", "deltas")}
        for key in [k for k in state if k in own_buffers]:
            given, ours = state.pop(key), own_buffers[key]
            given = given.reshape(ours.shape) if given.numel() == ours.numel() else given
            if given.shape != ours.shape or (given.float() - ours.float()).abs().max() > 1e-5:
                raise BioseqError(f"{source}: {key} differs from the value implied by config.json "
                                  "(trained positional features are not supported)")
        super().load_converted_state_dict(state, strict=strict, source=source)


# --------------------------------------------------------------------------------------------------
# Official layouts and the family record
# --------------------------------------------------------------------------------------------------


def _is_official(directory: Path, raw: dict | None) -> bool:
    """The HyenaDNA repository's hydra model config (``layer`` sub-dict) + a Lightning ``.ckpt``."""
    return raw is not None and isinstance(raw.get("layer"), dict) and any(directory.glob("*.ckpt"))


def _is_hf(directory: Path, raw: dict | None) -> bool:
    """The ``-hf`` port: its HyenaConfig json (``max_seq_len``) + pytorch_model.bin / model.safetensors."""
    return raw is not None and (raw.get("model_type") == "hyenadna" or "max_seq_len" in raw) and (
        (directory / "pytorch_model.bin").is_file() or (directory / "model.safetensors").is_file())


def _load_official(directory: Path, raw: dict, overrides: dict) -> HyenaDNA:
    state, extras = ckpt.convert_hyena_official(ckpt.load_state_dict_file(ckpt.weights_file(directory)),
                                                return_extras=True)
    untied = "lm_head.weight" in extras
    overrides = {"tie_word_embeddings": not untied, **overrides}
    model = HyenaDNA(HyenaConfig.from_official(raw, **overrides))
    if untied and not model.tie_word_embeddings:
        state["lm_head.weight"] = extras["lm_head.weight"]
    model.load_converted_state_dict(state, source=directory)
    return model


LAYOUTS = (
    Layout("hyena-official", "HyenaDNA repository: hydra config.json with 'layer' + Lightning weights.ckpt",
           _is_official, _load_official),
    Layout("hyena-hf", "HyenaDNA -hf port: config.json with 'max_seq_len' + pytorch_model.bin or "
           "model.safetensors", _is_hf, _load_official),
)

FAMILY = Family(arch="hyena", config=HyenaConfig, module=HyenaDNA, presets=PRESETS, layouts=LAYOUTS,
                hub_repos=HUB_REPOS)
