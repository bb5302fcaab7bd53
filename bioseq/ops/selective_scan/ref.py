"""Reference Mamba-1 selective scan: the spec (``selective_scan_ref``) and the per-token update.

With ``delta = softplus(delta + delta_bias)`` (or ``delta + delta_bias`` without softplus), for every
batch item b, channel d and state index n::

    h[t, n] = exp(delta[t] * A[d, n]) * h[t-1, n] + delta[t] * B[t, n] * u[t]     h[-1] = initial_state
    y[t]    = sum_n C[t, n] * h[t, n] + D[d] * u[t]
    y[t]   *= silu(z[t])                                                           (when z is given)

B and C are either shared by all channels ([batch, N, L]) or split in G groups of dim / G consecutive
channels ([batch, G, N, L]). The state and all arithmetic are float32 (float64 when u is float64);
the output takes u's dtype. ``selective_scan_ref`` is a plain loop over time steps: readable, used as
the spec in tests, too slow (and too memory hungry under autograd) for training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(u: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs, else float32 (the state is never kept in 16-bit)."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def check_scan_args(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None) -> int:
    """Validate the shapes of ``selective_scan``'s arguments; returns G (1 for shared B/C)."""
    if u.dim() != 3 or tuple(delta.shape) != tuple(u.shape):
        raise ValueError(f"selective_scan: u and delta must both be [batch, dim, L], got {tuple(u.shape)} "
                         f"and {tuple(delta.shape)}")
    batch, dim, L = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be [dim={dim}, N], got {tuple(A.shape)}")
    N = A.shape[1]
    groups = 1
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3 and tuple(t.shape) == (batch, N, L):
            g = 1
        elif t.dim() == 4 and t.shape[0] == batch and tuple(t.shape[2:]) == (N, L) and dim % t.shape[1] == 0:
            g = t.shape[1]
        else:
            raise ValueError(f"selective_scan: {name} must be [batch={batch}, N={N}, L={L}] or "
                             f"[batch, G, N, L] with G dividing dim={dim}, got {tuple(t.shape)}")
        if name == "C" and g != groups:
            raise ValueError(f"selective_scan: B and C must have the same groups, got {tuple(B.shape)} and "
                             f"{tuple(C.shape)}")
        groups = g
    for name, t, shape in (("D", D, (dim,)), ("delta_bias", delta_bias, (dim,)), ("z", z, (batch, dim, L)),
                           ("initial_state", initial_state, (batch, dim, N))):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"selective_scan: {name} must be {list(shape)}, got {tuple(t.shape)}")
    return groups


def as_groups(t: torch.Tensor) -> torch.Tensor:
    """B or C as [batch, G, N, ...]: the shared form [batch, N, ...] gets G = 1."""
    return t if t.dim() == 4 else t.unsqueeze(1)


def effective_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool,
                    dtype: torch.dtype) -> torch.Tensor:
    """softplus(delta + delta_bias[:, None]) (or without softplus), [batch, dim, L] in ``dtype``."""
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype).unsqueeze(-1)
    return F.softplus(delta) if delta_softplus else delta


def finish_output(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None
                  ) -> torch.Tensor:
    """y + D * u, times silu(z) when z is given (all in y's dtype)."""
    if D is not None:
        y = y + u.to(y.dtype) * D.to(y.dtype).unsqueeze(-1)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                       C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                       delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                       initial_state: torch.Tensor | None = None, return_state: bool = False):
    """The spec: one loop step per time step.

    Args:
        u, delta: [batch, dim, L]; A: [dim, N] (negative); B, C: [batch, N, L] or [batch, G, N, L];
        D, delta_bias: [dim] or None; z: [batch, dim, L] or None; initial_state: [batch, dim, N] or None.
    Returns:
        y [batch, dim, L] in u's dtype, and with ``return_state`` the last state [batch, dim, N]
        (float32; float64 for float64 u).
    """
    groups = check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state)
    dtype = compute_dtype(u)
    batch, dim, L = u.shape
    uc = u.to(dtype)
    dt = effective_delta(delta, delta_bias, delta_softplus, dtype)
    Ad = A.to(dtype)
    # [batch, G, N, L] -> [batch, dim, N, L]: channel d reads group d // (dim / G).
    Bd = as_groups(B).to(dtype).repeat_interleave(dim // groups, dim=1)
    Cd = as_groups(C).to(dtype).repeat_interleave(dim // groups, dim=1)
    h = (torch.zeros(batch, dim, A.shape[1], dtype=dtype, device=u.device) if initial_state is None
         else initial_state.to(dtype))
    ys = []
    for t in range(L):
        dt_t = dt[:, :, t, None]
        h = torch.exp(dt_t * Ad) * h + dt_t * Bd[..., t] * uc[:, :, t, None]
        ys.append((h * Cd[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else uc.new_zeros(batch, dim, 0)
    y = finish_output(y, uc, D, z).to(u.dtype)
    return (y, h) if return_state else y


def selective_state_update_ref(state: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                               B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None = None,
                               z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                               delta_softplus: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One time step of the scan (recurrent decoding).

    Args:
        state: [batch, dim, N]; u, delta, z: [batch, dim]; A: [dim, N]; B, C: [batch, N] or [batch, G, N];
        D, delta_bias: [dim] or None.
    Returns:
        (y [batch, dim] in u's dtype, new_state [batch, dim, N] float32 (float64 for float64 u)).
        ``state`` itself is not modified.
    """
    if u.dim() != 2 or tuple(state.shape[:2]) != tuple(u.shape) or tuple(state.shape[1:]) != tuple(A.shape):
        raise ValueError("selective_state_update: want state [batch, dim, N], u [batch, dim], A [dim, N]; "
                         f"got {tuple(state.shape)}, {tuple(u.shape)}, {tuple(A.shape)}")
    dtype = compute_dtype(u)
    batch, dim = u.shape
    dt = effective_delta(delta.unsqueeze(-1), delta_bias, delta_softplus, dtype)   # [batch, dim, 1]
    Bg, Cg = as_groups(B.unsqueeze(-1)).to(dtype), as_groups(C.unsqueeze(-1)).to(dtype)  # [batch, G, N, 1]
    groups = Bg.shape[1]
    if dim % groups or Bg.shape != Cg.shape or Bg.shape[2] != A.shape[1]:
        raise ValueError(f"selective_state_update: B, C must be [batch, N] or [batch, G, N] with G dividing "
                         f"dim={dim}, got {tuple(B.shape)} and {tuple(C.shape)}")
    Bd = Bg.squeeze(-1).repeat_interleave(dim // groups, dim=1)                  # [batch, dim, N]
    Cd = Cg.squeeze(-1).repeat_interleave(dim // groups, dim=1)
    uc = u.to(dtype).unsqueeze(-1)
    new_state = torch.exp(dt * A.to(dtype)) * state.to(dtype) + dt * Bd * uc
    y = (new_state * Cd).sum(-1, keepdim=True)
    y = finish_output(y, uc, D, None if z is None else z.unsqueeze(-1)).squeeze(-1)
    return y.to(u.dtype), new_state
