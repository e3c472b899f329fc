"""Nothing after a close frame (RFC 6455 5.5.1), on every close path, counted and logged with its real code.

A raw client (its own RFC 6455 framing) joins a room a backend keeps
publishing into, stops reading until the edge's send queue holds data (the
kernel's buffers are full), and then the close happens: a frame over
max_frame_bytes (aiohttp's reader refuses it: 1009), an outbox past
max_pending_bytes (4008), a token reaching exp (4001), silence (4009), a
drain (1012). Then it reads everything: exactly one close frame, with the
code, and nothing after it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from edge.connection import Connection
from tests.conftest import Edge, token
from tests.hostile.rawws import OP_CLOSE, OP_TEXT, Frame, RawWS

ROOM = "closing.room"


async def publisher(backend: Any, stop: asyncio.Event) -> int:
    js = backend.jetstream()
    sent = 0
    payload = b'{"blob":"' + b"x" * 16000 + b'"}'  # ~10 MB/s: the kernel's buffers fill within a second
    while not stop.is_set():
        try:
            await js.publish(f"rooms.{ROOM}", payload)
        except Exception:  # the edge has not made the stream yet
            await asyncio.sleep(0.05)
            continue
        sent += 1
        await asyncio.sleep(0.001)
    return sent


async def joined_raw(edge: Edge, tok: str | None = None) -> RawWS:
    port = edge.settings.port
    ws = await RawWS.open(port, ("jetsock.v1", "bearer." + (tok or token("closer"))))
    assert ws.upgraded, ws.response_head
    welcome = await ws.read_frame()
    assert welcome is not None and json.loads(welcome.payload)["type"] == "welcome"
    await ws.send(OP_TEXT, json.dumps({"type": "join", "room": ROOM}).encode())
    while True:
        got = await ws.read_frame()
        assert got is not None
        if got.opcode == OP_TEXT and json.loads(got.payload)["type"] == "joined":
            return ws


def session_of(edge: Edge) -> Connection:
    (conn,) = [c for c in edge.node.connections if c.principal is not None and c.principal.sub != "keeper"]
    return conn


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def read_to_the_end(ws: RawWS) -> list[Frame]:
    frames: list[Frame] = []
    async with asyncio.timeout(30):
        while (got := await ws.read_frame(30)) is not None:
            frames.append(got)
    return frames


def closes_counted(text: str, code: int) -> float:
    for line in text.splitlines():
        if line.startswith("jetsock_closes_total{") and f'websocket_close_code="{code}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
async def flowing(backend: Any) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(publisher(backend, stop))
    yield stop
    stop.set()
    await task


async def check_one_close(
    edge: Edge, ws: RawWS, code: int, trigger: Callable[[Connection], Awaitable[None]], caplog: Any
) -> None:
    conn = session_of(edge)
    ws.writer.transport.pause_reading()  # type: ignore[attr-defined]
    # The kernel's buffers are full once the edge itself holds bytes for us.
    await until(lambda: conn.transport.get_write_buffer_size() > 16 * 1024)
    with caplog.at_level(logging.INFO, logger="edge.node"):
        await trigger(conn)
        await asyncio.sleep(0.3)  # the backend goes on publishing into the room meanwhile
        ws.writer.transport.resume_reading()  # type: ignore[attr-defined]
        frames = await read_to_the_end(ws)
        await until(lambda: conn not in edge.node.connections)
    closes = [i for i, f in enumerate(frames) if f.opcode == OP_CLOSE]
    assert len(closes) == 1, f"{len(closes)} close frames"
    assert closes[0] == len(frames) - 1, f"{len(frames) - 1 - closes[0]} frames after the close frame"
    assert frames[-1].close_code == code
    assert conn.close_code == code
    lines = [r for r in caplog.records if getattr(r, "fields", {}).get("session") == conn.session]
    assert [r.fields["code"] for r in lines] == [code], "logged once, with its real code"  # type: ignore[attr-defined]
    async with aiohttp.ClientSession() as http, http.get(edge.http + "/metrics") as response:
        assert closes_counted(await response.text(), code) >= 1


async def test_a_frame_over_the_limit_gets_one_1009_and_nothing_after(
    make_edge: Any, flowing: asyncio.Event, caplog: Any
) -> None:
    edge = await make_edge(max_pending_bytes=256 << 20, close_timeout=10)
    ws = await joined_raw(edge)

    async def oversize(_conn: Connection) -> None:
        await ws.send(OP_TEXT, b'{"type":"ping","pad":"' + b"p" * 70_000 + b'"}')

    await check_one_close(edge, ws, 1009, oversize, caplog)


async def test_a_slow_consumer_gets_one_4008_and_nothing_after(
    make_edge: Any, flowing: asyncio.Event, caplog: Any
) -> None:
    edge = await make_edge(max_pending_bytes=2 << 20, close_timeout=10)
    ws = await joined_raw(edge)

    async def overflow(conn: Connection) -> None:
        await until(lambda: conn.closing)

    await check_one_close(edge, ws, 4008, overflow, caplog)


async def test_token_expiry_gets_one_4001_and_nothing_after(
    make_edge: Any, flowing: asyncio.Event, caplog: Any
) -> None:
    edge = await make_edge(max_pending_bytes=256 << 20, close_timeout=10, refresh_before=1, jwt_leeway=0)
    ws = await joined_raw(edge, token("closer", ttl=8))

    async def expire(conn: Connection) -> None:
        await until(lambda: conn.closing, timeout=10)

    await check_one_close(edge, ws, 4001, expire, caplog)


async def test_silence_gets_one_4009_and_nothing_after(make_edge: Any, flowing: asyncio.Event, caplog: Any) -> None:
    edge = await make_edge(max_pending_bytes=256 << 20, close_timeout=10, heartbeat=3)
    ws = await joined_raw(edge)

    async def silent(conn: Connection) -> None:
        await until(lambda: conn.closing, timeout=10)

    await check_one_close(edge, ws, 4009, silent, caplog)


async def test_a_drain_gets_one_1012_and_nothing_after(make_edge: Any, flowing: asyncio.Event, caplog: Any) -> None:
    edge = await make_edge(max_pending_bytes=256 << 20, close_timeout=10, drain_seconds=0.2)
    ws = await joined_raw(edge)
    draining: list[asyncio.Task[None]] = []

    async def drain(conn: Connection) -> None:
        draining.append(asyncio.create_task(edge.node.drain()))
        await until(lambda: conn.closing)

    await check_one_close(edge, ws, 1012, drain, caplog)
    await draining[0]
