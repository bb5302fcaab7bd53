"""``selective_scan``: the Mamba-1 selective state-space scan, and its one-token update for decoding.

``selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
initial_state=None, return_state=False)`` with u, delta [batch, dim, L], A [dim, N], B and C [batch, N, L]
or [batch, G, N, L]; the equations are in ``bioseq.ops.selective_scan.ref``. Returns y [batch, dim, L]
in u's dtype (and the last state [batch, dim, N] float32 with ``return_state``).

Dispatch as in ``bioseq.ops._dispatch``: the Triton kernel (fp32/fp16/bf16) for CUDA tensors, else the
blocked torch path ``selective_scan_blocked`` (bounded memory, recomputing backward); float64 always
takes the torch path; ``BIOSEQ_OPS=ref|triton`` overrides. ``selective_scan_ref`` is the per-step spec.
``selective_state_update(state, u, delta, A, B, C, ...)`` advances the state by one token in plain torch.
"""

from __future__ import annotations

import torch

from bioseq.ops._dispatch import use_triton
from bioseq.ops.selective_scan.ref import (
    selective_scan_blocked,
    selective_scan_ref,
    selective_state_update_ref,
)

__all__ = ["selective_scan", "selective_scan_backend", "selective_scan_blocked", "selective_scan_ref",
           "selective_state_update"]

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def selective_scan_backend(u: torch.Tensor) -> str:
    """"triton" or "ref": which implementation ``selective_scan(u, ...)`` runs."""
    return "triton" if use_triton(u) and u.dtype in KERNEL_DTYPES else "ref"


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   initial_state: torch.Tensor | None = None, return_state: bool = False):
    """Selective scan over u [batch, dim, L]; see the module docstring for the arguments."""
    if selective_scan_backend(u) == "triton":
        from bioseq.ops.selective_scan.triton import selective_scan_triton

        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                     return_state)
    return selective_scan_blocked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                  return_state)


def selective_state_update(state: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                           B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None = None,
                           z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                           delta_softplus: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: state [batch, dim, N], u/delta/z [batch, dim], B/C [batch, N] or [batch, G, N].

    Returns (y [batch, dim] in u's dtype, new_state [batch, dim, N] float32); ``state`` is not modified.
    """
    return selective_state_update_ref(state, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
