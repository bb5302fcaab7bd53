"""Shared test fixtures: the real data in ../shared (skipped cleanly when absent) and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Triton's interpreter must be switched on before the first `import triton` (Lightning imports it),
# so on a machine without an NVIDIA GPU the kernel tests run in-process under the interpreter.
if not (os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")):
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIOSEQ_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared; skips the calling test when it does not exist."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the shared data directory beside the checkout)")
    return path


@pytest.fixture
def shared():
    """The ``shared_path`` function, as a fixture: ``shared("data", "genome", "x.fa.gz")``."""
    return shared_path


@pytest.fixture
def one_thread():
    """Tiny tensors: one torch thread (thread fan-out costs more than the work, and is slowed by a busy
    machine's hand-offs); the previous count is restored after the test."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    """Seed torch for tests that use it, without importing torch for those that do not."""
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(0)
    yield
