"""Triton kernels for ``selective_scan``: the core recurrence, forward and backward.

The kernels compute ``h[t] = exp(delta[t] A) h[t-1] + delta[t] u[t] B[t]``, ``y[t] = C[t] . h[t]``
(delta already biased and softplus-ed); D, z, delta_bias and the softplus are applied around them in
torch (``selective_scan_triton``), so autograd differentiates those few [batch, dim, L] elementwise
ops.

Forward: one program per (batch item, block of BD channels of one group) walks the sequence step by
step with its [BD, N] state in registers (fp32), writes y and, every CHUNK steps, the state entering
that chunk to a checkpoint buffer [batch, dim, L / CHUNK, N] fp32 (the only thing kept for backward
besides the inputs).

Backward, per program, chunks in reverse: recompute the chunk's states from its checkpoint into a
per-program scratch buffer [CHUNK, BD, N] (cache-resident), then walk the chunk backwards with
mu = dL/dh[t] = g[t] C[t] + a[t+1] mu[t+1] in registers:
- d(delta u)[t] = sum_n mu B[t], so du = d(delta u) delta and ddelta = d(delta u) u + sum_n w A,
  with w = mu * a[t] * h[t-1] = dL/d(delta[t] A);
- dA += w delta[t] (registers; one [dim, N] partial per batch item, summed by torch);
- dB[t] = sum_d mu delta[t] u[t] and dC[t] = sum_d g[t] h[t]: one [N] partial per program and step,
  summed over the channel blocks of a group by torch (deterministic, no atomics);
- the gradient of the initial state is the carried a[t0] mu[t0] after the first chunk.
On CPU the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1`` set before ``triton`` is
first imported).
"""

import torch
import triton
import triton.language as tl

from bioseq.ops.selective_scan.ref import (
    as_groups,
    check_scan_args,
    effective_delta,
    finish_output,
)


@triton.jit
def _ss_fwd_kernel(
    u_ptr, d_ptr, A_ptr, B_ptr, C_ptr, h0_ptr, y_ptr, last_ptr, ckpt_ptr,
    L, N, Dg, n_blocks, n_chunks,
    sub, sud, sul, sdb, sdd, sdl, sad, san, sbb, sbg, sbn, sbl, scb, scg, scn, scl, syb, syd, syl,
    HAS_H0: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, CHUNK: tl.constexpr,
):
    """Grid: (batch, G * n_blocks). h0, last: [batch, dim, N] fp32; ckpt: [batch, dim, n_chunks, N] fp32."""
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1) // n_blocks
    j = tl.program_id(1) % n_blocks
    dl = j * BD + tl.arange(0, BD)
    d_ok = dl < Dg
    d = (g * Dg + dl).to(tl.int64)
    n = tl.arange(0, NP)
    n_ok = n < N
    dim = Dg * (tl.num_programs(1) // n_blocks)
    ok2 = d_ok[:, None] & n_ok[None, :]
    A = tl.load(A_ptr + d[:, None] * sad + n[None, :] * san, mask=ok2, other=0.0).to(tl.float32)
    st_off = b * dim * N + d[:, None] * N + n[None, :]
    if HAS_H0:
        h = tl.load(h0_ptr + st_off, mask=ok2, other=0.0)
    else:
        h = tl.zeros((BD, NP), dtype=tl.float32)
    u_row = u_ptr + b * sub + d * sud
    d_row = d_ptr + b * sdb + d * sdd
    B_row = B_ptr + b * sbb + g * sbg + n * sbn
    C_row = C_ptr + b * scb + g * scg + n * scn
    y_row = y_ptr + b * syb + d * syd
    for k in range(0, n_chunks):
        tl.store(ckpt_ptr + (b * dim + d[:, None]) * n_chunks * N + k * N + n[None, :], h, mask=ok2)
        for t in range(k * CHUNK, tl.minimum(L, k * CHUNK + CHUNK)):
            dt = tl.load(d_row + t * sdl, mask=d_ok, other=0.0).to(tl.float32)
            uu = tl.load(u_row + t * sul, mask=d_ok, other=0.0).to(tl.float32)
            Bt = tl.load(B_row + t * sbl, mask=n_ok, other=0.0).to(tl.float32)
            Ct = tl.load(C_row + t * scl, mask=n_ok, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * uu)[:, None] * Bt[None, :]
            y = tl.sum(h * Ct[None, :], axis=1)
            tl.store(y_row + t * syl, y.to(y_ptr.dtype.element_ty), mask=d_ok)
    tl.store(last_ptr + st_off, h, mask=ok2)


@triton.jit
def _ss_bwd_kernel(
    u_ptr, d_ptr, A_ptr, B_ptr, C_ptr, ckpt_ptr, gy_ptr, glast_ptr,
    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dh0_ptr, scratch_ptr,
    L, N, Dg, n_blocks, n_chunks,
    sub, sud, sul, sdb, sdd, sdl, sad, san, sbb, sbg, sbn, sbl, scb, scg, scn, scl, sgb, sgd, sgl,
    BD: tl.constexpr, NP: tl.constexpr, CHUNK: tl.constexpr,
):
    """Grid: (batch, G * n_blocks). glast, dh0, dA: [batch, dim, N] fp32 (dA: per-batch partials);
    du, ddelta: [batch, dim, L] contiguous; dB, dC: [batch, G * n_blocks, N, L] fp32 partials;
    scratch: [batch * G * n_blocks, CHUNK, BD, NP] fp32."""
    b = tl.program_id(0).to(tl.int64)
    pid1 = tl.program_id(1)
    g = pid1 // n_blocks
    j = pid1 % n_blocks
    dl = j * BD + tl.arange(0, BD)
    d_ok = dl < Dg
    d = (g * Dg + dl).to(tl.int64)
    n = tl.arange(0, NP)
    n_ok = n < N
    dim = Dg * (tl.num_programs(1) // n_blocks)
    ok2 = d_ok[:, None] & n_ok[None, :]
    A = tl.load(A_ptr + d[:, None] * sad + n[None, :] * san, mask=ok2, other=0.0).to(tl.float32)
    st_off = b * dim * N + d[:, None] * N + n[None, :]
    K = tl.load(glast_ptr + st_off, mask=ok2, other=0.0)          # dL/dh at the chunk's end, from later
    dA = tl.zeros((BD, NP), dtype=tl.float32)
    u_row = u_ptr + b * sub + d * sud
    d_row = d_ptr + b * sdb + d * sdd
    g_row = gy_ptr + b * sgb + d * sgd
    B_row = B_ptr + b * sbb + g * sbg + n * sbn
    C_row = C_ptr + b * scb + g * scg + n * scn
    out_row = b * dim * L + d * L
    part_row = (b * tl.num_programs(1) + pid1) * N * L + n * L
    tile = tl.arange(0, BD)[:, None] * NP + n[None, :]
    scratch = scratch_ptr + (b * tl.num_programs(1) + pid1) * CHUNK * BD * NP
    for kk in range(0, n_chunks):
        k = n_chunks - 1 - kk
        t0 = k * CHUNK
        t1 = tl.minimum(L, t0 + CHUNK)
        ckpt = ckpt_ptr + (b * dim + d[:, None]) * n_chunks * N + k * N + n[None, :]
        h = tl.load(ckpt, mask=ok2, other=0.0)
        for t in range(t0, t1):                                    # recompute the chunk's states
            dt = tl.load(d_row + t * sdl, mask=d_ok, other=0.0).to(tl.float32)
            uu = tl.load(u_row + t * sul, mask=d_ok, other=0.0).to(tl.float32)
            Bt = tl.load(B_row + t * sbl, mask=n_ok, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * uu)[:, None] * Bt[None, :]
            tl.store(scratch + (t - t0) * BD * NP + tile, h)
        for tt in range(t0, t1):                                   # and walk it backwards
            t = t1 - 1 - (tt - t0)
            dt = tl.load(d_row + t * sdl, mask=d_ok, other=0.0).to(tl.float32)
            uu = tl.load(u_row + t * sul, mask=d_ok, other=0.0).to(tl.float32)
            gt = tl.load(g_row + t * sgl, mask=d_ok, other=0.0).to(tl.float32)
            Bt = tl.load(B_row + t * sbl, mask=n_ok, other=0.0).to(tl.float32)
            Ct = tl.load(C_row + t * scl, mask=n_ok, other=0.0).to(tl.float32)
            h_t = tl.load(scratch + (t - t0) * BD * NP + tile)
            if t > t0:
                h_prev = tl.load(scratch + (t - t0 - 1) * BD * NP + tile)
            else:
                h_prev = tl.load(ckpt, mask=ok2, other=0.0)
            a = tl.exp(dt[:, None] * A)
            mu = K + gt[:, None] * Ct[None, :]
            ddu = tl.sum(mu * Bt[None, :], axis=1)
            w = mu * a * h_prev
            tl.store(du_ptr + out_row + t, (ddu * dt).to(du_ptr.dtype.element_ty), mask=d_ok)
            ddelta = ddu * uu + tl.sum(w * A, axis=1)
            tl.store(ddelta_ptr + out_row + t, ddelta.to(ddelta_ptr.dtype.element_ty), mask=d_ok)
            dA += w * dt[:, None]
            tl.store(dB_ptr + part_row + t, tl.sum(mu * (dt * uu)[:, None], axis=0), mask=n_ok)
            tl.store(dC_ptr + part_row + t, tl.sum(h_t * gt[:, None], axis=0), mask=n_ok)
            K = a * mu
    tl.store(dh0_ptr + st_off, K, mask=ok2)
    tl.store(dA_ptr + st_off, dA, mask=ok2)


KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _interpreting() -> bool:
    return bool(triton.knobs.runtime.interpret)


def _config(batch: int, G: int, Dg: int, N: int) -> tuple[int, int]:
    """(BD, NP): channels per program and N padded to a power of two. BD is a power of two with
    BD * NP <= 2048 state values in registers, halved (down to 8) while there are fewer than ~256
    programs, so that small batches still fill the GPU."""
    NP = max(2, triton.next_power_of_2(N))
    BD = max(1, min(64, triton.next_power_of_2(Dg), 2048 // NP))
    while BD > 8 and batch * G * triton.cdiv(Dg, BD) < 256:
        BD //= 2
    return BD, NP


@torch.library.custom_op("bioseq::selective_scan_fwd", mutates_args=())
def selective_scan_fwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                       C: torch.Tensor, h0: torch.Tensor | None, chunk: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y [batch, dim, L] like u, last state [batch, dim, N] fp32, checkpoints [batch, dim, chunks, N] fp32).

    u [batch, dim, L], delta [batch, dim, L] (biased, softplus-ed), A [dim, N], B and C [batch, G, N, L],
    h0 [batch, dim, N] fp32 or None.
    """
    batch, dim, L = u.shape
    G, N = B.shape[1], B.shape[2]
    n_chunks = max(1, triton.cdiv(L, chunk))
    y = torch.empty_like(u)
    last = torch.empty(batch, dim, N, device=u.device, dtype=torch.float32)
    ckpt = torch.empty(batch, dim, n_chunks, N, device=u.device, dtype=torch.float32)
    if batch * dim == 0:
        return y, last, ckpt
    Dg = dim // G
    BD, NP = _config(batch, G, Dg, N)
    n_blocks = triton.cdiv(Dg, BD)
    h0c = h0.contiguous() if h0 is not None else last
    _ss_fwd_kernel[(batch, G * n_blocks)](
        u, delta, A, B, C, h0c, y, last, ckpt, L, N, Dg, n_blocks, n_chunks,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *y.stride(),
        HAS_H0=h0 is not None, BD=BD, NP=NP, CHUNK=chunk,
    )
    return y, last, ckpt


@selective_scan_fwd.register_fake
def _(u, delta, A, B, C, h0, chunk):
    batch, dim, L = u.shape
    N = B.shape[2]
    n_chunks = max(1, -(-L // chunk))
    return (torch.empty_like(u), u.new_empty(batch, dim, N, dtype=torch.float32),
            u.new_empty(batch, dim, n_chunks, N, dtype=torch.float32))


@torch.library.custom_op("bioseq::selective_scan_bwd", mutates_args=())
def selective_scan_bwd(gy: torch.Tensor, glast: torch.Tensor, u: torch.Tensor, delta: torch.Tensor,
                       A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, ckpt: torch.Tensor, chunk: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                  torch.Tensor]:
    """(du like u, ddelta like delta, dA [dim, N] fp32, dB and dC [batch, G, N, L] fp32, dh0 fp32)."""
    batch, dim, L = u.shape
    G, N = B.shape[1], B.shape[2]
    n_chunks = ckpt.shape[2]
    du, ddelta = torch.empty_like(u, memory_format=torch.contiguous_format), torch.empty_like(
        delta, memory_format=torch.contiguous_format)
    f32 = dict(device=u.device, dtype=torch.float32)
    dh0 = torch.empty(batch, dim, N, **f32)
    if batch * dim == 0 or L == 0:
        return (du, ddelta, torch.zeros(dim, N, **f32), torch.zeros(batch, G, N, L, **f32),
                torch.zeros(batch, G, N, L, **f32), glast.float().clone())
    Dg = dim // G
    BD, NP = _config(batch, G, Dg, N)
    n_blocks = triton.cdiv(Dg, BD)
    dA_part = torch.empty(batch, dim, N, **f32)
    dB_part = torch.empty(batch, G * n_blocks, N, L, **f32)
    dC_part = torch.empty(batch, G * n_blocks, N, L, **f32)
    scratch = torch.empty(batch * G * n_blocks, chunk, BD, NP, **f32)
    _ss_bwd_kernel[(batch, G * n_blocks)](
        u, delta, A, B, C, ckpt, gy, glast.float().contiguous(),
        du, ddelta, dA_part, dB_part, dC_part, dh0, scratch, L, N, Dg, n_blocks, n_chunks,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *gy.stride(),
        BD=BD, NP=NP, CHUNK=chunk,
    )
    dB = dB_part.view(batch, G, n_blocks, N, L).sum(2)
    dC = dC_part.view(batch, G, n_blocks, N, L).sum(2)
    return du, ddelta, dA_part.sum(0), dB, dC, dh0


@selective_scan_bwd.register_fake
def _(gy, glast, u, delta, A, B, C, ckpt, chunk):
    batch, dim, L = u.shape
    G, N = B.shape[1], B.shape[2]
    f32 = dict(dtype=torch.float32)
    return (torch.empty_like(u), torch.empty_like(delta), A.new_empty(dim, N, **f32),
            B.new_empty(batch, G, N, L, **f32), C.new_empty(batch, G, N, L, **f32),
            u.new_empty(batch, dim, N, **f32))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, h0, chunk = inputs
    ctx.save_for_backward(u, delta, A, B, C, output[2])
    ctx.chunk, ctx.has_h0 = chunk, h0 is not None


def _backward(ctx, gy, glast, gckpt):
    u, delta, A, B, C, ckpt = ctx.saved_tensors
    if gy is None:
        gy = torch.zeros_like(u)
    if glast is None:
        glast = u.new_zeros(u.shape[0], u.shape[1], B.shape[2], dtype=torch.float32)
    du, ddelta, dA, dB, dC, dh0 = selective_scan_bwd(gy, glast, u, delta, A, B, C, ckpt, ctx.chunk)
    return (du, ddelta, dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), dh0 if ctx.has_h0 else None, None)


selective_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_triton(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                          C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                          delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                          initial_state: torch.Tensor | None = None, return_state: bool = False,
                          chunk: int = 64):
    """Kernel path of ``selective_scan``: same arguments and results as ``selective_scan_ref``.

    u, B, C in fp32, fp16 or bf16; the recurrence runs in fp32; y takes u's dtype. ``chunk`` is the
    checkpoint interval (steps between saved states).
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if u.dtype not in KERNEL_DTYPES:
        raise ValueError(f"selective_scan: the Triton kernel takes fp32, fp16 or bf16, got {u.dtype}")
    if not u.is_cuda and not _interpreting():
        raise ValueError("selective_scan: the kernel needs CUDA tensors (or TRITON_INTERPRET=1 on CPU)")
    dt = effective_delta(delta, delta_bias, delta_softplus, torch.float32)
    h0 = None if initial_state is None else initial_state.float()
    y, last, _ = selective_scan_fwd(u, dt, A.float(), as_groups(B), as_groups(C), h0, chunk)
    y = finish_output(y.float(), u.float(), D, z).to(u.dtype)
    return (y, last) if return_state else y
