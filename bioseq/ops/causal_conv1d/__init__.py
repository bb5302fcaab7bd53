"""``causal_conv1d(x[B,D,L], weight[D,K], bias[D], activation) -> y[B,D,L]``: short depthwise conv.

Used by Hyena's short filter, Mamba and xLSTM. Dispatch as in ``bioseq.ops._dispatch``: the Triton
kernel (K <= 8, fp32/fp16/bf16) for CUDA tensors, the reference otherwise; ``BIOSEQ_OPS=ref|triton``
overrides (float64 and K > 8 always take the reference). The reference runs as
``causal_conv1d_shifted`` (K shifted multiply-adds, same formula, several times faster than a CPU
``conv1d`` on the transposed views the models pass) for K <= 8, as ``causal_conv1d_ref`` beyond.
"""

from __future__ import annotations

import torch

from bioseq.ops._dispatch import use_triton
from bioseq.ops.causal_conv1d.ref import causal_conv1d_ref, causal_conv1d_shifted

__all__ = ["causal_conv1d", "causal_conv1d_ref", "causal_conv1d_shifted", "causal_conv1d_backend"]

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_KERNEL_K = 8


def causal_conv1d_backend(x: torch.Tensor, weight: torch.Tensor) -> str:
    """"triton" or "ref": which implementation ``causal_conv1d(x, weight, ...)`` runs."""
    if use_triton(x) and x.dtype in KERNEL_DTYPES and weight.shape[-1] <= MAX_KERNEL_K:
        return "triton"
    return "ref"


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None) -> torch.Tensor:
    """Causal depthwise conv of x [B, D, L] with weight [D, K] (+ bias [D], optional SiLU)."""
    if causal_conv1d_backend(x, weight) == "triton":
        from bioseq.ops.causal_conv1d.triton import causal_conv1d_triton

        return causal_conv1d_triton(x, weight, bias, activation)
    if weight.shape[-1] <= MAX_KERNEL_K:
        return causal_conv1d_shifted(x, weight, bias, activation)
    return causal_conv1d_ref(x, weight, bias, activation)
