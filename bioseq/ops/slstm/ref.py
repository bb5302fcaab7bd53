"""Reference sLSTM cell (scalar memory, exponential input gate, per-head recurrence): spec and CPU path.

Layouts (B batch, S length, NH heads, DH head dim; gate order i, f, z, o everywhere):
- wx [B, S, 4, NH, DH]: the gate pre-activations computed from the input (the ``xlstm`` package's "BSGNH").
- R [NH, DH, 4 * DH]: block-diagonal recurrent kernel, ``R[h, d, g * DH + j]`` maps h_{t-1}[h, d] to gate g,
  unit j of head h. This is the package's external ``recurrent_kernel`` [NH, DH, 4, DH] flattened, i.e. its
  CUDA-backend layout; the vanilla backend stores ``R.view(NH, DH, 4, DH).permute(0, 2, 3, 1)`` flattened
  to [NH, 4 * DH, DH].
- b [4, NH, DH] (the vanilla layout; the CUDA backend's head-major bias is ``b.transpose(0, 1)``).
- state (h, c, n, m), each [B, NH, DH], float32 (float64 for float64 inputs); zeros for a fresh sequence.

One step, with raw = wx_t + R h_{t-1} + b split into i, f, z, o::

    m_t = max(logsigmoid(f) + m_{t-1}, i)        (m_t = i where n_{t-1} == 0, i.e. on a fresh state)
    c_t = exp(logsigmoid(f) + m_{t-1} - m_t) c_{t-1} + exp(i - m_t) tanh(z)
    n_t = exp(logsigmoid(f) + m_{t-1} - m_t) n_{t-1} + exp(i - m_t)
    h_t = sigmoid(o) c_t / n_t

m only rescales c and n (the unstabilised memory is c exp(m)), so h does not depend on it. ``slstm_scan``
runs the loop without autograd and back-propagates through a written-out BPTT over the stored gate
pre-activations and states, holding the stabiliser constant (exact for h); the gradient of a returned m
and of the returned c, n through m is added by back-propagating through the max-recurrence of m alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def slstm_zero_state(B: int, NH: int, DH: int, device=None, dtype: torch.dtype = torch.float32) -> State:
    """(h, c, n, m), each [B, NH, DH] zeros: the state a fresh sequence starts from."""
    return tuple(torch.zeros(B, NH, DH, device=device, dtype=dtype) for _ in range(4))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check(wx: torch.Tensor, R: torch.Tensor, b: torch.Tensor, state: State | None, step: bool) -> None:
    shape = "[B, 4, NH, DH]" if step else "[B, S, 4, NH, DH]"
    if wx.dim() != (4 if step else 5) or wx.shape[-3] != 4:
        raise ValueError(f"slstm: wx must be {shape} (gates i, f, z, o), got {tuple(wx.shape)}")
    NH, DH = wx.shape[-2:]
    if tuple(R.shape) != (NH, DH, 4 * DH):
        raise ValueError(f"slstm: R must be [NH, DH, 4 * DH] = {(NH, DH, 4 * DH)}, got {tuple(R.shape)}")
    if tuple(b.shape) != (4, NH, DH):
        raise ValueError(f"slstm: b must be [4, NH, DH] = {(4, NH, DH)}, got {tuple(b.shape)}")
    if state is not None:
        want = (wx.shape[0], NH, DH)
        got = [tuple(s.shape) for s in state]
        if len(state) != 4 or any(g != want for g in got):
            raise ValueError(f"slstm: state must be (h, c, n, m), each {want}, got {got}")


# ---------------------------------------------------------------- the spec: one step, a loop of steps

def slstm_step(wx_t: torch.Tensor, R: torch.Tensor, b: torch.Tensor,
               state: State) -> tuple[torch.Tensor, State]:
    """One token. wx_t [B, 4, NH, DH]; R [NH, DH, 4 * DH]; b [4, NH, DH]; state (h, c, n, m) [B, NH, DH].
    Returns (h_t [B, NH, DH], new state), in the state's dtype."""
    _check(wx_t, R, b, state, step=True)
    h, c, n, m = state
    ct = c.dtype
    B, _, NH, DH = wx_t.shape
    rh = torch.einsum("bhd,hdk->bhk", h, R.to(ct)).view(B, NH, 4, DH).transpose(1, 2)   # [B, 4, NH, DH]
    i, f, z, o = (wx_t.to(ct) + rh + b.to(ct)).unbind(1)
    lf_m = F.logsigmoid(f) + m
    m_new = torch.where(n == 0, i, torch.maximum(lf_m, i))
    i_act, f_act = torch.exp(i - m_new), torch.exp(lf_m - m_new)
    c = f_act * c + i_act * torch.tanh(z)
    n = f_act * n + i_act
    h = torch.sigmoid(o) * c / n
    return h, (h, c, n, m_new)


def slstm_scan_ref(wx: torch.Tensor, R: torch.Tensor, b: torch.Tensor, initial_state: State | None = None):
    """``slstm_step`` over every token with plain autograd (readable, slow): h [B, S, NH, DH], final state."""
    _check(wx, R, b, initial_state, step=False)
    B, S, _, NH, DH = wx.shape
    state = initial_state or slstm_zero_state(B, NH, DH, wx.device, _compute_dtype(wx))
    hs = []
    for t in range(S):
        h, state = slstm_step(wx[:, t], R, b, state)
        hs.append(h)
    return torch.stack(hs, dim=1), state


# ---------------------------------------------------------------- the CPU path: loop + written-out BPTT

def _took_input_gate(i, lf, m, n0):
    """[S, ...] bool: whether m_t = i_t (else m_t = lf_t + m_{t-1}); m [S+1, ...] includes m_0."""
    took = i >= lf + m[:-1]
    took[0] |= n0 == 0
    return took


class _SLSTMScan(torch.autograd.Function):
    """Inputs: wx [B, S, 4, NH, DH], R, b, h0, c0, n0, m0 (one float dtype). Outputs h [B, S, NH, DH] and the
    final h, c, n, m."""

    @staticmethod
    def forward(ctx, wx, R, b, h0, c0, n0, m0):
        B, S, _, NH, DH = wx.shape
        # internal layout [S, NH, B, 4 * DH]: a step's recurrent term is one bmm of h [NH, B, DH] with R
        wxb = (wx + b).permute(1, 3, 0, 2, 4).reshape(S, NH, B, 4 * DH)
        raw = torch.empty_like(wxb)
        hs, cs, ns, ms = (wx.new_empty(S + 1, NH, B, DH) for _ in range(4))
        for buf, s0 in zip((hs, cs, ns, ms), (h0, c0, n0, m0)):
            buf[0] = s0.transpose(0, 1)
        # per-step views made once (indexing inside the loop costs more than the arithmetic at these sizes)
        wxb_t, raw_t = wxb.unbind(0), raw.unbind(0)
        i_t, f_t, z_t, o_t = (g.unbind(0) for g in raw.view(S, NH, B, 4, DH).unbind(3))
        hs_t, cs_t, ns_t, ms_t = (x.unbind(0) for x in (hs, cs, ns, ms))
        fresh = ns[0] == 0
        for t in range(S):
            torch.baddbmm(wxb_t[t], hs_t[t], R, out=raw_t[t])
            i = i_t[t]
            lf_m = F.logsigmoid(f_t[t]).add_(ms_t[t])
            m_new = torch.maximum(lf_m, i, out=ms_t[t + 1])
            if t == 0:
                m_new.copy_(torch.where(fresh, i, m_new))
            i_act = torch.sub(i, m_new).exp_()
            f_act = lf_m.sub_(m_new).exp_()
            c_new = torch.mul(f_act, cs_t[t], out=cs_t[t + 1]).addcmul_(i_act, z_t[t].tanh())
            n_new = torch.addcmul(i_act, f_act, ns_t[t], out=ns_t[t + 1])
            torch.mul(o_t[t].sigmoid(), c_new / n_new, out=hs_t[t + 1])
        ctx.save_for_backward(R, raw, hs, cs, ns, ms)
        h = hs[1:].permute(2, 0, 1, 3)                                         # [B, S, NH, DH]
        last = [x[-1].transpose(0, 1).clone() for x in (hs, cs, ns, ms)]
        return (h, *last)

    @staticmethod
    def backward(ctx, dh, dh_T, dc_T, dn_T, dm_T):
        R, raw, hs, cs, ns, ms = ctx.saved_tensors
        S, NH, B, _ = raw.shape
        DH = R.shape[1]
        i, f, z, o = raw.view(S, NH, B, 4, DH).unbind(3)
        m_prev, m = ms[:-1], ms[1:]
        lf = F.logsigmoid(f)
        i_act, f_act = torch.exp(i - m), torch.exp(lf + m_prev - m)
        z_act, o_act = torch.tanh(z), torch.sigmoid(o)
        c, n = cs[1:], ns[1:]
        sig_nf = torch.sigmoid(-f)                                             # d logsigmoid(f) / df
        # draw_t = dc_tot * P_t + dn_tot * Q_t + dh_t * O_t, gates stacked on dim 3
        zero = torch.zeros_like(i)
        P = torch.stack([i_act * z_act, f_act * cs[:-1] * sig_nf, i_act * (1 - z_act * z_act), zero], 3)
        Q = torch.stack([i_act, f_act * ns[:-1] * sig_nf, zero, zero], 3)
        O = torch.stack([zero, zero, zero, c / n * o_act * (1 - o_act)], 3)
        # dh, dc, dn are carried as [NH, B, 1, DH] so that they broadcast over the gate axis of draw
        dc_coef, dn_coef = (o_act / n)[:, :, :, None], (hs[1:] / n)[:, :, :, None]  # dh -> dc (+), dn (-)
        gh = dh.permute(1, 2, 0, 3).contiguous()                               # [S, NH, B, DH]
        gh[-1] += dh_T.transpose(0, 1)
        draw = torch.empty_like(raw)
        R_t = R.transpose(1, 2)
        dh_rec = torch.zeros_like(gh[0])
        dc, dn = (x.transpose(0, 1)[:, :, None].contiguous() for x in (dc_T, dn_T))
        # The returned m, and the returned c, n through it (the constant-stabiliser gradient misses
        # -c dc_T - n dn_T there), go back through m_t = max(lf_t + m_{t-1}, i_t) alongside.
        dm = (dm_T - dc_T * cs[-1].transpose(0, 1) - dn_T * ns[-1].transpose(0, 1)).transpose(0, 1)
        chain = bool(dm.any())
        if chain:
            dm = dm.contiguous()
            took_i = _took_input_gate(i, lf, ms, ns[0]).to(i.dtype)
            to_f, keep = (1 - took_i) * sig_nf, 1 - took_i
        gh_t = gh[:, :, :, None].unbind(0)
        draw_t, draw4_t = draw.unbind(0), draw.view(S, NH, B, 4, DH).unbind(0)
        P_t, Q_t, O_t, f_act_t = P.unbind(0), Q.unbind(0), O.unbind(0), f_act[:, :, :, None].unbind(0)
        dc_coef_t, dn_coef_t = dc_coef.unbind(0), dn_coef.unbind(0)
        for t in range(S - 1, -1, -1):
            d_h = dh_rec.view(NH, B, 1, DH).add_(gh_t[t])
            dc_tot = torch.addcmul(dc, d_h, dc_coef_t[t])
            dn_tot = torch.addcmul(dn, d_h, dn_coef_t[t], value=-1.0)
            d = torch.mul(P_t[t], dc_tot, out=draw4_t[t]).addcmul_(Q_t[t], dn_tot).addcmul_(O_t[t], d_h)
            if chain:
                d[:, :, 0].addcmul_(took_i[t], dm)
                d[:, :, 1].addcmul_(to_f[t], dm)
                dm.mul_(keep[t])
            dh_rec = torch.bmm(draw_t[t], R_t)
            dc, dn = dc_tot.mul_(f_act_t[t]), dn_tot.mul_(f_act_t[t])
        dc, dn = dc[:, :, 0], dn[:, :, 0]
        dh0, dc0, dn0 = dh_rec, dc, dn
        dm0 = dc0 * cs[0] + dn0 * ns[0] + (dm if chain else 0.0)   # m0 rescales c0, n0

        dwx = draw.view(S, NH, B, 4, DH).permute(2, 0, 3, 1, 4)                # [B, S, 4, NH, DH]
        db = dwx.sum((0, 1))
        h_in = hs[:-1].permute(1, 0, 2, 3).reshape(NH, S * B, DH)
        dR = h_in.transpose(1, 2) @ draw.permute(1, 0, 2, 3).reshape(NH, S * B, 4 * DH)
        return (dwx, dR, db, *(x.transpose(0, 1) for x in (dh0, dc0, dn0, dm0)))


def slstm_scan(wx: torch.Tensor, R: torch.Tensor, b: torch.Tensor, initial_state: State | None = None):
    """sLSTM over a sequence.

    Args:
        wx: [B, S, 4, NH, DH] gate pre-activations from the input (gates i, f, z, o);
        R: [NH, DH, 4 * DH]; b: [4, NH, DH]; initial_state: (h, c, n, m) [B, NH, DH] or None (zeros).
    Returns:
        h [B, S, NH, DH] in wx's dtype, and the final (h, c, n, m) (float32; float64 for float64 inputs).
    Memory kept for the backward: the gate pre-activations and the four states at every step.
    """
    _check(wx, R, b, initial_state, step=False)
    B, S, _, NH, DH = wx.shape
    ct = _compute_dtype(wx)
    state = initial_state or slstm_zero_state(B, NH, DH, wx.device, ct)
    h, *last = _SLSTMScan.apply(wx.to(ct), R.to(ct), b.to(ct), *(s.to(ct) for s in state))
    return h.to(wx.dtype), tuple(last)
