"""Reference long convolution: the spec of ``fftconv`` and its CPU path.

``y[b, d, t] = sum_{s<=t} k[d, s] * u[b, d, t - s] + bias[d] * u[b, d, t]`` for ``t < L``: the first
L outputs of the linear (not circular) convolution, computed with real FFTs of a size >= L + Lk - 1
so that nothing wraps around. Half precision inputs are computed in float32; float64 stays float64.
"""

from __future__ import annotations

import torch


def fast_fft_size(n: int) -> int:
    """Smallest integer >= n whose only prime factors are 2, 3 and 5 (fast for pocketfft and cuFFT)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def fftconv_ref(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Causal long convolution.

    Args:
        u: input, [B, D, L].
        k: filter, [D, Lk] (Lk may differ from L; taps beyond L never reach an output).
        bias: per-channel skip weight, [D], or None.
    Returns:
        y: [B, D, L] in u's dtype.
    """
    L = u.shape[-1]
    k = k[..., :L]
    work = torch.float64 if u.dtype == torch.float64 else torch.float32
    n = fast_fft_size(L + k.shape[-1] - 1)
    uf = torch.fft.rfft(u.to(work), n=n)
    kf = torch.fft.rfft(k.to(work), n=n)
    y = torch.fft.irfft(uf * kf, n=n)[..., :L]
    if bias is not None:
        y = torch.addcmul(y, u.to(work), bias.to(work).unsqueeze(-1))  # one temporary instead of two
    return y.to(u.dtype)
