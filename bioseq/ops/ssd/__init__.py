"""``ssd``: Mamba-2's chunked state-space duality scan, and its one-token update for decoding.

``ssd(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=True, initial_state=None,
return_state=False)`` with x [batch, L, H, P], dt [batch, L, H], A [H], B and C [batch, L, G, N]; the
equations are in ``bioseq.ops.ssd.ref``. Returns y [batch, L, H, P] in x's dtype (and the final state
[batch, H, P, N] float32 with ``return_state``). Any L; the result does not depend on ``chunk_size``
beyond rounding.

Dispatch as in ``bioseq.ops._dispatch``: the Triton path (``bioseq.ops.ssd.triton``: the selective-scan
kernels on reshaped views; fp32/fp16/bf16) for CUDA tensors, else the chunked torch path
(``ssd_chunked``) with chunks of at most ``TORCH_MAX_CHUNK`` steps (on CPU the quadratic within-chunk
part makes Mamba-2's usual 256 about 3.5x slower than 64 at L = 4k, and the result does not depend on
the chunk size beyond rounding); float64 always takes the torch path; ``BIOSEQ_OPS=ref|triton`` overrides.
``ssd_ref`` is the per-step spec.
``ssd_state_update(state, x, dt, A, B, C, ...)`` advances the state by one token in plain torch.
"""

from __future__ import annotations

import torch

from bioseq.ops._dispatch import use_triton
from bioseq.ops.ssd.ref import ssd_chunked, ssd_ref, ssd_state_update_ref

__all__ = ["ssd", "ssd_backend", "ssd_chunked", "ssd_ref", "ssd_state_update"]

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TORCH_MAX_CHUNK = 64


def ssd_backend(x: torch.Tensor) -> str:
    """"triton" or "ref": which implementation ``ssd(x, ...)`` runs."""
    return "triton" if use_triton(x) and x.dtype in KERNEL_DTYPES else "ref"


def ssd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
        chunk_size: int = 64, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
        dt_bias: torch.Tensor | None = None, dt_softplus: bool = True,
        initial_state: torch.Tensor | None = None, return_state: bool = False):
    """Chunked SSD scan over x [batch, L, H, P]; see the module docstring for the arguments."""
    if ssd_backend(x) == "triton":
        from bioseq.ops.ssd.triton import ssd_triton

        return ssd_triton(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_state, return_state)
    chunk = min(chunk_size, TORCH_MAX_CHUNK) if chunk_size >= 1 else chunk_size  # (< 1: ssd_chunked says so)
    return ssd_chunked(x, dt, A, B, C, chunk, D, z, dt_bias, dt_softplus, initial_state, return_state)


def ssd_state_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                     B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None = None,
                     z: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
                     dt_softplus: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: state [batch, H, P, N], x/z [batch, H, P], dt [batch, H], B/C [batch, G, N].

    Returns (y [batch, H, P] in x's dtype, new_state [batch, H, P, N] float32); ``state`` is not modified.
    """
    return ssd_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
