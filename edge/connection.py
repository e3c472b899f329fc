"""One client session's state: its explicit state machine, identity, rooms, outbox, limits and timers.

The session does not know its transport (edge/transport.py): it queues
frames in its outbox and asks its `Transport` for the close and for drain
waits. Every state change goes through `_enter` (edge/state.py lists the
allowed ones), and every way to end a session is one of three calls:

- `close(disconnect)`: the server ends it (4008, 4009, 4001, 1009, drain ...);
- `peer_closed(code)`: the client sent its close frame first;
- `lost()`: the socket is gone (after a close, or without one: 1006).

Entering CLOSING seals the outbox (what was queued goes out first, nothing
after), leaves every room, cancels the requests in flight, and only then
lets the transport write the one close frame.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING

import msgspec

from core.auth import Principal
from core.ratelimit import TokenBucket
from edge.inflight import InFlight, Request, Work
from edge.outbox import Outbox
from edge.state import State, check_transition
from edge.transport import Transport
from schemas import CloseCode, Disconnect, Disconnects, Error, ErrorCode, Expiring, FramingCloseCode, ServerFrame
from schemas.frames import Ref

if TYPE_CHECKING:
    from edge.node import Node

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode

# Expiry timers run a callback that reads no context variables; sharing one
# context spares each timer the copy asyncio would otherwise make.
_TIMER_CONTEXT = contextvars.Context()


class Connection(Outbox):
    """A client session, and its outbox (push, flush, seal, pending).

    Kept small on purpose: an idle node holds one per open socket, so every
    field here is paid thousands of times over. Things most connections never
    need (the rate-limit buckets, requests in flight) are made on first use.
    """

    __slots__ = (
        "_expiry",
        "_history_bucket",
        "_join_bucket",
        "_node",
        "_publish_bucket",
        "_warned",
        "_who_bucket",
        "_work",
        "close_code",
        "counted_sub",
        "last_ping",
        "last_seen",
        "opened",
        "principal",
        "rooms",
        "session",
        "state",
        "transport_adapter",
    )

    def __init__(self, node: Node, session: str, adapter: Transport) -> None:
        super().__init__(adapter.socket, node.settings.max_pending_bytes, node.flusher)
        self._node = node
        self.session = session
        self.transport_adapter = adapter
        self.state = State.AUTHENTICATING
        self.principal: Principal | None = None
        self.rooms: tuple[str, ...] = ()
        """Rooms joined or being joined, in join order; a tuple (rarely changed, smaller than a set)."""
        # One float for all three: each distinct float would cost 24 bytes per connection.
        self.opened = self.last_seen = self.last_ping = time.monotonic()
        self.close_code: int | None = None
        """The code of the close frame sent or received; 1006 when the socket went without one."""
        self.counted_sub: str | None = None
        self._publish_bucket: TokenBucket | None = None
        self._join_bucket: TokenBucket | None = None
        self._history_bucket: TokenBucket | None = None
        self._who_bucket: TokenBucket | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._work: InFlight | None = None
        self._warned = False
        """`expiring` was sent for the current token."""

    # --- state --------------------------------------------------------------

    def _enter(self, state: State) -> None:
        """The one place a session's state changes."""
        previous = self.state
        check_transition(previous, state)
        self.state = state
        observe = self._node.on_transition
        if observe is not None:
            observe(self, previous, state)

    @property
    def closing(self) -> bool:
        """Closing or closed: nothing more is sent, no request is served."""
        return self.state is State.CLOSING or self.state is State.CLOSED

    def opened_as(self, principal: Principal) -> None:
        """Authenticated: the session is OPEN for requests under `principal`."""
        self._enter(State.OPEN)
        self.adopt(principal)

    def adopt(self, principal: Principal) -> None:
        """Take `principal` (at welcome, or after a refresh) and schedule its expiry."""
        self.principal = principal
        self.schedule_expiry()

    # --- sending ------------------------------------------------------------

    def send(self, frame: ServerFrame) -> None:
        self.push(self.transport_adapter.framing.frame(_encode(frame)))

    def error(self, code: ErrorCode, message: str, ref: Ref = None) -> None:
        self.send(Error(code=code, message=message, ref=ref))

    async def writable(self) -> bool:
        """Wait until the client has read enough that the outbox is at most half full.

        False when the session is closing, or when the client read nothing for
        `write_timeout` (it is then closed with 4008): a replay paced by a
        client that stopped reading must not wait forever. The wait is an event
        (the transport's drain), not a poll.
        """
        if self.state is not State.OPEN or self.closed:
            return False
        level = self.limit // 2
        if self.pending <= level:
            return True
        self.flush()
        if not await self.transport_adapter.drained(level, self._node.settings.write_timeout):
            self.close(Disconnects.STALLED)
            return False
        return self.state is State.OPEN and not self.closed

    # --- rooms, limits, requests ---------------------------------------------

    def add_room(self, room: str) -> None:
        self.rooms = (*self.rooms, room)

    def drop_room(self, room: str) -> bool:
        if room not in self.rooms:
            return False
        self.rooms = tuple(r for r in self.rooms if r != room)
        return True

    def publish_bucket(self) -> TokenBucket:
        """The publish rate limit, made at the first publish: most connections only
        listen. A bucket starts full, so making it late changes nothing."""
        if self._publish_bucket is None:
            settings = self._node.settings
            self._publish_bucket = TokenBucket(settings.publish_rate, settings.publish_burst, time.monotonic())
        return self._publish_bucket

    def join_bucket(self) -> TokenBucket:
        """The join/leave rate limit, made at the first join."""
        if self._join_bucket is None:
            settings = self._node.settings
            self._join_bucket = TokenBucket(settings.join_rate, settings.join_burst, time.monotonic())
        return self._join_bucket

    def history_bucket(self) -> TokenBucket:
        """The history rate limit (its own: paging back must not eat the publish budget)."""
        if self._history_bucket is None:
            settings = self._node.settings
            self._history_bucket = TokenBucket(settings.history_rate, settings.history_burst, time.monotonic())
        return self._history_bucket

    def who_bucket(self) -> TokenBucket:
        """`who` requests: each answers up to max_presence_list members from memory."""
        if self._who_bucket is None:
            settings = self._node.settings
            self._who_bucket = TokenBucket(settings.who_rate, settings.who_burst, time.monotonic())
        return self._who_bucket

    @property
    def work(self) -> InFlight:
        """Requests in flight and tasks beside the read loop, made on first use."""
        if self._work is None:
            self._work = InFlight(self._node.settings.max_requests_in_flight, self._request_crashed, self._work_idle)
        return self._work

    def _work_idle(self, work: InFlight) -> None:
        if self._work is work:
            self._work = None

    def lane_busy(self, key: Hashable) -> bool:
        """True while a request with lane `key` runs or waits (without making the request object)."""
        work = self._work
        return work is not None and work.busy(key)

    def submit(self, key: Hashable, request: Request) -> None:
        """Run a request that waits on the broker, ordered after others with the same key."""
        if self.state is State.OPEN:
            self.work.submit(key, request)

    def spawn(self, work: Work) -> None:
        """Run `work` beside the read loop (a replay's backlog); cancelled when the session closes."""
        if self.state is State.OPEN:
            self.work.spawn(work)
        else:
            work.close()

    @property
    def requests_full(self) -> bool:
        work = self._work
        return work is not None and work.full

    async def request_slot(self) -> None:
        """Wait until another request may start (or the session closes)."""
        if self._work is not None:
            await self._work.slot()

    def _request_crashed(self, exc: BaseException) -> None:
        log.error("a request of session %s failed", self.session, exc_info=exc)
        self.error(ErrorCode.INTERNAL, "internal error")

    # --- token expiry -------------------------------------------------------

    def schedule_expiry(self) -> None:
        """Send `expiring` `refresh_before` s before the principal's `exp`, and close with 4001 at `exp`.

        No timer is held while the next step is far off: the node's heartbeat
        sweep calls `arm_expiry` on every connection, and a timer is armed only
        for a step due within `Node.expiry_horizon`. Timers held for the life of
        every connection cost memory per connection, and keep asyncio from
        purging cancelled timers. Called again after a refresh, it starts over
        from the new `exp`.
        """
        self._cancel_expiry()
        self._warned = False
        self.arm_expiry(time.time())

    def arm_expiry(self, now: float) -> None:
        """Arm the timer for the next expiry step if it is due within the horizon; `now` is unix time."""
        principal = self.principal
        if self._expiry is not None or principal is None or self.state is not State.OPEN:
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
            self.close(Disconnects.TOKEN_EXPIRED)
            return
        self._warned = True
        self.send(Expiring(exp=principal.exp))
        self.arm_expiry(time.time())

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    # --- ending -------------------------------------------------------------

    def close(self, disconnect: Disconnect) -> None:
        """The server ends the session with `disconnect` (once); what was queued before goes out first."""
        if self.state is State.CLOSING or self.state is State.CLOSED:
            return
        self.close_code = int(disconnect.code)
        self._wind_down(State.CLOSING)
        self.transport_adapter.send_close(disconnect, self._node.settings.close_timeout)

    def peer_closed(self, code: int | None) -> None:
        """The client sent its close frame first (with `code`, None when it had none)."""
        if self.state is State.CLOSING or self.state is State.CLOSED:
            return
        self.close_code = int(FramingCloseCode.NO_STATUS) if code is None else code
        self._wind_down(State.CLOSING)

    def lost(self) -> None:
        """The socket is gone; without a close frame before, that is 1006."""
        if self.state is State.CLOSED:
            return
        if self.close_code is None:
            self.close_code = int(CloseCode.ABNORMAL)
        self._wind_down(State.CLOSED)

    def _wind_down(self, state: State) -> None:
        was_closing = self.state is State.CLOSING
        self._enter(state)
        if was_closing:
            return
        # Seal before anything else: frames queued until now go out, nothing after.
        self.seal()
        self._cancel_expiry()
        if self._work is not None:
            self._work.cancel()
        # Leave at once: fan-out stops counting a member that will get nothing.
        self.leave_all()

    def leave_all(self) -> None:
        """Leave every room (closing: `rooms` is kept for the close log line, and serves nothing more)."""
        for room in self.rooms:
            self._node.leave_room(self, room)

    def overflowed(self) -> None:
        # Called from inside fan-out: the outbox already refuses frames, and the
        # close (which leaves rooms) waits for the next pass so the loop walking
        # the room's members is not changed under it.
        asyncio.get_running_loop().call_soon(self.close, Disconnects.SLOW_CONSUMER)
