"""Triton kernels for ``causal_conv1d``: depthwise causal conv with K <= 8 taps, bias, optional SiLU.

Forward: each program owns a [BD channels, BL steps] tile of one batch item and sums the K shifted
input tiles (``z = bias + sum_j w[:, j] * x[t - (K-1) + j]``, ``y = z`` or ``silu(z)``).

Backward: with g = dL/dz (= gy * silu'(z) when SiLU is on, z recomputed, nothing stored):
- dx[s] = sum_j w[j] g[s + (K-1) - j] (g at the K shifted positions, each recomputed),
- dw[d, j] = sum_{b,t} g[t] x[t - (K-1) + j] and db[d] = sum_{b,t} g[t]: every program writes its
  partial sums to a [B * n_time_tiles, D, K+1] fp32 buffer that torch sums afterwards (deterministic,
  no atomics).
Arithmetic is fp32 in registers; outputs take the input dtypes. Memory traffic: the forward reads x
and writes y once (loads of the K shifts hit the cache); the backward reads x and gy and writes dx.
On CPU the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1`` set before ``triton``
is first imported).
"""

import torch
import triton
import triton.language as tl

MAX_K = 8


@triton.jit
def _cc1d_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    D, L,
    sxb, sxd, sxl, swd, swk, syb, syd, syl,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr,
):
    """Grid: (cdiv(L, BL), cdiv(D, BD), B)."""
    t = tl.program_id(0) * BL + tl.arange(0, BL)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    b = tl.program_id(2).to(tl.int64)  # 64-bit offsets: B * D * L may pass 2**31
    d_ok = d < D
    acc = tl.zeros((BD, BL), dtype=tl.float32)
    for j in tl.static_range(K):
        wj = tl.load(w_ptr + d * swd + j * swk, mask=d_ok, other=0.0).to(tl.float32)
        s = t - (K - 1) + j
        ok = d_ok[:, None] & ((s >= 0) & (s < L))[None, :]
        xv = tl.load(x_ptr + b * sxb + d[:, None] * sxd + s[None, :] * sxl, mask=ok, other=0.0)
        acc += wj[:, None] * xv.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)[:, None]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    ok = d_ok[:, None] & (t < L)[None, :]
    tl.store(y_ptr + b * syb + d[:, None] * syd + t[None, :] * syl, acc.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _cc1d_bwd_kernel(
    x_ptr, w_ptr, bias_ptr, gy_ptr, dx_ptr, part_ptr,
    D, L,
    sxb, sxd, sxl, swd, swk, sgb, sgd, sgl, sdb, sdd, sdl,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr,
):
    """Grid: (cdiv(L, BL), cdiv(D, BD), B); part is [B * cdiv(L, BL), D, K + 1] fp32 (dw taps, then db)."""
    pid_l = tl.program_id(0)
    t = pid_l * BL + tl.arange(0, BL)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    b = tl.program_id(2).to(tl.int64)  # 64-bit offsets: B * D * L may pass 2**31
    d_ok = d < D
    x_row = x_ptr + b * sxb + d[:, None] * sxd
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    dx = tl.zeros((BD, BL), dtype=tl.float32)
    g_here = tl.zeros((BD, BL), dtype=tl.float32)
    # Output position tt = t + (K-1) - j receives x[t] through tap j.
    for j in tl.static_range(K):
        tt = t + (K - 1) - j
        ok = d_ok[:, None] & (tt < L)[None, :]
        g = tl.load(gy_ptr + b * sgb + d[:, None] * sgd + tt[None, :] * sgl, mask=ok, other=0.0)
        g = g.to(tl.float32)
        if SILU:
            z = tl.zeros((BD, BL), dtype=tl.float32)
            if HAS_BIAS:
                z += bias[:, None]
            for i in range(0, K):  # a real loop, not unrolled: keeps the K*K-load code small
                wi = tl.load(w_ptr + d * swd + i * swk, mask=d_ok, other=0.0).to(tl.float32)
                s = tt - (K - 1) + i
                xm = ok & ((s >= 0) & (s < L))[None, :]
                z += wi[:, None] * tl.load(x_row + s[None, :] * sxl, mask=xm, other=0.0).to(tl.float32)
            sig = tl.sigmoid(z)
            g = g * sig * (1.0 + z * (1.0 - sig))
        wj = tl.load(w_ptr + d * swd + j * swk, mask=d_ok, other=0.0).to(tl.float32)
        dx += wj[:, None] * g
        if j == K - 1:
            g_here = g  # tt == t: the gradient at this tile's own output positions
    ok = d_ok[:, None] & (t < L)[None, :]
    tl.store(dx_ptr + b * sdb + d[:, None] * sdd + t[None, :] * sdl, dx.to(dx_ptr.dtype.element_ty), mask=ok)
    row = part_ptr + (b * tl.num_programs(0) + pid_l) * D * (K + 1) + d * (K + 1)
    for j in tl.static_range(K):
        s = t - (K - 1) + j
        xm = ok & ((s >= 0) & (s < L))[None, :]
        xv = tl.load(x_row + s[None, :] * sxl, mask=xm, other=0.0).to(tl.float32)
        tl.store(row + j, tl.sum(g_here * xv, axis=1), mask=d_ok)
    tl.store(row + K, tl.sum(g_here, axis=1), mask=d_ok)


def _interpreting() -> bool:
    return bool(triton.knobs.runtime.interpret)


def _tiles(D: int, L: int, elements: int) -> tuple[int, int]:
    """(BD, BL): up to 256 time steps by up to 16 channels, at most ``elements`` per tile."""
    BL = max(16, min(256, triton.next_power_of_2(L)))
    BD = max(1, min(16, triton.next_power_of_2(D), elements // BL))
    return BD, BL


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None) -> bool:
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d: activation must be None or 'silu', got {activation!r}")
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"causal_conv1d: expected x [B, D, L] and weight [D, K], got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if not 1 <= weight.shape[1] <= MAX_K:
        raise ValueError(f"causal_conv1d: the Triton kernel takes 1 <= K <= {MAX_K}, got K={weight.shape[1]}")
    if bias is not None and tuple(bias.shape) != (x.shape[1],):
        raise ValueError(f"causal_conv1d: bias must be [D={x.shape[1]}], got {tuple(bias.shape)}")
    if not x.is_cuda and not _interpreting():
        raise ValueError("causal_conv1d: the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 on CPU)")
    return activation is not None


@torch.library.custom_op("bioseq::causal_conv1d_fwd", mutates_args=())
def causal_conv1d_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool
                      ) -> torch.Tensor:
    """y [B, D, L] = act(bias + depthwise causal conv of x [B, D, L] with weight [D, K])."""
    B, D, L = x.shape
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    BD, BL = _tiles(D, L, 4096)
    grid = (triton.cdiv(L, BL), triton.cdiv(D, BD), B)  # axes 1, 2 <= 65535
    _cc1d_fwd_kernel[grid](
        x, weight, bias if bias is not None else weight, y, D, L,
        x.stride(0), x.stride(1), x.stride(2), weight.stride(0), weight.stride(1),
        y.stride(0), y.stride(1), y.stride(2),
        K=weight.shape[1], HAS_BIAS=bias is not None, SILU=silu, BD=BD, BL=BL,
    )
    return y


@causal_conv1d_fwd.register_fake
def _(x, weight, bias, silu):
    return torch.empty_like(x)


@torch.library.custom_op("bioseq::causal_conv1d_bwd", mutates_args=())
def causal_conv1d_bwd(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      silu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx [B, D, L] like x, dweight [D, K] like weight, dbias [D] fp32)."""
    B, D, L = x.shape
    K = weight.shape[1]
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return dx, torch.zeros_like(weight), torch.zeros(D, device=x.device, dtype=torch.float32)
    BD, BL = _tiles(D, L, 2048)  # the backward keeps ~5 tiles live
    grid = (triton.cdiv(L, BL), triton.cdiv(D, BD), B)  # axes 1, 2 <= 65535
    part = torch.empty(B * grid[0], D, K + 1, device=x.device, dtype=torch.float32)
    _cc1d_bwd_kernel[grid](
        x, weight, bias if bias is not None else weight, gy, dx, part, D, L,
        x.stride(0), x.stride(1), x.stride(2), weight.stride(0), weight.stride(1),
        gy.stride(0), gy.stride(1), gy.stride(2), dx.stride(0), dx.stride(1), dx.stride(2),
        K=K, HAS_BIAS=bias is not None, SILU=silu, BD=BD, BL=BL,
    )
    sums = part.sum(0)
    return dx, sums[:, :K].to(weight.dtype), sums[:, K].contiguous()


@causal_conv1d_bwd.register_fake
def _(gy, x, weight, bias, silu):
    return torch.empty_like(x), torch.empty_like(weight), x.new_empty(x.shape[1], dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, weight, bias, silu = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.silu = silu


def _backward(ctx, gy):
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = causal_conv1d_bwd(gy, x, weight, bias, ctx.silu)
    return dx, dw, None if bias is None else db.to(bias.dtype), None


causal_conv1d_fwd.register_autograd(_backward, setup_context=_setup_context)


def causal_conv1d_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                         activation: str | None = None) -> torch.Tensor:
    """Kernel path of ``causal_conv1d``: x [B, D, L], weight [D, K<=8], bias [D] or None, activation.

    Returns y [B, D, L] in x's dtype; gradients flow to x, weight and bias.
    """
    silu = _check(x, weight, bias, activation)
    return causal_conv1d_fwd(x, weight, bias, silu)
