"""Process-level CPU tuning, applied explicitly by the trainer and benchmarks (never on import)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_applied = False


def keep_freed_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Ask glibc to keep freed blocks below ``threshold_bytes`` instead of unmapping them.

    A CPU training step allocates and frees tens of MB (gradients, gathered rows).
    By default glibc returns each such block to the OS, and the next step pays the
    page faults again: measured here, a 50 MB gather took 40 ms instead of 3 ms.
    Returns whether the setting was applied (only on glibc).
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, threshold_bytes) == 1 and ok
    except (OSError, AttributeError):
        return False
    _applied = ok
    return ok
