"""The Python client over the HTTP stream transport (PROTOCOL.md section 11): its event parser, then
against real edges pinned to the stream, and through a proxy that refuses every WebSocket upgrade,
where it falls back on its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

import jetsock
from jetsock.stream import MAX_FRAMES, EventParser, stream_url, take
from tests.clients.noupgrade_proxy import NoUpgradeProxy
from tests.clients.test_python_client import FAST, States, http_publish
from tests.clients.test_python_client import take as take_messages
from tests.conftest import Edge, token
from tests.edge.checker import stored_messages, stored_seqs

STREAM: tuple[jetsock.Transport, ...] = ("stream",)


# --- the pieces, without a server ------------------------------------------------


def test_stream_url_is_beside_the_websocket_url() -> None:
    assert stream_url("ws://127.0.0.1:8080/ws") == "http://127.0.0.1:8080/v1/stream"
    assert stream_url("wss://example.com/ws") == "https://example.com/v1/stream"
    assert stream_url("wss://example.com/realtime/ws?x=1") == "https://example.com/realtime/v1/stream"
    assert stream_url("ws://example.com") == "http://example.com/v1/stream"


def test_events_across_chunk_boundaries() -> None:
    text = 'data: {"n": "h\u00e9llo \u65e5\u672c"}\n\n: keepalive\n\ndata: {"n": 2}\r\n\r\ndata: a\ndata: b\n\n'
    whole = text.encode()
    parser = EventParser()
    events: list[bytes] = []
    for i in range(len(whole)):  # one byte at a time: inside every line, every UTF-8 sequence
        events += parser.feed(whole[i : i + 1])
    assert events == ['{"n": "h\u00e9llo \u65e5\u672c"}'.encode(), b'{"n": 2}', b"a\nb"]
    assert EventParser().feed(whole) == events  # and all in one chunk
    big = b"data: " + b"x" * 300_000 + b"\n\n"
    parser = EventParser()
    assert [e for i in range(0, len(big), 1000) for e in parser.feed(big[i : i + 1000])] == [b"x" * 300_000]


def test_posts_are_bounded_in_frames_and_bytes() -> None:
    queue = ["{}"] * (MAX_FRAMES + 5)
    assert len(take(queue)) == MAX_FRAMES and len(queue) == 5
    large = ["x" * 100_000] * 4
    assert len(take(large)) == 2 and len(large) == 2
    huge = ["x" * 300_000, "{}"]
    assert take(huge) == ["x" * 300_000]  # one, however large: the server says 413


def test_transports_are_checked() -> None:
    for wrong in ((), ("polling",), ("stream", "stream")):
        with pytest.raises(ValueError):
            jetsock.Client("ws://127.0.0.1:1/ws", token="t", transports=wrong, auto_connect=False)  # type: ignore[arg-type]


# --- against real edges -------------------------------------------------------------


@pytest.fixture
async def two_edges(make_edge: Any) -> list[Edge]:
    return [await make_edge(node="edge-a"), await make_edge(node="edge-b")]


@pytest.fixture
async def proxy(two_edges: list[Edge]) -> AsyncIterator[NoUpgradeProxy]:
    started = await NoUpgradeProxy([edge.http for edge in two_edges]).start()
    yield started
    await started.stop()


async def test_a_session_over_the_stream_joins_publishes_with_ids_reads_history_and_presence(make_edge: Any) -> None:
    edge = await make_edge(presence_rooms="chat.*")
    async with jetsock.connect(
        edge.url, token=token(presence=[">"], info={"name": "Alice"}), backoff=FAST, transports=STREAM
    ) as client:
        states = States(client)
        await client.ready(timeout=10)
        assert client.transport == "stream"
        connected = [info for state, info in states.seen if state == "connected"]
        assert connected and connected[-1]["transport"] == "stream"
        assert client.welcome is not None and "stream" in (client.welcome.features or [])
        room = await client.join("chat.stream")
        ack = await room.publish({"text": "hi"}, id="m1")
        assert await room.publish({"text": "hi"}, id="m1") == (ack.seq, True)  # the same id: stored once
        other = await room.publish({"text": "two"})
        got = await take_messages(room, 2)
        assert [(m.seq, m.data, m.id) for m in got] == [
            (ack.seq, {"text": "hi"}, "m1"),
            (other.seq, {"text": "two"}, got[1].id),
        ]
        page = await room.history(limit=10)
        assert [m.seq for m in page.messages] == [ack.seq, other.seq] and page.more is False
        who = await room.presence()
        assert [m.sub for m in who.members] == ["alice"]
        # 50 at once: batched into few posts, each acked once, delivered in stream order.
        acks = await asyncio.gather(*(room.publish(i) for i in range(50)))
        delivered = await take_messages(room, 50)
        assert [m.seq for m in delivered] == sorted(a.seq for a in acks)
        assert sorted(m.data for m in delivered) == list(range(50))


async def test_a_stream_session_resumes_with_since_after_its_session_is_lost(make_edge: Any) -> None:
    edge = await make_edge()
    async with jetsock.connect(edge.url, token=token(), backoff=FAST, transports=STREAM) as client:
        states = States(client)
        room = await client.join("resume.stream")
        first = await room.publish("before")
        assert [m.seq for m in await take_messages(room, 1)] == [first.seq]
        session = client.welcome.session if client.welcome else None
        before = len(states.seen)
        # The operator ends the session: its close event (4000) ends the stream; the client backs off.
        admin = {"Authorization": "Bearer " + token("ops", admin=True)}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{edge.http}/v1/subjects/alice/disconnect", json={"code": 4000}, headers=admin) as r,
        ):
            assert r.status == 200
        missed = [await http_publish(edge, "resume.stream", f"while away {i}") for i in range(3)]
        lost = await states.wait("reconnecting", after=before)
        assert lost["code"] == 4000
        await states.wait("connected", after=before)
        assert client.welcome is not None and client.welcome.session != session
        assert [m.seq for m in await take_messages(room, 3)] == missed  # replayed with since: all, once
        assert room.recovered is True
        live = await room.publish("after")
        assert [m.seq for m in await take_messages(room, 1)] == [live.seq]
        assert await stored_seqs(edge.settings.nats_url, "resume.stream") == [first.seq, *missed, live.seq]


async def test_a_quiet_stream_session_stays_up_on_its_pings(make_edge: Any) -> None:
    edge = await make_edge(heartbeat=1)  # closed with 4009 after two heartbeats without a post
    async with jetsock.connect(edge.url, token=token(), backoff=FAST, transports=STREAM) as client:
        states = States(client)
        await client.ready(timeout=10)
        before = len(states.seen)
        await asyncio.sleep(3.5)
        assert states.seen[before:] == [] and client.state == "connected"


async def test_through_a_proxy_that_refuses_websocket_the_client_falls_back_on_its_own(
    proxy: NoUpgradeProxy, two_edges: list[Edge]
) -> None:
    async with jetsock.connect(proxy.url, token=token(), backoff=FAST) as client:
        states = States(client)
        await client.ready(timeout=15)
        assert client.transport == "stream"
        assert proxy.refused == 2  # two refused upgrades, then the stream
        reconnects = [info for state, info in states.seen if state == "reconnecting"]
        assert 1 <= len(reconnects) <= 2 and {info["code"] for info in reconnects} == {1006}
        room = await client.join("proxied.room")
        sent = [await room.publish({"n": i}, id=f"p{i}") for i in range(20)]
        from_backend = [await http_publish(two_edges[i % 2], "proxied.room", {"b": i}) for i in range(20)]
        got = await take_messages(room, 40)
        assert sorted(m.seq for m in got) == [m.seq for m in got]
        assert {m.seq for m in got} == {a.seq for a in sent} | set(from_backend)
        stored = await stored_messages(two_edges[0].settings.nats_url, "proxied.room")
        assert [s.seq for s in stored] == [m.seq for m in got]
        assert [s.id for s in stored if s.id] == [f"p{i}" for i in range(20)]  # each once
    # Posts reached both edges: no stickiness, the edge that got them passed them to the session's.
    posts = {backend for method, path, backend in proxy.paths if path.startswith("/v1/stream/")}
    assert posts == {edge.http for edge in two_edges}


async def test_through_the_proxy_pinned_to_websocket_the_client_never_connects(proxy: NoUpgradeProxy) -> None:
    async with jetsock.connect(proxy.url, token=token(), backoff=FAST, transports=("websocket",)) as client:
        with pytest.raises(jetsock.RequestTimeout):
            await client.ready(timeout=1.5)
        assert client.transport == "websocket"
        assert proxy.refused >= 3
        assert not any(path.startswith("/v1/stream") for _, path, _ in proxy.paths)


async def test_a_stream_session_refreshes_its_token_without_a_reconnect(make_edge: Any) -> None:
    edge = await make_edge()  # refresh_before 30 s: a 33 s token gets `expiring` after about 3 s
    reasons: list[str] = []

    def source(reason: jetsock.TokenReason) -> str:
        reasons.append(reason)
        return token(ttl=33 + len(reasons))

    async with jetsock.connect(edge.url, token=source, backoff=FAST, transports=STREAM) as client:
        states = States(client)
        await client.ready(timeout=10)
        first = client.exp
        before = len(states.seen)
        async with asyncio.timeout(15):
            while client.exp == first:
                await asyncio.sleep(0.1)
        assert reasons == ["connect", "refresh"]
        assert states.seen[before:] == []  # the same session went on
        room = await client.join("refresh.stream")  # posts now carry the new token
        ack = await room.publish("after the refresh")
        assert [m.seq for m in await take_messages(room, 1)] == [ack.seq]
