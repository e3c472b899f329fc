"""Sockets before authentication: their own budget, per-source caps and a handshake deadline.

An outside audit held 3,000 sockets open with half-sent HTTP headers for
minutes (invisible to `max_connections` and to /metrics), and 700 upgraded
but unauthenticated sockets from one address made every real client fail
with 1013. So every TCP connection is counted here from the moment it is
accepted, by phase and by source address:

- HANDSHAKE: no complete HTTP request head yet. Dropped after
  `handshake_timeout` (a sweep once a second, no timer per socket).
- UNAUTHENTICATED: an upgraded WebSocket waiting for its token
  (`auth_timeout` bounds it in the session).
- Then out of both budgets: an authenticated session, or a plain HTTP
  request (authenticated per request, and bounded by aiohttp's keep-alive).

A socket that would take a source past `max_unauthenticated_per_source` or
`max_connections_per_source`, or the node past `max_unauthenticated`, is
answered `503` at once and closed, before it costs anything else. Sockets
not yet authenticated never count against `max_connections`, which is for
sessions. Authenticated sockets keep no entry here, only their source's
count, so an idle node pays nothing per connection for this.

Installed on aiohttp's `web.Server` through its public connection hooks
(`connection_made`/`connection_lost`, called by each request handler).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import Counter
from typing import Any

from aiohttp import web

from core.settings import Settings

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 1.0
"""Seconds between two looks for sockets past their handshake deadline."""
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
)


TOO_MANY_FROM_SOURCE = "too many connections from this address"
TOO_MANY_WAITING_FROM_SOURCE = "too many connections from this address waiting to authenticate"
BUDGET_SPENT = "node busy: too many connections waiting to authenticate"
_REASON_KEYS = {
    TOO_MANY_FROM_SOURCE: "per_source",
    TOO_MANY_WAITING_FROM_SOURCE: "unauthenticated_per_source",
    BUDGET_SPENT: "unauthenticated_budget",
}


class Phase(enum.Enum):
    HANDSHAKE = "handshake"
    UNAUTHENTICATED = "unauthenticated"


def source_of(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "unknown"


class _Pending:
    __slots__ = ("deadline", "phase", "source")

    def __init__(self, source: str, deadline: float) -> None:
        self.source = source
        self.phase = Phase.HANDSHAKE
        self.deadline = deadline


class Admission:
    def __init__(self, settings: Settings, clock: Any = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._pending: dict[asyncio.Transport, _Pending] = {}
        self._per_source: Counter[str] = Counter()
        """Open sockets by source address (all phases)."""
        self._pending_per_source: Counter[str] = Counter()
        self._refused: set[asyncio.Transport] = set()
        """Refused at accept and not yet gone: never counted, so never forgotten."""
        self.refused: Counter[str] = Counter()
        """Sockets refused at accept, by reason (a counter for metrics and tests)."""
        self.handshake_timeouts = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._gone: dict[asyncio.Transport, asyncio.Future[None]] = {}
        """Futures of sockets someone waits to see gone (`gone`)."""

    # --- counts ---------------------------------------------------------------

    def counts(self) -> dict[Phase, int]:
        """Sockets not yet authenticated, by phase (read at metrics collection)."""
        counts = dict.fromkeys(Phase, 0)
        for entry in self._pending.values():
            counts[entry.phase] += 1
        return counts

    def refusals(self) -> dict[str, int]:
        """Sockets refused at accept by cause, and dropped at the handshake deadline (for metrics)."""
        counts = {"per_source": 0, "unauthenticated_per_source": 0, "unauthenticated_budget": 0}
        for reason, n in self.refused.items():
            counts[_REASON_KEYS[reason]] += n
        counts["handshake_timeout"] = self.handshake_timeouts
        return counts

    # --- aiohttp's hooks ---------------------------------------------------------

    def install(self, server: web.Server) -> None:
        """Count every connection `server` accepts (call before its site starts)."""
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self.accept(transport)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            transport = handler.transport
            lost(handler, exc)
            if transport is not None:
                self.forget(transport)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    def accept(self, transport: asyncio.Transport) -> bool:
        """A new socket: counted, or refused with 503 when a budget is spent."""
        settings = self._settings
        source = source_of(transport)
        reason = None
        if settings.max_connections_per_source and self._per_source[source] >= settings.max_connections_per_source:
            reason = TOO_MANY_FROM_SOURCE
        elif (
            settings.max_unauthenticated_per_source
            and self._pending_per_source[source] >= settings.max_unauthenticated_per_source
        ):
            reason = TOO_MANY_WAITING_FROM_SOURCE
        elif len(self._pending) >= settings.max_unauthenticated:
            reason = BUDGET_SPENT
        if reason is not None:
            self.refused[reason] += 1
            body = f"{reason}; try again later\n".encode()
            transport.write(_REFUSAL % (len(body), body))
            transport.close()
            self._refused.add(transport)
            return False
        self._per_source[source] += 1
        self._pending_per_source[source] += 1
        self._pending[transport] = _Pending(source, self._clock() + settings.handshake_timeout)
        self._ensure_sweeper()
        return True

    def forget(self, transport: asyncio.Transport) -> None:
        """The socket is gone (or was refused: then it was never counted)."""
        waiter = self._gone.pop(transport, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if transport in self._refused:
            self._refused.discard(transport)
            return
        entry = self._pending.pop(transport, None)
        if entry is not None:
            source = entry.source
            self._decrement(self._pending_per_source, source)
        else:
            source = source_of(transport)
        self._decrement(self._per_source, source)

    @staticmethod
    def _decrement(counter: Counter[str], key: str) -> None:
        left = counter[key] - 1
        if left > 0:
            counter[key] = left
        else:
            counter.pop(key, None)

    async def gone(self, transport: asyncio.Transport) -> None:
        """Until the socket is gone (its connection lost); at once when it is already."""
        if transport.is_closing() and transport.get_protocol() is None:
            return
        waiter = self._gone.get(transport)
        if waiter is None:
            waiter = self._gone[transport] = asyncio.get_running_loop().create_future()
        await asyncio.shield(waiter)

    # --- phases ----------------------------------------------------------------

    def request_head(self, transport: asyncio.Transport | None, upgrade: bool) -> None:
        """A complete request head arrived: an upgrade waits for its token, plain HTTP leaves the budget."""
        if transport is None:
            return
        entry = self._pending.get(transport)
        if entry is None or entry.phase is not Phase.HANDSHAKE:
            return
        if upgrade:
            entry.phase = Phase.UNAUTHENTICATED
        else:
            self._release(transport, entry)

    def authenticated(self, transport: asyncio.Transport) -> None:
        entry = self._pending.get(transport)
        if entry is not None:
            self._release(transport, entry)

    def _release(self, transport: asyncio.Transport, entry: _Pending) -> None:
        del self._pending[transport]
        self._decrement(self._pending_per_source, entry.source)

    # --- the handshake deadline ------------------------------------------------------

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def _sweep_loop(self) -> None:
        while self._pending:
            await asyncio.sleep(SWEEP_INTERVAL)
            self.sweep()

    def sweep(self) -> int:
        """Drop the sockets whose request head did not arrive in time; how many."""
        now = self._clock()
        late = [t for t, e in self._pending.items() if e.phase is Phase.HANDSHAKE and e.deadline <= now]
        for transport in late:
            transport.abort()  # connection_lost forgets it
        self.handshake_timeouts += len(late)
        if late:
            log.debug("dropped %d sockets that sent no request head within handshake_timeout", len(late))
        return len(late)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
