"""What the kernel tests of every op share: where kernels run, which dtypes, and the fresh-process rerun.

Kernel tests run on CUDA when there is a GPU, else under Triton's interpreter on CPU. The interpreter
must be on before the first ``import triton`` (tests/conftest.py sees to it); if triton was imported
without it, the kernel tests skip in-process and ``run_kernel_tests_in_fresh_process`` runs them in a
subprocess with the interpreter on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # triton is in the [dev] and [gpu] extras
    tl = None

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNELS_HERE = tl is not None and (DEVICE == "cuda" or isinstance(tl.zeros, InterpretedFunction))
needs_kernels = pytest.mark.skipif(
    not KERNELS_HERE,
    reason="no triton, or triton was imported without TRITON_INTERPRET in this process "
           "(test_kernels_run_in_fresh_process runs these tests)")
REPO = Path(__file__).resolve().parents[2]
# bf16 only on a GPU: the interpreter's bf16 is wrong. fp32 on a GPU uses tf32x3 dots: looser tolerance.
DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
KERNEL_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def run_kernel_tests_in_fresh_process(test_file: str) -> None:
    """Run ``test_file``'s ``test_kernel_*`` tests in a subprocess with the interpreter on; all must pass."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", str(test_file), "-k", "test_kernel_"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-1000:]


def compile_for_sm90(script: str) -> None:
    """Run ``script`` (which compiles, not runs, kernels for sm_90 and prints "compiled") in a fresh
    process with the interpreter off: catches type and layout errors the interpreter does not."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]
