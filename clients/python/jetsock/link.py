"""One connection: request/reply by `ref` (`Link`), and over a WebSocket the handshake and the reader
with its liveness timer (`WebSocketLink`); `jetsock.stream.StreamLink` is the HTTP stream's.

A `Link` lives from one handshake to one close. Everything that must outlive
it (rooms, unacked publishes, the token) belongs to the `Client`, which hands
the link two callbacks: one called for `welcome`, one for every other frame,
in the order frames arrive. Frames go out through one writer task, in the
order they were posted, so a caller never waits for the socket.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Literal

import aiohttp
import msgspec

from jetsock.errors import JetsockError
from jetsock.rules import BEARER_PREFIX, SUBPROTOCOL
from jetsock.wire import ClientFrame, Ping, ServerFrame, Welcome

if TYPE_CHECKING:
    from jetsock.room import Room

log = logging.getLogger(__name__)

Transport = Literal["websocket", "stream"]
"""How a link reaches the server: a WebSocket, or the HTTP stream (PROTOCOL.md section 11)."""

Outcome = tuple[int | None, str, float | None]
"""How a connection ended: the close code (None without a close frame), a reason,
and the seconds it had been up since `welcome` (None if it never got there)."""

COMPRESS_WBITS = 15
"""aiohttp's `compress`: offer permessage-deflate with the full 32 KiB window (0: no offer)."""

decode_frame = msgspec.json.Decoder(ServerFrame).decode
_encode = msgspec.json.Encoder().encode

WelcomeCallback = Callable[["Link", Welcome], None]
FrameCallback = Callable[["Link", ServerFrame], None]


class Disconnected(JetsockError):
    """The connection a request was sent on ended before its reply."""


class Link:
    """One connection and the requests in flight on it; a transport adds how frames go and come."""

    transport: Transport

    def __init__(self, refs: itertools.count[int], request_timeout: float) -> None:
        self.joins: dict[int, tuple[Room, int | None]] = {}
        """Joins sent on this link and not yet answered: ref -> (room, the `since` sent)."""
        self.leaving: set[str] = set()
        """Rooms whose `leave` waits for its `left`: a join of the same name waits for it too."""
        self._refs = refs
        self._request_timeout = request_timeout
        self._requests: dict[int, asyncio.Future[ServerFrame]] = {}

    async def run(
        self, *, welcome_by: float, dead_after: float, on_welcome: WelcomeCallback, on_frame: FrameCallback
    ) -> Outcome:
        """Read frames until the connection ends; how it ended."""
        raise NotImplementedError

    async def close(self) -> None:
        """Fail what waits for a reply, and end the connection."""
        raise NotImplementedError

    def send_text(self, text: str) -> None:
        """Queue a text frame; a lost connection is not an error here (the reader sees it and reconnects)."""
        raise NotImplementedError

    def _fail_requests(self) -> None:
        requests, self._requests = self._requests, {}
        for future in requests.values():
            if not future.done():
                future.set_exception(Disconnected("the connection ended"))
        self.joins.clear()

    # --- sending ------------------------------------------------------------

    def next_ref(self) -> int:
        return next(self._refs)

    def send(self, frame: ClientFrame) -> None:
        self.send_text(_encode(frame).decode())

    async def request(self, make: Callable[[int], ClientFrame], *, bounded: bool = True) -> ServerFrame:
        """Send the frame `make(ref)` and wait for the reply carrying `ref`.

        Raises `ServerError` (the reply was `error`), `Disconnected` or `TimeoutError`
        (after the request timeout; never when not `bounded`: the caller has its own).
        """
        ref = self.next_ref()
        future: asyncio.Future[ServerFrame] = asyncio.get_running_loop().create_future()
        self._requests[ref] = future
        try:
            self.send(make(ref))
            async with asyncio.timeout(self._request_timeout if bounded else None):
                return await future
        finally:
            self._requests.pop(ref, None)

    def reply(self, ref: object, frame: ServerFrame | BaseException) -> bool:
        """Settle the request `ref` with a frame or an error; False if no request has that ref."""
        future = self._requests.pop(ref, None) if isinstance(ref, int) else None
        if future is None:
            return False
        if not future.done():
            if isinstance(frame, BaseException):
                future.set_exception(frame)
            else:
                future.set_result(frame)
        return True


class WebSocketLink(Link):
    """One open WebSocket and the requests in flight on it."""

    transport: Transport = "websocket"

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, refs: itertools.count[int], request_timeout: float) -> None:
        super().__init__(refs, request_timeout)
        self.ws = ws
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._writer = asyncio.get_running_loop().create_task(self._write(), name="jetsock writer")

    @classmethod
    async def open(
        cls,
        http: aiohttp.ClientSession,
        url: str,
        token: str,
        *,
        timeout: float,
        refs: itertools.count[int],
        request_timeout: float,
        compress: bool = True,
    ) -> WebSocketLink | str:
        """Open a link authenticated with the `bearer.<JWT>` subprotocol, or say why it could not be opened.

        `compress` offers permessage-deflate (RFC 7692; the edge takes it without context
        takeover and compresses room messages of at least `compress_min_bytes`)."""
        try:
            async with asyncio.timeout(timeout):
                ws = await http.ws_connect(
                    url, protocols=(SUBPROTOCOL, BEARER_PREFIX + token), compress=COMPRESS_WBITS if compress else 0
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return f"connect failed: {exc!r}"
        if ws.protocol != SUBPROTOCOL:
            await ws.close()
            return f"the server did not select {SUBPROTOCOL}"
        return cls(ws, refs, request_timeout)

    async def run(
        self,
        *,
        welcome_by: float,
        dead_after: float,
        on_welcome: WelcomeCallback,
        on_frame: FrameCallback,
    ) -> Outcome:
        """Read frames until the connection ends, pinging when it has been silent too long.

        `welcome` must arrive by the loop time `welcome_by` (the connect
        timeout covers the handshake and the welcome together).
        The server's WebSocket pings are answered by aiohttp and never seen
        here, like in a browser; so silence is measured on frames, and after
        `heartbeat` s of it a `ping` frame asks for a `pong` (PROTOCOL.md
        section 6). Nothing within `dead_after` s more means the path is dead
        even if TCP has not noticed, and the link ends as if lost (1006).
        """
        loop = asyncio.get_running_loop()
        heartbeat: float | None = None  # Known from `welcome`.
        connected_at: float | None = None
        last_read = loop.time()
        ping_sent: float | None = None

        def lasted() -> float | None:
            return None if connected_at is None else loop.time() - connected_at

        while True:
            if heartbeat is None:
                wait = welcome_by - loop.time()
            elif ping_sent is None:
                wait = last_read + heartbeat - loop.time()
            else:
                wait = ping_sent + dead_after - loop.time()
            try:
                message = await self.ws.receive(timeout=max(wait, 0.001))
            except TimeoutError:
                if heartbeat is None:
                    return None, "no welcome in time", None
                if ping_sent is not None:
                    return None, f"no reply to ping within {dead_after:g} s", lasted()
                ping_sent = loop.time()
                self.send(Ping(ref=self.next_ref()))
                continue
            last_read = loop.time()
            ping_sent = None
            kind = message.type
            if kind is aiohttp.WSMsgType.TEXT:
                try:
                    frame = decode_frame(message.data)
                except msgspec.DecodeError as exc:
                    # Frame types added by a later server are skipped, not fatal.
                    log.debug("skipping a frame this client does not know: %s", exc)
                    continue
                if isinstance(frame, Welcome):
                    heartbeat = frame.heartbeat
                    connected_at = last_read
                    on_welcome(self, frame)
                else:
                    on_frame(self, frame)
            elif kind is aiohttp.WSMsgType.CLOSE:
                return int(message.data), str(message.extra or ""), lasted()
            elif kind in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                # No close frame from the server: a lost connection, whatever aiohttp's close_code says.
                return None, str(message.data or "connection lost"), lasted()

    async def close(self) -> None:
        """Fail what waits for a reply, and close the socket (code 1000) if it is still open."""
        self._writer.cancel()
        self._fail_requests()
        if not self.ws.closed:
            # A dead peer must not hold us: on the timeout aiohttp drops the socket.
            with suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 1.0)
        await asyncio.wait({self._writer})

    def send_text(self, text: str) -> None:
        """Queue a text frame; a lost connection is not an error here (the reader sees it and reconnects)."""
        if not self.ws.closed and not self._writer.done():
            self._outbox.put_nowait(text)

    async def _write(self) -> None:
        while True:
            text = await self._outbox.get()
            try:
                await self.ws.send_str(text)
            except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
                log.debug("send failed: %r", exc)
                return
