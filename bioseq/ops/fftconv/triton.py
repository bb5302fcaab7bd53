"""Triton kernels for ``fftconv``: a blocked causal Toeplitz convolution on tensor cores.

Despite the op's name this path does not use an FFT. It computes the convolution directly, as a sum
of small matrix products, which suits short and medium filters on a GPU (the dispatcher in
``__init__.py`` sends long filters to the cuFFT reference; see ``benchmarks/RESULTS.md``).

The idea. Cut time into blocks of C steps. Output block i of channel d is

    y_i = sum_{m >= 0} T_m @ u_{i-m},        T_m[p, q] = k[d, m*C + p - q]   (0 where the tap is < 0 or >= Lk)

T_m depends only on the block offset m, not on i or the batch item, so one [C, C] Toeplitz tile built
from k serves every (b, i) column at once: per offset m a program does ``acc[C, BN] += T_m @ U[C, BN]``
where column n = i * B + b holds the input block u[b, d, (i-m)*C : (i-m+1)*C]. The bias is a tap
at offset 0, folded into the diagonal of T_0. Cost per channel: about B * L * Lk_eff multiply-adds
(Lk_eff = min(Lk, L); half of B * L^2 when Lk = L), i.e. O(L^2) for a full-length filter against
O(L log L) for the FFT, plus B * L * Lk_eff / BN gathers of k (cache hits, 1/BN of the arithmetic).

Gradients (one launch each):
- grad_u[s] = sum_{t >= s} k[t - s] gy[t] + bias * gy[s]: the same kernel run on reversed time.
- grad_k[r] = sum_b sum_t gy[b, t] u[b, t - r]: the roles of the two signals swap. With r = m*C + p
  and t = (m + j)*C + q, ``gk_m = sum_j U_j @ gy_{m+j}`` where U_j[p, q] = u[b, j*C + q - p] is a Toeplitz
  tile of u; the k blocks m are the matrix columns. grad_bias = grad_k[0] (bias is the offset-0 tap).

Precision: accumulation is always fp32. fp32 inputs use ``tf32x3`` dots (about fp32 accuracy on tensor
cores). fp16/bf16 inputs are exact in their own format; the fp32 filter is split into a 16-bit high
and low part (two dots), so k keeps 16 (bf16) or 22 (fp16) significant bits instead of 8 or 11.
float64 is not handled here: the dispatcher sends it to the reference.

On CPU the kernels run only under Triton's interpreter, and ``TRITON_INTERPRET=1`` must be set before
``triton`` is first imported (triton.language's own helpers are decorated at import); the tests
handle this (tests/ops/test_fftconv.py).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _toeplitz_conv_kernel(
    x_ptr, k_ptr, bias_ptr, y_ptr,
    B, L, LK,
    sxb, sxd, sxl, skd, skl, syb, syd, syl,
    HAS_BIAS: tl.constexpr, REVERSE: tl.constexpr, SPLIT: tl.constexpr,
    C: tl.constexpr, BN: tl.constexpr,
):
    """y[b, d, t] = sum_{s<=t} k[d, t-s] x[b, d, s] (+ bias[d] x[b, d, t]); REVERSE runs time backwards.

    Grid: (cdiv(B * cdiv(L, C), BN), D). LK = number of taps used (<= L).
    """
    pid_n = tl.program_id(0)
    d = tl.program_id(1).to(tl.int64)  # 64-bit offsets: B * D * L may pass 2**31
    nblk = tl.cdiv(L, C)
    p = tl.arange(0, C)
    q = tl.arange(0, C)
    # Column n = i * B + b: a tile holds a few consecutive blocks i of every batch item, so the offsets
    # m it needs (m <= i, and T_m is zero once m*C - (C-1) >= LK) are nearly the same for all columns.
    n = pid_n * BN + tl.arange(0, BN)
    n_ok = n < B * nblk
    i = n // B
    b = (n % B).to(tl.int64)
    i_max = (tl.minimum(pid_n * BN + BN, B * nblk) - 1) // B
    m_hi = tl.minimum(i_max, (LK + C - 2) // C)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d).to(tl.float32)
    acc = tl.zeros((C, BN), dtype=tl.float32)
    for m in range(0, m_hi + 1):
        r = m * C + p[:, None] - q[None, :]
        taps = tl.load(k_ptr + d * skd + r * skl, mask=(r >= 0) & (r < LK), other=0.0).to(tl.float32)
        if HAS_BIAS:
            taps = tl.where(r == 0, taps + bias, taps)
        j = i - m
        src = j[None, :] * C + q[:, None]
        ok = n_ok[None, :] & (j[None, :] >= 0) & (src < L)
        if REVERSE:
            src = L - 1 - src
        xb = tl.load(x_ptr + b[None, :] * sxb + d * sxd + src * sxl, mask=ok, other=0.0)
        if SPLIT:
            hi = taps.to(xb.dtype)
            lo = (taps - hi.to(tl.float32)).to(xb.dtype)
            acc = tl.dot(hi, xb, acc)
            acc = tl.dot(lo, xb, acc)
        else:
            acc = tl.dot(taps, xb.to(tl.float32), acc, input_precision="tf32x3")
    t = i[None, :] * C + p[:, None]
    ok = n_ok[None, :] & (t < L)
    if REVERSE:
        t = L - 1 - t
    tl.store(y_ptr + b[None, :] * syb + d * syd + t * syl, acc.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _toeplitz_corr_kernel(
    u_ptr, g_ptr, gk_ptr,
    B, L, LK,
    sub, sud, sul, sgb, sgd, sgl, skd,
    FP32: tl.constexpr, C: tl.constexpr, BM: tl.constexpr,
):
    """gk[d, r] = sum_b sum_t g[b, d, t] u[b, d, t - r] for r < LK, written in fp32.

    Grid: (D, cdiv(cdiv(LK, C), BM)); rows of a tile are r mod C, columns are the k blocks m.
    """
    d = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    nblk = tl.cdiv(L, C)
    p = tl.arange(0, C)
    q = tl.arange(0, C)
    m = pid_m * BM + tl.arange(0, BM)
    acc = tl.zeros((C, BM), dtype=tl.float32)
    u_row = u_ptr + d * sud  # advanced by one batch item per iteration (64-bit pointer arithmetic)
    g_row = g_ptr + d * sgd
    for _ in range(0, B):
        for j in range(0, nblk - pid_m * BM):
            s = j * C + q[None, :] - p[:, None]
            ut = tl.load(u_row + s * sul, mask=(s >= 0) & (s < L), other=0.0)
            t = (m[None, :] + j) * C + q[:, None]
            gt = tl.load(g_row + t * sgl, mask=t < L, other=0.0)
            if FP32:
                acc = tl.dot(ut.to(tl.float32), gt.to(tl.float32), acc, input_precision="tf32x3")
            else:
                acc = tl.dot(ut, gt.to(ut.dtype), acc)
        u_row += sub
        g_row += sgb
    r = m[None, :] * C + p[:, None]
    tl.store(gk_ptr + d * skd + r, acc, mask=r < LK)


def _interpreting() -> bool:
    return bool(triton.knobs.runtime.interpret)


def _block(lk: int) -> int:
    """Time-block size C: the smallest of 16/32/64 that covers the taps (16 is tl.dot's minimum)."""
    return 16 if lk <= 16 else 32 if lk <= 32 else 64


def _check(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None) -> None:
    if u.dim() != 3 or k.dim() != 2 or k.shape[0] != u.shape[1] or k.shape[1] < 1:
        raise ValueError(f"fftconv: expected u [B, D, L] and k [D, Lk>=1], got {tuple(u.shape)} and "
                         f"{tuple(k.shape)}")
    if bias is not None and tuple(bias.shape) != (u.shape[1],):
        raise ValueError(f"fftconv: bias must be [D={u.shape[1]}], got {tuple(bias.shape)}")
    if u.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"fftconv: the Triton kernel takes fp32/fp16/bf16, got {u.dtype} (use the ref)")
    if not u.is_cuda and not _interpreting():
        raise ValueError("fftconv: the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 on CPU)")


def _conv(x, k, bias, reverse: bool, block: int, cols: int) -> torch.Tensor:
    """Launch the Toeplitz convolution; returns a new tensor shaped and typed like x."""
    B, D, L = x.shape
    lk = min(k.shape[1], L)
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    C = block or _block(lk)
    nblk = triton.cdiv(L, C)
    BN = cols or max(16, min(64, triton.next_power_of_2(B * nblk)))
    grid = (triton.cdiv(B * nblk, BN), D)  # grid axes 1 and 2 are limited to 65535
    has_bias = bias is not None
    _toeplitz_conv_kernel[grid](
        x, k, bias if has_bias else k, y,
        B, L, lk,
        x.stride(0), x.stride(1), x.stride(2), k.stride(0), k.stride(1),
        y.stride(0), y.stride(1), y.stride(2),
        HAS_BIAS=has_bias, REVERSE=reverse, SPLIT=x.dtype != torch.float32, C=C, BN=BN,
    )
    return y


def _corr(u, g, lk: int, block: int) -> torch.Tensor:
    """grad of the taps: [D, lk] fp32 with gk[d, r] = sum_b sum_t g[b, d, t] u[b, d, t - r]."""
    B, D, L = u.shape
    gk = torch.zeros(D, lk, device=u.device, dtype=torch.float32)
    if u.numel() == 0:
        return gk
    C = block or _block(lk)
    nkb = triton.cdiv(lk, C)
    BM = max(16, min(32, triton.next_power_of_2(nkb)))  # small tiles: little work on masked m + j >= nblk
    grid = (D, triton.cdiv(nkb, BM))
    _toeplitz_corr_kernel[grid](
        u, g, gk, B, L, lk,
        u.stride(0), u.stride(1), u.stride(2), g.stride(0), g.stride(1), g.stride(2), gk.stride(0),
        FP32=u.dtype == torch.float32, C=C, BM=BM,
    )
    return gk


# ---------------------------------------------------------------- custom ops (forward, backward, autograd)

@torch.library.custom_op("bioseq::fftconv_fwd", mutates_args=())
def fftconv_fwd(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, block: int, cols: int
                ) -> torch.Tensor:
    """y [B, D, L] = causal conv of u [B, D, L] with k [D, Lk] + u * bias; block/cols 0 = automatic."""
    return _conv(u, k, bias, False, block, cols)


@fftconv_fwd.register_fake
def _(u, k, bias, block, cols):
    return torch.empty_like(u)


@torch.library.custom_op("bioseq::fftconv_bwd", mutates_args=())
def fftconv_bwd(gy: torch.Tensor, u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, block: int,
                cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_u [B, D, L], grad_k [D, Lk] in k's dtype, grad_bias [D] fp32) for the upstream gradient gy."""
    L = u.shape[-1]
    lk = min(k.shape[1], L)
    gy = gy.to(u.dtype)
    gu = _conv(gy, k, bias, True, block, cols)
    gk_used = _corr(u, gy, lk, block)
    gk = torch.zeros(k.shape, device=k.device, dtype=k.dtype)
    gk[:, :lk] = gk_used.to(k.dtype)
    # bias acts as a tap at offset 0, so its gradient is the offset-0 correlation (fp32).
    gb = gk_used[:, 0].clone() if lk > 0 else torch.zeros(u.shape[1], device=u.device, dtype=torch.float32)
    return gu, gk, gb


@fftconv_bwd.register_fake
def _(gy, u, k, bias, block, cols):
    return torch.empty_like(u), torch.empty_like(k), u.new_empty(u.shape[1], dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    u, k, bias, block, cols = inputs
    ctx.save_for_backward(u, k, bias)
    ctx.block, ctx.cols = block, cols


def _backward(ctx, gy):
    u, k, bias = ctx.saved_tensors
    gu, gk, gb = fftconv_bwd(gy, u, k, bias, ctx.block, ctx.cols)
    return gu, gk, None if bias is None else gb.to(bias.dtype), None, None


fftconv_fwd.register_autograd(_backward, setup_context=_setup_context)


def fftconv_triton(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None, *,
                   block: int = 0, cols: int = 0) -> torch.Tensor:
    """Kernel path of ``fftconv``: u [B, D, L] fp32/fp16/bf16, k [D, Lk] (any float dtype), bias [D] or None.

    Returns y [B, D, L] in u's dtype. ``block`` (time block C: 16, 32 or 64) and ``cols`` (columns per
    program, a power of two >= 16) override the automatic tile sizes; 0 means automatic.
    """
    _check(u, k, bias)
    return fftconv_fwd(u, k, bias, block, cols)
