"""Section 1 and the part of section 3 in this issue: subprotocol, bearer, auth frame, refusals."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from tests.conftest import Edge, connect, open_ws, token


async def test_bearer_subprotocol_selects_jetsock_v1_and_welcomes(edge: Edge) -> None:
    client = await connect(edge.url)
    try:
        assert client.ws.protocol == "jetsock.v1"
        welcome = client.welcome
        assert welcome is not None
        assert welcome["node"] == "test-node"
        assert welcome["heartbeat"] == edge.settings.heartbeat
        assert isinstance(welcome["session"], str) and welcome["session"]
        assert welcome["exp"] > 0
    finally:
        await client.close()


async def test_auth_frame_authenticates_and_echoes_ref(edge: Edge) -> None:
    client = await open_ws(edge.url)
    try:
        assert client.ws.protocol == "jetsock.v1"
        welcome = await client.request(type="auth", token=token(), ref=7)
        assert welcome["type"] == "welcome" and welcome["ref"] == 7
        assert (await client.request(type="ping", ref="p"))["type"] == "pong"
    finally:
        await client.close()


async def test_invalid_token_in_auth_frame_closes_4501(edge: Edge) -> None:
    client = await open_ws(edge.url)
    await client.send(type="auth", token="not-a-jwt")
    code, reason = await client.closed()
    assert code == 4501 and "invalid token" in reason
    await client.close()


async def test_expired_bearer_closes_4501(edge: Edge) -> None:
    client = await open_ws(edge.url, ("jetsock.v1", "bearer." + token(ttl=-60)))
    code, reason = await client.closed()
    assert code == 4501 and "expired" in reason
    await client.close()


async def test_first_frame_other_than_auth_closes_4501(edge: Edge) -> None:
    client = await open_ws(edge.url)
    await client.send(type="join", room="a")
    code, _ = await client.closed()
    assert code == 4501
    await client.close()


async def test_auth_timeout_closes_4501(make_edge: object) -> None:
    edge = await make_edge(auth_timeout=0.3)  # type: ignore[operator]
    client = await open_ws(edge.url)
    code, reason = await client.closed()
    assert code == 4501 and "auth_timeout" in reason
    await client.close()


@pytest.mark.parametrize("query", ["token=", "access_token=", "x="])
async def test_token_in_query_string_closes_4500(edge: Edge, query: str) -> None:
    client = await open_ws(edge.url + "?" + query + token())
    code, reason = await client.closed()
    assert code == 4500 and "subprotocol" in reason
    await client.close()


async def test_foreign_origin_is_refused_before_upgrade(edge: Edge) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(edge.url, protocols=("jetsock.v1",), origin="https://evil.example")
        assert info.value.status == 403
        # The server's own origin passes.
        ws = await session.ws_connect(edge.url, protocols=("jetsock.v1",), origin=edge.http)
        await ws.close()


async def test_cookie_authenticates_only_with_an_allowed_origin(edge: Edge) -> None:
    headers = {"Cookie": f"jetsock_token={token()}"}
    with_origin = await open_ws(edge.url, headers=headers, origin=edge.http)
    assert (await with_origin.expect("welcome"))["type"] == "welcome"
    await with_origin.close()
    # No Origin (not a browser): the cookie is ignored, an auth frame is expected.
    without = await open_ws(edge.url, headers=headers)
    await without.send(type="ping")
    code, _ = await without.closed()
    assert code == 4501
    await without.close()


async def test_token_expiry_announced_then_closed_4001(edge: Edge) -> None:
    # refresh_before is 30 s, so a 2 s token is "expiring" at once and expires soon.
    client = await connect(edge.url, tok=token(ttl=2))
    assert (await client.expect("expiring"))["exp"] == client.welcome["exp"]  # type: ignore[index]
    code, _ = await client.closed(timeout=15)
    assert code == 4001
    await client.close()


async def test_refresh_same_sub_extends_and_drops_rooms_no_longer_allowed(edge: Edge) -> None:
    client = await connect(edge.url, tok=token(ttl=2, join=["a", "b"]))
    await client.expect("expiring")
    assert (await client.request(type="join", room="a"))["type"] == "joined"
    assert (await client.request(type="join", room="b"))["type"] == "joined"
    await client.send(type="refresh", token=token(ttl=600, join=["a"]), ref=1)
    left = await client.expect("left")
    assert left == {"type": "left", "room": "b", "reason": "forbidden"}
    refreshed = await client.expect("refreshed")
    assert refreshed["ref"] == 1 and refreshed["exp"] > client.welcome["exp"]  # type: ignore[index]
    await asyncio.sleep(2.5)  # past the first token's exp: still open
    assert (await client.request(type="ping"))["type"] == "pong"
    other = await client.request(type="refresh", token=token(sub="mallory"), ref=2)
    assert other["type"] == "error" and other["code"] == "forbidden" and other["ref"] == 2
    bad = await client.request(type="refresh", token="garbage", ref=3)
    assert bad["type"] == "error" and bad["code"] == "bad_request"
    await client.close()


async def test_past_max_connections_new_ones_close_1013(make_edge: object) -> None:
    edge = await make_edge(max_connections=2)  # type: ignore[operator]
    first, second = await connect(edge.url, "a"), await connect(edge.url, "b")
    third = await open_ws(edge.url, ("jetsock.v1", "bearer." + token()))
    code, reason = await third.closed()
    assert code == 1013 and "full" in reason
    await third.close()
    assert (await first.request(type="ping"))["type"] == "pong"
    await second.close()
    async with asyncio.timeout(5):
        while len(edge.node.connections) > 1:
            await asyncio.sleep(0.01)
    again = await connect(edge.url, "c")  # room again once one left
    await again.close()
    await first.close()


async def test_allowed_origins_list_replaces_the_default(make_edge: object) -> None:
    edge = await make_edge(allowed_origins="https://app.example, https://admin.example/")  # type: ignore[operator]
    async with aiohttp.ClientSession() as session:
        for origin in ("https://app.example", "https://admin.example"):
            ws = await session.ws_connect(edge.url, protocols=("jetsock.v1",), origin=origin)
            await ws.close()
        for origin in (edge.http, "https://app.example.evil", "null", "http://app.example"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await session.ws_connect(edge.url, protocols=("jetsock.v1",), origin=origin)
            assert info.value.status == 403, origin


async def test_expiry_far_off_at_connect_is_still_on_time(make_edge: Any) -> None:
    # With heartbeat 0.4 s, no timer is held for a step more than 0.2 s away: the
    # heartbeat sweep arms it when it comes near. Both steps must still be on time.
    edge = await make_edge(heartbeat=0.4, refresh_before=1.0)
    client = await connect(edge.url, tok=token(ttl=3))
    exp = client.welcome["exp"]  # type: ignore[index]
    await client.expect("expiring", timeout=5)
    assert exp - 1.0 - 0.05 <= time.time() < exp - 0.5
    code, _ = await client.closed(timeout=5)
    assert code == 4001 and exp - 0.05 <= time.time() < exp + 0.5
    await client.close()
