"""Reference causal depthwise convolution: the spec of ``causal_conv1d`` and its CPU path.

``y[b, d, t] = act(bias[d] + sum_{j<K} w[d, j] * x[b, d, t - (K - 1) + j])`` with x = 0 before t = 0,
i.e. PyTorch's ``Conv1d(groups=D, padding=K-1)`` truncated to the first L outputs (weight [D, K]
is the Conv1d weight [D, 1, K] squeezed; the last tap multiplies the current position).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      activation: str | None = None) -> torch.Tensor:
    """Causal depthwise conv.

    Args:
        x: [B, D, L]; weight: [D, K]; bias: [D] or None; activation: None or "silu".
    Returns:
        [B, D, L] in x's dtype.
    """
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d: activation must be None or 'silu', got {activation!r}")
    L, K = x.shape[-1], weight.shape[-1]
    y = F.conv1d(x, weight.unsqueeze(1).to(x.dtype), None if bias is None else bias.to(x.dtype),
                 padding=K - 1, groups=x.shape[1])[..., :L]
    return F.silu(y) if activation is not None else y
