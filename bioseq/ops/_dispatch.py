"""Choosing between an op's Triton kernel and its pure-torch reference.

``BIOSEQ_OPS`` (environment): ``auto`` (default: kernel for CUDA tensors when Triton is installed),
``ref`` (always the reference), ``triton`` (always the kernel, e.g. on CPU with ``TRITON_INTERPRET=1``).
An op may add its own conditions in ``auto`` mode (``fftconv`` keeps long filters on cuFFT).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from bioseq.errors import BioseqError

MODES = ("auto", "ref", "triton")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when the ``triton`` package can be imported (it is never imported at bioseq import time)."""
    return importlib.util.find_spec("triton") is not None


def ops_mode() -> str:
    """The value of ``BIOSEQ_OPS`` (lower-cased; unset = "auto"); anything else is a BioseqError."""
    mode = os.environ.get("BIOSEQ_OPS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise BioseqError(f"BIOSEQ_OPS={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def use_triton(x: torch.Tensor) -> bool:
    """Kernel for CUDA tensors when Triton is installed; ``BIOSEQ_OPS=ref|triton`` forces a path."""
    mode = ops_mode()
    if mode == "ref":
        return False
    if mode == "triton":
        return True
    return x.is_cuda and triton_available()
