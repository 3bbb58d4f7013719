"""The C allocator's thresholds for a process that validates files in blocks of a few hundred KiB.

Validation (``kei_gateway.layouts``) makes a handful of buffers of 0.5–1 MiB per block (the
block, its byte classes, its transposed copy).  With glibc's defaults each of them is a fresh
``mmap`` — or comes from a heap top that was just trimmed — so every block's pages are
faulted in and zeroed again by the kernel: 75,000 page faults and a third of the CPU time of
validating 1,000,000 JNKS records went to that (docs/performance.md, "Issue 13, third pass").
Allocations below 2 MiB served from the heap, and up to 4 MiB of free heap top kept per
arena, let the next block reuse the same pages (2,000 faults; the peak RSS does not change:
the pages are the ones the previous block used).

Called once at the entry point (:func:`kei_gateway.cli.main.main`, the daemon included).
Not glibc (no ``mallopt``): nothing happens.
"""

from __future__ import annotations

import ctypes
from typing import Final

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_block_buffers"]

_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD: Final = 2 << 20
"""Allocations of this size or more get their own mapping (the 16 MiB key index, whole files); smaller ones the heap."""
TRIM_THRESHOLD: Final = 4 << 20
"""Free memory at the top of a heap beyond this is given back to the system."""


def keep_block_buffers() -> bool:
    """Set the thresholds; ``True`` when the C library took them (glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):  # pragma: no cover - not glibc
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
