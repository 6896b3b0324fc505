"""Keep freed tensor memory in the process instead of handing it back to the kernel after every op.

glibc serves each allocation above its mmap threshold (128 KB, rising to at most 32 MB) with a fresh
`mmap` and returns it with `munmap` when freed. A forward of the 9x9 denoiser on 256 boards allocates
about 420 MB of activations that way, so every forward page-faults about 100,000 fresh pages, each
zeroed by the kernel: measured on 2 cores, 102,100 minor faults per forward, and the forward ran 1.46x
faster once the memory was kept (docs/results/precision.md). PyTorch has no caching allocator on
the CPU; this is the cheapest one: tell glibc never to mmap (`M_MMAP_MAX` 0) and not to trim the heap
below 2 GB of free top (`M_TRIM_THRESHOLD`), so freed blocks are reused by the next op.

The cost is that the process keeps its peak heap until it exits (bounded by the peak, as it was).
Every aop-ray command and Ray worker calls `keep_freed_memory()` first; `AOP_RAY_MALLOC=default` leaves
glibc as it is. The library API (`aop_ray.api`, the environments) never changes a caller's process on its
own: call it yourself.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

OPT_OUT = "AOP_RAY_MALLOC"  # =default: leave the allocator alone
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # <malloc.h>
TRIM_THRESHOLD = 2**31 - 1  # the largest int mallopt takes: 2 GB of free heap top before trimming


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Switch glibc's malloc to keep freed memory for reuse (once per process); whether it was switched.

    False where it does not apply: `AOP_RAY_MALLOC=default`, not Linux, or a C library without glibc's
    `mallopt` (musl)."""
    if os.environ.get(OPT_OUT) == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
