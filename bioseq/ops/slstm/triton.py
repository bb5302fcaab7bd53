"""Triton kernels for ``slstm_scan`` (same contract, layouts and formulas as ``ref.slstm_scan``).

One program owns one (batch item, head) and walks the sequence, holding the head's recurrent kernel
(four [DH, DH] tiles, one per gate) and its state (h, c, n, m) in registers.
- ``_slstm_fwd_kernel``: per step raw = wx_t + b + R^T h_{t-1} (stored: the gate pre-activations), the
  stabilised gates and the new state (stored for every step).
- ``_slstm_bwd_kernel``: the reverse walk of ``ref._SLSTMScan.backward``: from the stored pre-activations
  and states it forms dL/draw_t (stored; it is dL/dwx_t) and carries dh, dc, dn (and, when a gradient
  reaches the returned m, c or n, the gradient through the max-recurrence of m) to step t - 1.
- torch: db = sum of dL/draw, dR = sum_t h_{t-1} dL/draw_t^T (one matmul), dm0.

Arithmetic is fp32; DH <= 64. On CPU the kernels run only under Triton's interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bioseq.ops.slstm.ref import State, _check, slstm_zero_state

MAX_DH = 64


def _interpreting() -> bool:
    return bool(triton.knobs.runtime.interpret)


@triton.jit
def _gate_cols(raw_ptr, base, g, NH, DH, d, mask):
    """raw[b, t, g, h, :] for a [B, S, 4, NH, DH] tensor (base points at [b, t, 0, h, 0])."""
    return tl.load(raw_ptr + base + g * NH * DH + d, mask=mask, other=0.0)


@triton.jit
def _slstm_fwd_kernel(wx_ptr, R_ptr, b_ptr, h0_ptr, c0_ptr, n0_ptr, m0_ptr, raw_ptr, st_ptr,
                      B, S, NH, DH, BD: tl.constexpr):
    """Grid (B * NH,). wx/raw [B, S, 4, NH, DH]; R [NH, DH, 4*DH]; b [4, NH, DH]; state0 [B, NH, DH];
    st [4, B, S + 1, NH, DH] (h, c, n, m; index 0 = the initial state)."""
    pid = tl.program_id(0)
    bb = (pid // NH).to(tl.int64)
    hh = (pid % NH).to(tl.int64)
    d_in = tl.arange(0, BD)
    d = tl.arange(0, BD)
    mask = d < DH
    mask2 = (d_in < DH)[:, None] & mask[None, :]
    rbase = hh * DH * 4 * DH
    Ri = tl.load(R_ptr + rbase + d_in[:, None] * 4 * DH + 0 * DH + d[None, :], mask=mask2, other=0.0)
    Rf = tl.load(R_ptr + rbase + d_in[:, None] * 4 * DH + 1 * DH + d[None, :], mask=mask2, other=0.0)
    Rz = tl.load(R_ptr + rbase + d_in[:, None] * 4 * DH + 2 * DH + d[None, :], mask=mask2, other=0.0)
    Ro = tl.load(R_ptr + rbase + d_in[:, None] * 4 * DH + 3 * DH + d[None, :], mask=mask2, other=0.0)
    bi = tl.load(b_ptr + (0 * NH + hh) * DH + d, mask=mask, other=0.0)
    bf = tl.load(b_ptr + (1 * NH + hh) * DH + d, mask=mask, other=0.0)
    bz = tl.load(b_ptr + (2 * NH + hh) * DH + d, mask=mask, other=0.0)
    bo = tl.load(b_ptr + (3 * NH + hh) * DH + d, mask=mask, other=0.0)
    s0 = (bb * NH + hh) * DH
    h = tl.load(h0_ptr + s0 + d, mask=mask, other=0.0)
    c = tl.load(c0_ptr + s0 + d, mask=mask, other=0.0)
    n = tl.load(n0_ptr + s0 + d, mask=mask, other=0.0)
    m = tl.load(m0_ptr + s0 + d, mask=mask, other=0.0)
    fresh = n == 0.0
    plane = B * (S + 1) * NH * DH                                   # one of h, c, n, m in st
    for t in range(0, S):
        base = ((bb * S + t) * 4 * NH + hh) * DH
        hr = h
        i = _gate_cols(wx_ptr, base, 0, NH, DH, d, mask) + bi + tl.sum(hr[:, None] * Ri, 0)
        f = _gate_cols(wx_ptr, base, 1, NH, DH, d, mask) + bf + tl.sum(hr[:, None] * Rf, 0)
        z = _gate_cols(wx_ptr, base, 2, NH, DH, d, mask) + bz + tl.sum(hr[:, None] * Rz, 0)
        o = _gate_cols(wx_ptr, base, 3, NH, DH, d, mask) + bo + tl.sum(hr[:, None] * Ro, 0)
        tl.store(raw_ptr + base + 0 * NH * DH + d, i, mask=mask)
        tl.store(raw_ptr + base + 1 * NH * DH + d, f, mask=mask)
        tl.store(raw_ptr + base + 2 * NH * DH + d, z, mask=mask)
        tl.store(raw_ptr + base + 3 * NH * DH + d, o, mask=mask)
        lf_m = tl.minimum(f, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f))) + m      # logsigmoid(f) + m
        m_new = tl.where(fresh & (t == 0), i, tl.maximum(lf_m, i))
        i_act = tl.exp(i - m_new)
        f_act = tl.exp(lf_m - m_new)
        z_act = 2.0 * tl.sigmoid(2.0 * z) - 1.0                              # tanh(z)
        c = f_act * c + i_act * z_act
        n = f_act * n + i_act
        m = m_new
        h = tl.sigmoid(o) * c / n
        sb = ((bb * (S + 1) + t + 1) * NH + hh) * DH
        tl.store(st_ptr + sb + d, h, mask=mask)
        tl.store(st_ptr + plane + sb + d, c, mask=mask)
        tl.store(st_ptr + 2 * plane + sb + d, n, mask=mask)
        tl.store(st_ptr + 3 * plane + sb + d, m, mask=mask)


@triton.jit
def _slstm_bwd_kernel(R_ptr, raw_ptr, st_ptr, gh_ptr, dcT_ptr, dnT_ptr, dmT_ptr, draw_ptr,
                      dh0_ptr, dc0_ptr, dn0_ptr, dmr_ptr, B, S, NH, DH,
                      CHAIN: tl.constexpr, BD: tl.constexpr):
    """Grid (B * NH,). gh [B, S, NH, DH] (dL/dh_t, the returned h_T's gradient added at t = S - 1);
    dcT, dnT, dmT [B, NH, DH] (dmT already minus c_T dc_T + n_T dn_T); draw [B, S, 4, NH, DH] out;
    dh0, dc0, dn0 and the stabiliser-chain remainder dmr [B, NH, DH] out."""
    pid = tl.program_id(0)
    bb = (pid // NH).to(tl.int64)
    hh = (pid % NH).to(tl.int64)
    d_in = tl.arange(0, BD)
    d = tl.arange(0, BD)
    mask = d < DH
    mask2 = (d_in < DH)[:, None] & mask[None, :]
    rbase = hh * DH * 4 * DH
    Ri = tl.load(R_ptr + rbase + d_in[:, None] * 4 * DH + 0 * DH + d[None, :], mask=mask2, other=0.0)
    Rf = tl.load(R_ptr + rbase + d_in[:, None] * 4 * DH + 1 * DH + d[None, :], mask=mask2, other=0.0)
    Rz = tl.load(R_ptr + rbase + d_in[:, None] * 4 * DH + 2 * DH + d[None, :], mask=mask2, other=0.0)
    Ro = tl.load(R_ptr + rbase + d_in[:, None] * 4 * DH + 3 * DH + d[None, :], mask=mask2, other=0.0)
    s0 = (bb * NH + hh) * DH
    dc = tl.load(dcT_ptr + s0 + d, mask=mask, other=0.0)
    dn = tl.load(dnT_ptr + s0 + d, mask=mask, other=0.0)
    dm = tl.load(dmT_ptr + s0 + d, mask=mask, other=0.0)
    dh_rec = tl.zeros([BD], dtype=tl.float32)
    plane = B * (S + 1) * NH * DH
    n0 = tl.load(st_ptr + 2 * plane + (bb * (S + 1) * NH + hh) * DH + d, mask=mask, other=1.0)
    for k in range(0, S):
        t = S - 1 - k
        base = ((bb * S + t) * 4 * NH + hh) * DH
        i = _gate_cols(raw_ptr, base, 0, NH, DH, d, mask)
        f = _gate_cols(raw_ptr, base, 1, NH, DH, d, mask)
        z = _gate_cols(raw_ptr, base, 2, NH, DH, d, mask)
        o = _gate_cols(raw_ptr, base, 3, NH, DH, d, mask)
        sb = ((bb * (S + 1) + t + 1) * NH + hh) * DH                        # step t's new state
        sp = ((bb * (S + 1) + t) * NH + hh) * DH                            # the state before step t
        h = tl.load(st_ptr + sb + d, mask=mask, other=0.0)
        c = tl.load(st_ptr + plane + sb + d, mask=mask, other=0.0)
        n = tl.load(st_ptr + 2 * plane + sb + d, mask=mask, other=1.0)
        m = tl.load(st_ptr + 3 * plane + sb + d, mask=mask, other=0.0)
        c_prev = tl.load(st_ptr + plane + sp + d, mask=mask, other=0.0)
        n_prev = tl.load(st_ptr + 2 * plane + sp + d, mask=mask, other=0.0)
        m_prev = tl.load(st_ptr + 3 * plane + sp + d, mask=mask, other=0.0)
        lf = tl.minimum(f, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f)))
        i_act = tl.exp(i - m)
        f_act = tl.exp(lf + m_prev - m)
        z_act = 2.0 * tl.sigmoid(2.0 * z) - 1.0
        o_act = tl.sigmoid(o)
        sig_nf = tl.sigmoid(-f)
        d_h = tl.load(gh_ptr + ((bb * S + t) * NH + hh) * DH + d, mask=mask, other=0.0) + dh_rec
        dc_tot = dc + d_h * o_act / n
        dn_tot = dn - d_h * h / n
        g_i = i_act * (z_act * dc_tot + dn_tot)
        g_f = f_act * (c_prev * dc_tot + n_prev * dn_tot) * sig_nf
        g_z = i_act * (1.0 - z_act * z_act) * dc_tot
        g_o = d_h * c / n * o_act * (1.0 - o_act)
        if CHAIN:
            took_i = (i >= lf + m_prev) | ((n0 == 0.0) & (t == 0))
            g_i += tl.where(took_i, dm, 0.0)
            g_f += tl.where(took_i, 0.0, dm * sig_nf)
            dm = tl.where(took_i, 0.0, dm)
        tl.store(draw_ptr + base + 0 * NH * DH + d, g_i, mask=mask)
        tl.store(draw_ptr + base + 1 * NH * DH + d, g_f, mask=mask)
        tl.store(draw_ptr + base + 2 * NH * DH + d, g_z, mask=mask)
        tl.store(draw_ptr + base + 3 * NH * DH + d, g_o, mask=mask)
        dh_rec = (tl.sum(Ri * g_i[None, :], 1) + tl.sum(Rf * g_f[None, :], 1)
                  + tl.sum(Rz * g_z[None, :], 1) + tl.sum(Ro * g_o[None, :], 1))
        dc = dc_tot * f_act
        dn = dn_tot * f_act
    tl.store(dh0_ptr + s0 + d_in, dh_rec, mask=d_in < DH)
    tl.store(dc0_ptr + s0 + d, dc, mask=mask)
    tl.store(dn0_ptr + s0 + d, dn, mask=mask)
    tl.store(dmr_ptr + s0 + d, dm, mask=mask)


def _warps(DH: int) -> int:
    return 4 if DH <= 32 else 8


class _SLSTMTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, wx, R, b, h0, c0, n0, m0):
        B, S, _, NH, DH = wx.shape
        BD = max(16, triton.next_power_of_2(DH))
        raw = torch.empty_like(wx)
        st = wx.new_empty(4, B, S + 1, NH, DH)
        st[0, :, 0], st[1, :, 0], st[2, :, 0], st[3, :, 0] = h0, c0, n0, m0
        _slstm_fwd_kernel[(B * NH,)](wx, R, b, h0, c0, n0, m0, raw, st, B, S, NH, DH, BD=BD,
                                     num_warps=_warps(DH))
        ctx.save_for_backward(R, raw, st)
        return (st[0, :, 1:], *(st[j, :, -1].clone() for j in range(4)))

    @staticmethod
    def backward(ctx, dh, dh_T, dc_T, dn_T, dm_T):
        R, raw, st = ctx.saved_tensors
        B, S, _, NH, DH = raw.shape
        BD = max(16, triton.next_power_of_2(DH))
        gh = dh.contiguous().clone()
        gh[:, -1] += dh_T
        dm = (dm_T - dc_T * st[1, :, -1] - dn_T * st[2, :, -1]).contiguous()
        chain = bool(dm.any())
        draw = torch.empty_like(raw)
        dh0, dc0, dn0, dmr = (raw.new_empty(B, NH, DH) for _ in range(4))
        _slstm_bwd_kernel[(B * NH,)](R, raw, st, gh, dc_T.contiguous(), dn_T.contiguous(), dm, draw,
                                     dh0, dc0, dn0, dmr, B, S, NH, DH, CHAIN=chain, BD=BD,
                                     num_warps=_warps(DH))
        db = draw.sum((0, 1))
        h_in = st[0, :, :-1]                                                   # [B, S, NH, DH]
        dR = torch.einsum("bshd,bsghk->hdgk", h_in, draw).reshape(NH, DH, 4 * DH)
        dm0 = dc0 * st[1, :, 0] + dn0 * st[2, :, 0] + dmr                     # m0 rescales c0, n0
        return draw, dR, db, dh0, dc0, dn0, dm0


def slstm_scan_triton(wx: torch.Tensor, R: torch.Tensor, b: torch.Tensor, initial_state: State | None = None):
    """Same contract as ``ref.slstm_scan``; DH <= 64."""
    _check(wx, R, b, initial_state, step=False)
    B, S, _, NH, DH = wx.shape
    if DH > MAX_DH:
        raise ValueError(f"slstm: the Triton kernels take DH <= {MAX_DH}, got {DH}")
    if not wx.is_cuda and not _interpreting():
        raise ValueError("slstm: the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 on CPU)")
    state = initial_state or slstm_zero_state(B, NH, DH, wx.device)
    h, *last = _SLSTMTriton.apply(wx.float().contiguous(), R.float().contiguous(), b.float().contiguous(),
                                  *(s.float().contiguous() for s in state))
    return h.to(wx.dtype), tuple(last)
