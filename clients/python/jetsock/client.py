"""The asyncio client: one WebSocket at a time, reconnected and resumed for the application.

The application sees rooms that never lose or repeat a message and publishes
that resolve once stored; the connection underneath may drop, drain or expire
any number of times. To make that true the client keeps, across connections:

- each room's position (epoch, last seq), to rejoin with `since`;
- every publish not yet acked, with its idempotency `id`, to resend it as is;
- the token, fetched again only when the server says it is no good.

Each connection is a `jetsock.link.Link`, read by the client's one task.
Frames are handled in the order they arrive, so a room's `joined`, its replay
and its live messages are applied in exactly the server's order.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import uuid
from collections.abc import Callable, Coroutine
from contextlib import suppress
from types import TracebackType
from typing import Any, TypedDict, Unpack

import aiohttp
import msgspec

from jetsock.errors import ClosedError, FrameTooLarge, PublishQueueFull, RoomLeft, ServerError
from jetsock.link import Disconnected, Link, Outcome
from jetsock.policy import RETRYABLE_PUBLISH_ERRORS, Backoff
from jetsock.reconnect import Tokens, TokenSource, reconnect_forever
from jetsock.room import Ack, ResetCallback, Room
from jetsock.state import State, StateInfo, StateListener, States
from schemas import Ack as AckFrame
from schemas import (
    Error,
    Expiring,
    Join,
    Joined,
    Leave,
    Left,
    Msg,
    Pong,
    Publish,
    Refresh,
    Refreshed,
    Reset,
    ServerFrame,
    Welcome,
)

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 256
"""Longest publish `id` the server accepts (schemas.frames.Publish)."""

_encode = msgspec.json.Encoder().encode


class _Publish:
    """A publish until its `ack`: the frame is kept as text so a resend is byte for byte the same."""

    __slots__ = ("frame", "future", "tries")

    def __init__(self, frame: str, future: asyncio.Future[Ack]) -> None:
        self.frame = frame
        self.future = future
        self.tries = 0
        """Resends after `unavailable` or `rate_limited` (each with the same id)."""


class Options(TypedDict, total=False):
    """The keyword options of `connect` (see `Client`)."""

    backoff: Backoff
    dead_after: float
    connect_timeout: float
    request_timeout: float
    max_pending_publishes: int
    max_frame_bytes: int
    draw: Callable[[], float]


def connect(url: str, *, token: TokenSource, **options: Unpack[Options]) -> Client:
    """A client for the jetsock edge at `url` (`ws://host:port/ws`); use it with `async with`.

    The connection is made in the background: `async with` returns at once,
    and `join` and `publish` wait for it. See `Client` for the options.
    """
    return Client(url, token, **options)


class Client:
    """A jetsock connection that survives reconnects.

    Options:
    - `backoff`: reconnect delays (full jitter, base 1 s, x2, cap 30 s, reset
      after 10 s connected, as PROTOCOL.md section 7 asks);
    - `dead_after`: seconds to wait for any frame after an idle-time `ping`
      before declaring the connection dead and reconnecting;
    - `connect_timeout`: seconds for the handshake and the `welcome`;
    - `request_timeout`: seconds `leave` and `refresh` wait for their reply;
    - `max_pending_publishes`: publishes awaiting their `ack` (the queue kept
      while disconnected); past it `publish` raises `PublishQueueFull`;
    - `max_frame_bytes`: the server's limit, checked before sending;
    - `draw`: the random source for jitter (tests make it deterministic).
    """

    def __init__(
        self,
        url: str,
        token: TokenSource,
        *,
        backoff: Backoff | None = None,
        dead_after: float = 10.0,
        connect_timeout: float = 10.0,
        request_timeout: float = 10.0,
        max_pending_publishes: int = 1000,
        max_frame_bytes: int = 65536,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.url = url
        self._tokens = Tokens(token)
        self._backoff = backoff or Backoff()
        self._dead_after = dead_after
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._max_pending = max_pending_publishes
        self._max_frame_bytes = max_frame_bytes
        self._draw = draw

        self._states = States()
        self._closed: ClosedError | None = None

        self._rooms: dict[str, Room] = {}
        self._publishes: dict[int, _Publish] = {}
        self._refs = itertools.count(1)

        self._link: Link | None = None
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._aux: set[asyncio.Task[None]] = set()
        self._refreshing = False
        self.welcome: Welcome | None = None
        """The last `welcome`: `session`, `node`, `heartbeat`, `exp`."""
        self.exp: int | None = None
        """Expiry (unix s) of the token the server holds, from `welcome` or `refreshed`."""

    # --- lifecycle ----------------------------------------------------------

    async def __aenter__(self) -> Client:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def start(self) -> None:
        """Start connecting in the background (done by `async with`)."""
        if self._task is not None or self._closed is not None:
            return
        self._http = aiohttp.ClientSession()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"jetsock {self.url}")
        self._states.set("connecting", {})

    async def close(self) -> None:
        """Close for good: room iterators end, pending joins and publishes raise `ClosedError`."""
        self._finish(ClosedError(None, "closed by the application"), by_application=True)
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        for aux in list(self._aux):
            aux.cancel()
        if self._http is not None:
            await self._http.close()
            self._http = None

    # --- state --------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._states.current

    @property
    def state_info(self) -> StateInfo:
        return self._states.info

    def on_state(self, listener: StateListener) -> Callable[[], None]:
        """Call `listener(state, info)` on every state change; returns a function that removes it.

        `reconnecting` is reported for every scheduled attempt, each with its
        own `delayMs`, so an application can show "retrying in N s".
        """
        return self._states.listen(listener)

    async def wait_connected(self) -> None:
        """Wait for the state `connected`; raises `ClosedError` if the client closes first."""
        while self._states.current != "connected":
            if self._closed is not None:
                raise self._closed
            await self._states.changed()

    # --- the application's requests -----------------------------------------

    async def join(
        self,
        room: str,
        since: int | None = None,
        epoch: str | None = None,
        on_reset: ResetCallback | None = None,
    ) -> Room:
        """Join `room` and return it once the server answered `joined`.

        With `since` (and the `epoch` it belongs to) the stored messages after
        it are replayed first; without, delivery starts at the room's head.
        When continuity is lost (`recovered: false` for a `since`, or a
        `reset`), `on_reset(room, info)` is called before any message after
        `info.seq` is queued. The room stays joined across reconnects. A
        refusal raises `ServerError` (`forbidden`, `invalid_room`,
        `unavailable`, ...).
        """
        self._check_open()
        if room in self._rooms:
            raise ValueError(f"already joined {room!r}: leave it first")
        member = Room(self, room, since, epoch, on_reset)
        self._rooms[room] = member
        try:
            link = self._link
            if link is not None:
                await self._send_join(link, member)
            await member.wait_joined()
        except ServerError:
            # Refused: the server holds no membership to leave.
            if self._rooms.get(room) is member:
                del self._rooms[room]
            member.end(None)
            raise
        except BaseException:
            if self._rooms.get(room) is member:
                # The caller stopped waiting: forget the room, and leave it on
                # the server in case the join went through.
                self._spawn(self._leave(member))
            raise
        return member

    async def publish(self, room: str, data: Any, id: str | None = None) -> Ack:
        """Publish `data` (any JSON value) to `room`; returns `(seq, duplicate)` once stored.

        `id` is the idempotency key, a fresh UUID when not given. A publish not
        acked when the connection drops is resent with the same `id` after the
        reconnect, so it is stored once; `duplicate` is then true if the first
        send had been stored. Publishing does not require joining.
        """
        self._check_open()
        if id is not None and not 1 <= len(id) <= MAX_ID_LENGTH:
            raise ValueError(f"a publish id is 1 to {MAX_ID_LENGTH} characters")
        if len(self._publishes) >= self._max_pending:
            raise PublishQueueFull(f"{len(self._publishes)} publishes are waiting for their ack")
        ref = next(self._refs)
        frame = Publish(room=room, data=msgspec.Raw(msgspec.json.encode(data)), id=id or uuid.uuid4().hex, ref=ref)
        encoded = _encode(frame)
        if len(encoded) > self._max_frame_bytes:
            raise FrameTooLarge(f"the publish frame is {len(encoded)} bytes; the limit is {self._max_frame_bytes}")
        pending = _Publish(encoded.decode(), asyncio.get_running_loop().create_future())
        self._publishes[ref] = pending
        try:
            link = self._link
            if link is not None:
                await link.send_text(pending.frame)
            return await pending.future
        finally:
            # Acked, refused or abandoned by the caller: never resent.
            self._publishes.pop(ref, None)

    async def _leave(self, room: Room) -> None:
        """Forget `room` here, then leave it on the server and wait for `left`."""
        room.end(None)
        if self._rooms.get(room.name) is not room:
            return
        del self._rooms[room.name]
        link = self._link
        if link is None:
            return  # Not a member anywhere: it will simply not be rejoined.
        # A `joined` still on its way for this room is no longer ours.
        for ref in [ref for ref, (joining, _) in link.joins.items() if joining is room]:
            del link.joins[ref]
        with suppress(ServerError, Disconnected, TimeoutError):
            await link.request(lambda ref: Leave(room=room.name, ref=ref))

    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed

    # --- the connection loop ------------------------------------------------

    async def _run(self) -> None:
        try:
            error = await reconnect_forever(
                self._connect_once,
                self._tokens,
                self._backoff,
                self._draw,
                lambda info: self._states.set("reconnecting", info),
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # A bug here must not leave the application waiting forever.
            log.exception("jetsock client loop failed")
            error = ClosedError(None, f"internal error: {exc!r}")
        self._finish(error, by_application=False)
        # Closed for good on its own: release the HTTP session now, in case
        # the application never calls close().
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    async def _connect_once(self, token: str) -> Outcome:
        """One connection, from handshake to close."""
        assert self._http is not None
        link = await Link.open(
            self._http,
            self.url,
            token,
            timeout=self._connect_timeout,
            refs=self._refs,
            request_timeout=self._request_timeout,
        )
        if isinstance(link, str):
            return None, link, None
        try:
            return await link.run(
                welcome_timeout=self._connect_timeout,
                dead_after=self._dead_after,
                on_welcome=self._on_welcome,
                on_frame=self._dispatch,
            )
        finally:
            if self._link is link:
                self._link = None
            await link.close()

    def _finish(self, error: ClosedError, *, by_application: bool) -> None:
        """Enter `closed` for good and fail everything that waits."""
        if self._closed is not None:
            return
        self._closed = error
        publishes, self._publishes = self._publishes, {}
        for pending in publishes.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        rooms, self._rooms = self._rooms, {}
        for room in rooms.values():
            room.fail_join(error)
            room.end(None if by_application else error)
        self._states.set("closed", {"code": error.code, "reason": error.reason})

    # --- frames -------------------------------------------------------------

    async def _on_welcome(self, link: Link, frame: Welcome) -> None:
        """Authenticated: rejoin every room where it left off, then resend unacked publishes."""
        self.welcome = frame
        self.exp = frame.exp
        rooms = list(self._rooms.values())
        publishes = list(self._publishes.values())
        # From here on new joins and publishes are sent by their callers.
        self._link = link
        self._states.set("connected", {"session": frame.session, "node": frame.node})
        for room in rooms:
            if self._rooms.get(room.name) is room:
                await self._send_join(link, room)
        for pending in publishes:
            if not pending.future.done():
                await link.send_text(pending.frame)

    def _dispatch(self, link: Link, frame: ServerFrame) -> None:
        match frame:
            case Msg():
                room = self._rooms.get(frame.room)
                if room is not None:
                    room.on_msg(frame)
            case AckFrame():
                pending = self._publishes.pop(frame.ref, None) if isinstance(frame.ref, int) else None
                if pending is not None and not pending.future.done():
                    pending.future.set_result(Ack(frame.seq, bool(frame.duplicate)))
            case Joined():
                self._on_joined(link, frame)
            case Left():
                self._on_left(link, frame)
            case Reset():
                room = self._rooms.get(frame.room)
                if room is not None:
                    room.on_reset(frame)
            case Expiring():
                if not self._refreshing:
                    self._refreshing = True
                    self._spawn(self._refresh(link))
            case Refreshed() | Pong():
                link.reply(frame.ref, frame)
            case Error():
                self._on_error(link, frame)
            case Welcome():
                pass  # Handled by the reader; a second one would be a server bug.

    def _on_joined(self, link: Link, frame: Joined) -> None:
        entry = link.joins.pop(frame.ref, None) if isinstance(frame.ref, int) else None
        if entry is None:
            return  # Left meanwhile; the `leave` is already on its way.
        room, sent_since = entry
        if self._rooms.get(room.name) is room:
            room.on_joined(frame, sent_since)

    def _on_left(self, link: Link, frame: Left) -> None:
        if frame.ref is not None:
            link.reply(frame.ref, frame)
            return
        # Not asked for: the refreshed token no longer allows the room.
        room = self._rooms.pop(frame.room, None)
        if room is not None:
            room.end(RoomLeft(frame.room, frame.reason or "left by the server"))

    def _on_error(self, link: Link, frame: Error) -> None:
        ref = frame.ref
        error = ServerError(str(frame.code), frame.message)
        if not isinstance(ref, int):
            log.warning("server error without a request: %s", error)
            return
        pending = self._publishes.get(ref)
        if pending is not None:
            if error.code in RETRYABLE_PUBLISH_ERRORS and not pending.future.done():
                # Maybe stored (`unavailable`), or refused for now: the same frame, with the
                # same id, goes again later, so it is stored once whatever happened.
                pending.tries += 1
                delay = self._backoff.retry_delay(pending.tries, self._draw())
                asyncio.get_running_loop().call_later(delay, self._resend_publish, ref, pending)
                return
            del self._publishes[ref]
            if not pending.future.done():
                pending.future.set_exception(error)
            return
        entry = link.joins.pop(ref, None)
        if entry is not None:
            self._on_join_refused(link, entry[0], error)
            return
        link.reply(ref, error)

    def _resend_publish(self, ref: int, pending: _Publish) -> None:
        link = self._link
        if link is None or self._publishes.get(ref) is not pending or pending.future.done():
            return  # acked, abandoned, or offline: a reconnect resends what is still waiting
        self._spawn(self._send_quietly(link, pending.frame))

    @staticmethod
    async def _send_quietly(link: Link, frame: str) -> None:
        with suppress(Disconnected, ConnectionError):
            await link.send_text(frame)

    def _on_join_refused(self, link: Link, room: Room, error: ServerError) -> None:
        if self._rooms.get(room.name) is not room:
            return
        if not room.has_joined:
            room.fail_join(error)  # The application's `join()` raises it.
        elif error.code == "unavailable":
            # A rejoin after a reconnect: NATS is briefly unavailable; try again soon.
            delay = self._backoff.delay(0, self._draw())
            asyncio.get_running_loop().call_later(delay, self._retry_join, link, room)
        else:
            del self._rooms[room.name]
            room.end(RoomLeft(room.name, error.code))

    def _retry_join(self, link: Link, room: Room) -> None:
        if self._link is link and self._rooms.get(room.name) is room:
            self._spawn(self._send_join(link, room))

    async def _refresh(self, link: Link) -> None:
        """`expiring`: fetch a token and `refresh`, on the same connection.

        When the source has nothing new (a fixed string) nothing is sent: the
        server closes with 4001 at expiry and the reconnect asks again.
        """
        try:
            token = await self._tokens.fetch()
            if token == self._tokens.current:
                return
            reply = await link.request(lambda ref: Refresh(token=token, ref=ref))
            if isinstance(reply, Refreshed):
                # Accepted: it is also the token for the next reconnect.
                self._tokens.current = token
                self.exp = reply.exp
        except (ServerError, Disconnected, TimeoutError) as exc:
            log.warning("token refresh failed: %r", exc)
        except Exception:
            log.exception("the token source failed during a refresh")
        finally:
            self._refreshing = False

    async def _send_join(self, link: Link, room: Room) -> None:
        ref = link.next_ref()
        since, epoch = room.since_for_join()
        link.joins[ref] = (room, since)
        await link.send(Join(room=room.name, since=since, epoch=epoch, ref=ref))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` beside the reader (it must not block reading); `close()` cancels it."""
        task = asyncio.get_running_loop().create_task(work)
        self._aux.add(task)
        task.add_done_callback(self._aux.discard)
