"""``causal_conv1d(x[B,D,L], weight[D,K], bias[D], activation) -> y[B,D,L]``: short depthwise conv.

Used by Hyena's short filter, Mamba and xLSTM. Dispatch as in ``bioseq.ops._dispatch``.
"""

from __future__ import annotations

import torch

from bioseq.ops._dispatch import use_triton
from bioseq.ops.causal_conv1d.ref import causal_conv1d_ref

__all__ = ["causal_conv1d", "causal_conv1d_ref"]


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None) -> torch.Tensor:
    """Causal depthwise conv of x [B, D, L] with weight [D, K] (+ bias [D], optional SiLU)."""
    if use_triton(x):
        from bioseq.ops.causal_conv1d.triton import causal_conv1d_triton

        return causal_conv1d_triton(x, weight, bias, activation)
    return causal_conv1d_ref(x, weight, bias, activation)
