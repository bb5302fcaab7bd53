"""mLSTM cell ops (xLSTM's matrix-memory cell).

Public functions (shapes in ``bioseq.ops.mlstm.ref``): q, k, v [B, NH, S, DH]; igate, fgate [B, NH, S]
pre-activations; the state (C [B, NH, DH, DH], n [B, NH, DH], m [B, NH, 1]) is float32 (float64 for
float64 inputs).

- ``mlstm_parallel(q, k, v, igate, fgate, eps)``: the quadratic form, the spec.
- ``mlstm_chunkwise(q, k, v, igate, fgate, chunk_size, initial_state, return_state, eps)``: the CPU path.
- ``mlstm_step(q, k, v, igate, fgate, state, eps)``: one token (q, k, v [B, NH, DH]; gates [B, NH]).
- ``mlstm(...)``: the op the models call. Dispatch as in ``bioseq.ops._dispatch``: the Triton kernels
  (``bioseq.ops.mlstm.triton``) for CUDA tensors, ``mlstm_chunkwise`` otherwise; ``BIOSEQ_OPS=ref|triton``
  overrides. float64, chunk sizes other than 16, 32, 64 and DH > 64 always take the reference.
- ``mlstm_zero_state(B, NH, DH, device, dtype)``: the state a fresh sequence starts from.
"""

from __future__ import annotations

import torch

from bioseq.ops._dispatch import use_triton
from bioseq.ops.mlstm.ref import (
    State,
    mlstm_chunkwise,
    mlstm_chunkwise_autograd,
    mlstm_parallel,
    mlstm_recurrent,
    mlstm_step,
    mlstm_zero_state,
)

__all__ = ["mlstm", "mlstm_backend", "mlstm_chunkwise", "mlstm_chunkwise_autograd", "mlstm_parallel",
           "mlstm_recurrent", "mlstm_step", "mlstm_zero_state", "State"]


KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KERNEL_CHUNKS = (16, 32, 64)
KERNEL_MAX_DH = 64


def mlstm_backend(q: torch.Tensor, chunk_size: int = 64) -> str:
    """"triton" or "ref": which implementation ``mlstm(q, ..., chunk_size)`` runs."""
    if (use_triton(q) and q.dtype in KERNEL_DTYPES and chunk_size in KERNEL_CHUNKS
            and q.shape[-1] <= KERNEL_MAX_DH):
        return "triton"
    return "ref"


def mlstm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor, fgate: torch.Tensor,
          chunk_size: int = 64, initial_state: State | None = None, return_state: bool = False,
          eps: float = 1e-6):
    """Chunkwise mLSTM: h [B, NH, S, DH] (, final state). Same contract as ``mlstm_chunkwise``."""
    if mlstm_backend(q, chunk_size) == "triton":
        from bioseq.ops.mlstm.triton import mlstm_chunkwise_triton

        return mlstm_chunkwise_triton(q, k, v, igate, fgate, chunk_size, initial_state, return_state, eps)
    return mlstm_chunkwise(q, k, v, igate, fgate, chunk_size, initial_state, return_state, eps)
