"""Reuse of freed host (CPU) memory between training steps.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB on 64-bit Linux) with a
fresh ``mmap`` and gives it back to the kernel on ``free``. At long sequence lengths one activation of
a small model is already that large (B = 2, L = 16384, 256 channels, float32: 32 MiB), so each forward
and backward pass maps, page-faults in (the kernel zeroes every 4 KiB page) and unmaps every
activation of every layer again. For the 4-block d_model 128 xLSTM of ``benchmarks/xlstm.py`` at
L = 16384 on one thread that was 35-50% of a training step (12.0 s, of it 4.2 s system time; 5.9 s
without it) and it made time grow faster than linearly in L.

:func:`keep_freed_memory` asks glibc to serve large blocks from its heap and not to trim the heap, so
a freed activation is reused by the next one of the same size, as a GPU caching allocator does. The
cost: the process keeps its peak memory until it exits, and fragmentation can raise the peak a little
(+16% for that model at 16k). The ``bioseq`` console script calls it at start-up; set
``BIOSEQ_KEEP_FREED_MEMORY=0`` to keep glibc's defaults. It does nothing off glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

ENV_VAR = "BIOSEQ_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Make this process's glibc ``malloc`` keep and reuse freed large blocks (see the module doc).

    Returns True when the setting took effect, False where it does not apply (not glibc) or was turned
    off with ``BIOSEQ_KEEP_FREED_MEMORY=0``. Safe to call more than once. Child processes started with
    ``fork`` (DataLoader workers) inherit it.
    """
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # No block is served by mmap (glibc still falls back to mmap when the heap cannot grow), and the
    # heap's free top is never returned to the kernel.
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
