"""Keep freed host memory in the process instead of returning it to the OS (glibc's malloc), for the CPU backend.

XLA's CPU runtime allocates every temporary buffer of a step anew (for the MNIST DTO step an 84 MB checkpoint buffer of
the 20 layers' states, besides the 4 MB states). glibc serves blocks above 128 KiB with a fresh `mmap` and unmaps them
on `free`, so every step pays a page fault for each 4 KiB page it first touches: the checkpoint buffer's zero fill
alone took ~29 ms of a ~280 ms step (jax.profiler trace; docs/performance.md "page faults, and the field fused into
two calls"). With mmap off for malloc and the trim threshold high, the heap keeps the freed blocks and the next
step reuses them, faulted in once.
The cost: memory freed by the process is not returned to the OS until it exits (the peak of a step stays resident).
"""

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4


def retain_freed_memory() -> bool:
    """Ask glibc's malloc to serve large blocks from the heap and keep freed memory (mallopt); True if it did.

    Process-wide and idempotent. A no-op returning False on other C libraries, or when ODE_NETS_RETURN_MEMORY=1.
    """
    if os.environ.get("ODE_NETS_RETURN_MEMORY") == "1" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
