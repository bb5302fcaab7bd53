"""``fftconv(u[B,D,L], k[D,L], bias[D]) -> y[B,D,L]``: causal long convolution (Hyena's long filter).

Two implementations with one contract (``ref.py``'s ``fftconv_ref`` is the spec):
- ``ref``: real FFTs of a fast size >= L + Lk - 1 (pocketfft on CPU, cuFFT on GPU): O(L log L) work,
  memory-bound on a GPU (~96 bytes moved per element of u in its unfused passes, benchmarks/RESULTS.md).
  It runs as ``fftconv_spectral`` (same formula, hand-written backward that keeps less and does fewer
  FFTs; an optional precomputed filter spectrum ``k_f`` skips the filter FFT).
- ``triton``: a blocked causal Toeplitz convolution on tensor cores (``triton.py``): O(L * Lk) work but
  only one read of u and one write of y, so it wins while the filter is short.

Dispatch (``fftconv_backend``): ``BIOSEQ_OPS=ref`` -> ref; ``BIOSEQ_OPS=triton`` -> kernel whenever the
dtype allows (fp32/fp16/bf16); default ``auto`` -> kernel for CUDA tensors with Triton installed when
the number of taps that reach an output, min(Lk, L), is at most ``max_direct_taps(dtype)`` (2048 for
fp32, 4096 for fp16/bf16; override with ``BIOSEQ_FFTCONV_MAX_TAPS``), else ref. The thresholds are
where the roofline estimate in benchmarks/RESULTS.md puts the crossover, with a margin (direct:
~2*B*D*L*Lk tensor-core FLOPs, B*D*L^2 when Lk = L, x3 for fp32's tf32x3, x2 for 16-bit's split
filter; ref: ~96 B of HBM traffic per element). Not measured yet: re-tune with ``benchmarks/ops.py``.
"""

from __future__ import annotations

import os

import torch

from bioseq.errors import BioseqError
from bioseq.ops._dispatch import ops_mode, use_triton
from bioseq.ops.fftconv.ref import fast_fft_size, fftconv_ref, fftconv_spectral, filter_spectrum

__all__ = ["fftconv", "fftconv_ref", "fftconv_spectral", "filter_spectrum", "fast_fft_size",
           "fftconv_backend", "max_direct_taps"]

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def max_direct_taps(dtype: torch.dtype) -> int:
    """Longest filter (taps reaching an output) sent to the direct kernel in ``auto`` mode."""
    env = os.environ.get("BIOSEQ_FFTCONV_MAX_TAPS")
    if env:
        try:
            return int(env)
        except ValueError:
            raise BioseqError(f"BIOSEQ_FFTCONV_MAX_TAPS={env!r}: expected an integer") from None
    return 2048 if dtype == torch.float32 else 4096


def fftconv_backend(u: torch.Tensor, k: torch.Tensor) -> str:
    """"triton" or "ref": which implementation ``fftconv(u, k, ...)`` runs (see the module docstring)."""
    if not use_triton(u) or u.dtype not in KERNEL_DTYPES:
        return "ref"
    if ops_mode() == "triton":
        return "triton"
    return "triton" if min(k.shape[-1], u.shape[-1]) <= max_direct_taps(u.dtype) else "ref"


def fftconv(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None,
            k_f: torch.Tensor | None = None) -> torch.Tensor:
    """Causal convolution of u [B, D, L] with k [D, Lk], plus ``u * bias[:, None]``; returns [B, D, L].

    ``y[b, d, t] = sum_{s <= t} k[d, s] u[b, d, t - s] + bias[d] u[b, d, t]``; taps at s >= L are unused.
    ``k_f``: optional ``filter_spectrum(k, L)`` for a filter without grad (used by the FFT path only).
    """
    if fftconv_backend(u, k) == "triton":
        from bioseq.ops.fftconv.triton import fftconv_triton

        return fftconv_triton(u, k, bias)
    return fftconv_spectral(u, k, bias, k_f)
