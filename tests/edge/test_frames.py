"""Section 2: every request, its reply, and every error path; bad frames harm no one."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.conftest import Edge, connect, token


async def test_join_publish_receive_leave(edge: Edge) -> None:
    alice = await connect(edge.url, "alice")
    bob = await connect(edge.url, "bob")
    try:
        joined = await alice.request(type="join", room="chat.lobby", ref=1)
        assert joined["type"] == "joined" and joined["room"] == "chat.lobby" and joined["ref"] == 1
        assert joined["seq"] == 0 and joined["recovered"] is False and joined["epoch"]
        ack = await bob.request(type="publish", room="chat.lobby", data={"text": "hi", "n": [1, 2.5]}, ref="r")
        assert ack == {"type": "ack", "seq": ack["seq"], "ref": "r"} and ack["seq"] >= 1
        msg = await alice.expect("msg")
        assert msg["room"] == "chat.lobby" and msg["seq"] == ack["seq"]
        assert msg["data"] == {"text": "hi", "n": [1, 2.5]} and msg["from"] == "bob"
        assert isinstance(msg["ts"], int) and msg["ts"] > 1_700_000_000_000
        left = await alice.request(type="leave", room="chat.lobby", ref=2)
        assert left == {"type": "left", "room": "chat.lobby", "ref": 2}
        await bob.request(type="publish", room="chat.lobby", data=1)
        assert (await alice.request(type="ping"))["type"] == "pong"  # nothing arrived in between
    finally:
        await alice.close()
        await bob.close()


async def test_error_paths(edge: Edge) -> None:
    client = await connect(edge.url, tok=token(join=["chat.*"], publish=["chat.lobby"]))
    try:
        cases = [
            ({"type": "join", "room": "bad room"}, "invalid_room"),
            ({"type": "join", "room": "a.>"}, "invalid_room"),
            ({"type": "join", "room": "$JS.API.STREAM.DELETE.ROOMS"}, "invalid_room"),
            ({"type": "join", "room": "x" * 129}, "invalid_room"),
            ({"type": "join", "room": "secret.room"}, "forbidden"),
            ({"type": "publish", "room": "chat.other", "data": 1}, "forbidden"),
            ({"type": "publish", "room": "a..b", "data": 1}, "invalid_room"),
            ({"type": "leave", "room": "chat.lobby"}, "not_joined"),
            ({"type": "join", "room": "chat.x", "since": "yesterday"}, "bad_request"),
            ({"type": "publish", "room": "chat.lobby"}, "bad_request"),
            ({"type": "nonsense"}, "bad_request"),
            ({"room": "chat.lobby"}, "bad_request"),
            ({"type": "auth", "token": token()}, "bad_request"),
        ]
        for i, (frame, code) in enumerate(cases):
            reply = await client.request(**frame, ref=i)
            assert reply["type"] == "error", (frame, reply)
            assert reply["code"] == code, (frame, reply)
            assert reply["ref"] == i and reply["message"]
        await client.request(type="join", room="chat.lobby")
        again = await client.request(type="join", room="chat.lobby")
        assert again["type"] == "error" and again["code"] == "bad_request"
    finally:
        await client.close()


async def test_garbage_gets_error_and_harms_no_other_client(edge: Edge) -> None:
    victim = await connect(edge.url, "victim")
    control = await connect(edge.url, "control")
    await control.request(type="join", room="r")
    try:
        for garbage in ["{", "null", "[]", '"x"', "1e999999", '{"type": 5}', "\u0000", '{"type":"ping","ref":{}}']:
            await victim.ws.send_str(garbage)
            reply = await victim.recv()
            assert reply["type"] == "error" and reply["code"] == "bad_request", garbage
        ack = await victim.request(type="publish", room="r", data="still fine")
        assert (await control.expect("msg"))["seq"] == ack["seq"]
    finally:
        await victim.close()
        await control.close()


async def test_ref_is_echoed_on_shape_errors(edge: Edge) -> None:
    client = await connect(edge.url)
    await client.ws.send_str(json.dumps({"type": "join", "ref": "abc"}))
    reply = await client.recv()
    assert reply["code"] == "bad_request" and reply["ref"] == "abc"
    await client.close()


async def test_binary_frame_closes_4500_and_others_go_on(edge: Edge) -> None:
    bad = await connect(edge.url, "bad")
    good = await connect(edge.url, "good")
    await bad.ws.send_bytes(b"\x00\x01")
    code, reason = await bad.closed()
    assert code == 4500 and "binary" in reason
    assert (await good.request(type="ping"))["type"] == "pong"
    await bad.close()
    await good.close()


async def test_oversize_frame_closes_1009(make_edge: object) -> None:
    edge = await make_edge(max_frame_bytes=1024)  # type: ignore[operator]
    client = await connect(edge.url)
    await client.send(type="publish", room="r", data="x" * 2000)
    code, _ = await client.closed()
    assert code == 1009
    await client.close()


async def test_too_many_rooms(make_edge: object) -> None:
    edge = await make_edge(max_rooms_per_connection=2)  # type: ignore[operator]
    client = await connect(edge.url)
    assert (await client.request(type="join", room="a"))["type"] == "joined"
    assert (await client.request(type="join", room="b"))["type"] == "joined"
    reply = await client.request(type="join", room="c")
    assert reply["type"] == "error" and reply["code"] == "too_many_rooms"
    await client.request(type="leave", room="a")
    assert (await client.request(type="join", room="c"))["type"] == "joined"
    await client.close()


async def test_publish_rate_limit_then_4029(make_edge: object) -> None:
    edge = await make_edge(publish_rate=0.001, publish_burst=3, rate_limit_strikes=5)  # type: ignore[operator]
    client = await connect(edge.url)
    for _ in range(3):
        assert (await client.request(type="publish", room="r", data=1))["type"] == "ack"
    for _ in range(4):
        reply = await client.request(type="publish", room="r", data=1)
        assert reply["type"] == "error" and reply["code"] == "rate_limited"
    await client.send(type="publish", room="r", data=1)
    code, _ = await client.closed()
    assert code == 4029
    await client.close()


async def test_publish_without_joining_and_unicode_data(edge: Edge) -> None:
    listener = await connect(edge.url, "l")
    await listener.request(type="join", room="u")
    sender = await connect(edge.url, "s")
    data = {"text": "héllo \u2028 ☃ 😀", "nested": {"deep": [[[1]]]}}
    ack = await sender.request(type="publish", room="u", data=data)
    msg = await listener.expect("msg")
    assert msg["data"] == data and msg["seq"] == ack["seq"]
    await listener.close()
    await sender.close()


async def test_room_feed_lives_only_while_the_node_has_members(make_edge: Any) -> None:
    """...and for room_grace seconds after its last member left (a page reload must not churn NATS)."""
    edge = await make_edge(room_grace=0.5)
    feeds = edge.node.broker.feeds
    a = await connect(edge.url, "a")
    b = await connect(edge.url, "b")
    await a.request(type="join", room="interest")
    await b.request(type="join", room="interest")
    assert "interest" in feeds
    await a.request(type="leave", room="interest")
    assert "interest" in feeds
    await b.close()  # the last member goes away by disconnecting
    async with asyncio.timeout(5):
        while "interest" in edge.node.hub.rooms:
            await asyncio.sleep(0.01)
    assert "interest" in feeds, "the feed lingers for room_grace after the last member left"
    async with asyncio.timeout(5):
        while "interest" in feeds:
            await asyncio.sleep(0.01)
    await a.close()


async def test_a_rejoin_within_the_grace_period_keeps_the_feed(make_edge: Any, backend: Any) -> None:
    edge = await make_edge(room_grace=30)
    feeds = edge.node.broker.feeds
    client = await connect(edge.url, "reloader")
    await client.request(type="join", room="reload")
    subscribed = feeds._rooms["reload"].sub
    await client.close()
    js = backend.jetstream()
    ack = await js.publish("rooms.reload", b'"while away"')
    again = await connect(edge.url, "reloader")
    joined = await again.request(type="join", room="reload", since=0)
    assert joined["type"] == "joined" and joined["recovered"] is True
    assert (await again.expect("msg"))["seq"] == ack.seq
    assert feeds._rooms["reload"].sub is subscribed, "the same subscription: no unsubscribe and subscribe again"
    await again.close()


async def test_a_thousand_rooms_do_not_cost_a_thousand_tasks(make_edge: object) -> None:
    # The join rate limit (issue 11) is not what this test is about.
    edge = await make_edge(max_rooms_per_connection=1000, join_burst=1000)  # type: ignore[operator]
    client = await connect(edge.url)
    baseline = len(asyncio.all_tasks())
    for i in range(1000):
        await client.send(type="join", room=f"many.r{i}")
    for _ in range(1000):
        assert (await client.recv())["type"] == "joined"
    assert len(edge.node.broker.feeds) == 1000
    assert len(asyncio.all_tasks()) - baseline < 20
    await client.close()
