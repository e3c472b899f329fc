"""One client connection's state: identity, rooms, outbox, limits and closing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from core.auth import Principal
from core.ratelimit import TokenBucket
from edge.outbox import Outbox
from edge.wsframe import text_frame
from schemas import CloseCode, Error, ErrorCode, ServerFrame
from schemas.frames import Ref

if TYPE_CHECKING:
    from edge.node import Node

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode

MAX_REASON_BYTES = 123
"""RFC 6455: a close frame's reason fits in 123 bytes."""


class Connection:
    __slots__ = (
        "__weakref__",
        "_closing",
        "_node",
        "_tasks",
        "_timers",
        "bucket",
        "close_code",
        "counted_sub",
        "last_ping",
        "last_seen",
        "outbox",
        "principal",
        "rooms",
        "session",
        "transport",
        "ws",
    )

    def __init__(self, node: Node, session: str, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        settings = node.settings
        self._node = node
        self.session = session
        self.ws = ws
        self.transport = transport
        self.outbox = Outbox(transport, settings.max_pending_bytes, node.flusher, self._on_overflow)
        self.principal: Principal | None = None
        self.rooms: set[str] = set()
        now = time.monotonic()
        self.bucket = TokenBucket(settings.publish_rate, settings.publish_burst, now)
        self.last_seen = now
        self.last_ping = now
        self.close_code: int | None = None
        self.counted_sub: str | None = None
        self._closing: asyncio.Task[None] | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # --- sending ------------------------------------------------------------

    def send(self, frame: ServerFrame) -> None:
        self.outbox.push(text_frame(_encode(frame)))

    def error(self, code: ErrorCode, message: str, ref: Ref = None) -> None:
        self.send(Error(code=code, message=message, ref=ref))

    async def writable(self) -> None:
        """Wait until the client has read enough that the outbox is at most half full."""
        if self.outbox.pending <= self.outbox.limit // 2:
            return
        self.outbox.flush()
        while self.outbox.pending > self.outbox.limit // 2 and not self.closing:
            await asyncio.sleep(0.01)

    # --- timers -------------------------------------------------------------

    def call_at(self, when: float, callback: asyncio.Handle | object) -> None:
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_at(when, callback))  # type: ignore[arg-type]

    def cancel_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` beside the read loop; it is cancelled when the connection ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- closing ------------------------------------------------------------

    def leave_all(self) -> None:
        for room in self.rooms:
            self._node.registry.leave(self, room)
        self.rooms.clear()

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    def close(self, code: CloseCode | int, reason: str = "") -> None:
        """Close with `code` (once); what was queued before goes out first."""
        if self.close_code is not None:
            return
        self.close_code = int(code)
        self.outbox.seal()
        # Leave at once: fan-out stops counting a member that will get nothing.
        self.leave_all()
        self._closing = asyncio.get_running_loop().create_task(self._close(int(code), reason))

    async def wait_closed(self) -> None:
        if self._closing is not None:
            await asyncio.shield(self._closing)

    async def _close(self, code: int, reason: str) -> None:
        message = reason.encode()[:MAX_REASON_BYTES]
        timeout = self._node.settings.close_timeout
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=message, drain=False), timeout)
        except (TimeoutError, ConnectionError) as exc:
            log.debug("close of %s did not complete: %s", self.session, exc)
        # The close frame is queued behind what the client has not read yet; a
        # client that reads gets it, one that never reads is dropped at the deadline.
        loop = asyncio.get_running_loop()
        while self.transport.get_write_buffer_size() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.transport.get_write_buffer_size():
            self.transport.abort()

    def _on_overflow(self) -> None:
        # Called from inside fan-out: the outbox already refuses frames, and the
        # close (which leaves rooms) waits for the next pass so the loop walking
        # the room's members is not changed under it.
        self._node.metrics.slow_consumers.add(1)
        asyncio.get_running_loop().call_soon(
            self.close, CloseCode.SLOW_CONSUMER, "slow consumer: outbound buffer full; reconnect and resume"
        )
