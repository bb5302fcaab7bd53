"""Choosing between an op's Triton kernel and its pure-torch reference."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when the ``triton`` package can be imported (it is never imported at bioseq import time)."""
    return importlib.util.find_spec("triton") is not None


def use_triton(x: torch.Tensor) -> bool:
    """Kernel for CUDA tensors when Triton is installed; ``BIOSEQ_OPS=ref|triton`` forces a path."""
    mode = os.environ.get("BIOSEQ_OPS", "auto").lower()
    if mode == "ref":
        return False
    if mode == "triton":
        return True
    return x.is_cuda and triton_available()
