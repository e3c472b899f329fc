"""The HTTP stream transport (PROTOCOL.md section 11, schemas/PROTOCOL.md 9.14), for networks whose
proxies break the WebSocket upgrade: a `Link` over two kinds of plain HTTP request.

- `POST <stream_url>` (default: the WebSocket URL with http(s) for ws(s) and `/v1/stream` for its
  last path segment) opens the session, with `Authorization: Bearer <token>`; its body is the
  frames sent before it went out (the client's joins, resuming with `since`). The answer, held
  open, is read chunk by chunk as server-sent events: each `data:` event is one server frame,
  `:` comments (the keepalive, every heartbeat) prove the path alive, and the `close` event ends
  the link with its code, as a close frame ends a WebSocket.
- `POST <stream_url>/<session>` sends the frames, one post at a time and in order, those queued
  meanwhile batched into one array (at most 100 frames and 256 KiB, the server's defaults), each
  with the current token (a refresh changes it). 204: accepted. 503: busy, none taken: the same
  frames again after Retry-After. 413: split in two, or for one frame the link ends with 1009, as
  a WebSocket would. Anything else (404: no node holds the session any more; a network error):
  the link is lost, and the client reconnects and resumes with `since`, as after a dropped
  WebSocket.
- A post at least every heartbeat (a `ping` when nothing else went): the server closes a
  session whose client posted nothing for two heartbeats (4009). Silence on the stream, not
  even a keepalive, for a heartbeat and `dead_after` more means the path is dead (1006).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from collections.abc import Callable
from contextlib import suppress
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import msgspec

from jetsock.link import FrameCallback, Link, Outcome, Transport, WelcomeCallback, decode_frame
from jetsock.wire import Welcome

log = logging.getLogger(__name__)

MAX_FRAMES = 100
"""Frames per post at most: the server's `stream_post_frames` default."""
MAX_BYTES = 262144
"""Bytes per post at most: the server's `stream_post_bytes` default."""
TOO_LARGE = 1009
"""How the link ends when the server refuses a single frame as too large (a WebSocket's close code for it)."""
PING = '{"type":"ping"}'
_CLOSE_EVENT = re.compile(rb'\A\{\s*"type"\s*:\s*"close"\s*[,}]')


def stream_url(url: str) -> str:
    """The URL of `POST /v1/stream` beside a WebSocket URL: ws -> http, wss -> https, and the last
    path segment (`/ws`) replaced by `/v1/stream`."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.rsplit("/", 1)[0] if "/" in parts.path else ""
    return urlunsplit((scheme, parts.netloc, path + "/v1/stream", "", ""))


def take(queue: list[str]) -> list[str]:
    """Frames for one post from the head of `queue`: at most MAX_FRAMES and MAX_BYTES, always one."""
    n = 0
    size = 1
    while n < len(queue) and n < MAX_FRAMES:
        size += len(queue[n].encode()) + 1
        if n and size > MAX_BYTES:
            break
        n += 1
    batch = queue[:n]
    del queue[:n]
    return batch


class EventParser:
    """Server-sent events from the chunks of a body: each event's data (its `data:` lines joined by
    newlines). Lines end with LF (a CR before it is dropped); a line may span chunks."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0
        """How far the buffer is known to hold no LF."""
        self._data: list[bytes] | None = None

    def feed(self, chunk: bytes) -> list[bytes]:
        events: list[bytes] = []
        buffer = self._buffer
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", max(start, self._scanned))) >= 0:
            line = bytes(buffer[start:end])
            start = end + 1
            self._scanned = 0
            if line.endswith(b"\r"):
                line = line[:-1]
            if line.startswith(b"data:"):
                value = line[6:] if line[5:6] == b" " else line[5:]
                if self._data is None:
                    self._data = [value]
                else:
                    self._data.append(value)
            elif not line and self._data is not None:
                events.append(b"\n".join(self._data))
                self._data = None
            # `:` comments (the keepalive) and other fields: nothing to do.
        del buffer[:start]
        self._scanned = len(buffer)
        return events


class _Lost(Exception):
    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.code = code


class StreamLink(Link):
    """One session over the HTTP stream and the requests in flight on it."""

    transport: Transport = "stream"

    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        token: Callable[[], str | None],
        refs: itertools.count[int],
        request_timeout: float,
    ) -> None:
        super().__init__(refs, request_timeout)
        self._http = http
        self._url = url
        self._token = token
        """The token for each request: the client's current one (a refresh changes it)."""
        self._queue: list[str] = []
        """Frames not posted yet; until the stream is opened, they go with its request."""
        self._queued = asyncio.Event()
        self._response: aiohttp.ClientResponse | None = None
        self._poster: asyncio.Task[None] | None = None
        self._closed = False
        self._lost: _Lost | None = None
        self._heartbeat = 25.0
        self._last_post = 0.0
        self.session: str | None = None
        """The stream's name, from `welcome`: the posts' URL ends with it."""

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        token = self._token()
        if token:
            headers["Authorization"] = "Bearer " + token
        return headers

    async def open(self, timeout: float) -> str | None:
        """POST the opening request with the frames queued so far; None once the event stream is
        answered, else why it could not be opened."""
        body = ("[" + ",".join(take(self._queue)) + "]").encode()
        try:
            async with asyncio.timeout(timeout):
                response = await self._http.post(
                    self._url,
                    data=body,
                    headers=self._headers(),
                    # Held open for as long as the session lives: no total timeout, no compression.
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout),
                    auto_decompress=False,
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return f"stream open failed: {exc!r}"
        kind = response.headers.get("Content-Type", "")
        if response.status != 200 or not kind.startswith("text/event-stream"):
            response.release()
            return f"the stream was refused: HTTP {response.status}"
        self._response = response
        return None

    async def run(
        self, *, welcome_by: float, dead_after: float, on_welcome: WelcomeCallback, on_frame: FrameCallback
    ) -> Outcome:
        """Read the events until the stream ends (its `close` event, the end of the body, a post
        the server refused, or silence for a heartbeat and `dead_after` more)."""
        response = self._response
        assert response is not None, "open() first"
        loop = asyncio.get_running_loop()
        heartbeat: float | None = None
        connected_at: float | None = None
        last_read = loop.time()
        parser = EventParser()

        def lasted() -> float | None:
            return None if connected_at is None else loop.time() - connected_at

        def lost(reason: str) -> Outcome:
            if self._lost is not None:
                return self._lost.code, str(self._lost), lasted()
            return None, reason, lasted()

        while True:
            wait = welcome_by - loop.time() if heartbeat is None else last_read + heartbeat + dead_after - loop.time()
            try:
                async with asyncio.timeout(max(wait, 0.001)):
                    chunk = await response.content.readany()
            except TimeoutError:
                if heartbeat is None:
                    return None, "no welcome in time", None
                return lost(f"nothing on the stream for {heartbeat + dead_after:g} s")
            except (aiohttp.ClientError, ConnectionError) as exc:
                return lost(f"the stream broke: {exc!r}")
            if not chunk:
                return lost("the stream ended without a close event")
            last_read = loop.time()
            for data in parser.feed(chunk):
                if _CLOSE_EVENT.match(data):
                    try:
                        close = json.loads(data)
                        return int(close["code"]), str(close.get("reason", "")), lasted()
                    except (ValueError, KeyError, TypeError):
                        return lost(f"a close event that is not one: {data[:100]!r}")
                try:
                    frame = decode_frame(data)
                except msgspec.DecodeError as exc:
                    log.debug("skipping a frame this client does not know: %s", exc)
                    continue
                if isinstance(frame, Welcome):
                    if heartbeat is not None:
                        continue  # a second one would be a server bug
                    heartbeat = frame.heartbeat
                    connected_at = last_read
                    self.session = frame.session
                    self._heartbeat = float(heartbeat)
                    self._poster = loop.create_task(self._post_all(), name="jetsock stream posts")
                    on_welcome(self, frame)
                else:
                    on_frame(self, frame)
                if self._lost is not None or self._closed:
                    return lost("the link was closed")
            if self._lost is not None:
                return lost("")

    async def close(self) -> None:
        """Fail what waits for a reply, stop posting, and drop the event stream."""
        self._closed = True
        self._fail_requests()
        poster, self._poster = self._poster, None
        if poster is not None:
            poster.cancel()
            with suppress(asyncio.CancelledError):
                await poster
        response, self._response = self._response, None
        if response is not None:
            response.close()

    def send_text(self, text: str) -> None:
        """Queue a frame; posted in order, batched with the frames queued while a post is in flight."""
        if not self._closed and self._lost is None:
            self._queue.append(text)
            self._queued.set()

    # --- posting --------------------------------------------------------------

    async def _post_all(self) -> None:
        """The one task that posts: what is queued, else a ping a heartbeat after the last post began."""
        loop = asyncio.get_running_loop()
        self._last_post = loop.time()
        try:
            while True:
                if not self._queue:
                    self._queued.clear()
                    try:
                        async with asyncio.timeout(max(0.0, self._last_post + self._heartbeat - loop.time())):
                            await self._queued.wait()
                    except TimeoutError:
                        self._queue.append(PING)
                    continue
                await self._post(take(self._queue))
        except _Lost as lost:
            self._lose(lost)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._lose(_Lost(f"a post failed: {exc!r}"))

    def _lose(self, lost: _Lost) -> None:
        """The session is over for this link: the reader returns at once."""
        log.debug("stream link lost: %s", lost)
        self._lost = lost
        response = self._response
        if response is not None:
            # Wakes the reader waiting for the next chunk.
            response.content.set_exception(ConnectionResetError(str(lost)))

    async def _post(self, frames: list[str]) -> None:
        assert self.session is not None
        url = f"{self._url}/{quote(self.session, safe='')}"
        body = ("[" + ",".join(frames) + "]").encode()
        loop = asyncio.get_running_loop()
        while True:
            self._last_post = loop.time()  # a post is a sign of life
            async with self._http.post(
                url,
                data=body,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=self._request_timeout),
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After", "1")
                await response.read()
            if 200 <= status < 300:
                return
            if status == 503:
                # Busy: none of them was taken. The same frames again, in order, after Retry-After.
                try:
                    delay = min(max(float(retry_after), 0.0), 30.0)
                except ValueError:
                    delay = 1.0
                await asyncio.sleep(delay)
                continue
            if status == 413:
                if len(frames) < 2:
                    raise _Lost("a frame over the server's limit", TOO_LARGE)
                half = len(frames) // 2
                await self._post(frames[:half])
                await self._post(frames[half:])
                return
            # 404: no node holds the session any more; 403, 401, a proxy's 5xx: start over.
            raise _Lost(f"a post was answered HTTP {status}")
