"""mLSTM cell ops (xLSTM's matrix-memory cell).

Public functions (shapes in ``bioseq.ops.mlstm.ref``): q, k, v [B, NH, S, DH]; igate, fgate [B, NH, S]
pre-activations; the state (C [B, NH, DH, DH], n [B, NH, DH], m [B, NH, 1]) is float32 (float64 for
float64 inputs).

- ``mlstm_parallel(q, k, v, igate, fgate, eps)``: the quadratic form, the spec.
- ``mlstm_chunkwise(q, k, v, igate, fgate, chunk_size, initial_state, return_state, eps)``: the CPU path.
- ``mlstm_step(q, k, v, igate, fgate, state, eps)``: one token (q, k, v [B, NH, DH]; gates [B, NH]).
- ``mlstm(...)``: the op the models call; runs ``mlstm_chunkwise`` (a Triton path for CUDA tensors will
  dispatch here through ``bioseq.ops._dispatch``).
- ``mlstm_zero_state(B, NH, DH, device, dtype)``: the state a fresh sequence starts from.
"""

from __future__ import annotations

import torch

from bioseq.ops.mlstm.ref import (
    State,
    mlstm_chunkwise,
    mlstm_chunkwise_autograd,
    mlstm_parallel,
    mlstm_recurrent,
    mlstm_step,
    mlstm_zero_state,
)

__all__ = ["mlstm", "mlstm_chunkwise", "mlstm_chunkwise_autograd", "mlstm_parallel",
           "mlstm_recurrent", "mlstm_step", "mlstm_zero_state", "State"]


def mlstm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor, fgate: torch.Tensor,
          chunk_size: int = 64, initial_state: State | None = None, return_state: bool = False,
          eps: float = 1e-6):
    """Chunkwise mLSTM: h [B, NH, S, DH] (, final state). Same contract as ``mlstm_chunkwise``."""
    return mlstm_chunkwise(q, k, v, igate, fgate, chunk_size, initial_state, return_state, eps)
