"""Giving freed heap memory back to the operating system.

A responder worker's audit backlog (ocspd.audit.log) comes and goes with the database's
pace: sealed segments of a few hundred kilobytes pile up while a COPY waits and are freed
once it commits. glibc serves such blocks from the heap once the first has been freed (its
mmap threshold rises to their size), and the pages they leave free between longer-lived
objects stay counted in the worker's RSS. RSS then follows the largest backlog the worker
ever had, not the one it has: to an operator watching memory, a leak. malloc_trim(0)
returns every whole free page of the heap; on a worker's heap under load it took 0.2 ms
(median, 0.9 ms at most: bench/RESULTS.md).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        # The process's own symbols, the C library's among them (no ldconfig lookup).
        trim = ctypes.CDLL(None).malloc_trim  # glibc; absent from musl and others
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()
AVAILABLE = _TRIM is not None


def release_free_memory() -> bool:
    """Return free heap pages to the system; True if any were (False without glibc)."""
    return bool(_TRIM(0)) if _TRIM is not None else False
