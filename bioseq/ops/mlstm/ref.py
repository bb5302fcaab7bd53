"""Reference mLSTM cell (matrix memory, exponential input gate, sigmoid forget gate): spec and CPU path.

Shapes: q, k, v [B, NH, S, DH]; igate, fgate [B, NH, S] (pre-activations). Keys are scaled by 1/sqrt(DH).
With ``lf_t = logsigmoid(f_t)`` the recurrence over t = 1..S, from a state (C [DH, DH], n [DH], m) is::

    m_t = max(lf_t + m_{t-1}, i_t)                                   (the stabiliser)
    C_t = exp(lf_t + m_{t-1} - m_t) C_{t-1} + exp(i_t - m_t) k_t v_t^T / sqrt(DH)
    n_t = exp(lf_t + m_{t-1} - m_t) n_{t-1} + exp(i_t - m_t) k_t / sqrt(DH)
    h_t = C_t^T q_t / (max(|n_t . q_t|, exp(-m_t)) + eps)

A fresh sequence starts from C = 0, n = 0, m = 0 (``mlstm_zero_state``). The stabiliser only rescales C and
n (the unstabilised memory is ``C exp(m)``), so h depends on it only through ``eps * exp(m_t)`` and the
lower bound ``exp(-m_t)``: every form below uses the same m_t as the recurrence, except the parallel form,
which (like the ``xlstm`` package's) takes the row maximum of its decay matrix and so leaves out the
``m_0 + sum lf`` term of the zero initial state; the two agree up to ``eps * exp(m_t)`` with m_t <= 0.

- ``mlstm_parallel``: the quadratic form (O(S^2) memory): the spec.
- ``mlstm_step`` / ``mlstm_recurrent``: one token / a loop of steps (state C [B, NH, DH, DH], n [B, NH, DH],
  m [B, NH, 1]; the state is float32, float64 for float64 inputs).
- ``mlstm_chunkwise_autograd``: chunks of ``chunk_size`` tokens, quadratic inside a chunk, the recurrence
  between chunks; plain autograd (its graph keeps several [S, chunk_size] tensors per head).
- ``mlstm_chunkwise``: the same forward as a ``torch.autograd.Function`` that keeps only its inputs, the
  output, three numbers per token and the per-chunk states, and recomputes the intra-chunk matrices in a
  written-out backward. It works on chunk-major copies ([NC, B, NH, L, DH]) a group of chunks at a time
  (about ``GROUP_ELEMENTS`` elements of [chunk, chunk] matrices), so that the intermediates stay in cache.

The backward of ``mlstm_chunkwise`` treats every stabiliser as a constant (exact, since h does not depend
on them) and then adds the gradient that does flow through m_t (the eps term, and the final m when the
state is returned) by back-propagating through the max-recurrence of m alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def mlstm_zero_state(B: int, NH: int, DH: int, device=None, dtype: torch.dtype = torch.float32) -> State:
    """The state a fresh sequence starts from: C [B, NH, DH, DH] = 0, n [B, NH, DH] = 0, m [B, NH, 1] = 0."""
    return (torch.zeros(B, NH, DH, DH, device=device, dtype=dtype),
            torch.zeros(B, NH, DH, device=device, dtype=dtype),
            torch.zeros(B, NH, 1, device=device, dtype=dtype))


def _check_inputs(q, k, v, igate, fgate) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"mlstm: q, k, v must all be [B, NH, S, DH], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if igate.shape != q.shape[:3] or fgate.shape != q.shape[:3]:
        raise ValueError(f"mlstm: igate and fgate must be [B, NH, S] = {tuple(q.shape[:3])}, "
                         f"got {tuple(igate.shape)} and {tuple(fgate.shape)}")


def _check_state(state: State, q: torch.Tensor) -> None:
    B, NH, _, DH = q.shape
    want = ((B, NH, DH, DH), (B, NH, DH), (B, NH, 1))
    got = tuple(tuple(s.shape) for s in state)
    if got != want:
        raise ValueError(f"mlstm: state must be C {want[0]}, n {want[1]}, m {want[2]}, got {got}")


# ---------------------------------------------------------------- parallel form (the spec)

def mlstm_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
                   fgate: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Quadratic form. h[t] = sum_{s<=t} (q_t . k_s / sqrt(DH)) D[t, s] v_s / (max(|row sum|, exp(-m_t))
    + eps) with log D[t, s] = i_s + sum_{u=s+1..t} lf_u, stabilised by its row maximum m_t.
    Returns h [B, NH, S, DH] in q's dtype."""
    _check_inputs(q, k, v, igate, fgate)
    S, DH = q.shape[-2:]
    ct = _compute_dtype(q)
    q, k, v, igate, fgate = (x.to(ct) for x in (q, k, v, igate, fgate))
    lf_cum = F.logsigmoid(fgate).cumsum(-1)                                   # [B, NH, S]
    causal = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()
    log_d = lf_cum[..., :, None] - lf_cum[..., None, :] + igate[..., None, :]  # [B, NH, S(t), S(s)]
    log_d = log_d.masked_fill(~causal, float("-inf"))
    m = log_d.amax(-1, keepdim=True)                                           # [B, NH, S, 1]
    scores = (q @ k.transpose(-1, -2)) * (DH ** -0.5) * torch.exp(log_d - m)
    normaliser = torch.maximum(scores.sum(-1, keepdim=True).abs(), torch.exp(-m)) + eps
    return ((scores / normaliser) @ v).to(v.dtype)


# ---------------------------------------------------------------- recurrent form

def mlstm_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor, fgate: torch.Tensor,
               state: State, eps: float = 1e-6) -> tuple[torch.Tensor, State]:
    """One token: q, k, v [B, NH, DH]; igate, fgate [B, NH]; state (C, n, m) as ``mlstm_zero_state``.
    Returns (h [B, NH, DH] in q's dtype, new state in the state's dtype)."""
    C, n, m = state
    ct, out_dtype = C.dtype, q.dtype
    DH = q.shape[-1]
    q, k, v = q.to(ct), k.to(ct) * (DH ** -0.5), v.to(ct)
    i, lf = igate.to(ct)[..., None], F.logsigmoid(fgate.to(ct))[..., None]    # [B, NH, 1]
    m_new = torch.maximum(lf + m, i)
    f_act, i_act = torch.exp(lf + m - m_new), torch.exp(i - m_new)
    C = f_act[..., None] * C + i_act[..., None] * (k[..., :, None] * v[..., None, :])
    n = f_act * n + i_act * k
    num = (q[..., None, :] @ C).squeeze(-2)                                    # C^T q: [B, NH, DH]
    den = torch.maximum((q * n).sum(-1, keepdim=True).abs(), torch.exp(-m_new)) + eps
    return (num / den).to(out_dtype), (C, n, m_new)


def mlstm_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
                    fgate: torch.Tensor, initial_state: State | None = None, return_state: bool = False,
                    eps: float = 1e-6):
    """``mlstm_step`` over every token (readable, slow): h [B, NH, S, DH] (, final state)."""
    _check_inputs(q, k, v, igate, fgate)
    B, NH, S, DH = q.shape
    state = initial_state
    if state is None:
        state = mlstm_zero_state(B, NH, DH, q.device, _compute_dtype(q))
    hs = []
    for t in range(S):
        h, state = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], igate[:, :, t], fgate[:, :, t], state, eps)
        hs.append(h)
    h = torch.stack(hs, dim=2).to(q.dtype)
    return (h, state) if return_state else h


# ---------------------------------------------------------------- chunkwise form

def _chunks(x: torch.Tensor, L: int, fill: float) -> torch.Tensor:
    """[B, NH, S, ...] -> [B, NH, NC, L, ...], padding the sequence with `fill` up to NC * L."""
    S = x.shape[2]
    pad = -S % L
    if pad:
        shape = list(x.shape)
        shape[2] = pad
        x = torch.cat([x, x.new_full(shape, fill)], dim=2)
    return x.reshape(x.shape[0], x.shape[1], -1, L, *x.shape[3:])


def _chunk_gates(igate: torch.Tensor, fgate: torch.Tensor, L: int):
    """Per-chunk log gates. Padding tokens (after S) have i = -inf and lf = 0: they change nothing.

    Returns i [B, NH, NC, L], lf_cum (within-chunk inclusive cumsum of lf) [B, NH, NC, L],
    g = i_s + sum_{u>s in chunk} lf_u (log weight of token s in its chunk's end state) [B, NH, NC, L] and
    g_max = max_s g [B, NH, NC]."""
    i = _chunks(igate, L, float("-inf"))
    lf_cum = _chunks(F.logsigmoid(fgate), L, 0.0).cumsum(-1)
    g = i + lf_cum[..., -1:] - lf_cum
    return i, lf_cum, g, g.amax(-1)


def _chunk_states(ks, v, lf_cum, g, g_max, state0: State):
    """The state at the start of every chunk, and at the end of the last.

    Returns C [B, NH, NC+1, DH, DH], n [B, NH, NC+1, DH], m [B, NH, NC+1]."""
    w = torch.exp(g - g_max[..., None])[..., None]                             # [B, NH, NC, L, 1]
    kv = (ks * w).transpose(-1, -2) @ v                                        # [B, NH, NC, DH, DH]
    ksum = (ks * w).sum(-2)                                                    # [B, NH, NC, DH]
    C, n, m = state0[0], state0[1], state0[2][..., 0]
    Cs, ns, ms = [C], [n], [m]
    lf_tot = lf_cum[..., -1]
    for c in range(kv.shape[2]):
        m_new = torch.maximum(lf_tot[:, :, c] + m, g_max[:, :, c])
        decay, scale = torch.exp(lf_tot[:, :, c] + m - m_new), torch.exp(g_max[:, :, c] - m_new)
        C = decay[..., None, None] * C + scale[..., None, None] * kv[:, :, c]
        n = decay[..., None] * n + scale[..., None] * ksum[:, :, c]
        m = m_new
        Cs.append(C)
        ns.append(n)
        ms.append(m)
    return torch.stack(Cs, 2), torch.stack(ns, 2), torch.stack(ms, 2)


def _chunk_outputs(qc, ksc, vc, i, lf_cum, C0, n0, m0, eps: float):
    """Outputs of every chunk from its start state (C0 [.., NC, DH, DH], n0 [.., NC, DH], m0 [.., NC]).

    Returns h [B, NH, NC, L, DH] and the pieces the backward reuses: the stabiliser mu [.., NC, L]
    (= the recurrent m_t), the intra-chunk matrices A = (q.k) * D and D, the inter weight w [.., NC, L],
    the normaliser's argument den and the normaliser N."""
    L = qc.shape[-2]
    causal = torch.ones(L, L, dtype=torch.bool, device=qc.device).tril()
    log_d = lf_cum[..., :, None] - lf_cum[..., None, :] + i[..., None, :]
    log_d = log_d.masked_fill(~causal, float("-inf"))
    log_w = lf_cum + m0[..., None]                                             # inter-chunk log weight
    mu = torch.maximum(log_w, log_d.amax(-1))
    d = torch.exp(log_d - mu[..., None])
    w = torch.exp(log_w - mu)
    a = (qc @ ksc.transpose(-1, -2)) * d
    num = a @ vc + w[..., None] * (qc @ C0)
    den = a.sum(-1) + w * (qc * n0[..., None, :]).sum(-1)
    normaliser = torch.maximum(den.abs(), torch.exp(-mu)) + eps
    return num / normaliser[..., None], (mu, a, d, w, den, normaliser)


def _prepare(q, k, v, igate, fgate, chunk_size: int, initial_state: State | None):
    _check_inputs(q, k, v, igate, fgate)
    if chunk_size < 1:
        raise ValueError(f"mlstm: chunk_size must be >= 1, got {chunk_size}")
    B, NH, S, DH = q.shape
    ct = _compute_dtype(q)
    L = min(chunk_size, S)
    if initial_state is None:
        state0 = mlstm_zero_state(B, NH, DH, q.device, ct)
    else:
        _check_state(initial_state, q)
        state0 = tuple(s.to(ct) for s in initial_state)
    q, k, v, igate, fgate = (x.to(ct) for x in (q, k, v, igate, fgate))
    return L, state0, q, k * (DH ** -0.5), v, igate, fgate


def mlstm_chunkwise_autograd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
                             fgate: torch.Tensor, chunk_size: int = 64, initial_state: State | None = None,
                             return_state: bool = False, eps: float = 1e-6):
    """Chunkwise form with plain autograd (the readable version of ``mlstm_chunkwise``)."""
    S = q.shape[2]
    L, state0, q_, ks, v_, i_, f_ = _prepare(q, k, v, igate, fgate, chunk_size, initial_state)
    i, lf_cum, g, g_max = _chunk_gates(i_, f_, L)
    ksc, vc = _chunks(ks, L, 0.0), _chunks(v_, L, 0.0)
    Cs, ns, ms = _chunk_states(ksc, vc, lf_cum, g, g_max, state0)
    h, _ = _chunk_outputs(_chunks(q_, L, 0.0), ksc, vc, i, lf_cum, Cs[:, :, :-1], ns[:, :, :-1],
                          ms[:, :, :-1], eps)
    h = h.flatten(2, 3)[:, :, :S].to(q.dtype)
    if return_state:
        return h, (Cs[:, :, -1], ns[:, :, -1], ms[:, :, -1, None])
    return h


def _segment_reverse_sum(g: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """a[r] = sum of g[r..e_r-1] where e_r is the first u > r with starts[u] (S when none); last dim."""
    S = g.shape[-1]
    idx = torch.arange(S, device=g.device).expand_as(g)
    marker = torch.where(starts, idx, S)
    nxt = torch.cat([marker[..., 1:], marker.new_full((*g.shape[:-1], 1), S)], dim=-1)
    end = nxt.flip(-1).cummin(-1).values.flip(-1)
    tail = torch.cat([g.flip(-1).cumsum(-1).flip(-1), g.new_zeros(*g.shape[:-1], 1)], dim=-1)
    return tail[..., :S] - tail.gather(-1, end)


def _stabiliser_chain_grad(dmu, i_raw, f_raw, mu, m0):
    """Gradient of sum_t dmu_t * m_t through m_t = max(lf_t + m_{t-1}, i_t) (all [B, NH, S]; m0 [B, NH, 1]).

    Returns (di, dlf, dm0)."""
    lf = F.logsigmoid(f_raw)
    m_prev = torch.cat([m0, mu[..., :-1]], dim=-1)
    took_i = i_raw >= lf + m_prev
    chain = _segment_reverse_sum(dmu, took_i)
    return (torch.where(took_i, chain, 0.0), torch.where(took_i, 0.0, chain),
            torch.where(took_i[..., 0], 0.0, chain[..., 0]))


# Chunks are processed in groups whose [chunk, chunk] matrices hold about this many elements, so that a
# group's intermediates stay in the CPU caches (the work is memory-bound at long S otherwise).
GROUP_ELEMENTS = 1 << 18


def _group_size(B: int, NH: int, L: int, DH: int) -> int:
    return max(1, GROUP_ELEMENTS // (B * NH * L * max(L, DH)))


def _decay_matrix(u, M):
    """D[r, s] = exp(u_s - M_r) for s <= r, else 0: [..., L, L]."""
    L = u.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=u.device).tril()
    diff = u[..., None, :] - M[..., :, None]
    return diff.masked_fill_(~causal, float("-inf")).exp_()


class _Chunked:
    """The inputs cut into chunks, chunk-major so that a group of chunks is one contiguous block:
    q, ks, v [NC, B, NH, L, DH]; per token i, lf_cum, g [NC, B, NH, L]; per chunk g_max, lf_tot [NC, B, NH]
    (see ``_chunk_gates``). q, ks, v are stored [NC, B, NH, DH, L] (and held as transposed views) when the
    caller's tensors run along S in memory (``positions_adjacent``: the xLSTM layer's channel-major views),
    so that cutting them into chunks, and writing their gradients back, copies runs of adjacent elements."""

    def __init__(self, q, ks, v, i_raw, f_raw, L: int, chunk_major: bool = False):
        if chunk_major:                                          # q, ks, v already [NC, B, NH, L, DH]
            self.q, self.ks, self.v = q, ks, v
        else:
            self.q, self.ks, self.v = (to_chunks(t, L) for t in (q, ks, v))
        i, lf_cum, g, g_max = (to_chunk_major(t) for t in _chunk_gates(i_raw, f_raw, L))
        self.i, self.lf_cum, self.g, self.g_max = i, lf_cum, g, g_max
        self.lf_tot = lf_cum[..., -1]
        self.NC, B, NH, L, DH = self.q.shape
        self.G = _group_size(B, NH, L, DH)

    def groups(self):
        return [slice(c0, min(c0 + self.G, self.NC)) for c0 in range(0, self.NC, self.G)]


def to_chunk_major(t: torch.Tensor) -> torch.Tensor:
    """[B, NH, NC, ...] -> contiguous [NC, B, NH, ...]."""
    return t.movedim(2, 0).contiguous()


def positions_adjacent(t: torch.Tensor) -> bool:
    """True when consecutive positions of ``t [B, NH, S, DH]`` are adjacent in memory (stride 1 along S)."""
    return t.shape[2] > 1 and t.stride(2) == 1


def to_chunks(t: torch.Tensor, L: int) -> torch.Tensor:
    """[B, NH, S, DH] -> chunk-major [NC, B, NH, L, DH], zero-padded to NC * L positions, in one copy.
    Stored [NC, B, NH, DH, L] (returned as its transposed view) when ``positions_adjacent(t)``, else
    contiguous: either way the copy writes a contiguous tensor in runs that are adjacent in ``t`` too."""
    B, NH, S, DH = t.shape
    NC, full = -(-S // L), S // L
    transposed = positions_adjacent(t)
    if transposed:                                       # work on the [.., DH, S] view and storage
        t = t.transpose(-1, -2)
        store = t.new_empty(NC, B, NH, DH, L)
    else:
        store = t.new_empty(NC, B, NH, L, DH)
    seq = 3 if transposed else 2                         # the position axis of t and of store[c]
    if full:
        store[:full].copy_(t.narrow(seq, 0, full * L).unflatten(seq, (full, L)).movedim(seq, 0))
    if full < NC:
        rest = S - full * L
        store[full].narrow(seq, 0, rest).copy_(t.narrow(seq, full * L, rest))
        store[full].narrow(seq, rest, L - rest).zero_()
    return store.transpose(-1, -2) if transposed else store


def _matmul_into(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = a @ b`` written into ``out`` whether it is contiguous or a transposed view of a contiguous
    tensor (then as ``out^T = b^T a^T``), without a temporary."""
    if out.is_contiguous():
        return torch.matmul(a, b, out=out)
    torch.matmul(b.transpose(-1, -2), a.transpose(-1, -2), out=out.transpose(-1, -2))
    return out


def _chunkwise_fwd(x: _Chunked, C0, n0, m0, eps: float):
    """The chunkwise forward without autograd, one group of chunks at a time; state C0, n0, m0 [B, NH, 1].

    Returns (chunk-major) h [NC, B, NH, L, DH], the states at every chunk boundary Cs [NC+1, B, NH, DH, DH],
    ns [NC+1, B, NH, DH], ms [NC+1, B, NH], and per token ([NC, B, NH, L]) the stabiliser offset M
    (m_t = lf_cum_t + M_t), den and the normaliser."""
    NC, B, NH, L, DH = x.q.shape
    ms = x.q.new_empty(NC + 1, B, NH)
    ms[0] = m0[..., 0]
    for c in range(NC):                                                       # m at chunk boundaries
        torch.maximum(x.lf_tot[c] + ms[c], x.g_max[c], out=ms[c + 1])
    decay = torch.exp(x.lf_tot + ms[:-1] - ms[1:])                            # [NC, B, NH]
    Cs, ns = x.q.new_empty(NC + 1, B, NH, DH, DH), x.q.new_empty(NC + 1, B, NH, DH)
    Cs[0], ns[0] = C0, n0
    h = x.q.new_empty(x.q.shape)                                              # contiguous
    M, den, norm = (torch.empty_like(x.i) for _ in range(3))
    for sl in x.groups():
        q, ks, v, i, lf_cum = x.q[sl], x.ks[sl], x.v[sl], x.i[sl], x.lf_cum[sl]
        m_end = ms[sl.start + 1:sl.stop + 1]
        b = torch.exp(x.g[sl] - m_end[..., None])[..., None]                  # token weights in the end state
        kv = (ks * b).transpose(-1, -2) @ v                                   # [G, B, NH, DH, DH]
        ksum = (ks * b).sum(-2)
        for j, c in enumerate(range(sl.start, sl.stop)):
            torch.addcmul(kv[j], decay[c, ..., None, None], Cs[c], out=Cs[c + 1])
            torch.addcmul(ksum[j], decay[c, ..., None], ns[c], out=ns[c + 1])
        C, n, m = Cs[sl], ns[sl], ms[sl]
        u = i - lf_cum                                                        # log D[r, s] = lf_cum_r + u_s
        M_g = torch.maximum(m[..., None], u.cummax(-1).values, out=M[sl])     # m_r = lf_cum_r + M_r
        w = torch.exp(m[..., None] - M_g)[..., None]
        a = (q @ ks.transpose(-1, -2)).mul_(_decay_matrix(u, M_g))
        num = (a @ v).add_(w * (q @ C))
        den_g = torch.add(a.sum(-1), w[..., 0] * (q @ n[..., None])[..., 0], out=den[sl])
        norm_g = torch.maximum(den_g.abs(), torch.exp(-(lf_cum + M_g)), out=norm[sl]).add_(eps)
        torch.div(num, norm_g[..., None], out=h[sl])
    return h, Cs, ns, ms, M, den, norm


def _chunkwise_bwd(x: _Chunked, dh, dC_T, dn_T, h, Cs, ns, ms, M, den, norm):
    """Gradients with every stabiliser held constant, one group of chunks at a time, last group first.
    Chunk-major like ``_chunkwise_fwd``.

    Returns dq, dks, dv [NC, B, NH, L, DH], di, dlf, dnorm [NC, B, NH, L], dC0, dn0, dm0 [B, NH]."""
    decay = torch.exp(x.lf_tot + ms[:-1] - ms[1:])
    dq, dks, dv = (torch.empty_like(x.q) for _ in range(3))        # stored like the inputs (strides kept)
    di, dlf_cum, dnorm = (torch.empty_like(x.i) for _ in range(3))
    gC, gn = dC_T, dn_T                                       # gradient w.r.t. a chunk's end state
    for sl in reversed(x.groups()):
        q, ks, v, i, lf_cum = x.q[sl], x.ks[sl], x.v[sl], x.i[sl], x.lf_cum[sl]
        C, n, m, M_g = Cs[sl], ns[sl], ms[sl], M[sl]
        d = _decay_matrix(i - lf_cum, M_g)
        w = torch.exp(m[..., None] - M_g)[..., None]
        a = (q @ ks.transpose(-1, -2)).mul_(d)
        # h = num / norm, norm = max(|den|, exp(-mu)) + eps, num = A v + w C^T q, den = rowsum(A) + w n . q,
        # A = (q . ks) * D
        dh_g, norm_g = dh[sl], norm[sl]
        dnum = dh_g / norm_g[..., None]
        dnorm_g = torch.div((dh_g * h[sl]).sum(-1).neg_(), norm_g, out=dnorm[sl])
        den_g = den[sl]
        dden = torch.where(den_g.abs() >= torch.exp(-(lf_cum + M_g)), dnorm_g * torch.sign(den_g), 0.0)
        dqk = (dnum @ v.transpose(-1, -2)).add_(dden[..., None]).mul_(d)
        dv_g = _matmul_into(a.transpose(-1, -2), dnum, dv[sl])
        dq_g = _matmul_into(dqk, ks, dq[sl])
        dq_g.add_(w * (dnum @ C.transpose(-1, -2) + dden[..., None] * n[..., None, :]))
        dks_g = _matmul_into(dqk.transpose(-1, -2), q, dks[sl])
        dC_out = (q * w).transpose(-1, -2) @ dnum                              # [G, B, NH, DH, DH]
        dn_out = (q * (w[..., 0] * dden)[..., None]).sum(-2)
        # chunk-end states C_{c+1} = decay_c C_c + sum_s b_s ks_s v_s^T (n likewise with ks_s)
        dC_end, dn_end = torch.empty_like(dC_out), torch.empty_like(dn_out)
        dC_end[-1], dn_end[-1] = gC, gn
        for j in range(sl.stop - sl.start - 1, 0, -1):
            c = sl.start + j
            torch.addcmul(dC_out[j], decay[c, ..., None, None], dC_end[j], out=dC_end[j - 1])
            torch.addcmul(dn_out[j], decay[c, ..., None], dn_end[j], out=dn_end[j - 1])
        gC = torch.addcmul(dC_out[0], decay[sl.start, ..., None, None], dC_end[0])
        gn = torch.addcmul(dn_out[0], decay[sl.start, ..., None], dn_end[0])
        m_end = ms[sl.start + 1:sl.stop + 1]
        b = torch.exp(x.g[sl] - m_end[..., None])[..., None]
        dv_g.addcmul_(b, ks @ dC_end)
        dks_g.addcmul_(b, (v @ dC_end.transpose(-1, -2)).add_(dn_end[..., None, :]))
        # Gates: q_r enters only as q_r exp(lf_cum_r), ks_s only as ks_s exp(i_s - lf_cum_s), and a chunk's
        # end state is proportional to exp(lf_cum at the chunk end).
        di_g = torch.sum(ks * dks_g, -1, out=di[sl])
        dlf_g = torch.sub((q * dq_g).sum(-1), di_g, out=dlf_cum[sl])
        C_end, n_end = Cs[sl.start + 1:sl.stop + 1], ns[sl.start + 1:sl.stop + 1]
        dlf_g[..., -1] += (dC_end * C_end).sum((-1, -2)) + (dn_end * n_end).sum(-1)
    # m0 enters only as C0 exp(m0), n0 exp(m0)
    dm0 = (gC * Cs[0]).sum((-1, -2)) + (gn * ns[0]).sum(-1)
    dlf = dlf_cum.flip(-1).cumsum(-1).flip(-1)
    return dq, dks, dv, di, dlf, dnorm, gC, gn, dm0


def _unchunk(t: torch.Tensor, S: int) -> torch.Tensor:
    """Chunk-major [NC, B, NH, L, ...] -> [B, NH, S, ...]."""
    return t.movedim(0, 2).flatten(2, 3)[:, :, :S]


def _unchunk_like(t: torch.Tensor, S: int, like: torch.Tensor) -> torch.Tensor:
    """Chunk-major [NC, B, NH, L, DH] -> [B, NH, S, DH] laid out like ``like`` (a meta tensor): one copy,
    straight into the layout its reader wants (a gradient in its input's layout, so none is needed later to
    bring it back to a caller's channel-major view; h token-major for the per-head output norm)."""
    NC, B, NH, L, DH = t.shape
    out = torch.empty_like(like, device=t.device, dtype=t.dtype)
    full = min(NC, S // L)
    if full:
        out[:, :, :full * L].view(B, NH, full, L, DH).copy_(t[:full].permute(1, 2, 0, 3, 4))
    if full < NC:
        out[:, :, full * L:].copy_(t[full, :, :, :S - full * L])
    return out


class _MLSTMChunkwise(torch.autograd.Function):
    """Chunkwise mLSTM. Inputs: q, ks (= k / sqrt(DH)), v [B, NH, S, DH]; i, f [B, NH, S]; the initial
    state C0, n0, m0 [B, NH, 1]; all in one float dtype. Outputs h [B, NH, S, DH] and the final C, n, m."""

    @staticmethod
    def forward(ctx, q, ks, v, i_raw, f_raw, C0, n0, m0, L: int, eps: float):
        S = q.shape[2]
        x = _Chunked(q, ks, v, i_raw, f_raw, L)
        h, Cs, ns, ms, M, den, norm = _chunkwise_fwd(x, C0, n0, m0, eps)
        ctx.save_for_backward(x.q, x.ks, x.v, i_raw, f_raw, m0, Cs, ns, ms, h, M, den, norm)
        ctx.L, ctx.eps, ctx.S = L, eps, S
        ctx.layouts = tuple(torch.empty_like(t, device="meta") for t in (q, ks, v))
        B, NH, _, DH = q.shape
        token_major = torch.empty(B, S, NH, DH, device="meta").transpose(1, 2)
        return _unchunk_like(h, S, token_major), Cs[-1].clone(), ns[-1].clone(), ms[-1, ..., None].clone()

    @staticmethod
    def backward(ctx, dh, dC_T, dn_T, dm_T):
        q, ks, v, i_raw, f_raw, m0, Cs, ns, ms, h, M, den, norm = ctx.saved_tensors
        S = ctx.S
        x = _Chunked(q, ks, v, i_raw, f_raw, ctx.L, chunk_major=True)
        dh = to_chunks(dh, ctx.L)
        dq, dks, dv, di, dlf, dnorm, dC0, dn0, dm0 = _chunkwise_bwd(
            x, dh, dC_T, dn_T, h, Cs, ns, ms, M, den, norm)
        mu = x.lf_cum + M
        dq, dks, dv = (_unchunk_like(t, S, like) for t, like in zip((dq, dks, dv), ctx.layouts))
        di, dlf, dnorm, mu = (_unchunk(t, S) for t in (di, dlf, dnorm, mu))
        # The gradient through the stabilisers: dh/dmu_t = -h_t eps / norm_t, plus the returned m (whose
        # constant-stabiliser gradient missed -<dC_T, C_T> - <dn_T, n_T>), back through
        # m_t = max(lf_t + m_{t-1}, i_t).
        dmu = ctx.eps * dnorm
        dm_final = dm_T[..., 0] - (dC_T * Cs[-1]).sum((-1, -2)) - (dn_T * ns[-1]).sum(-1)
        dmu[..., -1] += dm_final
        di_m, dlf_m, dm0_m = _stabiliser_chain_grad(dmu, i_raw, f_raw, mu, m0)
        df = (dlf + dlf_m) * torch.sigmoid(-f_raw)
        return dq, dks, dv, di + di_m, df, dC0, dn0, (dm0 + dm0_m)[..., None], None, None


def mlstm_chunkwise(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
                    fgate: torch.Tensor, chunk_size: int = 64, initial_state: State | None = None,
                    return_state: bool = False, eps: float = 1e-6):
    """Chunkwise mLSTM with a memory-sane written-out backward.

    Args:
        q, k, v: [B, NH, S, DH]; igate, fgate: [B, NH, S] pre-activations; chunk_size: tokens per chunk
            (any S: the last chunk may be partial); initial_state: (C, n, m) or None for the zero state.
    Returns:
        h [B, NH, S, DH] in q's dtype (stored token-major: ``h.transpose(1, 2)`` is contiguous), and with
        ``return_state`` the final (C, n, m) (float32; float64 for float64 inputs), differentiable like the
        inputs.
    Memory kept for the backward: the inputs, the output, three numbers per token and the (C, n, m) at every
    chunk boundary (S / chunk_size states of DH x DH per head); the intra-chunk matrices are recomputed.
    """
    L, state0, q_, ks, v_, i_, f_ = _prepare(q, k, v, igate, fgate, chunk_size, initial_state)
    h, C, n, m = _MLSTMChunkwise.apply(q_, ks, v_, i_, f_, *state0, L, eps)
    h = h.to(q.dtype)
    return (h, (C, n, m)) if return_state else h
