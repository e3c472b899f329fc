"""Section 5: publishing from clients, over HTTP and over NATS; idempotency; non-JSON payloads."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp

from tests.conftest import Edge, connect, token


async def test_client_publish_id_is_stored_once_per_sub(edge: Edge) -> None:
    listener = await connect(edge.url, "listener")
    await listener.request(type="join", room="idem")
    alice = await connect(edge.url, "alice")
    first = await alice.request(type="publish", room="idem", data={"v": 1}, id="op-1")
    again = await alice.request(type="publish", room="idem", data={"v": 1}, id="op-1")
    assert "duplicate" not in first and again["duplicate"] is True and again["seq"] == first["seq"]
    # The same id from another subject is another message.
    bob = await connect(edge.url, "bob")
    other = await bob.request(type="publish", room="idem", data={"v": 1}, id="op-1")
    assert other["seq"] != first["seq"] and "duplicate" not in other
    one = await listener.expect("msg")
    two = await listener.expect("msg")
    assert (one["seq"], one["id"], one["from"]) == (first["seq"], "op-1", "alice")
    assert (two["seq"], two["id"], two["from"]) == (other["seq"], "op-1", "bob")
    assert (await listener.request(type="ping"))["type"] == "pong"  # and nothing else
    for c in (listener, alice, bob):
        await c.close()


async def test_http_publish_with_idempotency_key(edge: Edge) -> None:
    listener = await connect(edge.url, "listener")
    await listener.request(type="join", room="http.room")
    url = f"{edge.http}/v1/rooms/http.room/messages"
    auth = {"Authorization": f"Bearer {token('svc', publish=['http.*'])}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=b'{"x": [1, 2]}', headers={**auth, "Idempotency-Key": "k1"}) as r:
            assert r.status == 201
            seq = (await r.json())["seq"]
        async with http.post(url, data=b'{"x": [1, 2]}', headers={**auth, "Idempotency-Key": "k1"}) as r:
            assert r.status == 201 and await r.json() == {"seq": seq, "duplicate": True}
        msg = await listener.expect("msg")
        assert msg["seq"] == seq and msg["data"] == {"x": [1, 2]} and msg["from"] == "svc" and msg["id"] == "k1"
        cases = [
            ({}, b"1", 401),
            ({"Authorization": "Bearer nope"}, b"1", 401),
            ({"Authorization": f"Bearer {token('svc', publish=['other'])}"}, b"1", 403),
            (auth, b"{not json", 400),
            (auth, b"[" * 10 + b"1" + b"]" * 10 + b"x" * 70000, 413),
        ]
        for headers, body, status in cases:
            async with http.post(url, data=body, headers=headers) as r:
                assert r.status == status, (headers, status)
                problem = await r.json()
                assert problem["code"] and problem["message"]
        async with http.post(f"{edge.http}/v1/rooms/bad%20room/messages", data=b"1", headers=auth) as r:
            assert r.status == 400 and (await r.json())["code"] == "invalid_room"
    await listener.close()


async def test_backend_publish_over_nats_with_headers(edge: Edge, backend: Any) -> None:
    listener = await connect(edge.url)
    await listener.request(type="join", room="orders.eu")
    js = backend.jetstream()
    headers = {"Nats-Msg-Id": "order-17", "Jetsock-From": "billing"}
    ack = await js.publish("rooms.orders.eu", b'{"order": 17}', headers=headers)
    dup = await js.publish("rooms.orders.eu", b'{"order": 17}', headers=headers)
    assert dup.duplicate and dup.seq == ack.seq
    msg = await listener.expect("msg")
    assert msg == {
        "type": "msg",
        "room": "orders.eu",
        "seq": ack.seq,
        "ts": msg["ts"],
        "data": {"order": 17},
        "id": "order-17",
        "from": "billing",
    }
    assert (await listener.request(type="ping"))["type"] == "pong"
    await listener.close()


async def test_non_json_payloads_are_wrapped(edge: Edge, backend: Any) -> None:
    listener = await connect(edge.url)
    await listener.request(type="join", room="raw")
    js = backend.jetstream()
    await js.publish("rooms.raw", b"plain text, not JSON")
    await js.publish("rooms.raw", b"\xff\xfe\x00binary")
    await js.publish("rooms.raw", b"")
    await js.publish("rooms.raw", b'{"looks": "like JSON \xff"}')
    text = await listener.expect("msg")
    assert text["data"] == "plain text, not JSON" and "encoding" not in text
    binary = await listener.expect("msg")
    assert binary["encoding"] == "base64" and base64.b64decode(binary["data"]) == b"\xff\xfe\x00binary"
    empty = await listener.expect("msg")
    assert empty["data"] == ""
    # JSON-shaped but not UTF-8: a text frame must stay valid UTF-8, so base64.
    lookalike = await listener.expect("msg")
    assert lookalike["encoding"] == "base64"
    assert base64.b64decode(lookalike["data"]) == b'{"looks": "like JSON \xff"}'
    await listener.close()


async def test_fanout_encodes_once_per_message_whatever_the_member_count(
    edge: Edge, backend: Any, monkeypatch: Any
) -> None:
    import edge.hub as hub

    calls: list[int] = []
    original = hub.encode_msg

    def counting(message: Any) -> bytes:
        calls.append(message.seq)
        return original(message)

    monkeypatch.setattr(hub, "encode_msg", counting)
    members = [await connect(edge.url, f"m{i}") for i in range(25)]
    for member in members:
        await member.request(type="join", room="fan")
    js = backend.jetstream()
    seqs = [(await js.publish("rooms.fan", b'{"k":1}')).seq for _ in range(4)]
    for member in members:
        assert [(await member.expect("msg"))["seq"] for _ in seqs] == seqs
    assert calls == seqs  # once per message, not once per member
    for member in members:
        await member.close()


async def test_the_same_id_in_two_rooms_is_two_messages(edge: Edge) -> None:
    client = await connect(edge.url)
    first = await client.request(type="publish", room="one", data=1, id="same")
    other = await client.request(type="publish", room="two", data=2, id="same")
    again = await client.request(type="publish", room="one", data=1, id="same")
    assert "duplicate" not in other and other["seq"] != first["seq"]
    assert again["duplicate"] is True and again["seq"] == first["seq"]
    await client.close()
