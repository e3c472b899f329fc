"""HTTP bodies that arrive in pieces: stored whole or refused with 413, never cut short (PROTOCOL.md 9.4).

Each request is written by hand on a TCP socket, the body in separately
flushed writes with a pause between them, so the edge has only the first
piece when its handler starts reading; what was stored is read back from
JetStream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from nats.js.errors import NotFoundError

from core.embedded import EmbeddedNats
from tests.conftest import Edge, connect, token
from tests.edge.rawhttp import LAST_CHUNK, chunk, raw_post


def publish_headers(sub: str = "svc", **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, join=[], publish=['bodies.*'])}", **extra}


async def stored_data(backend: Any, room: str) -> bytes | None:
    """The last message stored in `room`, straight from the stream; None when nothing is."""
    try:
        msg = await backend.jetstream().get_last_msg("ROOMS", f"rooms.{room}")
    except NotFoundError:
        return None
    data: bytes = msg.data
    return data


async def test_content_length_body_in_two_segments_is_stored_whole(edge: Edge, backend: Any) -> None:
    headers = publish_headers(**{"Content-Length": "6", "Content-Type": "application/json"})
    status, answer = await raw_post(edge.settings.port, "/v1/rooms/bodies.cl/messages", [b"123", b"456"], headers)
    assert status == 201, answer
    assert await stored_data(backend, "bodies.cl") == b"123456"
    # JSON that is only valid once whole: not refused for its first half.
    headers["Content-Length"] = "5"
    status, answer = await raw_post(edge.settings.port, "/v1/rooms/bodies.json/messages", [b"[1", b",2]"], headers)
    assert status == 201, answer
    assert await stored_data(backend, "bodies.json") == b"[1,2]"


async def test_chunked_body_in_two_writes_is_stored_whole(edge: Edge, backend: Any) -> None:
    headers = publish_headers(**{"Transfer-Encoding": "chunked"})
    parts = [chunk(b"[1"), chunk(b",2]") + LAST_CHUNK]
    status, answer = await raw_post(edge.settings.port, "/v1/rooms/bodies.chunked/messages", parts, headers)
    assert status == 201, answer
    assert await stored_data(backend, "bodies.chunked") == b"[1,2]"


async def test_chunked_body_over_the_limit_is_413_and_not_stored(edge: Edge, backend: Any) -> None:
    limit = edge.settings.max_data_bytes
    # The first chunk alone is valid JSON under the limit; the whitespace after it takes the body past it.
    first = b'"' + b"a" * (limit // 2) + b'"'
    parts = [chunk(first), chunk(b" " * limit) + LAST_CHUNK]
    headers = publish_headers(**{"Transfer-Encoding": "chunked"})
    status, answer = await raw_post(edge.settings.port, "/v1/rooms/bodies.big/messages", parts, headers)
    assert status == 413 and answer["code"] == "too_large", answer
    assert str(limit) in answer["message"]
    assert await stored_data(backend, "bodies.big") is None
    # Exactly at the limit, in pieces, is stored.
    whole = b'"' + b"b" * (limit - 2) + b'"'
    parts = [chunk(whole[:100]), chunk(whole[100:30000]), chunk(whole[30000:]) + LAST_CHUNK]
    status, answer = await raw_post(edge.settings.port, "/v1/rooms/bodies.big/messages", parts, headers, pause=0.1)
    assert status == 201, answer
    assert await stored_data(backend, "bodies.big") == whole


async def test_disconnect_body_in_two_segments_is_read_whole(edge: Edge) -> None:
    victim = await connect(edge.url, "victim")
    admin = {"Authorization": f"Bearer {token('ops', admin=True)}", "Content-Type": "application/json"}
    body = b'{"code": 4000, "reason": "come back later"}'
    headers = {**admin, "Content-Length": str(len(body))}
    status, answer = await raw_post(
        edge.settings.port, "/v1/subjects/victim/disconnect", [body[:15], body[15:]], headers
    )
    assert (status, answer) == (200, {"closed": 1})
    code, reason = await victim.closed()
    assert (code, reason) == (4000, "come back later")
    await victim.close()
    # Over 4096 bytes, chunked: 413, and nobody is disconnected.
    other = await connect(edge.url, "other")
    long_reason = b"x" * 5000
    parts = [chunk(b'{"code": 4000, "reason": "'), chunk(long_reason + b'"}') + LAST_CHUNK]
    headers = {**admin, "Transfer-Encoding": "chunked"}
    status, answer = await raw_post(edge.settings.port, "/v1/subjects/other/disconnect", parts, headers)
    assert status == 413 and answer["code"] == "too_large", answer
    assert (await other.request(type="ping"))["type"] == "pong"
    await other.close()


async def test_disconnect_body_nested_too_deeply_is_400(edge: Edge) -> None:
    admin = {"Authorization": f"Bearer {token('ops', admin=True)}"}
    body = b'{"code": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    status, answer = await raw_post(
        edge.settings.port, "/v1/subjects/x/disconnect", [body], {**admin, "Content-Length": str(len(body))}
    )
    assert status == 400 and answer["code"] == "bad_request", answer


async def test_unconfirmed_http_publish_says_it_may_have_been_stored(edge: Edge, nats_server: EmbeddedNats) -> None:
    nats_server.stop()
    try:
        async with asyncio.timeout(10):
            while edge.node.broker.connected:
                await asyncio.sleep(0.05)
        body = b'{"n": 1}'
        headers = publish_headers(**{"Content-Length": str(len(body)), "Idempotency-Key": "k-1"})
        status, answer = await raw_post(edge.settings.port, "/v1/rooms/bodies.down/messages", [body], headers)
        assert status == 503 and answer["code"] == "unavailable", answer
        assert answer["message"].startswith("may have been stored; retry with the same Idempotency-Key: "), answer
    finally:
        nats_server.start()


async def test_a_body_that_stops_arriving_is_408_and_not_stored(make_edge: Any, backend: Any) -> None:
    edge = await make_edge(body_timeout=0.5)
    port, path = edge.settings.port, "/v1/rooms/bodies.stalled/messages"
    # Half of a declared length, then nothing.
    status, answer = await raw_post(port, path, [b"[1,"], publish_headers(**{"Content-Length": "10"}))
    assert status == 408 and answer["code"] == "bad_request", answer
    # A chunk size that is no number: aiohttp's parser waits for more, so only the timeout ends it.
    parts = [chunk(b"[1"), b"zz\r\n,2]\r\n" + LAST_CHUNK]
    status, answer = await raw_post(port, path, parts, publish_headers(**{"Transfer-Encoding": "chunked"}))
    assert status == 408 and answer["code"] == "bad_request", answer
    assert await stored_data(backend, "bodies.stalled") is None


async def test_a_client_gone_mid_body_stores_nothing_and_logs_no_crash(
    edge: Edge, backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.settings.port)
    head = "POST /v1/rooms/bodies.gone/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in publish_headers().items()) + "\r\n"
    writer.write(head.encode() + b"[1,2")
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # aiohttp drops a connection that ends mid-body
    writer.close()
    await asyncio.sleep(0.3)
    assert await stored_data(backend, "bodies.gone") is None
    crashes = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not crashes, [r.getMessage() for r in crashes]
