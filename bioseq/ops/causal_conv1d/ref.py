"""Reference causal depthwise convolution: the spec of ``causal_conv1d`` and its CPU path.

``y[b, d, t] = act(bias[d] + sum_{j<K} w[d, j] * x[b, d, t - (K - 1) + j])`` with x = 0 before t = 0,
i.e. PyTorch's ``Conv1d(groups=D, padding=K-1)`` truncated to the first L outputs (weight [D, K]
is the Conv1d weight [D, 1, K] squeezed; the last tap multiplies the current position).

``causal_conv1d_ref`` is the spec (``F.conv1d``). ``causal_conv1d_shifted`` computes the same formula
as K shifted multiply-adds (up to float rounding: the taps are summed in another order) and is what
runs on CPU for K <= 8: Hyena and Mamba call the conv on a transposed view ``[B, L, C] -> [B, C, L]``
of a linear layer's output, where a CPU ``conv1d`` with groups=C and K = 3 or 4 is slow
(benchmarks/RESULTS.md: 2x in forward and backward at L <= 1k). x is copied once unless its positions
are already adjacent in memory (a channel-major [D, B, L] buffer is read in place), and every
tap is one multiply-add over a shifted slice; the backward is written out the same way (K shifted
multiply-adds for dx, K dot products for dweight) and keeps x only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_activation(activation: str | None) -> None:
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d: activation must be None or 'silu', got {activation!r}")


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      activation: str | None = None) -> torch.Tensor:
    """Causal depthwise conv.

    Args:
        x: [B, D, L]; weight: [D, K]; bias: [D] or None; activation: None or "silu".
    Returns:
        [B, D, L] in x's dtype.
    """
    _check_activation(activation)
    L, K = x.shape[-1], weight.shape[-1]
    y = F.conv1d(x, weight.unsqueeze(1).to(x.dtype), None if bias is None else bias.to(x.dtype),
                 padding=K - 1, groups=x.shape[1])[..., :L]
    return F.silu(y) if activation is not None else y


def _conv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Pre-activation output; x [B, D, L] contiguous, w [D, K] and bias [D] in x's dtype."""
    L, K = x.shape[-1], w.shape[-1]
    if bias is None:
        y = x * w[:, K - 1 :]                                            # the current position's tap
    else:
        y = torch.addcmul(bias.unsqueeze(-1), x, w[:, K - 1 :])
    for j in range(K - 1):
        shift = K - 1 - j                                                # tap j looks `shift` steps back
        if shift < L:
            y[..., shift:].addcmul_(x[..., : L - shift], w[:, j : j + 1])
    return y


def _unit_stride(x: torch.Tensor) -> torch.Tensor:
    """x itself when its positions are adjacent in memory (any order of B and D: a channel-major [D, B, L]
    buffer seen as [B, D, L] needs no copy), else a contiguous copy."""
    return x if x.stride(-1) == 1 else x.contiguous()


class _ShiftedConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu: bool):
        x = _unit_stride(x)
        w = weight.to(x.dtype)
        y = _conv(x, w, None if bias is None else bias.to(x.dtype))
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = silu
        return F.silu(y) if silu else y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, bias = ctx.saved_tensors
        L, K = x.shape[-1], weight.shape[-1]
        w = weight.to(x.dtype)
        g = _unit_stride(grad_y)
        if ctx.silu:  # the pre-activation z is recomputed, not saved
            z = _conv(x, w, None if bias is None else bias.to(x.dtype))
            g = torch.ops.aten.silu_backward(g, z)
            del z
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # y[t] gets w[j] x[t - shift_j], so dx[s] = sum_j w[j] g[s + shift_j].
            grad_x = g * w[:, K - 1 :]
            for j in range(K - 1):
                shift = K - 1 - j
                if shift < L:
                    grad_x[..., : L - shift].addcmul_(g[..., shift:], w[:, j : j + 1])
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32  # weight-gradient sums
        if ctx.needs_input_grad[1]:
            cols = []
            for j in range(K):
                shift = K - 1 - j
                if shift >= L:
                    cols.append(g.new_zeros(g.shape[1], dtype=acc))
                    continue
                prod = g[..., shift:].to(acc) * x[..., : L - shift].to(acc)
                cols.append(prod.sum(dim=(0, 2)))
            grad_w = torch.stack(cols, dim=1).to(weight.dtype)
        if bias is not None and ctx.needs_input_grad[2]:
            grad_b = g.to(acc).sum(dim=(0, 2)).to(bias.dtype)
        return grad_x, grad_w, grad_b, None


def causal_conv1d_shifted(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                          activation: str | None = None) -> torch.Tensor:
    """Causal depthwise conv, ``y[b, d, t] = act(bias[d] + sum_j w[d, j] x[b, d, t - (K - 1) + j])``.

    Args:
        x: [B, D, L] (any strides); weight: [D, K]; bias: [D] or None; activation: None or "silu".
    Returns:
        [B, D, L] in x's dtype (weight and bias are rounded to x's dtype, as in the ref), laid out like x
        when x's last dimension has unit stride (a channel-major input gives a channel-major output),
        contiguous otherwise.
    """
    _check_activation(activation)
    return _ShiftedConv.apply(x, weight, bias, activation is not None)
