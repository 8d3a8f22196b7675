"""host_memory.retain_freed_memory: after it, glibc serves a 64 MB block from the heap (no mmap), so freeing and
allocating it again reuses memory that is already faulted in. Checked in a child process (the setting is
process-wide) through glibc's own counters, mallinfo2: `hblks` is the number of blocks served by mmap."""

import platform
import subprocess
import sys

import pytest

from ode_nets.host_memory import retain_freed_memory

CHILD = """
import ctypes, sys
import numpy as np
from ode_nets.host_memory import retain_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def mmapped_while_holding():
    block = np.ones(16 * 1024 * 1024, np.float32)  # 64 MiB
    return libc.mallinfo2().hblks

before = mmapped_while_holding()
if sys.argv[1] == "retain":
    assert retain_freed_memory()
after = mmapped_while_holding()
print(before, after)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("mode, mmapped", [("retain", 0), ("default", 1)])
def test_large_blocks_come_from_the_heap_after_retain(mode, mmapped):
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = map(int, done.stdout.split())
    assert before >= 1  # glibc's default: a 64 MiB block is mmapped
    assert after == before - 1 + mmapped  # the block itself mmapped or not


def test_opt_out_by_environment(monkeypatch):
    monkeypatch.setenv("ODE_NETS_RETURN_MEMORY", "1")
    assert retain_freed_memory() is False
