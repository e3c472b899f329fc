"""The asyncio client: one WebSocket at a time, reconnected and resumed for the application.

The application sees rooms that never lose or repeat a message and publishes
that resolve once stored; the connection underneath may drop, drain or expire
any number of times, or be closed by `disconnect()` and opened again by
`connect()`. To make that true the client keeps, across connections:

- each room's position (epoch, last seq), to rejoin with `since`;
- every publish not yet acked, with its idempotency `id`, to resend it as is;
- the token, fetched again only when the server says it is no good.

Each connection is a `jetsock.link.Link`, read by the client's one task: a
WebSocket, or where WebSocket cannot open (a proxy that breaks the upgrade)
the HTTP stream of PROTOCOL.md section 11 (`jetsock.stream`), chosen by the
fallback rule of `Client` (option `transports`).
Frames are handled in the order they arrive, so a room's `joined`, its replay
and its live messages are applied in exactly the server's order. Every rule
(close codes, delays, limits, room names) comes from `jetsock.rules`
(PROTOCOL.md section 9.11), like the JS client's.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from types import TracebackType
from typing import Any, TypedDict, Unpack

import aiohttp
import msgspec

from jetsock import rules
from jetsock.errors import (
    AlreadyJoined,
    ClosedError,
    FrameTooLarge,
    InvalidRoom,
    JetsockError,
    PublishQueueFull,
    PublishTimeout,
    RequestTimeout,
    RoomLeft,
    ServerError,
)
from jetsock.link import Disconnected, Link, Outcome, Transport, WebSocketLink
from jetsock.policy import RETRYABLE_ERRORS, Backoff, room_name_error
from jetsock.reconnect import BadToken, Tokens, TokenSource, logged_out, reconnect_forever
from jetsock.room import Ack, HistoryPage, Presence, ResetCallback, Room, message_of, presence_of
from jetsock.state import State, StateInfo, StateListener, States
from jetsock.stream import StreamLink
from jetsock.stream import stream_url as stream_url_beside
from jetsock.wire import Ack as AckFrame
from jetsock.wire import (
    ClientFrame,
    Error,
    Expiring,
    History,
    Join,
    Joined,
    Leave,
    Left,
    Members,
    Msg,
    Pong,
    Publish,
    Refresh,
    Refreshed,
    Reset,
    ServerFrame,
    Welcome,
    Who,
)
from jetsock.wire import HistoryPage as HistoryFrame
from jetsock.wire import Presence as PresenceFrame

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 256
"""Longest publish `id` the server accepts (`max_length` of `jetsock.wire.Publish.id`)."""

TRANSPORTS: tuple[Transport, ...] = ("websocket", "stream")
"""The default transports, in order (option `transports`)."""
FALLBACK_AFTER = 2
"""Failures in a row before any `welcome` after which the client moves on to the next transport."""
FIRST_AGAIN_AFTER = 300.0
"""Seconds after moving on from the first transport at which the next reconnect tries it again."""

_encode = msgspec.json.Encoder().encode
_decode_messages = msgspec.json.Decoder(list[Msg]).decode
"""A history page's `messages`: `msg` frames without their `type`."""


class _Done:
    """An awaitable that is already done (a leave with nothing to wait for)."""

    def __await__(self) -> Generator[None, None, None]:
        return
        yield


_DONE = _Done()


class _Publish:
    """A publish until its `ack`: the frame is kept as text so a resend is byte for byte the same."""

    __slots__ = ("frame", "future", "id", "room", "tries")

    def __init__(self, room: str, id: str, frame: str, future: asyncio.Future[Ack]) -> None:
        self.room = room
        self.id = id
        self.frame = frame
        self.future = future
        self.tries = 0
        """Resends after `unavailable` or `rate_limited` (each with the same id)."""


class Options(TypedDict, total=False):
    """The keyword options of `connect` (see `Client`)."""

    auto_connect: bool
    publish_timeout: float
    backoff: Backoff
    dead_after: float
    connect_timeout: float
    request_timeout: float
    max_queued: int
    max_pending_publishes: int
    max_frame_bytes: int
    compress: bool
    transports: Sequence[Transport]
    stream_url: str | None
    draw: Callable[[], float]


def connect(url: str, *, token: TokenSource, **options: Unpack[Options]) -> Client:
    """A client for the jetsock edge at `url` (`ws://host:port/ws`); use it with `async with`.

    The connection is made in the background: `async with` returns at once
    (`await client.ready()` waits for it). See `Client` for the options.
    """
    return Client(url, token, **options)


class Client:
    """A jetsock connection that survives reconnects.

    `token` is a str, or a function (plain or async; given the `TokenReason`
    when it takes an argument) returning a token, or None for "logged out".

    Options (the defaults are `jetsock.rules`', shared with the JS client):
    - `auto_connect`: start connecting when made inside a running event loop,
      else on `async with`; False: stay `idle` until `connect()`;
    - `publish_timeout`: seconds a publish waits for its ack (0: no limit,
      the default; a publish's own `timeout` wins);
    - `backoff`: reconnect delays (full jitter, base 1 s, x2, cap 30 s, reset
      after 10 s connected);
    - `dead_after`: seconds to wait for any frame after an idle-time `ping`
      before declaring the connection dead and reconnecting;
    - `connect_timeout`: seconds for the handshake and the `welcome` together;
    - `request_timeout`: seconds `leave` and `refresh` wait for their reply;
    - `max_queued` (formerly `max_pending_publishes`): publishes not yet
      acked, queued or in flight; past it `publish` raises `PublishQueueFull`;
    - `max_frame_bytes`: the server's limit, checked before sending;
    - `compress`: offer permessage-deflate (True, the default): the edge then
      sends room messages of 256 bytes or more compressed, and this client
      compresses what it sends; False: no offer, every frame goes plain;
    - `transports`: how to reach the server, in order (default `("websocket",
      "stream")`). The client starts with the first and moves on to the second
      when the first fails twice in a row before any `welcome`; at the first
      reconnect 5 minutes later it tries the first again. `("stream",)`: the
      HTTP stream only; `("websocket",)`: never the stream;
    - `stream_url`: the URL of `POST /v1/stream` (frames go to
      `<stream_url>/<session>`); default beside `url`: ws -> http, wss ->
      https, its last path segment (`/ws`) replaced by `/v1/stream`;
    - `draw`: the random source for jitter (tests make it deterministic).
    """

    def __init__(
        self,
        url: str,
        token: TokenSource,
        *,
        auto_connect: bool = True,
        publish_timeout: float = rules.PUBLISH_TIMEOUT,
        backoff: Backoff | None = None,
        dead_after: float = rules.DEAD_AFTER,
        connect_timeout: float = rules.CONNECT_TIMEOUT,
        request_timeout: float = rules.REQUEST_TIMEOUT,
        max_queued: int = rules.MAX_QUEUED,
        max_pending_publishes: int | None = None,
        max_frame_bytes: int = rules.MAX_FRAME_BYTES,
        compress: bool = True,
        transports: Sequence[Transport] = TRANSPORTS,
        stream_url: str | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        chosen = tuple(transports)
        if not chosen or len(set(chosen)) != len(chosen) or not set(chosen) <= set(TRANSPORTS):
            raise ValueError(f"transports is a sequence of distinct ones of {TRANSPORTS}, not {transports!r}")
        self.url = url
        self._tokens = Tokens(token)
        self._auto_connect = auto_connect
        self._publish_timeout = publish_timeout
        self._backoff = backoff or Backoff()
        self._dead_after = dead_after
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._max_queued = max_pending_publishes if max_pending_publishes is not None else max_queued
        self._max_frame_bytes = max_frame_bytes
        self._compress = compress
        self._transports = chosen
        self._stream_url = stream_url or stream_url_beside(url)
        self._draw = draw
        self.transport: Transport | None = None
        """The transport of the current (or last) connection attempt: "websocket" or "stream"."""
        self._failures = 0
        """Attempts on the first transport that failed in a row before any `welcome`."""
        self._moved_on_at: float | None = None
        """When (loop time) the client moved on from the first transport; None while on it."""
        self._opening: Link | None = None
        """The link being opened: a stream's joins go with its opening request, before `welcome`."""

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
        if auto_connect:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass  # Made outside an event loop: `async with` (or `connect()`) starts it.
            else:
                self.connect()

    # --- lifecycle ----------------------------------------------------------

    async def __aenter__(self) -> Client:
        if self._auto_connect and self.state == "idle":
            self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def connect(self) -> None:
        """Start connecting in the background (from `idle` or `disconnected`; otherwise nothing to do).

        Rooms and unacked publishes kept by `disconnect()` resume on the new
        connection. Raises `ClosedError` after `close()`.
        """
        self._check_open()
        if self._task is not None:
            return
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"jetsock {self.url}")
        self._states.set("connecting", {})

    start = connect
    """The former name of `connect`."""

    async def disconnect(self) -> None:
        """Close the connection (code 1000) and stay `disconnected` until `connect()`.

        Rooms (back to `joining`), their positions and unacked publishes are
        kept; `connect()` rejoins with `since` and resends them.
        """
        task, self._task = self._task, None
        if self._closed is not None or task is None:
            return
        self._states.set("disconnected", {"code": 1000, "reason": "disconnected by the application"})
        task.cancel()
        await asyncio.wait({task})

    async def close(self) -> None:
        """Close for good (code 1000): room iterators end, waiting joins and publishes raise `ClosedError`."""
        self._finish(ClosedError("closed by the application", close_code=1000), by_application=True)
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        for aux in list(self._aux):
            aux.cancel()
        await self._release_http()

    # --- state --------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._states.current

    @property
    def state_info(self) -> StateInfo:
        return self._states.info

    @property
    def rooms(self) -> dict[str, Room]:
        """The rooms not left, by name (a copy)."""
        return dict(self._rooms)

    def on_state(self, listener: StateListener) -> Callable[[], None]:
        """Call `listener(state, info)` on every state change; returns a function that removes it.

        `reconnecting` is reported for every scheduled attempt, each with its
        own `delayMs`, so an application can show "retrying in N s".
        """
        return self._states.listen(listener)

    async def ready(self, timeout: float | None = None) -> None:
        """Wait for the state `connected`.

        Raises `ClosedError` (code "closed", or "logged_out") if the client
        closes first, `RequestTimeout` (code "timeout") after `timeout` seconds.
        """
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                while self._states.current != "connected":
                    self._check_open()
                    await self._states.changed()
        except TimeoutError:
            if deadline.expired():
                raise RequestTimeout(f"not connected within {timeout:g} s") from None
            raise

    wait_connected = ready
    """The former name of `ready`."""

    # --- the application's requests -----------------------------------------

    def join(
        self,
        room: str,
        since: int | None = None,
        epoch: str | None = None,
        on_reset: ResetCallback | None = None,
        last: int | None = None,
    ) -> Room:
        """Join `room`; returns the Room at once, `joining` (`await` it, or `room.ready()`, for `joined`).

        With `since` (and the `epoch` it belongs to) the stored messages after
        it are replayed first; without, delivery starts at the room's head.
        When continuity is lost (`recovered: false` for a `since`, or a
        `reset`), the reset listeners (`on_reset(room, info)`) are called
        before any message after `info.seq`. The room stays joined across
        reconnects. Works before `connect()`: the join is sent once connected.

        `last` (an int >= 1, at most the server's `max_history_page`, 100 by
        default) goes with this join and every rejoin: without a position, or
        when a resume fails, the room's newest `last` stored messages are
        delivered first (after the reset listeners of a failed resume), then
        live ones; `room.replayed` says how many.

        Raises at once `InvalidRoom` (code "invalid_room", a name the server
        would refuse), `AlreadyJoined` or `ClosedError`. A refusal by the
        server (`forbidden`, `too_many_rooms`, ...) leaves the room, and
        `ready()` raises it as `ServerError`; `rate_limited` and
        `unavailable` are retried by the client.
        """
        self._check_open(room)
        problem = room_name_error(room)
        if problem is not None:
            raise InvalidRoom(problem, room=room)
        if room in self._rooms:
            raise AlreadyJoined(f"already joined {room!r}: leave it first", room=room)
        if last is not None and (not isinstance(last, int) or isinstance(last, bool) or last < 1):
            raise ValueError(f"last is an int >= 1, not {last!r}")
        member = Room(self, room, since, epoch, on_reset, last)
        self._rooms[room] = member
        link = self._link
        if link is not None and room not in link.leaving:
            self._send_join(link, member)
        return member

    async def publish(self, room: str, data: Any, id: str | None = None, timeout: float | None = None) -> Ack:
        """Publish `data` (any JSON value) to `room`; returns `(seq, duplicate)` once stored.

        `id` is the idempotency key, a fresh UUID when not given. A publish not
        acked when the connection drops (or refused with `rate_limited` or
        `unavailable`) is sent again with the same `id`, so it is stored once;
        `duplicate` is then true if an earlier send had been stored.
        Publishing does not require joining.

        `timeout` (seconds; None: the client's `publish_timeout`, 0: none)
        raises `PublishTimeout`; it, like cancelling the awaiting task, only
        stops the client from sending it again: a copy already sent may be
        stored. Raises `InvalidRoom`, `PublishQueueFull`, `FrameTooLarge`,
        `ServerError` (a refusal), `ClosedError`; each names `room` and `id`.
        """
        self._check_open(room, id)
        problem = room_name_error(room)
        if problem is not None:
            raise InvalidRoom(problem, room=room, id=id)
        if id is not None and not 1 <= len(id) <= MAX_ID_LENGTH:
            raise ValueError(f"a publish id is 1 to {MAX_ID_LENGTH} characters")
        if len(self._publishes) >= self._max_queued:
            raise PublishQueueFull(f"{len(self._publishes)} publishes are waiting for their ack", room=room, id=id)
        key = id or uuid.uuid4().hex
        ref = next(self._refs)
        frame = Publish(room=room, data=msgspec.Raw(msgspec.json.encode(data)), id=key, ref=ref)
        encoded = _encode(frame)
        if len(encoded) > self._max_frame_bytes:
            raise FrameTooLarge(
                f"the publish frame is {len(encoded)} bytes; the limit is {self._max_frame_bytes}", room=room, id=key
            )
        pending = _Publish(room, key, encoded.decode(), asyncio.get_running_loop().create_future())
        self._publishes[ref] = pending
        limit = self._publish_timeout if timeout is None else timeout
        try:
            link = self._link
            if link is not None:
                link.send_text(pending.frame)
            if limit <= 0:
                return await pending.future
            deadline = asyncio.timeout(limit)
            try:
                async with deadline:
                    return await pending.future
            except TimeoutError:
                if deadline.expired():
                    raise PublishTimeout(f"no ack within {limit:g} s", room=room, id=key) from None
                raise
        finally:
            # Acked, refused, timed out or abandoned by the caller: never sent again.
            self._publishes.pop(ref, None)

    async def history(
        self, room: str, before: int | None = None, limit: int | None = None, timeout: float | None = None
    ) -> HistoryPage:
        """A page of `room`'s stored messages: the newest `limit` (the server's default: 50)
        with seq < `before` (None: from the head), in increasing seq. Needs join rights for
        the room, not membership. Page back with `before=page.messages[0].seq` while
        `page.more`.

        Like a publish it waits for a connection, and is sent again after a reconnect
        and after `rate_limited` or `unavailable` (equal jitter). `timeout` (seconds;
        None: the client's `request_timeout`, 0: none) raises `RequestTimeout`. Raises
        `InvalidRoom`, `ServerError` (`forbidden`, `bad_request`, ...) or `ClosedError`,
        each naming `room`.
        """
        reply = await self._ask(
            room, lambda ref: History(room=room, before=before, limit=limit, ref=ref), timeout, "no history page"
        )
        assert isinstance(reply, HistoryFrame)
        messages = [message_of(m) for m in _decode_messages(reply.messages)]
        return HistoryPage(reply.room, reply.epoch, messages, reply.more)

    async def presence(self, room: str, timeout: float | None = None) -> Presence:
        """Who is present in `room` (a `who`): `Presence(room, count, connections, members,
        truncated)`, members sorted by `sub`. Needs the token's `rooms.presence` right for the
        room, not membership. A joined `Room` of that name replaces its `members` with the
        answer (and tells the difference to its presence listeners).

        Waits for a connection, is sent again after a reconnect and after `rate_limited` or
        `unavailable`, like `history`. Raises `ServerError` (`forbidden` without the right,
        `bad_request` for a room that keeps no presence), `InvalidRoom`, `ClosedError`, or
        `RequestTimeout` after `timeout` seconds (None: the client's `request_timeout`; 0: none).
        """
        reply = await self._ask(room, lambda ref: Who(room=room, ref=ref), timeout, "no presence answer")
        assert isinstance(reply, Members)
        return presence_of(reply)

    async def _ask(
        self, room: str, make: Callable[[int], ClientFrame], timeout: float | None, late: str
    ) -> ServerFrame:
        """A request about `room` held until answered: sent once connected, again after a
        reconnect and after a retryable refusal (equal jitter); `late` names a timeout."""
        self._check_open(room)
        problem = room_name_error(room)
        if problem is not None:
            raise InvalidRoom(problem, room=room)
        seconds = self._request_timeout if timeout is None else timeout
        deadline = asyncio.timeout(seconds if seconds > 0 else None)
        tries = 0
        try:
            async with deadline:
                while True:
                    self._check_open(room)
                    link = self._link
                    if link is None:
                        await self._states.changed()
                        continue
                    try:
                        return await link.request(make, bounded=False)
                    except Disconnected:
                        continue  # Sent again on the next connection.
                    except ServerError as exc:
                        if exc.code not in RETRYABLE_ERRORS:
                            raise ServerError(exc.code, exc.message, room=room) from None
                        tries += 1
                        await asyncio.sleep(self._backoff.retry_delay(tries, self._draw()))
        except TimeoutError:
            if deadline.expired():
                raise RequestTimeout(f"{late} within {seconds:g} s", room=room) from None
            raise

    def _ask_who(self, room: Room) -> None:
        """After each `joined`, on a node with presence: who is there (events are at most once,
        so every rejoin resyncs). `forbidden` (the token lacks `rooms.presence`) or
        `bad_request` (the room keeps no presence) stops this room asking, quietly."""
        welcome = self.welcome
        if not room.who_wanted or room.who_asking or welcome is None or "presence" not in (welcome.features or ()):
            return
        room.who_asking = True
        self._spawn(self._who_after_join(room))

    async def _who_after_join(self, room: Room) -> None:
        try:
            await self.presence(room.name)
        except ServerError as exc:
            if exc.code in ("forbidden", "bad_request"):
                room.who_wanted = False
        except JetsockError:
            pass  # A timeout, or the client closed: the next joined asks again.
        finally:
            room.who_asking = False

    def _leave(self, room: Room) -> Awaitable[None]:
        """`room.leave()`: the room is left here at once; on the server once `left` arrived."""
        if self._rooms.get(room.name) is not room:
            room.end(None)
            return _DONE
        del self._rooms[room.name]
        link = room.link
        room.end(None)
        if link is None or (link is not self._link and link is not self._opening):
            return _DONE  # Not a member anywhere: it will simply not be rejoined.
        # A `joined` still on its way for this room is no longer ours.
        for ref in [ref for ref, (joining, _) in link.joins.items() if joining is room]:
            del link.joins[ref]
        link.leaving.add(room.name)
        # The leave goes on if the caller stops waiting: a join of the name waits for its `left`.
        return asyncio.shield(self._spawn(self._leave_on(link, room.name)))

    async def _leave_on(self, link: Link, name: str) -> None:
        try:
            await link.request(lambda ref: Leave(room=name, ref=ref))
        except (ServerError, Disconnected, TimeoutError):
            pass
        finally:
            link.leaving.discard(name)
        again = self._rooms.get(name)
        if again is not None and again.link is None and self._link is link:
            self._send_join(link, again)  # Joined again meanwhile: its join waited for this `left`.

    def _check_open(self, room: str | None = None, id: str | None = None) -> None:
        if self._closed is not None:
            raise self._closed.about(room=room, id=id)

    # --- the connection loop ------------------------------------------------

    def _attempting(self) -> None:
        # connect() has already said "connecting" for the first attempt.
        if self._states.current != "connecting":
            self._states.set("connecting", {})

    async def _run(self) -> None:
        try:
            error = await reconnect_forever(
                self._connect_once,
                self._tokens,
                self._backoff,
                self._draw,
                lambda info: self._states.set("reconnecting", info),
                self._attempting,
            )
        except asyncio.CancelledError:
            if self._closed is not None:
                await self._release_http()
            raise
        except Exception as exc:  # A bug here must not leave the application waiting forever.
            log.exception("jetsock client loop failed")
            error = ClosedError(f"internal error: {exc!r}", close_code=None)
        self._finish(error, by_application=False)
        # Closed for good on its own: release the HTTP session now, in case
        # the application never calls close().
        await self._release_http()

    async def _release_http(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    def _choose_transport(self) -> Transport:
        """The transport for this attempt (PROTOCOL.md section 11): the first, or the second since
        the first failed twice in a row before any `welcome`, until 5 minutes after that."""
        now = asyncio.get_running_loop().time()
        if self._moved_on_at is not None and now - self._moved_on_at > FIRST_AGAIN_AFTER:
            self._moved_on_at = None
            self._failures = 0
        return self._transports[0 if self._moved_on_at is None else 1]

    def _count(self, kind: Transport, outcome: Outcome) -> None:
        """After an attempt: a failure of the first transport (no close code, never welcomed) counts."""
        code, _, lasted = outcome
        if lasted is not None:
            self._failures = 0
        elif code is None and self._moved_on_at is None and len(self._transports) > 1:
            self._failures += 1
            if self._failures >= FALLBACK_AFTER:
                log.info(
                    "%s failed %d times before any welcome: trying the %s", kind, self._failures, self._transports[1]
                )
                self._moved_on_at = asyncio.get_running_loop().time()
                self._failures = 0

    async def _connect_once(self, token: str) -> Outcome:
        """One connection attempt, from handshake to close, on the transport the fallback rule picks."""
        kind = self.transport = self._choose_transport()
        outcome = await (self._stream_once(token) if kind == "stream" else self._websocket_once(token))
        self._count(kind, outcome)
        return outcome

    async def _websocket_once(self, token: str) -> Outcome:
        assert self._http is not None
        welcome_by = asyncio.get_running_loop().time() + self._connect_timeout
        link = await WebSocketLink.open(
            self._http,
            self.url,
            token,
            timeout=self._connect_timeout,
            refs=self._refs,
            request_timeout=self._request_timeout,
            compress=self._compress,
        )
        if isinstance(link, str):
            return None, link, None
        return await self._run_link(link, welcome_by)

    async def _stream_once(self, token: str) -> Outcome:
        assert self._http is not None
        welcome_by = asyncio.get_running_loop().time() + self._connect_timeout
        link = StreamLink(self._http, self._stream_url, lambda: self._tokens.current, self._refs, self._request_timeout)
        # The joins go with the opening request: the server runs them right after the welcome.
        self._opening = link
        for room in list(self._rooms.values()):
            if room.link is None:
                self._send_join(link, room)
        try:
            failed = await link.open(self._connect_timeout)
        except BaseException:
            await self._forget(link)
            raise
        if failed is not None:
            await self._forget(link)
            return None, failed, None
        return await self._run_link(link, welcome_by)

    async def _forget(self, link: Link) -> None:
        """The link is over: its rooms wait for the next one."""
        if self._link is link:
            self._link = None
        if self._opening is link:
            self._opening = None
        for room in list(self._rooms.values()):
            if room.link is link:
                room.link = None
                room.to_joining()
        await link.close()

    async def _run_link(self, link: Link, welcome_by: float) -> Outcome:
        try:
            return await link.run(
                welcome_by=welcome_by,
                dead_after=self._dead_after,
                on_welcome=self._on_welcome,
                on_frame=self._dispatch,
            )
        finally:
            await self._forget(link)

    def _finish(self, error: ClosedError, *, by_application: bool) -> None:
        """Enter `closed` for good and fail everything that waits."""
        if self._closed is not None:
            return
        self._closed = error
        publishes, self._publishes = self._publishes, {}
        for pending in publishes.values():
            if not pending.future.done():
                pending.future.set_exception(error.about(room=pending.room, id=pending.id))
        rooms, self._rooms = self._rooms, {}
        for room in rooms.values():
            room.end(error.about(room=room.name), quiet=by_application)
        self._states.set("closed", {"code": error.close_code, "reason": error.reason, "loggedOut": error.logged_out})

    def _log_out(self) -> None:
        """The token source said "logged out" during a refresh: stop at once."""
        self._finish(logged_out(), by_application=False)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()  # Its link closes with 1000; then the HTTP session is released.

    # --- frames -------------------------------------------------------------

    def _on_welcome(self, link: Link, frame: Welcome) -> None:
        """Authenticated: rejoin every room where it left off, then resend unacked publishes."""
        self.welcome = frame
        self.exp = frame.exp
        publishes = list(self._publishes.values())
        # From here on new joins and publishes are sent by their callers.
        self._link = link
        self._opening = None
        self._states.set("connected", {"session": frame.session, "node": frame.node, "transport": link.transport})
        for room in list(self._rooms.values()):
            if self._rooms.get(room.name) is room and room.link is None:
                self._send_join(link, room)
        for pending in publishes:
            if not pending.future.done():
                link.send_text(pending.frame)

    def _dispatch(self, link: Link, frame: ServerFrame) -> None:
        match frame:
            case Msg():
                room = self._rooms.get(frame.room)
                if room is not None and room.link is link:
                    room.handle_msg(frame)
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
                if room is not None and room.link is link:
                    room.handle_reset(frame)
            case Expiring():
                if not self._refreshing:
                    self._refreshing = True
                    self._spawn(self._refresh(link))
            case Refreshed() | Pong() | HistoryFrame():
                link.reply(frame.ref, frame)
            case Members():
                # Replaced here, in the order of the frames, so that a `presence` event that
                # follows the answer applies on top of it.
                room = self._rooms.get(frame.room)
                if link.reply(frame.ref, frame) and room is not None:
                    room.sync_members(frame)
            case PresenceFrame():
                room = self._rooms.get(frame.room)
                if room is not None and room.link is link:
                    room.handle_presence(frame)
            case Error():
                self._on_error(link, frame)
            case Welcome():
                pass  # Handled by the reader; a second one would be a server bug.

    def _on_joined(self, link: Link, frame: Joined) -> None:
        entry = link.joins.pop(frame.ref, None) if isinstance(frame.ref, int) else None
        if entry is None:
            return  # Left meanwhile; the `leave` is already on its way.
        room, sent_since = entry
        if self._rooms.get(room.name) is room and room.link is link:
            room.handle_joined(frame, sent_since)
            self._ask_who(room)

    def _on_left(self, link: Link, frame: Left) -> None:
        if frame.ref is not None:
            link.reply(frame.ref, frame)  # A leave's answer (ignored when that leave gave up waiting).
            return
        # Not asked for: the refreshed token no longer allows the room.
        room = self._rooms.get(frame.room)
        if room is not None and room.link is link:
            del self._rooms[frame.room]
            room.end(RoomLeft(frame.room, frame.reason or "left by the server"))

    def _on_error(self, link: Link, frame: Error) -> None:
        ref = frame.ref
        code: rules.ServerErrorCode = frame.code
        if not isinstance(ref, int):
            log.warning("server error without a request: %s: %s", code, frame.message)
            return
        pending = self._publishes.get(ref)
        if pending is not None:
            if code in RETRYABLE_ERRORS and not pending.future.done():
                # Maybe stored (`unavailable`), or refused for now: the same frame, with the
                # same id, goes again later, so it is stored once whatever happened.
                pending.tries += 1
                delay = self._backoff.retry_delay(pending.tries, self._draw())
                asyncio.get_running_loop().call_later(delay, self._resend_publish, ref, pending)
                return
            del self._publishes[ref]
            if not pending.future.done():
                pending.future.set_exception(ServerError(code, frame.message, room=pending.room, id=pending.id))
            return
        entry = link.joins.pop(ref, None)
        if entry is not None:
            self._on_join_refused(link, entry[0], ServerError(code, frame.message, room=entry[0].name))
            return
        link.reply(ref, ServerError(code, frame.message))

    def _resend_publish(self, ref: int, pending: _Publish) -> None:
        link = self._link
        if link is None or self._publishes.get(ref) is not pending or pending.future.done():
            return  # acked, abandoned, or offline: a reconnect resends what is still waiting
        link.send_text(pending.frame)

    def _on_join_refused(self, link: Link, room: Room, error: ServerError) -> None:
        if self._rooms.get(room.name) is not room or room.link is not link:
            return
        room.link = None  # Not a member: nothing to leave, and a rejoin is a new join.
        if error.code in RETRYABLE_ERRORS:
            # `rate_limited`, or NATS briefly unavailable: the same join again soon (the
            # application's first join and rejoins after a reconnect alike).
            room.tries += 1
            delay = self._backoff.retry_delay(room.tries, self._draw())
            asyncio.get_running_loop().call_later(delay, self._retry_join, link, room)
            return
        del self._rooms[room.name]
        room.end(error)

    def _retry_join(self, link: Link, room: Room) -> None:
        # Another connection since: its `welcome` has sent the join already.
        if self._link is link and self._rooms.get(room.name) is room and room.link is None:
            self._send_join(link, room)

    async def _refresh(self, link: Link) -> None:
        """`expiring`: fetch a token and `refresh`, on the same connection.

        When the source has nothing new (a fixed string) nothing is sent: the
        server closes with 4001 at expiry and the reconnect asks again. None
        from the source logs the client out at once.
        """
        try:
            token = await self._tokens.fetch("refresh")
            if token is None:
                self._log_out()
                return
            if token == self._tokens.current:
                return
            reply = await link.request(lambda ref: Refresh(token=token, ref=ref))
            if isinstance(reply, Refreshed):
                # Accepted: it is also the token for the next reconnect.
                self._tokens.current = token
                self.exp = reply.exp
        except (ServerError, Disconnected, TimeoutError, BadToken) as exc:
            log.warning("token refresh failed: %r", exc)
        except Exception:
            log.exception("the token source failed during a refresh")
        finally:
            self._refreshing = False

    def _send_join(self, link: Link, room: Room) -> None:
        ref = link.next_ref()
        since, epoch = room.since_for_join()
        link.joins[ref] = (room, since)
        room.link = link
        link.send(Join(room=room.name, since=since, epoch=epoch, last=room.last, ref=ref))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `work` beside the reader (it must not block reading); `close()` cancels it."""
        task = asyncio.get_running_loop().create_task(work)
        self._aux.add(task)
        task.add_done_callback(self._aux.discard)
        return task
