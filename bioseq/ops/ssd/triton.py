"""Kernel path of ``ssd``: Mamba-2's scan run by the selective-scan Triton kernels.

SSD is the selective scan with a decay shared by a head's channels: with the H * P channels
c = (h, p), ``u[c] = x[h, p]``, ``delta[c] = dt[h]`` and ``A[c, n] = A[h]`` for every n, and B, C read
by group, the recurrences are identical. So this path reshapes (x as a [batch, H * P, L] view, dt
expanded over P, A over P and N, B and C as [batch, G, N, L] views; head h reads group h // (H / G),
which is channel c's group c // (H * P / G)) and calls the kernels of ``bioseq.ops.selective_scan.triton``
(forward, and backward recomputing states from one checkpoint per ``chunk_size`` steps); autograd sums
the expanded gradients back onto dt and A. D ([H] or [H, P]) and z are applied in torch.
"""

import torch

from bioseq.ops.selective_scan.triton import KERNEL_DTYPES, _interpreting, selective_scan_fwd
from bioseq.ops.ssd.ref import check_ssd_args, effective_dt, finish_output


def ssd_triton(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               chunk_size: int = 64, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
               dt_bias: torch.Tensor | None = None, dt_softplus: bool = True,
               initial_state: torch.Tensor | None = None, return_state: bool = False):
    """Same arguments and results as ``ssd_ref``; x, B, C in fp32, fp16 or bf16 (arithmetic in fp32)."""
    check_ssd_args(x, dt, A, B, C, D, z, dt_bias, initial_state)
    if chunk_size < 1:
        raise ValueError(f"ssd: chunk_size must be >= 1, got {chunk_size}")
    if x.dtype not in KERNEL_DTYPES:
        raise ValueError(f"ssd: the Triton kernel takes fp32, fp16 or bf16, got {x.dtype}")
    if not x.is_cuda and not _interpreting():
        raise ValueError("ssd: the kernel needs CUDA tensors (or TRITON_INTERPRET=1 on CPU)")
    batch, L, H, P = x.shape
    N = B.shape[-1]
    dtc = effective_dt(dt, dt_bias, dt_softplus, torch.float32)                     # [batch, L, H]
    u = x.reshape(batch, L, H * P).transpose(1, 2)                                    # [batch, H * P, L] view
    delta = dtc.unsqueeze(-1).expand(batch, L, H, P).reshape(batch, L, H * P).transpose(1, 2)
    A_c = A.float()[:, None, None].expand(H, P, N).reshape(H * P, N)
    h0 = None if initial_state is None else initial_state.float().reshape(batch, H * P, N)
    y, last, _ = selective_scan_fwd(u, delta, A_c, B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1), h0,
                                    chunk_size)
    y = finish_output(y.transpose(1, 2).reshape(batch, L, H, P).float(), x.float(), D, z).to(x.dtype)
    return (y, last.reshape(batch, H, P, N)) if return_state else y
