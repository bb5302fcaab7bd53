"""sLSTM cell ops (xLSTM's scalar-memory cell with per-head recurrence); layouts in ``bioseq.ops.slstm.ref``.

- ``slstm_scan(wx, R, b, initial_state)``: a sequence; wx [B, S, 4, NH, DH] (gates i, f, z, o),
  R [NH, DH, 4 * DH], b [4, NH, DH] -> (h [B, S, NH, DH], final state (h, c, n, m) each [B, NH, DH]).
  Dispatch as in ``bioseq.ops._dispatch``: the Triton kernels (``bioseq.ops.slstm.triton``) for CUDA
  tensors, the torch loop with its written-out BPTT (``slstm_scan_torch``) otherwise;
  ``BIOSEQ_OPS=ref|triton`` overrides; float64 and DH > 64 always take the torch path.
- ``slstm_step(wx_t, R, b, state)``: one token; wx_t [B, 4, NH, DH] -> (h_t [B, NH, DH], state).
- ``slstm_scan_ref``: the step loop under plain autograd (the spec the other paths are tested against).
- ``slstm_zero_state(B, NH, DH, device, dtype)``: the state a fresh sequence starts from.
"""

from __future__ import annotations

import torch

from bioseq.ops._dispatch import use_triton
from bioseq.ops.slstm.ref import State, slstm_scan_ref, slstm_step, slstm_zero_state
from bioseq.ops.slstm.ref import slstm_scan as slstm_scan_torch

__all__ = ["State", "slstm_backend", "slstm_scan", "slstm_scan_ref", "slstm_scan_torch", "slstm_step",
           "slstm_zero_state"]

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KERNEL_MAX_DH = 64


def slstm_backend(wx: torch.Tensor) -> str:
    """"triton" or "ref": which implementation ``slstm_scan(wx, ...)`` runs."""
    if use_triton(wx) and wx.dtype in KERNEL_DTYPES and wx.shape[-1] <= KERNEL_MAX_DH:
        return "triton"
    return "ref"


def slstm_scan(wx: torch.Tensor, R: torch.Tensor, b: torch.Tensor, initial_state: State | None = None):
    """sLSTM over a sequence: (h [B, S, NH, DH] in wx's dtype, final (h, c, n, m)). See ``ref.slstm_scan``."""
    if slstm_backend(wx) == "triton":
        from bioseq.ops.slstm.triton import slstm_scan_triton

        return slstm_scan_triton(wx, R, b, initial_state)
    return slstm_scan_torch(wx, R, b, initial_state)
