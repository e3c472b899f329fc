"""One connection pipelining 1,000 publishes to one room, with pings and publishes to a second room (issue 12).

The client sends everything without waiting for a reply. Requests that wait on
NATS run beside the read loop (edge/inflight.py), one after the other within a
room's lane, at most `max_requests_in_flight` at once; past that bound the
read loop stops reading until one finishes. So:

- each room stores its messages in the order they were sent (the data carries
  the send index; the stream is read back per room), and each `ack` carries
  the `seq` its message was stored at;
- every request gets exactly one reply, carrying its `ref`;
- a `ping` is answered when it is read, and it is read only while fewer than
  `max_requests_in_flight` earlier requests are unfinished: its `pong`
  overtakes at most `max_requests_in_flight` - 1 earlier replies. Before issue 12 (8ca1005) the
  read loop awaited each publish, so every pong came after every earlier ack;
  here pongs overtake the publishes still queued in the room's lane.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from core.embedded import EmbeddedNats
from tests.conftest import connect
from tests.edge.checker import stored_messages

ROOM_A = "pipe.a"
ROOM_B = "pipe.b"
PUBLISHES_A = 1000
B_EVERY = 10
"""One publish to ROOM_B after every B_EVERY publishes to ROOM_A."""
PING_EVERY = 25
"""One ping after every PING_EVERY publishes to ROOM_A."""


def requests() -> list[dict[str, Any]]:
    """Every frame the client sends, in send order; each `ref` names its request."""
    frames: list[dict[str, Any]] = []
    b = pings = 0
    for i in range(PUBLISHES_A):
        frames.append({"type": "publish", "room": ROOM_A, "data": {"i": i}, "ref": f"a{i}"})
        if i % B_EVERY == B_EVERY - 1:
            frames.append({"type": "publish", "room": ROOM_B, "data": {"i": b}, "ref": f"b{b}"})
            b += 1
        if i % PING_EVERY == PING_EVERY - 1:
            frames.append({"type": "ping", "ref": f"p{pings}"})
            pings += 1
    return frames


async def replies(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    """The next `count` frames, in arrival order."""
    got: list[dict[str, Any]] = []
    while len(got) < count:
        message = await ws.receive()
        assert message.type is aiohttp.WSMsgType.TEXT, (message.type, message.data, len(got))
        got.append(json.loads(message.data))
    return got


async def test_pipelined_publishes_keep_send_order_per_room_and_pongs_are_not_held_behind_them(
    make_edge: Any, nats_server: EmbeddedNats
) -> None:
    edge = await make_edge(publish_rate=1e6, publish_burst=1_000_000)
    limit = edge.settings.max_requests_in_flight
    client = await connect(edge.url, "piper")
    sent = requests()
    try:
        reading = asyncio.create_task(replies(client.ws, len(sent)))
        for request in sent:
            await client.ws.send_str(json.dumps(request))
        async with asyncio.timeout(60):
            got = await reading
    finally:
        await client.close()

    # Every request got one reply, of its kind, with its ref.
    position = {request["ref"]: n for n, request in enumerate(sent)}
    arrived = {reply.get("ref"): n for n, reply in enumerate(got)}
    assert len(arrived) == len(got) == len(sent) and set(arrived) == set(position), "one reply per request"
    for reply in got:
        kind = sent[position[reply["ref"]]]["type"]
        assert reply["type"] == {"publish": "ack", "ping": "pong"}[kind], reply

    # Each room stored its messages in send order, at the seqs the acks gave, acked in that order.
    acks = {reply["ref"]: reply["seq"] for reply in got if reply["type"] == "ack"}
    for room, prefix in ((ROOM_A, "a"), (ROOM_B, "b")):
        stored = await stored_messages(nats_server.url, room)
        count = sum(1 for request in sent if request.get("room") == room)
        assert [m.data["i"] for m in stored] == list(range(count)), f"{room} not stored in send order"
        assert [m.seq for m in stored] == [acks[f"{prefix}{i}"] for i in range(count)], f"{room}: acks' seqs"
        ack_order = [int(reply["ref"][1:]) for reply in got if reply["type"] == "ack" and reply["ref"][0] == prefix]
        assert ack_order == list(range(count)), f"{room}: acks out of send order"

    # A pong overtakes only the requests still unfinished when its ping was read. The read loop reads a
    # frame only while fewer than `limit` requests are in flight, so that is at most `limit` - 1 of them.
    overtaken: list[int] = []
    for ping in (request for request in sent if request["type"] == "ping"):
        sent_at, pong_at = position[ping["ref"]], arrived[ping["ref"]]
        overtaken.append(sum(1 for request in sent[:sent_at] if arrived[request["ref"]] > pong_at))
    assert max(overtaken) < limit, f"a pong overtook {limit} or more earlier replies: {overtaken}"
    # And pongs do not queue behind publishes: with the client pipelining, reading pauses at the bound,
    # so a ping is read while the room's lane still holds publishes, and its pong overtakes them.
    held_back = [n for n in overtaken if n == 0]
    assert len(held_back) <= len(overtaken) // 10, f"pongs waited for every earlier publish: {overtaken}"
