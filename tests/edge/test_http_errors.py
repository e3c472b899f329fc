"""Malformed HTTP requests on a real socket: a fixed 400, one short INFO line, no traceback, no echo.

Each request carries a marker (`zq<n>x`) inside the bytes the parser rejects;
aiohttp's own 400 page quotes those bytes, so a marker in the answer or in the
log is an echo. The edge is the tests' in-process one (tests/conftest.py),
served through `edge.app.make_runner` as `jetsock serve` serves it.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from core.embedded import free_port
from edge.app import make_runner
from edge.httperrors import PROBLEMS, SERVED, access_cause
from tests.conftest import Edge, token

FIXED = b"400 Bad Request: malformed HTTP request\n"
HANDSHAKE = b"400 Bad Request: malformed WebSocket handshake\n"
DESCRIPTIONS = {description for _cls, _kind, description in PROBLEMS}

MALFORMED = {
    "control character in the target": b"GET /\x01zq1x HTTP/1.1\r\nHost: x\r\n\r\n",
    "NUL in a header value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00zq2x\r\n\r\n",
    "invalid Content-Length": b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: zq3x\r\n\r\n",
    "DEL in a header name": b"GET / HTTP/1.1\r\nHost: x\r\nX-zq4x\x7f: a\r\n\r\n",
    "header line over 8190 bytes": b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: zq5x" + b"L" * 9000 + b"\r\n\r\n",
    "request line over 8190 bytes": b"GET /zq6x" + b"P" * 9000 + b" HTTP/1.1\r\n\r\n",
    "invalid version": b"GET /zq7x HTTP/9.Q\r\nHost: x\r\n\r\n",
    "NUL in the method": b"G\x00T /zq8x HTTP/1.1\r\nHost: x\r\n\r\n",
    "invalid chunk size": b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzq9x\r\n",
    "obsolete line folding": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n zq10x\r\n\r\n",
    "space before the colon": b"GET / HTTP/1.1\r\nHost: x\r\nX-zq11x : a\r\n\r\n",
    "Content-Length and Transfer-Encoding": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    ),
    "too many headers": b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
    "TLS handshake on the HTTP port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
}


def marker(raw: bytes) -> bytes | None:
    start = raw.find(b"zq")
    return raw[start : raw.index(b"x", start) + 1] if start >= 0 else None


async def exchange(port: int, raw: bytes, timeout: float = 5.0) -> tuple[int, bytes, bytes]:
    """Send `raw` on a new connection; (status, head, body) of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = await reader.readexactly(length)
    finally:
        writer.close()
    return int(head.split(b" ", 2)[1]), head, body


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the log says went wrong besides the one expected INFO line: errors, tracebacks."""
    return [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.WARNING or r.exc_info is not None
    ]


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_request_gets_the_fixed_400_and_one_info_line(
    edge: Edge, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    status, head, body = await exchange(edge.settings.port, raw)
    assert status == 400
    assert body == FIXED, body
    mark = marker(raw)
    assert mark is None or mark not in head + body
    assert problems(caplog) == []
    (line,) = [r for r in caplog.records if r.name == "edge.httperrors"]
    assert line.levelno == logging.INFO
    message = line.getMessage()
    assert message.startswith("malformed HTTP request from 127.0.0.1: ")
    assert message.removeprefix("malformed HTTP request from 127.0.0.1: ") in DESCRIPTIONS
    assert line.__dict__["cause"].startswith("http400:")
    assert mark is None or mark.decode() not in message


async def test_a_body_that_breaks_its_encoding_while_read_is_a_400_without_traceback(
    edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    garbage = b"zq12x not gzip at all"
    raw = (
        b"POST /v1/rooms/chat.lobby/messages HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {token('backend', publish=['chat.lobby'])}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
        + f"Content-Length: {len(garbage)}\r\n\r\n".encode()
        + garbage
    )
    status, head, body = await exchange(edge.settings.port, raw)
    assert status == 400, body
    assert b"zq12x" not in head + body and b"gzip" not in body
    assert problems(caplog) == []


async def test_a_malformed_body_left_unread_by_a_refusing_handler_logs_no_traceback(
    edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp reads away what a handler left unread, and logged its decoding error as "Unhandled exception"."""
    caplog.set_level(logging.INFO)
    garbage = b"zq14x not gzip at all"
    raw = (
        b"POST /v1/rooms/chat.lobby/messages HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
        + f"Content-Length: {len(garbage)}\r\n\r\n".encode()
        + garbage
    )
    status, _head, _body = await exchange(edge.settings.port, raw)
    assert status == 401
    async with asyncio.timeout(5):
        while not any(r.name in ("edge.httperrors", "aiohttp.server") for r in caplog.records):
            await asyncio.sleep(0.01)
    assert problems(caplog) == []
    (line,) = [r for r in caplog.records if r.name == "edge.httperrors"]
    assert line.getMessage() == "malformed HTTP request from 127.0.0.1: invalid body framing or encoding"


async def test_a_handler_bug_is_still_a_500_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """The quiet path is for malformed requests only: a bug must stay loud."""

    async def broken(_request: web.Request) -> web.Response:
        raise RuntimeError("a bug, zq13x")

    app = web.Application()
    app.router.add_get("/bug", broken)
    runner = make_runner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        status, _head, body = await exchange(port, b"GET /bug HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status == 500 and b"zq13x" not in body
        (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert error.name == "aiohttp.server" and error.exc_info is not None
        assert isinstance(error.exc_info[1], RuntimeError)
        # The same runner answers a malformed request quietly.
        status, _head, body = await exchange(port, MALFORMED["NUL in a header value"])
        assert (status, body) == (400, FIXED)
    finally:
        await runner.cleanup()


def test_access_lines_are_limited_by_status_and_a_served_request_is_never_limited() -> None:
    assert access_cause(200) is SERVED and access_cause(304) is SERVED and SERVED.limit is None
    assert access_cause(101) == "access:101"
    assert access_cause(400) == "access:400" and access_cause(503) == "access:503"


HANDSHAKES = {
    "key that is no base64 nonce": b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: zq20x<script>\r\n",
    "no key": b"Sec-WebSocket-Version: 13\r\nX-Note: zq21x\r\n",
    "unsupported version": b"Sec-WebSocket-Version: 99zq22x\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
}


@pytest.mark.parametrize("headers", HANDSHAKES.values(), ids=HANDSHAKES.keys())
async def test_a_refused_websocket_handshake_does_not_quote_its_headers(
    edge: Edge, headers: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Waits on edge/session.py answering aiohttp's HTTPBadRequest with `edge.httperrors.handshake_refused`."""
    caplog.set_level(logging.INFO)
    raw = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" + headers + b"\r\n"
    status, head, body = await exchange(edge.settings.port, raw)
    assert status == 400
    assert body == HANDSHAKE, body
    assert b"zq2" not in head + body
    assert problems(caplog) == []
