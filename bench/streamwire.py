"""A lean HTTP stream client for the load generator (PROTOCOL.md section 11, schemas/PROTOCOL.md 9.14).

The stream's counterpart of `bench.wire`: one `asyncio.Protocol` per session, no task per
socket, so that tens of thousands of sessions cost the load generator what as many WebSockets
do, and the two transports are driven alike.

- `StreamProtocol` sends `POST /v1/stream` (HTTP/1.1, `Authorization: Bearer <JWT>`, the body a
  JSON array of the frames to run first: the joins), checks the answer is `200`
  `text/event-stream`, and reads the chunked body as it comes in `data_received`: each chunk
  is de-chunked, each server-sent event's `data:` lines make one server frame, handed to
  `on_text` as a WebSocket's text payload is; `:` comments (the keepalive) are skipped. The
  `close` event gives the close code (what a WebSocket's close frame gives), and the end of
  the body or of the socket ends the session.
- Its `Poster` sends the client's frames with `POST /v1/stream/<session>`, one request at a
  time and in order, the frames queued meanwhile batched into one JSON array (at most
  `MAX_FRAMES` frames and `MAX_BYTES` bytes, the server's defaults), as the SDK's
  `jetsock.stream` does; and it posts a `ping` a `heartbeat` after the last post began when
  nothing else went (the server closes a session whose client posted nothing for two
  heartbeats with 4009). By default the posts go over one keep-alive connection per session,
  opened at the first post and kept (as a browser's or aiohttp's connection pool does: the
  stream holds its own connection, so a session has two); with `keepalive` off each post has a
  connection of its own (`Connection: close`), so between posts the session holds one socket.
  `204`: the next batch. `503`: the same frames again after `Retry-After`. Anything else (`404`:
  no node holds the session any more), or a post connection that cannot be made: the session is
  lost (the stream is aborted; the bench client reconnects like after a dropped WebSocket).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from urllib.parse import quote

import msgspec

MAX_FRAMES = 100
"""Frames per post at most: the server's `stream_post_frames` default."""
MAX_BYTES = 262144
"""Bytes per post at most: the server's `stream_post_bytes` default."""
PING = b'{"type":"ping"}'
_CLOSE_EVENT = re.compile(rb'\{\s*"type"\s*:\s*"close"\s*[,}]')
"""The `close` event (the edge writes it with json.dumps' spaces, unlike the other frames)."""
_DATA = b"data: "
_MSG_EVENT = b'data: {"type":"msg"'
"""A room message's event: the hot path (a fan-out member reads little else)."""
_EVENT_END = b"\n\n\r\n"
"""An event's blank line, then its chunk's end."""


class _Welcome(msgspec.Struct):
    """The first event: what the poster needs from it."""

    type: str
    session: str = ""
    heartbeat: float = 0.0


_decode_welcome = msgspec.json.Decoder(_Welcome).decode


def open_request(host: str, port: int, token: str, frames: list[bytes], path: str = "/v1/stream") -> bytes:
    """`POST /v1/stream` with a bearer token, its body the JSON array of `frames`."""
    body = b"[" + b",".join(frames) + b"]"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def take(queue: list[bytes]) -> list[bytes]:
    """Frames for one post from the head of `queue`: at most MAX_FRAMES and MAX_BYTES, always one."""
    n, size = 0, 1
    while n < len(queue) and n < MAX_FRAMES:
        size += len(queue[n]) + 1
        if n and size > MAX_BYTES:
            break
        n += 1
    batch = queue[:n]
    del queue[:n]
    return batch


class Poster:
    """The posts of one session: a queue, one request in flight, the heartbeat's `ping`."""

    __slots__ = (
        "_stream",
        "conn",
        "connecting",
        "head",
        "heartbeat",
        "host",
        "in_flight",
        "keepalive",
        "last_post",
        "port",
        "queue",
        "resent",
        "sent_at",
        "source",
        "stopped",
        "timer",
    )

    def __init__(self, stream: StreamProtocol, host: str, port: int, source: str, keepalive: bool) -> None:
        self._stream = stream
        self.host = host
        self.port = port
        self.source = source
        self.keepalive = keepalive
        self.head = b""
        """The request head up to its Content-Length (set once the session is named)."""
        self.queue: list[bytes] = []
        self.in_flight: bytes | None = None
        """The request (head and body) waiting for its answer."""
        self.sent_at = 0.0
        self.resent = False
        self.conn: PostProtocol | None = None
        self.connecting = False
        self.heartbeat = 0.0
        self.last_post = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.stopped = False

    def start(self, session: str, heartbeat: float, token: str) -> None:
        """The session has a name (its `welcome`): posts may go, and a ping every heartbeat."""
        connection = "" if self.keepalive else "Connection: close\r\n"
        self.head = (
            f"POST /v1/stream/{quote(session, safe='')} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n{connection}Content-Length: "
        ).encode()
        self.heartbeat = heartbeat
        self.last_post = time.monotonic()
        if heartbeat > 0:
            self.timer = asyncio.get_running_loop().call_later(heartbeat, self._heartbeat_due)
        self._next()

    def send(self, frame: bytes) -> None:
        if not self.stopped:
            self.queue.append(frame)
            self._next()

    def _heartbeat_due(self) -> None:
        """A ping when a heartbeat went by since the last post began (and none is in flight)."""
        if self.stopped:
            return
        if self.in_flight is None and not self.queue and time.monotonic() >= self.last_post + self.heartbeat - 0.01:
            self.send(PING)
        wait = self.last_post + self.heartbeat - time.monotonic()
        # A post in flight past its heartbeat (a 503's retries) is a sign of life too: look again soon.
        self.timer = asyncio.get_running_loop().call_later(
            wait if wait > 0 else self.heartbeat / 4, self._heartbeat_due
        )

    def _next(self) -> None:
        if self.stopped or self.in_flight is not None or not self.queue or not self.head:
            return
        body = b"[" + b",".join(take(self.queue)) + b"]"
        self.in_flight = self.head + b"%d\r\n\r\n" % len(body) + body
        self.resent = False
        self._send()

    def _send(self) -> None:
        assert self.in_flight is not None
        self.last_post = self.sent_at = time.monotonic()
        conn = self.conn
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            conn.write(self.in_flight)
        elif not self.connecting:
            self.connecting = True
            task = asyncio.ensure_future(self._connect())
            _connecting.add(task)
            task.add_done_callback(_connecting.discard)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: PostProtocol(self), self.host, self.port, local_addr=(self.source, 0)),
                30.0,
            )
        except (OSError, TimeoutError):
            self.connecting = False
            self._stream.post_failed("post_connect_failed")
            return
        self.connecting = False

    def connected(self, conn: PostProtocol) -> None:
        """A post connection is open: the request in flight goes on it."""
        if self.stopped:
            conn.close()
            return
        self.conn = conn
        if self.in_flight is not None:
            conn.write(self.in_flight)

    def answered(self, conn: PostProtocol, status: int, retry_after: float, closing: bool) -> None:
        if closing or not self.keepalive:
            conn.close()
            if self.conn is conn:
                self.conn = None
        if self.stopped or self.in_flight is None:
            return
        self._stream.posted(status, time.monotonic() - self.sent_at)
        if 200 <= status < 300:
            self.in_flight = None
            self._next()
        elif status == 503:  # busy, none taken: the same frames again after Retry-After
            asyncio.get_running_loop().call_later(min(max(retry_after, 0.0), 30.0), self._retry)
        else:  # 404: no node holds the session; 403, 401, 413: no use going on
            self.in_flight = None
            self._stream.post_failed(f"post_{status}")

    def _retry(self) -> None:
        if not self.stopped and self.in_flight is not None:
            self._send()

    def lost(self, conn: PostProtocol) -> None:
        """A post connection closed; a request still unanswered on it goes again once, on a new one."""
        if self.conn is not conn:
            return
        self.conn = None
        if self.stopped or self.in_flight is None or conn.answers_pending == 0:
            return
        if self.resent:
            self.in_flight = None
            self._stream.post_failed("post_connection_lost")
            return
        self.resent = True
        self._stream.post_resent()
        self._send()

    def stop(self) -> None:
        self.stopped = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None


_connecting: set[asyncio.Future[None]] = set()


class PostProtocol(asyncio.Protocol):
    """One connection carrying a session's posts; answers are read by their Content-Length."""

    __slots__ = ("_buffer", "answers_pending", "poster", "transport")

    def __init__(self, poster: Poster) -> None:
        self.poster = poster
        self.transport: asyncio.Transport | None = None
        self._buffer = b""
        self.answers_pending = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.poster.connected(self)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            head = buffer[:end]
            length, retry_after, closing = 0, 1.0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"retry-after":
                    try:
                        retry_after = float(value)
                    except ValueError:
                        retry_after = 1.0
                elif name == b"connection" and b"close" in value.lower():
                    closing = True
            if len(buffer) < end + 4 + length:
                break
            try:
                status = int(head[9:12])
            except ValueError:
                status = 0
            buffer = buffer[end + 4 + length :]
            self.answers_pending = 0
            self.poster.answered(self, status, retry_after, closing)
        self._buffer = buffer

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.poster.lost(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.answers_pending = 1
            self.transport.write(data)


class StreamProtocol(asyncio.Protocol):
    """One stream session: `upgraded` resolves on the `200 text/event-stream` head; each event's data
    goes to `on_text`; the end of the body or of the socket goes to `on_close` with the close event's code."""

    __slots__ = (
        "_buffer",
        "_data",
        "_line",
        "_request",
        "_upgraded",
        "close_code",
        "closed",
        "frame_bytes",
        "on_close",
        "on_post",
        "on_text",
        "poster",
        "session",
        "token",
        "transport",
    )

    def __init__(
        self,
        request: bytes,
        on_text: Callable[[bytes], None],
        on_close: Callable[[int | None], None],
        host: str,
        port: int,
        source: str,
        token: str,
        keepalive: bool = True,
        on_post: Callable[[str, float], None] | None = None,
    ) -> None:
        self._request = request
        self.on_text = on_text
        self.on_close = on_close
        self.on_post = on_post
        """Told of every post's end: its outcome (`posted`, `post_404`, …) and its round trip in seconds."""
        self.token = token
        self.poster = Poster(self, host, port, source, keepalive)
        self.frame_bytes = 0
        """The size on the wire (the HTTP chunk, its size line included) of the event `on_text` is handed."""
        self._buffer = b""
        self._line = b""
        """An incomplete line of an event spread over chunks (the general path)."""
        self._data: list[bytes] | None = None
        self._upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.close_code: int | None = None
        self.closed = False
        self.session: str | None = None

    @property
    def upgraded(self) -> asyncio.Future[None]:
        """Resolved once the stream is answered (named as a WebSocket's upgrade, for the bench client)."""
        return self._upgraded

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def send_text(self, payload: bytes) -> None:
        """A client frame: posted to the session (queued until it is named by its `welcome`)."""
        if not self.closed:
            self.poster.send(payload)

    def close(self, code: int = 1000) -> None:
        """End the session from this side: a stream has no close frame, its sockets are closed."""
        self.poster.stop()
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        self.poster.stop()
        if self.transport is not None:
            self.transport.abort()

    def posted(self, status: int, seconds: float) -> None:
        if self.on_post is not None:
            self.on_post("posted" if 200 <= status < 300 else f"post_{status}", seconds)

    def post_resent(self) -> None:
        if self.on_post is not None:
            self.on_post("post_resent", 0.0)

    def post_failed(self, why: str) -> None:
        """A post the session cannot go on after: it is lost, as a WebSocket whose socket dropped."""
        if self.on_post is not None:
            self.on_post(why, 0.0)
        self.abort()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        if not self._upgraded.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = buffer
                return
            status = buffer[: buffer.find(b"\r\n")]
            head = buffer[:end].lower()
            if b" 200 " not in status or b"text/event-stream" not in head or b"chunked" not in head:
                self._upgraded.set_exception(ConnectionError(status.decode(errors="replace")))
                self._buffer = b""
                assert self.transport is not None
                self.transport.close()
                return
            self._upgraded.set_result(None)
            buffer = buffer[end + 4 :]
        self._buffer = self._chunks(buffer)

    def _chunks(self, buffer: bytes) -> bytes:
        """Handle every complete chunk in `buffer`; return the incomplete rest."""
        start = 0
        size = len(buffer)
        on_text = self.on_text
        while (eol := buffer.find(b"\r\n", start)) >= 0:
            try:
                length = int(buffer[start:eol], 16)
            except ValueError:  # a chunk extension (`;name=value`): not the edge's, but HTTP's
                length = int(buffer[start:eol].split(b";", 1)[0], 16)
            data_at = eol + 2
            end = data_at + length + 2
            if end > size:
                break
            if length == 0:  # the last chunk: the body, and with it the session, ended
                if self.transport is not None:
                    self.transport.close()
                return b""
            self.frame_bytes = end - start
            if (
                buffer.startswith(_MSG_EVENT, data_at)
                and buffer.endswith(_EVENT_END, data_at, end)
                and buffer.find(b"\n", data_at, end - 4) < 0
                and self.session is not None
                and not self._line
                and self._data is None
            ):
                on_text(buffer[data_at + 6 : end - 4])  # a room message: one `data:` line alone in its chunk
            else:
                self._event_data(buffer[data_at : end - 2])
            start = end
            if self.closed:
                return b""
        return buffer[start:] if start else buffer

    def _event_data(self, data: bytes) -> None:
        """A chunk of the event stream: the edge writes each event in one chunk (the fast path);
        anything else is parsed line by line (SSE: `data:` lines joined by LF, an empty line ends an event)."""
        if not self._line and self._data is None and data.endswith(b"\n\n") and data.find(b"\n") == len(data) - 2:
            if data.startswith(_DATA):
                self._dispatch(data[6:-2])
                return
            if data.startswith(b":"):
                return  # the keepalive
        lines = (self._line + data).split(b"\n")
        self._line = lines.pop()
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if line.startswith(b"data:"):
                value = line[6:] if line[5:6] == b" " else line[5:]
                if self._data is None:
                    self._data = [value]
                else:
                    self._data.append(value)
            elif not line and self._data is not None:
                payload = b"\n".join(self._data)
                self._data = None
                self._dispatch(payload)
            # `:` comments and other fields: nothing to do

    def _dispatch(self, payload: bytes) -> None:
        if _CLOSE_EVENT.match(payload):
            try:
                self.close_code = int(json.loads(payload)["code"])
            except (ValueError, KeyError, TypeError):
                self.close_code = 1006
            return  # the end of the body follows
        if self.session is None:
            try:
                welcome = _decode_welcome(payload)
            except msgspec.DecodeError:
                welcome = None
            if welcome is not None and welcome.type == "welcome":
                self.session = welcome.session
                self.poster.start(welcome.session, welcome.heartbeat, self.token)
        self.on_text(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.poster.stop()
        if not self._upgraded.done():
            self._upgraded.set_exception(exc or ConnectionError("closed before the stream was answered"))
            self._upgraded.exception()  # marked retrieved: the opener may have timed out already
        self.on_close(self.close_code)
