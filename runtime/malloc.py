"""The process's memory allocator, set for a data plane that moves megabyte buffers.

glibc's malloc serves each block over its mmap threshold (128 KiB at first, rising by itself to at most
32 MiB) with fresh pages from the kernel and hands them back on free, so every message of several MiB paid
a page fault per 4 KiB page on each copy into it. Measured here (benchmarks/serve_bench.py part 1): a
16 MiB hop took 23.3 ms with the defaults, 13.0 ms with large blocks kept in the heap. Freed memory up to
`TRIM_BYTES` stays with the process for the next message instead of going back to the kernel.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_BYTES = 32 << 20  # glibc's largest mmap threshold: blocks up to 32 MiB come from the heap
TRIM_BYTES = 256 << 20


def keep_large_buffers() -> bool:
    """Keep blocks of up to 32 MiB in the heap and up to 256 MiB of freed memory in the process (glibc
    only); returns whether the allocator took the settings."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to set
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
