"""Giving memory back to the system after a wave of connections has gone.

CPython frees objects into its allocator's free lists and glibc's malloc keeps
freed heap pages mapped, so after 5,000 sockets come and go the process keeps
their memory. `malloc_trim(0)` returns what glibc can; the node calls it when
its connection count has fallen well below a recent peak. Elsewhere (not
glibc) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _libc.malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):
    _libc = None


def trim() -> bool:
    """Return free heap memory to the system; True when something was released."""
    if _libc is None:
        return False
    return bool(_libc.malloc_trim(0))


class TrimPolicy:
    """Trim once the connection count has halved from a peak of at least `floor`."""

    __slots__ = ("floor", "peak")

    def __init__(self, floor: int = 1000) -> None:
        self.floor = floor
        self.peak = 0

    def observe(self, connections: int) -> bool:
        """Record the current count; True when a trim is due now."""
        self.peak = max(self.peak, connections)
        if self.peak >= self.floor and connections <= self.peak // 2:
            self.peak = connections
            return True
        return False
