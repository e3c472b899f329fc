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
import gc
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


class CollectorPolicy:
    """Keep CPython's full collections from pausing a node with many connections.

    A full (generation 2) collection walks every tracked object: with 5,000
    connections that is ~400,000 objects and a 100-250 ms pause, during which
    no frame moves; it came back every few seconds under chat traffic and set
    the p99. After each full collection the survivors, nearly all of them
    long-lived connection state, are frozen (`gc.freeze`), so later full
    collections walk only what was born since: tens of ms.

    Frozen objects that later become cyclic garbage (a closed connection
    leaves a few cycles) are only found by a collection that unfreezes first.
    `collect_due` asks for one when connections closed since the last
    reach a quarter of those open (at least `min_closed`): the same 25% rule
    CPython applies to its own full collections, so memory stays bounded under
    churn and a steady node never pays the full walk.
    """

    __slots__ = ("closed", "full_seen", "min_closed")

    def __init__(self, min_closed: int = 1000) -> None:
        self.min_closed = min_closed
        self.closed = 0
        self.full_seen = gc.get_stats()[2]["collections"]

    def connection_closed(self) -> None:
        self.closed += 1

    def collect_due(self, open_connections: int) -> bool:
        return self.closed >= max(self.min_closed, open_connections // 4)

    def full_collect(self) -> None:
        """Unfreeze, collect everything, freeze the survivors again."""
        gc.unfreeze()
        gc.collect()
        self.closed = 0
        self._freeze()

    def _freeze(self) -> None:
        gc.freeze()
        self.full_seen = gc.get_stats()[2]["collections"]

    def tick(self, open_connections: int) -> str | None:
        """Called from the node's sweep; what it did ("full", "freeze") or None."""
        if self.collect_due(open_connections):
            self.full_collect()
            return "full"
        if gc.get_stats()[2]["collections"] != self.full_seen:
            # An automatic full collection ran: freeze what it kept. It could not
            # see frozen garbage, so `closed` keeps counting towards a real one.
            self._freeze()
            return "freeze"
        return None
