"""Section 11: the HTTP stream transport, against real edges on a real nats-server over real HTTP.

A session opened with `POST /v1/stream` answers `text/event-stream` (each server frame
one `data:` event in its own chunk, comments every heartbeat, a `close` event then the
end of the body); its client's frames go in with `POST /v1/stream/<session>` to any
node. Everything a WebSocket session has (joins and replay, publishes and their ids,
refresh and expiry, rate limits, 4008, 4009, drain) holds over it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from core.embedded import EmbeddedNats
from core.natsauth import edge_only_server
from tests.conftest import Edge, connect, edge_settings, token
from tests.edge.checker import check_exact, stored_seqs
from tests.edge.rawhttp import raw_request
from tests.edge.sse import EventStream, bearer, open_stream, post_frames


@pytest.fixture
async def streams() -> AsyncIterator[list[EventStream]]:
    opened: list[EventStream] = []
    yield opened
    for stream in opened:
        await stream.close()


async def until_gone(edge: Edge, timeout: float = 10.0) -> None:
    """Until the edge holds no session (stream or WebSocket) any more."""
    async with asyncio.timeout(timeout):
        while edge.node.connections or (edge.node.streams is not None and len(edge.node.streams)):
            await asyncio.sleep(0.02)


async def replies(stream: EventStream, refs: set[Any], timeout: float = 10.0) -> dict[Any, dict[str, Any]]:
    """Read until a reply for each of `refs` came; the replies by ref (room messages are skipped)."""
    got: dict[Any, dict[str, Any]] = {}
    async with asyncio.timeout(timeout):
        while set(got) != refs:
            frame = await stream.recv(timeout)
            if "ref" in frame:
                assert frame["ref"] in refs and frame["ref"] not in got, frame
                got[frame["ref"]] = frame
    return got


# --- the answer itself -----------------------------------------------------------------


async def test_the_answer_is_an_uncompressed_chunked_event_stream(edge: Edge, streams: list[EventStream]) -> None:
    stream = await open_stream(edge.http, headers={"Accept-Encoding": "gzip, deflate, br"})
    streams.append(stream)
    headers = stream.response.headers
    assert stream.status == 200
    assert headers["Content-Type"].split(";")[0] == "text/event-stream"
    assert "no-cache" in headers["Cache-Control"]
    assert headers["X-Accel-Buffering"] == "no"
    assert headers["Transfer-Encoding"] == "chunked"
    assert "Content-Encoding" not in headers and "Content-Length" not in headers
    assert stream.welcome is not None and "stream" in stream.welcome["features"]
    assert stream.session.count(".") == 1  # <route>.<secret>: any node finds its owner

    # On the wire: one event per chunk, `data:` the JSON of the frame, nothing compressed.
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.settings.port)
    body = json.dumps([{"type": "ping", "ref": "raw"}]).encode()
    writer.write(
        b"POST /v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nAccept-Encoding: gzip\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (token().encode(), len(body), body)
    )
    try:
        async with asyncio.timeout(5):
            head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
            assert head.startswith("http/1.1 200") and "transfer-encoding: chunked" in head
            assert "content-encoding" not in head
            events = []
            for _ in range(2):
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                data = await reader.readexactly(size + 2)
                assert data.endswith(b"\n\n\r\n") and data.startswith(b"data: "), data
                assert data[:-2].count(b"\n") == 2, "one data line per event"
                events.append(json.loads(data[6:-4]))
        assert [e["type"] for e in events] == ["welcome", "pong"] and events[1]["ref"] == "raw"
    finally:
        writer.close()


async def test_http_1_0_is_refused_505(edge: Edge) -> None:
    """The events go in chunks, which HTTP/1.0 does not have."""
    request = b"POST /v1/stream HTTP/1.0\r\nAuthorization: Bearer %s\r\nContent-Length: 0\r\n\r\n" % token().encode()
    status, _, answer = await raw_request(edge.settings.port, request)
    assert status == 505 and json.loads(answer)["message"]
    assert not edge.node.connections


# --- rooms: joins, replay, publishes ------------------------------------------------------


async def test_join_with_since_replays_exactly_then_goes_live(
    edge: Edge, backend: Any, nats_server: EmbeddedNats, streams: list[EventStream]
) -> None:
    js = backend.jetstream()
    seqs = [(await js.publish("rooms.sse.replay", b'{"n":%d}' % i)).seq for i in range(30)]
    since = seqs[9]
    join = {"type": "join", "room": "sse.replay", "since": since, "epoch": edge.node.broker.epoch, "ref": "j"}
    stream = await open_stream(edge.http, frames=[join])
    streams.append(stream)
    joined = await stream.expect("joined")
    assert joined["ref"] == "j" and joined["recovered"] is True and joined["seq"] == seqs[-1]
    assert joined["replayed"] == 20
    received = [await stream.expect("msg") for _ in range(20)]
    assert [m["data"]["n"] for m in received] == list(range(10, 30))
    live = [(await js.publish("rooms.sse.replay", b'"live"')).seq for _ in range(5)]
    received += [await stream.expect("msg") for _ in live]
    assert [m["seq"] for m in received[-5:]] == live
    check_exact(received, await stored_seqs(nats_server.url, "sse.replay"), since)
    # A second join with since over the session's POST: the same answer.
    assert await stream.post({"type": "join", "room": "sse.other", "since": 0, "ref": "k"}) == 204
    other = await stream.expect("joined")
    assert other["ref"] == "k" and other["recovered"] is True and other["replayed"] == 0


async def test_publish_with_an_id_is_stored_once_and_a_retry_says_duplicate(
    make_edge: Any, nats_server: EmbeddedNats, streams: list[EventStream]
) -> None:
    first, second = await make_edge(), await make_edge()
    stream = await open_stream(first.http, frames=[{"type": "join", "room": "sse.idem"}])
    streams.append(stream)
    await stream.expect("joined")
    publish = {"type": "publish", "room": "sse.idem", "data": {"v": 1}, "id": "op-1"}
    assert await stream.post({**publish, "ref": 1}) == 204
    two = {frame["type"]: frame for frame in [await stream.recv(), await stream.recv()]}  # in either order
    ack, msg = two["ack"], two["msg"]
    assert ack["ref"] == 1 and "duplicate" not in ack
    assert (msg["seq"], msg["id"], msg["from"], msg["data"]) == (ack["seq"], "op-1", "alice", {"v": 1})
    # The retry (the client saw no 204, say), through the other node this time.
    assert await stream.post({**publish, "ref": 2}, base=second.http) == 204
    again = (await replies(stream, {2}))[2]
    assert again["type"] == "ack" and again["duplicate"] is True and again["seq"] == ack["seq"]
    assert await stored_seqs(nats_server.url, "sse.idem") == [ack["seq"]]
    assert await stream.post({"type": "ping", "ref": "p"}) == 204
    assert await stream.expect("pong") == {"type": "pong", "ref": "p"}  # and no second msg before it


async def test_frames_posted_to_another_node_reach_the_session_in_order(
    make_edge: Any, nats_server: EmbeddedNats, streams: list[EventStream]
) -> None:
    owner, other = await make_edge(node="owner", publish_burst=100), await make_edge(node="other")
    stream = await open_stream(owner.http, frames=[{"type": "join", "room": "sse.order", "ref": "j"}])
    streams.append(stream)
    assert stream.welcome is not None and stream.welcome["node"] == "owner"
    await stream.expect("joined")
    publish = {"type": "publish", "room": "sse.order"}
    # A batch in one POST to the other node, then POSTs to both nodes in turn, each after the last one's 204.
    batch = [{**publish, "data": {"n": i}, "ref": i} for i in range(20)]
    assert await stream.post(*batch, base=other.http) == 204
    n = 20
    for turn in range(6):
        frames = [{**publish, "data": {"n": n + i}, "ref": n + i} for i in range(5)]
        assert await stream.post(*frames, base=(other if turn % 2 == 0 else owner).http) == 204
        n += 5
    got: dict[int, dict[str, Any]] = {}
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(20):
        while len(got) < n or len(messages) < n:
            frame = await stream.recv()
            if frame["type"] == "ack":
                got[frame["ref"]] = frame
            elif frame["type"] == "msg":
                messages.append(frame)
            else:
                raise AssertionError(frame)
    seqs = [got[ref]["seq"] for ref in range(n)]
    assert seqs == sorted(seqs) and len(set(seqs)) == n, seqs
    assert [m["data"]["n"] for m in messages] == list(range(n))
    check_exact(messages, await stored_seqs(nats_server.url, "sse.order"), 0)
    assert [m["seq"] for m in messages] == seqs


async def test_posts_through_another_node_work_under_the_deployed_nats_permissions(tmp_path: Path) -> None:
    """The edge user of deploy/nats-server.conf (the embedded server's, kept equal by
    tests/core/test_natsauth.py) may request, follow and answer `jetsock.stream.>`."""
    server, credentials = edge_only_server(tmp_path / "nats", 0, "ROOMS")
    server.start()
    edges: list[Edge] = []
    stream: EventStream | None = None
    try:
        for name in ("owner", "other"):
            settings = edge_settings(
                server.url, nats_user=credentials.user, nats_password=credentials.password, node=name
            )
            edges.append(await Edge(settings, settings.nats_servers).start())
        owner, other = edges
        stream = await open_stream(owner.http, frames=[{"type": "join", "room": "sse.fenced"}])
        await stream.expect("joined")
        assert await stream.post({"type": "ping", "ref": 1}, base=other.http) == 204
        assert await stream.expect("pong") == {"type": "pong", "ref": 1}
        assert await stream.post({"type": "ping"}, base=other.http, auth=bearer("mallory")) == 403
    finally:
        if stream is not None:
            await stream.close()
        for edge in edges:
            await edge.stop()
        server.stop()


# --- who may post where ---------------------------------------------------------------


async def test_credentials_sessions_and_tokens_in_urls(make_edge: Any, streams: list[EventStream]) -> None:
    owner, other = await make_edge(), await make_edge()
    stream = await open_stream(owner.http, frames=[{"type": "join", "room": "sse.creds"}])
    streams.append(stream)
    await stream.expect("joined")
    session = stream.session
    route = session.split(".")[0]
    other_route = other.node.streams.router.route if other.node.streams is not None else ""
    async with aiohttp.ClientSession() as http:
        for base in (owner.http, other.http):
            # Another user's valid token: the session exists but is not theirs.
            status, answer = await post_frames(http, base, session, {"type": "ping"}, bearer("mallory"))
            assert status == 403 and answer["code"] == "forbidden", (base, answer)
            # No token, or one that does not verify.
            for auth in (None, "Bearer nope", "Basic YWxpY2U6eA==", bearer(tok=token(ttl=-60))):
                status, answer = await post_frames(http, base, session, {"type": "ping"}, auth)
                assert status == 401 and answer["message"], (base, auth, answer)
            # Unknown sessions: no such secret on a known route, no such route, no route at all, and
            # ids that are no NATS subject (wildcards, spaces, line breaks): 404 at once, nothing waits.
            unknown_ids = [f"{route}.{secrets.token_urlsafe(12)}", f"{other_route}.x", "zzzzzzzzzz.x", "nodot"]
            unknown_ids += [f"{other_route}.*", f"{route}.>", "x.>", "x.y z", "x.y\r\nPING", "a..b", "x." + "y" * 500]
            for unknown in unknown_ids:
                started = time.monotonic()
                status, answer = await post_frames(http, base, unknown, {"type": "ping"}, bearer())
                assert status == 404 and answer["message"], (base, unknown, answer)
                assert time.monotonic() - started < 0.5, unknown
            # A token in the URL is refused before anything else.
            for query in (f"?token={token()}", f"?x={token()}"):
                url = f"{base}/v1/stream/{session}{query}"
                async with http.post(url, data=b'{"type":"ping"}', headers={"Authorization": bearer()}) as r:
                    assert r.status == 400, query
                async with http.post(f"{base}/v1/stream{query}", data=b"[]", headers={"Authorization": bearer()}) as r:
                    assert r.status == 400 and len(owner.node.connections) == 1
        # None of it reached the session: the next frame it gets is the answer to this ping.
        assert await stream.post({"type": "ping", "ref": "still"}) == 204
        assert await stream.expect("pong") == {"type": "pong", "ref": "still"}
        # Opening without a token: 401. With one that is refused (invalid, expired): the stream opens
        # and its one event is the close with 4501, as a WebSocket gets that close frame.
        refused = await open_stream(owner.http, auth=None)
        assert refused.status == 401 and (await refused.response.json())["message"]
        await refused.close()
        for auth in ("Bearer nope", bearer(tok=token(ttl=-60))):
            refused = await open_stream(owner.http, auth=auth, frames=[{"type": "ping"}], welcome=False)
            assert refused.status == 200
            code, reason, before = await refused.closed()
            assert code == 4501 and reason and before == [], (auth, reason, before)
            await refused.close()
        # After the session closed (its client went): 404 on every node.
        await stream.close()
        streams.remove(stream)
        await until_gone(owner)
        for base in (owner.http, other.http):
            status, _ = await post_frames(http, base, session, {"type": "ping"}, bearer())
            assert status == 404


async def test_body_limits_on_both_endpoints(make_edge: Any, streams: list[EventStream]) -> None:
    edge = await make_edge(stream_post_bytes=2048, stream_post_frames=3, max_frame_bytes=512)
    ping = {"type": "ping"}
    bad: list[tuple[str, bytes, int]] = [
        ("over stream_post_bytes", json.dumps([ping] * 2 + [{"type": "ping", "ref": "x" * 400}] * 5).encode(), 413),
        ("whitespace over stream_post_bytes", b"[" + b" " * 3000 + b"]", 413),
        ("over stream_post_frames", json.dumps([ping] * 4).encode(), 413),
        ("a frame over max_frame_bytes", json.dumps([{"type": "ping", "ref": "y" * 600}]).encode(), 413),
        ("not JSON", b"{not json", 400),
        ("not UTF-8", b'{"type": "ping", "ref": "\xff"}', 400),
        ("a JSON string", b'"ping"', 400),
        ("a number", b"42", 400),
        ("an array holding a non-object", b'[{"type": "ping"}, 1]', 400),
        ("two documents", b'{"type": "ping"} {"type": "ping"}', 400),
        ("nested too deeply", b"[" * 1000 + b"]" * 1000, 400),
    ]

    async def chunked(data: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(data), 500):
            yield data[i : i + 500]

    auth = {"Authorization": bearer()}
    async with aiohttp.ClientSession() as http:
        for name, body, status in bad:
            async with http.post(f"{edge.http}/v1/stream", data=body, headers=auth) as r:
                problem = await r.json()
                assert r.status == status and problem["code"] == ("too_large" if status == 413 else "bad_request"), (
                    name,
                    r.status,
                    problem,
                )
        async with http.post(f"{edge.http}/v1/stream", data=chunked(b"[" + b" " * 3000 + b"]"), headers=auth) as r:
            assert r.status == 413, "a chunked body, which declares no length"
        assert not edge.node.connections, "no session was opened by a refused body"
        # Nor is a socket left waiting to authenticate: a refused open closes its connection.
        async with asyncio.timeout(5):
            while any(edge.node.admission.counts().values()):
                await asyncio.sleep(0.02)

        stream = await open_stream(edge.http, frames=[ping, {"type": "ping", "ref": 1}, {"type": "ping", "ref": 2}])
        streams.append(stream)
        assert [(await stream.recv()).get("ref") for _ in range(3)] == [None, 1, 2]  # at most 3: accepted
        for name, body, status in bad:
            answer = await post_frames(http, edge.http, stream.session, body, bearer())
            assert answer[0] == status and answer[1]["message"], (name, answer)
        answer = await post_frames(http, edge.http, stream.session, chunked(b"[" + b" " * 3000 + b"]"), bearer())
        assert answer[0] == 413
        # An empty body and an empty array are accepted (and count as the client being alive).
        assert (await post_frames(http, edge.http, stream.session, b"", bearer()))[0] == 204
        assert (await post_frames(http, edge.http, stream.session, [], bearer()))[0] == 204
    # The refused bodies reached nothing: the next event is this pong.
    assert await stream.post({"type": "ping", "ref": "after"}) == 204
    assert await stream.expect("pong") == {"type": "pong", "ref": "after"}


async def test_the_rate_limits_are_the_websocket_ones(make_edge: Any, streams: list[EventStream]) -> None:
    edge = await make_edge(publish_rate=0.001, publish_burst=2, rate_limit_strikes=5)
    stream = await open_stream(edge.http, frames=[{"type": "join", "room": "sse.rate"}])
    streams.append(stream)
    await stream.expect("joined")
    publishes = [{"type": "publish", "room": "sse.rate", "data": i, "ref": i} for i in range(5)]
    assert await stream.post(*publishes) == 204
    got = await replies(stream, set(range(5)))
    assert [got[i]["type"] for i in range(5)] == ["ack", "ack", "error", "error", "error"]
    assert {got[i]["code"] for i in range(2, 5)} == {"rate_limited"}
    # Persistently over it: closed with 4029, as a WebSocket is.
    more = [{"type": "publish", "room": "sse.rate", "data": i, "ref": i} for i in range(5, 10)]
    assert await stream.post(*more) == 204
    code, reason, _ = await stream.closed()
    assert code == 4029 and "rate" in reason
    assert await stream.post({"type": "ping"}) == 404


async def test_origins_and_the_cookie(make_edge: Any, streams: list[EventStream]) -> None:
    edge = await make_edge(allowed_origins="https://app.example")
    cookie = {"Cookie": f"jetsock_token={token('carol')}"}
    evil = {"Origin": "https://evil.example"}
    good = {"Origin": "https://app.example"}
    # A foreign origin is refused on both endpoints, whatever the credentials.
    refused = await open_stream(edge.http, sub="carol", headers=evil, welcome=False)
    assert refused.status == 403
    await refused.close()
    refused = await open_stream(edge.http, auth=None, headers={**evil, **cookie})
    assert refused.status == 403
    await refused.close()
    # The cookie counts only with an allowed Origin; without an Origin it is not looked at.
    refused = await open_stream(edge.http, auth=None, headers=cookie)
    assert refused.status == 401
    await refused.close()
    stream = await open_stream(edge.http, auth=None, headers={**good, **cookie}, frames=[{"type": "ping", "ref": 0}])
    streams.append(stream)
    assert stream.status == 200 and stream.welcome is not None
    assert await stream.expect("pong") == {"type": "pong", "ref": 0}
    async with aiohttp.ClientSession() as http:
        base, session = edge.http, stream.session
        assert (await post_frames(http, base, session, {"type": "ping"}, bearer("carol"), evil))[0] == 403
        assert (await post_frames(http, base, session, {"type": "ping"}, None, {**evil, **cookie}))[0] == 403
        assert (await post_frames(http, base, session, {"type": "ping"}, None, cookie))[0] == 401
        status, _ = await post_frames(http, base, session, {"type": "ping", "ref": 1}, None, {**good, **cookie})
        assert status == 204
        assert await stream.expect("pong") == {"type": "pong", "ref": 1}
        # Another user's cookie is another user.
        mallory = {"Cookie": f"jetsock_token={token('mallory')}"}
        assert (await post_frames(http, base, session, {"type": "ping"}, None, {**good, **mallory}))[0] == 403


# --- token lifetime --------------------------------------------------------------------


async def test_expiring_refresh_and_expiry(make_edge: Any, streams: list[EventStream]) -> None:
    edge = await make_edge(refresh_before=1.5)
    refreshed_one = await open_stream(edge.http, tok=token(ttl=3, join=["a", "b"]))
    left_alone = await open_stream(edge.http, tok=token("bob", ttl=3))
    streams += [refreshed_one, left_alone]
    for stream in (refreshed_one, left_alone):
        assert stream.welcome is not None
        expiring = await stream.expect("expiring", timeout=5)
        assert expiring["exp"] == stream.welcome["exp"]
    assert await refreshed_one.post({"type": "join", "room": "b", "ref": "b"}) == 204
    await refreshed_one.expect("joined")
    # A refresh with another subject's token is refused; one of the same subject takes over.
    assert await refreshed_one.post({"type": "refresh", "token": token("mallory"), "ref": 1}) == 204
    wrong = await refreshed_one.expect("error")
    assert wrong["code"] == "forbidden" and wrong["ref"] == 1
    assert await refreshed_one.post({"type": "refresh", "token": token(ttl=600, join=["a"]), "ref": 2}) == 204
    assert await refreshed_one.expect("left") == {"type": "left", "room": "b", "reason": "forbidden"}
    refreshed = await refreshed_one.expect("refreshed")
    assert refreshed["ref"] == 2 and refreshed["exp"] > refreshed_one.welcome["exp"]  # type: ignore[index]
    # At the first token's exp: the one left alone is closed 4001, the refreshed one stays.
    code, _, _ = await left_alone.closed(timeout=10)
    assert code == 4001
    assert time.time() >= left_alone.welcome["exp"] - 0.1  # type: ignore[index]
    assert await refreshed_one.post({"type": "ping", "ref": "alive"}) == 204
    assert await refreshed_one.expect("pong") == {"type": "pong", "ref": "alive"}


# --- liveness, backpressure, drain -------------------------------------------------------


async def test_silence_closes_4009_and_keepalives_come_every_heartbeat(
    make_edge: Any, streams: list[EventStream]
) -> None:
    heartbeat = 0.5
    edge = await make_edge(heartbeat=heartbeat)
    silent = await open_stream(edge.http, sub="silent")
    talker = await open_stream(edge.http, sub="talker")
    streams += [silent, talker]
    opened = asyncio.get_running_loop().time()
    pongs: list[dict[str, Any]] = []

    async def talk() -> None:
        # A post every heartbeat counts as life (a ping here; any frame would do).
        while True:
            assert await talker.post({"type": "ping"}) == 204
            await asyncio.sleep(heartbeat)

    async def listen() -> None:
        while True:
            pongs.append(await talker.expect("pong", timeout=5))

    tasks = [asyncio.create_task(talk()), asyncio.create_task(listen())]
    try:
        code, reason, frames = await silent.closed(timeout=5)
        took = asyncio.get_running_loop().time() - opened
        assert code == 4009 and "heartbeat" in reason and frames == []
        assert 2 * heartbeat - 0.1 <= took <= 2.25 * heartbeat + 0.5, took
        assert silent.comments, "keepalive comments came before the close"
        await asyncio.sleep(4 * heartbeat)
        assert not any(task.done() for task in tasks), [t.exception() for t in tasks if t.done()]
    finally:
        for task in tasks:
            task.cancel()
    assert len(pongs) >= 5
    assert await talker.post({"type": "ping", "ref": "end"}) == 204
    await talker.until("pong", ref="end")
    times = [at for at, text in talker.comments if text == "keepalive"]
    assert len(times) >= 5, talker.comments
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.8 * heartbeat <= gap <= 1.25 * heartbeat + 0.25 for gap in gaps), gaps


async def test_a_client_that_stops_reading_is_closed_4008_and_others_are_unaffected(
    make_edge: Any, backend: Any, nats_server: EmbeddedNats, streams: list[EventStream]
) -> None:
    # 256 KB: 16 of the 16 KB messages of headroom for the readers that keep up (this process reads
    # them on a loaded box; with 4, one stalled loop iteration closed them too), and still a tenth of
    # what the flood pushes at the one that stops reading.
    edge = await make_edge(max_pending_bytes=256 * 1024, close_timeout=10)
    join = [{"type": "join", "room": "sse.flood"}]
    slow = await open_stream(edge.http, sub="slow", frames=join)
    fast = await open_stream(edge.http, sub="fast", frames=join)
    streams += [slow, fast]
    epoch = (await slow.expect("joined"))["epoch"]
    await fast.expect("joined")
    ws = await connect(edge.url, "ws")
    await ws.request(type="join", room="sse.flood")
    js = backend.jetstream()
    payload = b'{"blob":"' + b"x" * 16000 + b'"}'
    slow.transport.pause_reading()
    count = 1500  # 24 MB: more than both kernels' socket buffers on loopback, and then the outbox

    async def read(stream: Any) -> list[int]:  # an EventStream or a WebSocket Client
        return [(await stream.expect("msg", timeout=20))["seq"] for _ in range(count)]

    readers = [asyncio.create_task(read(fast)), asyncio.create_task(read(ws))]
    acks = [(await js.publish("rooms.sse.flood", payload)).seq for _ in range(count)]
    fast_seqs, ws_seqs = await asyncio.gather(*readers)
    assert fast_seqs == ws_seqs == acks
    await asyncio.sleep(0.5)
    members = edge.node.hub.members("sse.flood")
    assert sorted(c.principal.sub for c in members if c.principal) == ["fast", "ws"]
    slow.transport.resume_reading()
    code, _, frames = await slow.closed(timeout=30)
    assert code == 4008, (code, len(frames))
    received = [f for f in frames if f["type"] == "msg"]
    assert [m["seq"] for m in received] == acks[: len(received)] and len(received) < count
    # Resumed from the last seq it saw: nothing lost, nothing twice.
    last = received[-1]["seq"] if received else 0
    again = await open_stream(
        edge.http, sub="slow", frames=[{"type": "join", "room": "sse.flood", "since": last, "epoch": epoch}]
    )
    streams.append(again)
    assert (await again.expect("joined"))["recovered"] is True
    rest = [await again.expect("msg", timeout=20) for _ in range(len([a for a in acks if a > last]))]
    check_exact(received + rest, await stored_seqs(nats_server.url, "sse.flood"), 0)
    assert (await ws.request(type="ping"))["type"] == "pong"
    await ws.close()


async def test_drain_closes_streams_with_1012(make_edge: Any, streams: list[EventStream]) -> None:
    edge = await make_edge(drain_seconds=0.3)
    opened = [
        await open_stream(edge.http, sub=f"d{i}", frames=[{"type": "join", "room": "sse.drain"}]) for i in range(5)
    ]
    streams += opened
    ws = await connect(edge.url, "ws")
    for stream in opened:
        await stream.expect("joined")
    drain = asyncio.create_task(edge.node.drain())
    await asyncio.sleep(0.05)
    refused = await open_stream(edge.http, welcome=False)
    assert refused.status == 503, "no new stream on a draining node"
    await refused.close()
    results = await asyncio.gather(*(stream.closed() for stream in opened))
    assert [(code, frames) for code, _, frames in results] == [(1012, [])] * len(opened)
    assert all("restarting" in reason for _, reason, _ in results)
    assert (await ws.closed())[0] == 1012
    await drain
    for stream in opened:
        assert await stream.post({"type": "ping"}) == 404
    await ws.close()


async def test_a_room_with_websocket_and_stream_members_gets_one_framing_each(
    edge: Edge, backend: Any, streams: list[EventStream]
) -> None:
    stream = await open_stream(edge.http, sub="sse", frames=[{"type": "join", "room": "sse.mixed"}])
    streams.append(stream)
    await stream.expect("joined")
    ws = await connect(edge.url, "ws")
    await ws.request(type="join", room="sse.mixed")
    room = edge.node.hub.rooms["sse.mixed"]
    groups = sorted((g.framing.name, len(g.members)) for g in room.groups)
    assert len(groups) == 2 and groups[0] == ("stream", 1), groups
    assert groups[1][0].startswith("websocket") and groups[1][1] == 1, groups  # compressed or not
    js = backend.jetstream()
    acks = [(await js.publish("rooms.sse.mixed", b'{"n":%d}' % i)).seq for i in range(50)]
    assert await stream.post({"type": "publish", "room": "sse.mixed", "data": {"n": 50}, "ref": "own"}) == 204
    over_stream: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while len(over_stream) < 51:
            frame = await stream.recv()
            if frame["type"] == "msg":
                over_stream.append(frame)
    over_ws = [await ws.expect("msg") for _ in range(51)]
    assert over_stream == over_ws, "the same frames, framed once per kind"
    assert [m["seq"] for m in over_ws[:50]] == acks and over_ws[50]["from"] == "sse"
    await ws.close()


async def test_a_post_waits_while_the_session_has_its_requests_in_flight(
    make_edge: Any, monkeypatch: pytest.MonkeyPatch, streams: list[EventStream]
) -> None:
    """A WebSocket's frames wait in TCP while its session has `max_requests_in_flight` requests
    running; a POST waits instead (its 204 comes later), and past `stream_post_timeout` it is
    answered 503 having handed over nothing."""
    import edge.session
    from edge.publishing import publish_traced as publish

    gate = asyncio.Event()

    async def held(*args: Any) -> Any:
        await gate.wait()
        return await publish(*args)

    monkeypatch.setattr(edge.session, "publish_traced", held)
    owner = await make_edge(max_requests_in_flight=2, stream_post_timeout=1.0)
    other = await make_edge(stream_post_timeout=1.0)
    stream = await open_stream(owner.http)
    streams.append(stream)
    (conn,) = list(owner.node.connections)
    publishes = [{"type": "publish", "room": f"sse.held.{i}", "data": i, "ref": i} for i in range(3)]
    assert await stream.post(*publishes) == 204  # room at arrival: all three are taken
    assert conn.requests_full
    # Full: a post waits, and at its deadline it is refused with nothing taken, on either node.
    for base in (owner.http, other.http):
        started = time.monotonic()
        async with aiohttp.ClientSession() as http:
            url = f"{base}/v1/stream/{stream.session}"
            body = json.dumps({"type": "ping", "ref": "refused"})
            async with http.post(url, data=body, headers={"Authorization": bearer()}) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "1"
                assert (await r.json())["code"] == "unavailable"
        assert 0.7 <= time.monotonic() - started < 2.0
    # A post that waits is answered once a request ends, and its frames come after.
    waiting = asyncio.create_task(stream.post({"type": "ping", "ref": "waited"}, base=other.http))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    gate.set()
    assert await waiting == 204
    got = await replies(stream, {0, 1, 2, "waited"})
    assert {got[i]["type"] for i in range(3)} == {"ack"} and got["waited"]["type"] == "pong"
    assert await stream.post({"type": "ping", "ref": "last"}) == 204
    assert await stream.expect("pong") == {"type": "pong", "ref": "last"}  # the refused pings never ran
