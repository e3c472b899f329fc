"""One client connection's state: identity, rooms, outbox, limits and closing."""

from __future__ import annotations

import asyncio
import contextvars
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
from schemas import CloseCode, Error, ErrorCode, Expiring, ServerFrame
from schemas.frames import Ref

if TYPE_CHECKING:
    from edge.node import Node

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode

MAX_REASON_BYTES = 123
"""RFC 6455: a close frame's reason fits in 123 bytes."""


# Expiry timers run a callback that reads no context variables; sharing one
# context spares each timer the copy asyncio would otherwise make.
_TIMER_CONTEXT = contextvars.Context()


class Connection(Outbox):
    """A client connection, and its outbox (push, flush, seal, pending).

    Kept small on purpose: an idle node holds one per open socket, so every
    field here is paid thousands of times over. Things most connections never
    need (the publish bucket, spawned tasks) are made on first use.
    """

    __slots__ = (
        "_bucket",
        "_closing",
        "_expiry",
        "_node",
        "_tasks",
        "_warned",
        "close_code",
        "counted_sub",
        "last_ping",
        "last_seen",
        "opened",
        "principal",
        "rooms",
        "session",
        "ws",
    )

    def __init__(self, node: Node, session: str, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        super().__init__(transport, node.settings.max_pending_bytes, node.flusher)
        self._node = node
        self.session = session
        self.ws = ws
        self.principal: Principal | None = None
        self.rooms: tuple[str, ...] = ()
        """Rooms joined, in join order; a tuple (rarely changed, smaller than a set)."""
        # One float for all three: each distinct float would cost 24 bytes per connection.
        self.opened = self.last_seen = self.last_ping = time.monotonic()
        self.close_code: int | None = None
        self.counted_sub: str | None = None
        self._bucket: TokenBucket | None = None
        self._closing: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] | None = None
        self._warned = False
        """`expiring` was sent for the current token."""

    # --- sending ------------------------------------------------------------

    def send(self, frame: ServerFrame) -> None:
        self.push(text_frame(_encode(frame)))

    def error(self, code: ErrorCode, message: str, ref: Ref = None) -> None:
        self.send(Error(code=code, message=message, ref=ref))

    async def writable(self) -> None:
        """Wait until the client has read enough that the outbox is at most half full."""
        if self.pending <= self.limit // 2:
            return
        self.flush()
        while self.pending > self.limit // 2 and not self.closing:
            await asyncio.sleep(0.01)

    # --- rooms and limits ----------------------------------------------------

    def add_room(self, room: str) -> None:
        self.rooms = (*self.rooms, room)

    def drop_room(self, room: str) -> None:
        self.rooms = tuple(r for r in self.rooms if r != room)

    def publish_bucket(self) -> TokenBucket:
        """The publish rate limit, made at the first publish: most connections only
        listen. A bucket starts full, so making it late changes nothing."""
        if self._bucket is None:
            settings = self._node.settings
            self._bucket = TokenBucket(settings.publish_rate, settings.publish_burst, time.monotonic())
        return self._bucket

    # --- token expiry and tasks --------------------------------------------

    def schedule_expiry(self) -> None:
        """Send `expiring` `refresh_before` s before the principal's `exp`, and close with 4001 at `exp`.

        No timer is held while the next step is far off: the node's heartbeat
        sweep calls `arm_expiry` on every connection, and a timer is armed only
        for a step due within `Node.expiry_horizon`. Timers held for the life of
        every connection cost memory per connection, and keep asyncio from
        purging cancelled timers (aiohttp leaves one per connection). Called
        again after a refresh, it starts over from the new `exp`.
        """
        self._cancel_expiry()
        self._warned = False
        self.arm_expiry(time.time())

    def arm_expiry(self, now: float) -> None:
        """Arm the timer for the next expiry step if it is due within the horizon; `now` is unix time."""
        principal = self.principal
        if self._expiry is not None or principal is None or self.close_code is not None:
            return
        due = principal.exp if self._warned else principal.exp - self._node.settings.refresh_before
        delay = due - now
        if delay <= self._node.expiry_horizon:
            loop = asyncio.get_running_loop()
            self._expiry = loop.call_at(loop.time() + max(0.0, delay), self._expiry_step, context=_TIMER_CONTEXT)

    def _expiry_step(self) -> None:
        self._expiry = None
        principal = self.principal
        assert principal is not None
        if self._warned:
            self.close(CloseCode.TOKEN_EXPIRED, "token expired")
            return
        self._warned = True
        self.send(Expiring(exp=principal.exp))
        self.arm_expiry(time.time())

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def cancel_timers(self) -> None:
        """Stop the expiry timer and the tasks spawned beside the read loop."""
        self._cancel_expiry()
        if self._tasks:
            for task in self._tasks:
                task.cancel()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` beside the read loop; it is cancelled when the connection ends."""
        task = asyncio.get_running_loop().create_task(work)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- closing ------------------------------------------------------------

    def leave_all(self) -> None:
        rooms, self.rooms = self.rooms, ()
        for room in rooms:
            self._node.registry.leave(self, room)

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    def close(self, code: CloseCode | int, reason: str = "") -> None:
        """Close with `code` (once); what was queued before goes out first."""
        if self.close_code is not None:
            return
        self.close_code = int(code)
        self.seal()
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

    def overflowed(self) -> None:
        # Called from inside fan-out: the outbox already refuses frames, and the
        # close (which leaves rooms) waits for the next pass so the loop walking
        # the room's members is not changed under it.
        asyncio.get_running_loop().call_soon(
            self.close, CloseCode.SLOW_CONSUMER, "slow consumer: outbound buffer full; reconnect and resume"
        )
