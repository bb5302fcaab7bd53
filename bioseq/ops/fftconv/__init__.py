"""``fftconv(u[B,D,L], k[D,L], bias[D]) -> y[B,D,L]``: causal long convolution (Hyena's long filter).

Dispatch: CUDA tensors use the Triton kernel when Triton imports, everything else uses the
reference in ``ref.py``. ``BIOSEQ_OPS=ref|triton`` overrides the choice.
"""

from __future__ import annotations

import torch

from bioseq.ops._dispatch import use_triton
from bioseq.ops.fftconv.ref import fast_fft_size, fftconv_ref

__all__ = ["fftconv", "fftconv_ref", "fast_fft_size"]


def fftconv(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Causal convolution of u [B, D, L] with k [D, L], plus ``u * bias[:, None]``; returns [B, D, L]."""
    if use_triton(u):
        from bioseq.ops.fftconv.triton import fftconv_triton

        return fftconv_triton(u, k, bias)
    return fftconv_ref(u, k, bias)
