"""keep_freed_memory: large freed blocks are reused instead of being mapped and faulted in again."""

import platform
import subprocess
import sys

import pytest

from bioseq.host_memory import keep_freed_memory

# A child allocates, writes and frees a 48 MiB tensor: 12 passes to settle, then prints the minor page
# faults of 12 more (a fresh mapping faults each of its 12,288 pages in again). With the setting, the
# heap holds a few freed blocks after the first passes (torch's aligned allocations of one size do not
# fit exactly into each other's holes) and reuses them from then on.
CHILD = """
import resource, sys
import torch
from bioseq.host_memory import keep_freed_memory
print(keep_freed_memory())
def one_pass():
    t = torch.empty(12 * 2**20)
    t.fill_(1.0)
    del t
for _ in range(12):
    one_pass()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(12):
    one_pass()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")


def _faults(env_value: str) -> tuple[str, int]:
    import os

    env = dict(os.environ, BIOSEQ_KEEP_FREED_MEMORY=env_value)
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                         env=env).stdout.split()
    return out[0], int(out[1])


@glibc_only
def test_freed_large_blocks_are_reused_without_page_faults():
    took, faults = _faults("1")
    off, faults_off = _faults("0")
    assert (took, off) == ("True", "False")
    pages = 12 * 2**20 * 4 // 4096
    assert faults_off >= 10 * pages  # glibc's default: every pass maps and faults in 12,288 pages again
    assert faults < pages // 10  # kept: the passes reuse freed blocks


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("BIOSEQ_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
