"""The C allocator's thresholds for a process that validates files in blocks of a few hundred KiB.

Validation (``kei_gateway.layouts``) makes a handful of buffers of 0.5–1 MiB per block (the
block, its byte classes, its transposed copy).  With glibc's defaults each of them is a fresh
``mmap`` — or comes from a heap top that was just trimmed — so every block's pages are
faulted in and zeroed again by the kernel: 75,000 page faults and a third of the CPU time of
validating 1,000,000 JNKS records went to that (docs/performance.md, "Issue 13, third pass").
Allocations below 2 MiB served from the heap, and up to 4 MiB of free heap top kept per
arena, let the next block reuse the same pages (2,000 faults; the peak RSS does not change:
the pages are the ones the previous block used).  The threads share two arenas
(:data:`ARENA_MAX`), so that what each arena keeps is not multiplied by the thread pools' size.

Called once at the entry point (:func:`kei_gateway.cli.main.main`, the daemon included).
Not glibc (no ``mallopt``): nothing happens.
"""

from __future__ import annotations

import ctypes
import os
from typing import Final

__all__ = ["ARENA_MAX", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_block_buffers"]

_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_M_ARENA_MAX: Final = -8
ARENA_MAX: Final = 2
"""glibc heaps (arenas) the threads share; glibc's default is 8 per core.  Each arena keeps up to
:data:`TRIM_THRESHOLD` of free memory, so with one arena per pool thread (up to 16 of them) the
daemon's size grew with the threads that had ever allocated; two arenas bound that at 8 MiB, and
with 2 cores and the GIL two threads rarely allocate at once (docs/decisions.md, issues 11/16).
``$MALLOC_ARENA_MAX``, when set, is glibc's and is left alone."""
MMAP_THRESHOLD: Final = 2 << 20
"""Allocations of this size or more get their own mapping (the 16 MiB key index, whole files); smaller ones the heap."""
TRIM_THRESHOLD: Final = 4 << 20
"""Free memory at the top of a heap beyond this is given back to the system."""


def keep_block_buffers() -> bool:
    """Set the thresholds and the arena cap (before any thread starts); ``True`` when the C library took them (glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):  # pragma: no cover - not glibc
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    arenas = "MALLOC_ARENA_MAX" in os.environ or bool(mallopt(_M_ARENA_MAX, ARENA_MAX))
    return (bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            and arenas)
