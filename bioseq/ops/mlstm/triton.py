"""Triton kernels for the chunkwise mLSTM (same contract and formulas as ``ref.mlstm_chunkwise``).

Tensors are padded to whole chunks (L tokens, padding tokens have i = -inf and lf = 0) and flattened to
[B * NH, S_pad, DH]; one program owns one chunk of one head. With the notation of ``ref.py``
(lf_cum = within-chunk cumsum of logsigmoid(f), u_s = i_s - lf_cum_s, M_r = max(m_chunk, cummax_{s<=r} u_s),
D[r, s] = exp(u_s - M_r) for s <= r, w_r = exp(m_chunk - M_r)):

Forward
- ``_chunk_kv_kernel``: kv_c = sum_s exp(g_s - g_max) ks_s v_s^T and ksum_c (g_s = log weight of token s in
  its chunk's end state, g_max its chunk maximum): [DH, DH] and [DH] per chunk.
- ``_chunk_states_kernel``: the stabiliser m and the states (C, n) at every chunk boundary; one program per
  head and block of state rows walks the chunks.
- ``_chunk_out_kernel``: A = (q ks^T) * D, num = A v + w (q C), den = rowsum(A) + w (q . n),
  h = num / (max(|den|, exp(-m_t)) + eps); also stores M, den and the normaliser for the backward.

Backward (every stabiliser held constant; the gradient that flows through m is added in torch by
``ref._stabiliser_chain_grad``, as in the reference):
- ``_chunk_bwd_kernel``: recomputes D and A; dq, the intra-chunk dks and dv, and the chunk's contribution
  to the gradient of its start state (dC_out = sum_r w_r q_r dnum_r^T, dn_out).
- ``_chunk_states_bwd_kernel``: the gradient w.r.t. every chunk's end state, back through the state
  recurrence (the same walk in reverse).
- ``_chunk_state_bwd_kernel``: adds the end-state terms to dks and dv and forms the gate gradients from the
  identities di_s = ks_s . dks_s and d lf_cum_r = q_r . dq_r - ks_r . dks_r.
- torch: the chunk-end term of d lf_cum, the cumsum back to d lf, the stabiliser chain, df, dm0.

Arithmetic is fp32 (16-bit inputs are cast up front); dots use ``tf32x3`` (about fp32 accuracy on tensor
cores). The chunk must be a power of two in [16, 64] and DH <= 64 (``supported``): larger tiles do not fit
in registers. On CPU the kernels run only
under Triton's interpreter (``TRITON_INTERPRET=1`` set before ``triton`` is first imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bioseq.ops.mlstm.ref import (
    State,
    _check_inputs,
    _check_state,
    _chunk_gates,
    _chunks,
    _stabiliser_chain_grad,
    mlstm_zero_state,
)

MAX_DH = 64
MIN_CHUNK, MAX_CHUNK = 16, 64


def _interpreting() -> bool:
    return bool(triton.knobs.runtime.interpret)


def supported(chunk_size: int, DH: int) -> bool:
    """Whether the kernels take this chunk size and head dim (else the reference runs)."""
    return (MIN_CHUNK <= chunk_size <= MAX_CHUNK and chunk_size & (chunk_size - 1) == 0
            and 1 <= DH <= MAX_DH)


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _load_rows(ptr, base, t, d, D, stride_t):
    """[L, BD] fp32 tile of a [*, S_pad, D] tensor (columns >= D read as 0)."""
    mask = (d < D)[None, :]
    return tl.load(ptr + base + t[:, None] * stride_t + d[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_square(ptr, base, d, D):
    """[BD, BD] fp32 tile of a [*, D, D] tensor."""
    mask = (d < D)[:, None] & (d < D)[None, :]
    return tl.load(ptr + base + d[:, None] * D + d[None, :], mask=mask, other=0.0)


@triton.jit
def _recompute(q, ks, i, lf_cum, m, M_given, HAVE_M: tl.constexpr, L: tl.constexpr):
    """(D [L, L], w [L], A [L, L], M [L]) of one chunk."""
    u = i - lf_cum
    if HAVE_M:
        M = M_given
    else:
        M = tl.maximum(tl.associative_scan(u, 0, _max_combine), m)
    r = tl.arange(0, L)
    causal = r[:, None] >= r[None, :]
    dec = tl.where(causal, tl.exp(u[None, :] - M[:, None]), 0.0)
    w = tl.exp(m - M)
    a = tl.dot(q, tl.trans(ks), input_precision="tf32x3") * dec
    return dec, w, a, M


@triton.jit
def _chunk_kv_kernel(ks_ptr, v_ptr, g_ptr, gmax_ptr, kv_ptr, ksum_ptr, S_pad, NC, D,
                     L: tl.constexpr, BD: tl.constexpr):
    """Grid (NC, B * NH)."""
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    t = c * L + tl.arange(0, L)
    d = tl.arange(0, BD)
    base = bh * S_pad * D
    ks = _load_rows(ks_ptr, base, t, d, D, D)
    v = _load_rows(v_ptr, base, t, d, D, D)
    g = tl.load(g_ptr + bh * S_pad + t)
    gmax = tl.load(gmax_ptr + bh * NC + c)
    kw = ks * tl.exp(g - gmax)[:, None]
    kv = tl.dot(tl.trans(kw), v, input_precision="tf32x3")
    sq = (bh * NC + c) * D * D
    tl.store(kv_ptr + sq + d[:, None] * D + d[None, :], kv, mask=(d < D)[:, None] & (d < D)[None, :])
    tl.store(ksum_ptr + (bh * NC + c) * D + d, tl.sum(kw, 0), mask=d < D)


@triton.jit
def _chunk_out_kernel(q_ptr, ks_ptr, v_ptr, i_ptr, lfc_ptr, C_ptr, n_ptr, m_ptr,
                      h_ptr, M_ptr, den_ptr, norm_ptr, S_pad, NC, D, eps,
                      L: tl.constexpr, BD: tl.constexpr):
    """Grid (NC, B * NH). C_ptr, n_ptr, m_ptr: states at chunk boundaries [B*NH, NC+1, ...]."""
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    t = c * L + tl.arange(0, L)
    d = tl.arange(0, BD)
    base = bh * S_pad * D
    q = _load_rows(q_ptr, base, t, d, D, D)
    ks = _load_rows(ks_ptr, base, t, d, D, D)
    v = _load_rows(v_ptr, base, t, d, D, D)
    i = tl.load(i_ptr + bh * S_pad + t)
    lf_cum = tl.load(lfc_ptr + bh * S_pad + t)
    st = bh * (NC + 1) + c
    C = _load_square(C_ptr, st * D * D, d, D)
    n = tl.load(n_ptr + st * D + d, mask=d < D, other=0.0)
    m = tl.load(m_ptr + st)
    dec, w, a, M = _recompute(q, ks, i, lf_cum, m, m, False, L)
    num = tl.dot(a, v, input_precision="tf32x3") + w[:, None] * tl.dot(q, C, input_precision="tf32x3")
    den = tl.sum(a, 1) + w * tl.sum(q * n[None, :], 1)
    norm = tl.maximum(tl.abs(den), tl.exp(-(lf_cum + M))) + eps
    h = num / norm[:, None]
    tl.store(h_ptr + base + t[:, None] * D + d[None, :], h, mask=(d < D)[None, :])
    tl.store(M_ptr + bh * S_pad + t, M)
    tl.store(den_ptr + bh * S_pad + t, den)
    tl.store(norm_ptr + bh * S_pad + t, norm)


@triton.jit
def _chunk_bwd_kernel(q_ptr, ks_ptr, v_ptr, i_ptr, lfc_ptr, C_ptr, n_ptr, m_ptr, h_ptr, M_ptr, den_ptr,
                      norm_ptr, dh_ptr, dq_ptr, dks_ptr, dv_ptr, dCo_ptr, dno_ptr, dnorm_ptr,
                      S_pad, NC, D, L: tl.constexpr, BD: tl.constexpr):
    """Grid (NC, B * NH). Writes dq (final), dks and dv (intra-chunk part), dC_out, dn_out, dnorm."""
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    t = c * L + tl.arange(0, L)
    d = tl.arange(0, BD)
    base = bh * S_pad * D
    q = _load_rows(q_ptr, base, t, d, D, D)
    ks = _load_rows(ks_ptr, base, t, d, D, D)
    v = _load_rows(v_ptr, base, t, d, D, D)
    h = _load_rows(h_ptr, base, t, d, D, D)
    dh = _load_rows(dh_ptr, base, t, d, D, D)
    tok = bh * S_pad + t
    i = tl.load(i_ptr + tok)
    lf_cum = tl.load(lfc_ptr + tok)
    M = tl.load(M_ptr + tok)
    den = tl.load(den_ptr + tok)
    norm = tl.load(norm_ptr + tok)
    st = bh * (NC + 1) + c
    C = _load_square(C_ptr, st * D * D, d, D)
    n = tl.load(n_ptr + st * D + d, mask=d < D, other=0.0)
    m = tl.load(m_ptr + st)
    dec, w, a, M = _recompute(q, ks, i, lf_cum, m, M, True, L)

    dnum = dh / norm[:, None]
    dnorm = -tl.sum(dh * h, 1) / norm
    sign = tl.where(den > 0, 1.0, tl.where(den < 0, -1.0, 0.0))
    dden = tl.where(tl.abs(den) >= tl.exp(-(lf_cum + M)), dnorm * sign, 0.0)
    dqk = (tl.dot(dnum, tl.trans(v), input_precision="tf32x3") + dden[:, None]) * dec
    dv = tl.dot(tl.trans(a), dnum, input_precision="tf32x3")
    dq = tl.dot(dqk, ks, input_precision="tf32x3")
    dq += w[:, None] * (tl.dot(dnum, tl.trans(C), input_precision="tf32x3") + dden[:, None] * n[None, :])
    dks = tl.dot(tl.trans(dqk), q, input_precision="tf32x3")
    qw = q * w[:, None]
    dC_out = tl.dot(tl.trans(qw), dnum, input_precision="tf32x3")
    dn_out = tl.sum(qw * dden[:, None], 0)

    rows = (d < D)[None, :]
    tl.store(dq_ptr + base + t[:, None] * D + d[None, :], dq, mask=rows)
    tl.store(dks_ptr + base + t[:, None] * D + d[None, :], dks, mask=rows)
    tl.store(dv_ptr + base + t[:, None] * D + d[None, :], dv, mask=rows)
    sq = (bh * NC + c) * D * D
    tl.store(dCo_ptr + sq + d[:, None] * D + d[None, :], dC_out, mask=(d < D)[:, None] & rows)
    tl.store(dno_ptr + (bh * NC + c) * D + d, dn_out, mask=d < D)
    tl.store(dnorm_ptr + tok, dnorm)


@triton.jit
def _chunk_state_bwd_kernel(q_ptr, ks_ptr, v_ptr, g_ptr, m_ptr, dCe_ptr, dne_ptr, dq_ptr, dks_ptr, dv_ptr,
                            di_ptr, dlfc_ptr, S_pad, NC, D, L: tl.constexpr, BD: tl.constexpr):
    """Grid (NC, B * NH). dC_end / dn_end: gradient w.r.t. each chunk's end state [B*NH, NC, ...].
    Updates dks and dv in place; writes di and d lf_cum (without the chunk-end term)."""
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    t = c * L + tl.arange(0, L)
    d = tl.arange(0, BD)
    base = bh * S_pad * D
    q = _load_rows(q_ptr, base, t, d, D, D)
    ks = _load_rows(ks_ptr, base, t, d, D, D)
    v = _load_rows(v_ptr, base, t, d, D, D)
    dq = _load_rows(dq_ptr, base, t, d, D, D)
    dks = _load_rows(dks_ptr, base, t, d, D, D)
    dv = _load_rows(dv_ptr, base, t, d, D, D)
    tok = bh * S_pad + t
    g = tl.load(g_ptr + tok)
    m_end = tl.load(m_ptr + bh * (NC + 1) + c + 1)
    sq = (bh * NC + c) * D * D
    dC_end = _load_square(dCe_ptr, sq, d, D)
    dn_end = tl.load(dne_ptr + (bh * NC + c) * D + d, mask=d < D, other=0.0)
    b = tl.exp(g - m_end)[:, None]
    dv += b * tl.dot(ks, dC_end, input_precision="tf32x3")
    dks += b * (tl.dot(v, tl.trans(dC_end), input_precision="tf32x3") + dn_end[None, :])
    di = tl.sum(ks * dks, 1)
    rows = (d < D)[None, :]
    tl.store(dks_ptr + base + t[:, None] * D + d[None, :], dks, mask=rows)
    tl.store(dv_ptr + base + t[:, None] * D + d[None, :], dv, mask=rows)
    tl.store(di_ptr + tok, di)
    tl.store(dlfc_ptr + tok, tl.sum(q * dq, 1) - di)


@triton.jit
def _chunk_states_kernel(kv_ptr, ksum_ptr, gmax_ptr, lftot_ptr, Cs_ptr, ns_ptr, ms_ptr, NC, D,
                         BD: tl.constexpr, BR: tl.constexpr):
    """Grid (B * NH, cdiv(D, BR)): rows [BR * pid(1), +BR) of C and n. Cs/ns/ms [B*NH, NC+1, ...] hold the
    initial state at index 0; kv/ksum [B*NH, NC, ...] are stabilised by the chunk's g_max."""
    bh = tl.program_id(0).to(tl.int64)
    rt = tl.program_id(1)
    r = rt * BR + tl.arange(0, BR)
    d = tl.arange(0, BD)
    mask = (r < D)[:, None] & (d < D)[None, :]
    tile = r[:, None] * D + d[None, :]
    C = tl.load(Cs_ptr + bh * (NC + 1) * D * D + tile, mask=mask, other=0.0)
    n = tl.load(ns_ptr + bh * (NC + 1) * D + r, mask=r < D, other=0.0)
    m = tl.load(ms_ptr + bh * (NC + 1))
    for c in range(0, NC):
        lt = tl.load(lftot_ptr + bh * NC + c)
        gm = tl.load(gmax_ptr + bh * NC + c)
        m_new = tl.maximum(lt + m, gm)
        decay = tl.exp(lt + m - m_new)
        scale = tl.exp(gm - m_new)
        C = decay * C + scale * tl.load(kv_ptr + (bh * NC + c) * D * D + tile, mask=mask, other=0.0)
        n = decay * n + scale * tl.load(ksum_ptr + (bh * NC + c) * D + r, mask=r < D, other=0.0)
        tl.store(Cs_ptr + (bh * (NC + 1) + c + 1) * D * D + tile, C, mask=mask)
        tl.store(ns_ptr + (bh * (NC + 1) + c + 1) * D + r, n, mask=r < D)
        tl.store(ms_ptr + bh * (NC + 1) + c + 1, m_new, mask=rt == 0)
        m = m_new


@triton.jit
def _chunk_states_bwd_kernel(dCo_ptr, dno_ptr, decay_ptr, dCT_ptr, dnT_ptr, dCe_ptr, dne_ptr, dC0_ptr,
                             dn0_ptr, NC, D, BD: tl.constexpr, BR: tl.constexpr):
    """Grid (B * NH, cdiv(D, BR)). dC_end[c] = G_{c+1}, G_c = dC_out[c] + decay_c G_{c+1}, G_NC = dC_T;
    writes dC_end, dn_end [B*NH, NC, ...] and G_0 (dC0, dn0)."""
    bh = tl.program_id(0).to(tl.int64)
    r = tl.program_id(1) * BR + tl.arange(0, BR)
    d = tl.arange(0, BD)
    mask = (r < D)[:, None] & (d < D)[None, :]
    tile = r[:, None] * D + d[None, :]
    G = tl.load(dCT_ptr + bh * D * D + tile, mask=mask, other=0.0)
    gn = tl.load(dnT_ptr + bh * D + r, mask=r < D, other=0.0)
    for k in range(0, NC):
        c = NC - 1 - k
        tl.store(dCe_ptr + (bh * NC + c) * D * D + tile, G, mask=mask)
        tl.store(dne_ptr + (bh * NC + c) * D + r, gn, mask=r < D)
        decay = tl.load(decay_ptr + bh * NC + c)
        G = tl.load(dCo_ptr + (bh * NC + c) * D * D + tile, mask=mask, other=0.0) + decay * G
        gn = tl.load(dno_ptr + (bh * NC + c) * D + r, mask=r < D, other=0.0) + decay * gn
    tl.store(dC0_ptr + bh * D * D + tile, G, mask=mask)
    tl.store(dn0_ptr + bh * D + r, gn, mask=r < D)


STATE_ROWS = 16   # rows of C per program in the state walks


def _warps(L: int, BD: int) -> int:
    """8 warps for [64, 64] tiles (a dozen of them are live in the backward), else 4."""
    return 8 if L * BD >= 4096 else 4


def _flat(x: torch.Tensor, L: int, fill: float) -> torch.Tensor:
    """[B, NH, S, ...] -> contiguous fp32 [B * NH, S_pad, ...] padded with `fill` to whole chunks."""
    x = _chunks(x, L, fill)
    return x.reshape(x.shape[0] * x.shape[1], -1, *x.shape[4:]).float().contiguous()


class _MLSTMTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, ks, v, i_raw, f_raw, C0, n0, m0, L: int, eps: float):
        B, NH, S, D = q.shape
        BH, BD = B * NH, max(16, triton.next_power_of_2(D))
        i, lf_cum, g, g_max = _chunk_gates(i_raw.float(), f_raw.float(), L)
        NC = i.shape[2]
        S_pad = NC * L
        lf_tot = lf_cum[..., -1].reshape(BH, NC).contiguous()
        i, lf_cum, g = (x.reshape(BH, S_pad).contiguous() for x in (i, lf_cum, g))
        g_max = g_max.reshape(BH, NC).contiguous()
        qf, ksf, vf = (_flat(x, L, 0.0) for x in (q, ks, v))
        grid = (NC, BH)
        kv = qf.new_empty(BH, NC, D, D)
        ksum = qf.new_empty(BH, NC, D)
        _chunk_kv_kernel[grid](ksf, vf, g, g_max, kv, ksum, S_pad, NC, D, L=L, BD=BD)
        ms = qf.new_empty(BH, NC + 1)
        Cs, ns = qf.new_empty(BH, NC + 1, D, D), qf.new_empty(BH, NC + 1, D)
        ms[:, 0], Cs[:, 0], ns[:, 0] = m0.reshape(BH), C0.reshape(BH, D, D), n0.reshape(BH, D)
        _chunk_states_kernel[(BH, triton.cdiv(D, STATE_ROWS))](kv, ksum, g_max, lf_tot, Cs, ns, ms, NC, D,
                                                               BD=BD, BR=STATE_ROWS)
        h = torch.empty_like(qf)
        M, den, norm = (torch.empty_like(i) for _ in range(3))
        _chunk_out_kernel[grid](qf, ksf, vf, i, lf_cum, Cs, ns, ms, h, M, den, norm, S_pad, NC, D, eps,
                                L=L, BD=BD, num_warps=_warps(L, BD))
        ctx.save_for_backward(qf, ksf, vf, i_raw, f_raw, m0, Cs, ns, ms, h, M, den, norm)
        ctx.L, ctx.eps, ctx.shape = L, eps, (B, NH, S, D)
        out = h.view(B, NH, S_pad, D)[:, :, :S]
        return (out.to(q.dtype), Cs[:, -1].reshape(B, NH, D, D).clone(), ns[:, -1].reshape(B, NH, D).clone(),
                ms[:, -1].reshape(B, NH, 1).clone())

    @staticmethod
    def backward(ctx, dh, dC_T, dn_T, dm_T):
        qf, ksf, vf, i_raw, f_raw, m0, Cs, ns, ms, h, M, den, norm = ctx.saved_tensors
        L, eps = ctx.L, ctx.eps
        B, NH, S, D = ctx.shape
        BH, BD = B * NH, max(16, triton.next_power_of_2(D))
        i, lf_cum, g, g_max = _chunk_gates(i_raw.float(), f_raw.float(), L)
        NC = i.shape[2]
        S_pad = NC * L
        lf_tot = lf_cum[..., -1].reshape(BH, NC)
        i, lf_cum, g = (x.reshape(BH, S_pad).contiguous() for x in (i, lf_cum, g))
        dhf = _flat(dh, L, 0.0)
        grid = (NC, BH)
        dq, dks, dv = (torch.empty_like(qf) for _ in range(3))
        dC_out, dn_out = qf.new_empty(BH, NC, D, D), qf.new_empty(BH, NC, D)
        dnorm, di, dlf_cum = (torch.empty_like(i) for _ in range(3))
        _chunk_bwd_kernel[grid](qf, ksf, vf, i, lf_cum, Cs, ns, ms, h, M, den, norm, dhf, dq, dks, dv,
                                dC_out, dn_out, dnorm, S_pad, NC, D, L=L, BD=BD, num_warps=_warps(L, BD))
        # gradient w.r.t. every chunk's end state, back through C_{c+1} = decay_c C_c + ...
        decay = torch.exp(lf_tot + ms[:, :-1] - ms[:, 1:]).contiguous()
        dC_end, dn_end = torch.empty_like(dC_out), torch.empty_like(dn_out)
        dC0, dn0 = qf.new_empty(BH, D, D), qf.new_empty(BH, D)
        _chunk_states_bwd_kernel[(BH, triton.cdiv(D, STATE_ROWS))](
            dC_out, dn_out, decay, dC_T.reshape(BH, D, D).float().contiguous(),
            dn_T.reshape(BH, D).float().contiguous(), dC_end, dn_end, dC0, dn0, NC, D, BD=BD, BR=STATE_ROWS)
        _chunk_state_bwd_kernel[grid](qf, ksf, vf, g, ms, dC_end, dn_end, dq, dks, dv, di, dlf_cum,
                                      S_pad, NC, D, L=L, BD=BD, num_warps=_warps(L, BD))
        # a chunk's end state is proportional to exp(lf_cum at the chunk end); m0 enters as C0, n0 exp(m0)
        dlf_cum = dlf_cum.view(BH, NC, L)
        dlf_cum[..., -1] += (dC_end * Cs[:, 1:]).sum((-1, -2)) + (dn_end * ns[:, 1:]).sum(-1)
        dm0 = (dC0 * Cs[:, 0]).sum((-1, -2)) + (dn0 * ns[:, 0]).sum(-1)
        dlf = dlf_cum.flip(-1).cumsum(-1).flip(-1)

        def unpad(x):  # [BH, S_pad(, D)] or [BH, NC, L] -> [B, NH, S(, D)]
            per_token = x.numel() == BH * S_pad
            return x.reshape(B, NH, S_pad, *(() if per_token else (D,)))[:, :, :S]

        dq, dks, dv, di, dlf, dnorm = (unpad(x) for x in (dq, dks, dv, di, dlf, dnorm))
        mu = unpad(lf_cum + M)
        dmu = eps * dnorm
        dm_final = (dm_T.reshape(BH) - (dC_T.reshape(BH, D, D) * Cs[:, -1]).sum((-1, -2))
                    - (dn_T.reshape(BH, D) * ns[:, -1]).sum(-1))
        dmu[..., -1] += dm_final.view(B, NH)
        di_m, dlf_m, dm0_m = _stabiliser_chain_grad(dmu, i_raw.float(), f_raw.float(), mu, m0.float())
        df = (dlf + dlf_m) * torch.sigmoid(-f_raw.float())
        dm0 = dm0.view(B, NH) + dm0_m
        return (dq, dks, dv, di + di_m, df, dC0.view(B, NH, D, D), dn0.view(B, NH, D), dm0[..., None],
                None, None)


def mlstm_chunkwise_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
                           fgate: torch.Tensor, chunk_size: int = 64, initial_state: State | None = None,
                           return_state: bool = False, eps: float = 1e-6):
    """Same contract as ``ref.mlstm_chunkwise``; chunk_size a power of two in [16, 64], DH <= 64."""
    _check_inputs(q, k, v, igate, fgate)
    B, NH, S, DH = q.shape
    if not supported(chunk_size, DH):
        raise ValueError(f"mlstm: the Triton kernels take a power-of-two chunk_size in [{MIN_CHUNK}, "
                         f"{MAX_CHUNK}] and DH <= {MAX_DH}, got chunk_size={chunk_size}, DH={DH}")
    if not q.is_cuda and not _interpreting():
        raise ValueError("mlstm: the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 on CPU)")
    if initial_state is None:
        state0 = mlstm_zero_state(B, NH, DH, q.device)
    else:
        _check_state(initial_state, q)
        state0 = tuple(s.float() for s in initial_state)
    ks = k.float() * (DH ** -0.5)
    h, C, n, m = _MLSTMTriton.apply(q.float(), ks, v.float(), igate.float(), fgate.float(), *state0,
                                    chunk_size, eps)
    h = h.to(q.dtype)
    return (h, (C, n, m)) if return_state else h
