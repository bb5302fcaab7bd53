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


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else (fp32, fp16, bf16) is computed in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


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
    work = _work_dtype(u)
    n = fast_fft_size(L + k.shape[-1] - 1)
    uf = torch.fft.rfft(u.to(work), n=n)
    kf = torch.fft.rfft(k.to(work), n=n)
    y = torch.fft.irfft(uf * kf, n=n)[..., :L]
    if bias is not None:
        y = torch.addcmul(y, u.to(work), bias.to(work).unsqueeze(-1))  # one temporary instead of two
    return y.to(u.dtype)


def filter_spectrum(k: torch.Tensor, L: int) -> torch.Tensor:
    """``rfft`` of the first L taps of k [..., Lk] at the FFT size ``fftconv_spectral`` uses for length L.

    Returns a complex tensor [..., n // 2 + 1] (complex64, or complex128 for float64 k). Precompute it
    once for a fixed filter (e.g. Hyena's implicit filter in eval mode) and pass it as ``k_f``.
    """
    k = k[..., :L]
    return torch.fft.rfft(k.to(_work_dtype(k)), n=fast_fft_size(L + k.shape[-1] - 1))


class _SpectralConv(torch.autograd.Function):
    """``fftconv_ref`` with a hand-written backward (see ``fftconv_spectral``)."""

    @staticmethod
    def forward(ctx, u, k, bias, k_f):
        L, Lk = u.shape[-1], k.shape[-1]
        work = _work_dtype(u)
        n = fast_fft_size(L + Lk - 1)
        if k_f is None:
            k_f = filter_spectrum(k.to(work), L)
        uw = u.to(work)
        u_f = torch.fft.rfft(uw, n=n)
        u_f *= k_f                                                       # in place: one buffer fewer
        y = torch.fft.irfft(u_f, n=n)[..., :L]
        del u_f
        # addcmul (or contiguous) leaves y compact rather than a view into the [B, D, n] FFT buffer.
        y = torch.addcmul(y, uw, bias.to(work).unsqueeze(-1)) if bias is not None else y.contiguous()
        ctx.save_for_backward(u, k_f, bias)
        ctx.shapes = (n, Lk, k.dtype, work)
        return y.to(u.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        u, k_f, bias = ctx.saved_tensors
        n, Lk, k_dtype, work = ctx.shapes
        L = u.shape[-1]
        g = grad_y.to(work)
        g_f = torch.fft.rfft(g, n=n)                                     # [B, D, n/2+1]
        grad_u = grad_k = grad_bias = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            uw = u.to(work)
            if ctx.needs_input_grad[1]:
                # dy[t]/dk[j] = u[t - j]: sum over the batch in frequency space, one inverse FFT per channel.
                cross = torch.fft.rfft(uw, n=n)
                torch.mul(g_f, cross.conj(), out=cross)                  # g_f * conj(u_f), in place
                if cross.dim() == 3:
                    cross = cross.sum(0)
                grad_k = torch.fft.irfft(cross, n=n)[..., :Lk].to(k_dtype)
                del cross
            if bias is not None and ctx.needs_input_grad[2]:
                grad_bias = (g * uw).sum(dim=(0, 2)).to(bias.dtype)
        if ctx.needs_input_grad[0]:
            # dy[t]/du[s] = k[t - s]: a correlation with k, i.e. a product with conj(k_f).
            g_f *= k_f.conj()
            grad_u = torch.fft.irfft(g_f, n=n)[..., :L]
            grad_u = (torch.addcmul(grad_u, g, bias.to(work).unsqueeze(-1)) if bias is not None
                      else grad_u.contiguous())
            grad_u = grad_u.to(u.dtype)
        return grad_u, grad_k, grad_bias, None


def fftconv_spectral(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None,
                     k_f: torch.Tensor | None = None) -> torch.Tensor:
    """``fftconv_ref``'s result with a cheaper backward; the CPU / non-kernel path of ``fftconv``.

    Same arguments and output as ``fftconv_ref`` (u [B, D, L], k [D, Lk], bias [D] or None), plus an
    optional precomputed ``k_f = filter_spectrum(k, L)`` to skip the filter FFT. Autograd through the
    FFTs keeps the input spectrum (twice u's size) and differentiates ``rfft`` with a full complex FFT;
    this backward keeps only u and the filter spectrum, recomputes u's spectrum, and needs three real
    FFTs over [B, D] plus one inverse over [D] (the batch summed in frequency space) for the filter
    gradient. Gradients of k_f itself are not propagated: pass it only for a filter without grad.
    """
    L = u.shape[-1]
    k = k[..., :L]
    if k_f is not None and k_f.shape[-1] != fast_fft_size(L + k.shape[-1] - 1) // 2 + 1:
        raise ValueError(f"fftconv: k_f has {k_f.shape[-1]} frequencies; expected filter_spectrum(k, {L})")
    return _SpectralConv.apply(u, k, bias, k_f)
