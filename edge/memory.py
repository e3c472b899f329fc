"""Giving memory back to the system after a wave of connections has gone.

CPython frees objects into its allocator's free lists and glibc's malloc keeps
freed heap pages mapped, so after 5,000 sockets come and go the process keeps
their memory. `malloc_trim(0)` returns what glibc can; the node calls it when
its connection count has fallen by a thousand since its high point. Elsewhere (not
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
    """Trim each time the connection count has fallen by `step` since its high point,
    and once more when a wave that trimmed has drained to zero, so the memory of
    the last connections to go is returned too. Small ripples never trigger it.
    """

    __slots__ = ("high", "step", "waving")

    def __init__(self, step: int = 1000) -> None:
        self.step = step
        self.high = 0
        self.waving = False

    def observe(self, connections: int) -> bool:
        """Record the current count; True when a trim is due now."""
        self.high = max(self.high, connections)
        drained = self.waving and connections == 0 and self.high > 0
        if self.high - connections >= self.step or drained:
            self.waving = connections > 0
            self.high = connections
            return True
        return False
