"""Reference Mamba-2 SSD (state-space duality): the spec (``ssd_ref``), the chunked CPU path
(``ssd_chunked``) and the per-token update.

Scalar decay per head. With ``dt = softplus(dt + dt_bias)`` (or ``dt + dt_bias`` without softplus),
for every batch item, head h (head_dim P, state size N) and time step t::

    h[t]  = exp(dt[t] * A[h]) * h[t-1] + dt[t] * outer(x[t], B[t])       h: [P, N], h[-1] = initial_state
    y[t]  = h[t] @ C[t] + D[h] * x[t]                                     D: [H] or [H, P]
    y[t] *= silu(z[t])                                                    (when z is given)

B and C are [batch, L, G, N]: head h reads group h // (H / G). All arithmetic is float32 (float64 for
float64 x); y takes x's dtype, states are float32.

``ssd_chunked`` cuts the sequence into chunks of ``chunk_size`` steps (the last one may be partial):
1. inside a chunk, the quadratic "attention" form: ``y_diag[l] = sum_{s<=l} (C[l].B[s])
   exp(cs[l] - cs[s]) dt[s] x[s]`` with cs the within-chunk cumulative sum of dt * A (every exponent
   is <= 0: A < 0 and dt > 0);
2. each chunk's own contribution to the state at its end: ``sum_s exp(cs[-1] - cs[s]) dt[s] x[s] B[s]``;
3. a recurrence over chunks (one step per chunk) carries the state from the initial state through
   every chunk boundary;
4. the carried state's contribution to the outputs: ``y_off[l] = exp(cs[l]) (h_prev @ C[l])``.
Autograd keeps O(batch * H * L * chunk_size) intra-chunk weights and one state per chunk, never a
state per time step. The result does not depend on ``chunk_size`` beyond rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_ssd_args(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_state=None) -> int:
    """Validate the shapes of ``ssd``'s arguments; returns G."""
    if x.dim() != 4:
        raise ValueError(f"ssd: x must be [batch, L, H, P], got {tuple(x.shape)}")
    batch, L, H, P = x.shape
    if tuple(dt.shape) != (batch, L, H):
        raise ValueError(f"ssd: dt must be [batch={batch}, L={L}, H={H}], got {tuple(dt.shape)}")
    if tuple(A.shape) != (H,):
        raise ValueError(f"ssd: A must be [H={H}], got {tuple(A.shape)}")
    if B.dim() != 4 or tuple(B.shape[:2]) != (batch, L) or H % B.shape[2] or tuple(C.shape) != tuple(B.shape):
        raise ValueError(f"ssd: B and C must both be [batch={batch}, L={L}, G, N] with G dividing H={H}, "
                         f"got {tuple(B.shape)} and {tuple(C.shape)}")
    N = B.shape[3]
    if D is not None and tuple(D.shape) not in ((H,), (H, P)):
        raise ValueError(f"ssd: D must be [H={H}] or [H, P={P}], got {tuple(D.shape)}")
    for name, t, shape in (("z", z, (batch, L, H, P)), ("dt_bias", dt_bias, (H,)),
                           ("initial_state", initial_state, (batch, H, P, N))):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"ssd: {name} must be {list(shape)}, got {tuple(t.shape)}")
    return B.shape[2]


def effective_dt(dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool, dtype: torch.dtype
                 ) -> torch.Tensor:
    """softplus(dt + dt_bias) (or without softplus) in ``dtype``; dt [..., H], dt_bias [H]."""
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    return F.softplus(dt) if dt_softplus else dt


def finish_output(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None
                  ) -> torch.Tensor:
    """y + D * x (D [H] or [H, P]), times silu(z) when z is given; y, x, z [..., H, P]."""
    if D is not None:
        Dc = D.to(y.dtype)
        y = y + x.to(y.dtype) * (Dc.unsqueeze(-1) if Dc.dim() == 1 else Dc)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def ssd_ref(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            chunk_size: int = 64, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
            dt_bias: torch.Tensor | None = None, dt_softplus: bool = True,
            initial_state: torch.Tensor | None = None, return_state: bool = False):
    """The spec: one loop step per time step (``chunk_size`` is accepted and has no effect).

    Args:
        x: [batch, L, H, P]; dt: [batch, L, H]; A: [H] (negative); B, C: [batch, L, G, N];
        D: [H] or [H, P] or None; z: [batch, L, H, P] or None; dt_bias: [H] or None;
        initial_state: [batch, H, P, N] or None.
    Returns:
        y [batch, L, H, P] in x's dtype, and with ``return_state`` the final state [batch, H, P, N]
        (float32; float64 for float64 x).
    """
    groups = check_ssd_args(x, dt, A, B, C, D, z, dt_bias, initial_state)
    dtype = compute_dtype(x)
    batch, L, H, P = x.shape
    N = B.shape[-1]
    xc = x.to(dtype)
    dtc = effective_dt(dt, dt_bias, dt_softplus, dtype)
    Bh = B.to(dtype).repeat_interleave(H // groups, dim=2)        # [batch, L, H, N]
    Ch = C.to(dtype).repeat_interleave(H // groups, dim=2)
    h = (torch.zeros(batch, H, P, N, dtype=dtype, device=x.device) if initial_state is None
         else initial_state.to(dtype))
    ys = []
    # unbind: one view per step whose backward is a single stack
    for dt_t, x_t, B_t, C_t in zip(dtc.unbind(1), xc.unbind(1), Bh.unbind(1), Ch.unbind(1)):
        decay = torch.exp(dt_t * A.to(dtype))[..., None, None]                       # [batch, H, 1, 1]
        h = decay * h + (dt_t.unsqueeze(-1) * x_t).unsqueeze(-1) * B_t.unsqueeze(-2)
        ys.append((h * C_t.unsqueeze(-2)).sum(-1))                                    # [batch, H, P]
    y = torch.stack(ys, dim=1) if ys else xc.new_zeros(batch, 0, H, P)
    y = finish_output(y, xc, D, z).to(x.dtype)
    return (y, h) if return_state else y


def ssd_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                chunk_size: int = 64, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                dt_bias: torch.Tensor | None = None, dt_softplus: bool = True,
                initial_state: torch.Tensor | None = None, return_state: bool = False):
    """The chunked algorithm (module docstring); same arguments and results as ``ssd_ref``."""
    groups = check_ssd_args(x, dt, A, B, C, D, z, dt_bias, initial_state)
    if chunk_size < 1:
        raise ValueError(f"ssd: chunk_size must be >= 1, got {chunk_size}")
    dtype = compute_dtype(x)
    batch, L, H, P = x.shape
    N, G, Hg = B.shape[-1], groups, H // groups
    T = max(1, min(chunk_size, L))
    nc = max(1, math.ceil(L / T))
    pad = nc * T - L
    xc = x.to(dtype)
    dtc = effective_dt(dt, dt_bias, dt_softplus, dtype)                             # [batch, L, H]
    dA = dtc * A.to(dtype)
    xdt = xc * dtc.unsqueeze(-1)
    Bc, Cc = B.to(dtype), C.to(dtype)
    if pad:  # padded steps: dt = 0, so they neither decay nor add to the state
        dA = F.pad(dA, (0, 0, 0, pad))
        xdt, Bc, Cc = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xdt, Bc, Cc))
    xdt = xdt.reshape(batch, nc, T, G, Hg, P)
    Bc, Cc = Bc.reshape(batch, nc, T, G, N), Cc.reshape(batch, nc, T, G, N)
    cs = dA.reshape(batch, nc, T, G, Hg).permute(0, 3, 4, 1, 2).cumsum(-1)          # [batch, G, Hg, nc, T]

    # 1. within chunks: weights (C[l].B[s]) exp(cs[l] - cs[s]) for s <= l
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp((cs.unsqueeze(-1) - cs.unsqueeze(-2)).masked_fill(~causal, -math.inf))
    CB = torch.einsum("bclgn,bcsgn->bgcls", Cc, Bc).unsqueeze(2)                     # [batch, G, 1, nc, T, T]
    y = torch.einsum("bghcls,bcsghp->bclghp", decay * CB, xdt)

    # 2. each chunk's inputs, carried to the chunk's end
    to_end = torch.exp(cs[..., -1:] - cs)                                            # [batch, G, Hg, nc, T]
    chunk_states = torch.einsum("bcsgn,bghcs,bcsghp->bcghpn", Bc, to_end, xdt)      # [batch, nc, G, Hg, P, N]

    # 3. the state entering each chunk
    chunk_decay = torch.exp(cs[..., -1]).unsqueeze(-1).unsqueeze(-1)                # [batch, G, Hg, nc, 1, 1]
    h = (xc.new_zeros(batch, G, Hg, P, N) if initial_state is None
         else initial_state.to(dtype).reshape(batch, G, Hg, P, N))
    entering = []
    for c in range(nc):
        entering.append(h)
        h = chunk_decay[:, :, :, c] * h + chunk_states[:, c]
    entering = torch.stack(entering, dim=1)                                         # [batch, nc, G, Hg, P, N]

    # 4. the entering state's part of every output
    y = y + torch.einsum("bclgn,bcghpn,bghcl->bclghp", Cc, entering, torch.exp(cs))
    y = y.reshape(batch, nc * T, H, P)[:, :L]
    y = finish_output(y, xc, D, z).to(x.dtype)
    return (y, h.reshape(batch, H, P, N)) if return_state else y


def ssd_state_update_ref(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                         B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None = None,
                         z: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
                         dt_softplus: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One time step (recurrent decoding).

    Args:
        state: [batch, H, P, N]; x, z: [batch, H, P]; dt: [batch, H]; A, dt_bias: [H];
        B, C: [batch, G, N]; D: [H] or [H, P] or None.
    Returns:
        (y [batch, H, P] in x's dtype, new_state [batch, H, P, N] float32 (float64 for float64 x));
        ``state`` itself is not modified.
    """
    check_ssd_args(x.unsqueeze(1), dt.unsqueeze(1), A, B.unsqueeze(1), C.unsqueeze(1), D,
                   None if z is None else z.unsqueeze(1), dt_bias, state)
    dtype = compute_dtype(x)
    H = x.shape[1]
    dtc = effective_dt(dt, dt_bias, dt_softplus, dtype)                             # [batch, H]
    Bh = B.to(dtype).repeat_interleave(H // B.shape[1], dim=1)                       # [batch, H, N]
    Ch = C.to(dtype).repeat_interleave(H // C.shape[1], dim=1)
    xc = x.to(dtype)
    decay = torch.exp(dtc * A.to(dtype))[..., None, None]
    new_state = decay * state.to(dtype) + (dtc.unsqueeze(-1) * xc).unsqueeze(-1) * Bh.unsqueeze(2)
    y = (new_state * Ch.unsqueeze(2)).sum(-1)
    y = finish_output(y, xc, D, z)
    return y.to(x.dtype), new_state
