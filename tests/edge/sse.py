"""A small client of the HTTP stream transport (PROTOCOL.md section 11), for tests.

`open_stream` posts to `/v1/stream` and reads the held-open `text/event-stream`
answer with aiohttp's client: each `data:` line is a server frame, each `:` line a
comment (its arrival time is kept), a blank line ends an event. `post` sends frames
to `/v1/stream/<session>` on any node.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from tests.conftest import token as make_token


class EventStream:
    """One open `POST /v1/stream`, read event by event."""

    def __init__(self, http: aiohttp.ClientSession, response: aiohttp.ClientResponse, auth: str | None) -> None:
        self.http = http
        self.response = response
        self.auth = auth
        """The Authorization header it was opened with (posts use the same by default)."""
        self.welcome: dict[str, Any] | None = None
        self.comments: list[tuple[float, str]] = []
        """(loop time, text) of every comment line read."""
        self.ended = False
        """The body ended (the last chunk was read, or the connection went)."""

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def session(self) -> str:
        assert self.welcome is not None, "no welcome read"
        session: str = self.welcome["session"]
        return session

    @property
    def transport(self) -> asyncio.Transport:
        connection = self.response.connection
        assert connection is not None and connection.transport is not None
        transport: asyncio.Transport = connection.transport  # type: ignore[assignment]
        return transport

    async def next(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next event's frame; None once the body has ended (or the connection went)."""
        data: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    raw = await self.response.content.readline()
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ConnectionError):
                    raw = b""
                if not raw:
                    self.ended = True
                    assert not data, f"the body ended inside an event: {data}"
                    return None
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":"):
                    self.comments.append((asyncio.get_running_loop().time(), line[1:].strip()))
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif line == "":
                    if data:
                        frame: dict[str, Any] = json.loads("\n".join(data))
                        return frame
                else:
                    raise AssertionError(f"not an SSE line: {line!r}")

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        frame = await self.next(timeout)
        assert frame is not None, "the stream ended"
        return frame

    async def expect(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        frame = await self.recv(timeout)
        assert frame["type"] == kind, frame
        return frame

    async def until(
        self, kind: str, timeout: float = 10.0, **match: Any
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Read up to the first `kind` frame matching `match`; it and the frames before it."""
        before: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if frame["type"] == kind and all(frame.get(k) == v for k, v in match.items()):
                    return frame, before
                before.append(frame)

    async def closed(self, timeout: float = 10.0) -> tuple[int | None, str, list[dict[str, Any]]]:
        """Read to the end of the body: the `close` event's code and reason (None when the
        body ended without one), and the frames before it. Nothing may follow the close event."""
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.next(timeout)
                if frame is None:
                    return None, "", frames
                if frame["type"] == "close":
                    rest = await self.next(timeout)
                    assert rest is None, f"a frame after the close event: {rest}"
                    return int(frame["code"]), str(frame["reason"]), frames
                frames.append(frame)

    async def post(self, *frames: dict[str, Any], base: str | None = None, auth: str | None = None) -> int:
        """POST `frames` (one object when one frame, else an array) into the session; the status."""
        body: Any = frames[0] if len(frames) == 1 else list(frames)
        status, _ = await post_frames(
            self.http, base or str(self.response.url.origin()), self.session, body, auth or self.auth
        )
        return status

    async def close(self) -> None:
        self.response.close()
        await self.http.close()


async def post_frames(
    http: aiohttp.ClientSession,
    base: str,
    session: str,
    body: Any,
    auth: str | None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """POST `body` to `base`/v1/stream/`session`: (status, JSON answer or None)."""
    sent = dict(headers or {})
    if auth is not None:
        sent["Authorization"] = auth
    # Bytes and async iterators (a chunked body) as they are; anything else as its JSON.
    data = body if isinstance(body, bytes) or hasattr(body, "__aiter__") else json.dumps(body).encode()
    async with http.post(f"{base}/v1/stream/{session}", data=data, headers=sent) as response:
        answer = await response.json() if response.content_type == "application/json" else None
        return response.status, answer


def bearer(sub: str = "alice", tok: str | None = None, **kw: Any) -> str:
    return "Bearer " + (tok or make_token(sub, **kw))


async def open_stream(
    base: str,
    sub: str = "alice",
    frames: list[dict[str, Any]] | bytes | None = None,
    tok: str | None = None,
    headers: dict[str, str] | None = None,
    auth: str | bool | None = True,
    welcome: bool = True,
    **kw: Any,
) -> EventStream:
    """POST /v1/stream on `base` (its own aiohttp session); the welcome is read when `welcome`
    and the answer is 200. `auth`: True for a Bearer token of `sub` (or `tok`), a header
    value, or None/False for none."""
    http = aiohttp.ClientSession(**kw)
    sent = dict(headers or {})
    authorization = bearer(sub, tok) if auth is True else (auth or None)
    if authorization is not None:
        sent["Authorization"] = authorization
    body = frames if isinstance(frames, bytes) else json.dumps(frames or []).encode()
    try:
        response = await http.post(f"{base}/v1/stream", data=body, headers=sent)
    except BaseException:
        await http.close()
        raise
    stream = EventStream(http, response, authorization)
    if welcome and response.status == 200:
        stream.welcome = await stream.expect("welcome")
    return stream
