"""Section 4: replay with `since`, the seam with concurrent publishing, recovered=false cases."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core.embedded import EmbeddedNats
from tests.conftest import Client, Edge, connect
from tests.edge.checker import check_exact, stored_seqs


async def collect(client: Client, until_seq: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not got or got[-1]["seq"] < until_seq:
            frame = await client.recv()
            if frame["type"] == "msg":
                got.append(frame)
    return got


async def test_since_replays_exactly_then_continues_live(edge: Edge, backend: Any) -> None:
    js = backend.jetstream()
    seqs = [(await js.publish("rooms.hist", b'{"n":%d}' % i)).seq for i in range(20)]
    await js.publish("rooms.other", b"1")
    client = await connect(edge.url)
    joined = await client.request(type="join", room="hist", since=seqs[4], epoch=edge.node.broker.epoch)
    assert joined["recovered"] is True and joined["seq"] == seqs[-1]
    replayed = await collect(client, seqs[-1])
    assert [m["seq"] for m in replayed] == seqs[5:]
    assert [m["data"]["n"] for m in replayed] == list(range(5, 20))
    live = (await js.publish("rooms.hist", b'"live"')).seq
    assert (await client.expect("msg"))["seq"] == live
    await client.close()


async def test_seam_is_exact_while_backend_publishes_for_many_joiners(
    edge: Edge, backend: Any, nats_server: EmbeddedNats
) -> None:
    js = backend.jetstream()
    room = "seam"
    first = [(await js.publish(f"rooms.{room}", b'{"pre":true}')).seq for _ in range(50)]
    since = first[9]
    stop = asyncio.Event()

    async def publisher() -> int:
        last = 0
        while not stop.is_set():
            last = (await js.publish(f"rooms.{room}", b'{"live":true}')).seq
            await asyncio.sleep(0)
        return last

    task = asyncio.create_task(publisher())
    # A first member keeps the room's feed active while the others join mid-stream.
    anchor = await connect(edge.url, "anchor")
    await anchor.request(type="join", room=room)
    joiners = [await connect(edge.url, f"u{i}") for i in range(8)]
    await asyncio.gather(*(c.send(type="join", room=room, since=since, epoch=edge.node.broker.epoch) for c in joiners))
    await asyncio.sleep(0.5)
    stop.set()
    last = await task
    stored = await stored_seqs(nats_server.url, room)
    for client in joiners:
        joined = await client.expect("joined")
        assert joined["recovered"] is True
        got = await collect(client, last)
        check_exact(got, stored, since)
    for client in [anchor, *joiners]:
        await client.close()


async def test_join_without_since_starts_at_head(edge: Edge, backend: Any) -> None:
    js = backend.jetstream()
    head = (await js.publish("rooms.h", b"1")).seq
    client = await connect(edge.url)
    joined = await client.request(type="join", room="h")
    assert joined["seq"] == head and joined["recovered"] is False
    nxt = (await js.publish("rooms.h", b"2")).seq
    assert (await client.expect("msg"))["seq"] == nxt
    await client.close()


async def test_since_zero_replays_the_whole_room(edge: Edge, backend: Any) -> None:
    js = backend.jetstream()
    seqs = [(await js.publish("rooms.all", b"%d" % i)).seq for i in range(5)]
    client = await connect(edge.url)
    joined = await client.request(type="join", room="all", since=0)
    assert joined["recovered"] is True
    assert [m["seq"] for m in await collect(client, seqs[-1])] == seqs
    await client.close()


async def test_other_epoch_is_not_recovered(edge: Edge, backend: Any) -> None:
    js = backend.jetstream()
    await js.publish("rooms.e", b"1")
    client = await connect(edge.url)
    joined = await client.request(type="join", room="e", since=1, epoch="some-other-life")
    assert joined["recovered"] is False and joined["epoch"] == edge.node.broker.epoch
    assert (await client.request(type="ping"))["type"] == "pong"  # nothing replayed
    await client.close()


@pytest.mark.parametrize("edge_kw", [{"max_replay": 5}])
async def test_more_than_max_replay_is_not_recovered(make_edge: Any, backend: Any, edge_kw: dict[str, int]) -> None:
    edge = await make_edge(**edge_kw)
    js = backend.jetstream()
    seqs = [(await js.publish("rooms.big", b"1")).seq for _ in range(10)]
    client = await connect(edge.url)
    joined = await client.request(type="join", room="big", since=seqs[0])
    assert joined["recovered"] is False and joined["seq"] == seqs[-1]
    ok = await client.request(type="leave", room="big")
    assert ok["type"] == "left"  # nothing was replayed before it
    joined = await client.request(type="join", room="big", since=seqs[-4])
    assert joined["recovered"] is True
    assert [m["seq"] for m in await collect(client, seqs[-1])] == seqs[-3:]
    await client.close()


async def test_expired_messages_are_not_recovered(make_edge: Any, backend: Any) -> None:
    edge = await make_edge(max_msgs_per_room=3)
    js = backend.jetstream()
    seqs = [(await js.publish("rooms.lim", b"1")).seq for _ in range(6)]
    client = await connect(edge.url)
    # seqs[0] was discarded by the per-room limit: what followed it may be gone too.
    joined = await client.request(type="join", room="lim", since=seqs[0])
    assert joined["recovered"] is False
    await client.request(type="leave", room="lim")
    joined = await client.request(type="join", room="lim", since=seqs[3])
    assert joined["recovered"] is True
    assert [m["seq"] for m in await collect(client, seqs[-1])] == seqs[4:]
    await client.close()


async def test_many_clients_many_rooms_in_order(edge: Edge, backend: Any, nats_server: EmbeddedNats) -> None:
    rooms = [f"order.r{i}" for i in range(10)]
    clients = [await connect(edge.url, f"c{i}") for i in range(30)]
    membership = {id(c): rooms[i % 10 :: 3][:3] or rooms[:1] for i, c in enumerate(clients)}
    for client in clients:
        for room in membership[id(client)]:
            await client.request(type="join", room=room)
    js = backend.jetstream()
    acks = await asyncio.gather(*(js.publish(f"rooms.{rooms[i % 10]}", b"%d" % i) for i in range(500)))
    last = max(a.seq for a in acks)
    stored = {room: await stored_seqs(nats_server.url, room) for room in rooms}
    for client in clients:
        mine = membership[id(client)]
        expected_total = sum(len(stored[r]) for r in mine)
        got: dict[str, list[dict[str, Any]]] = {r: [] for r in mine}
        async with asyncio.timeout(15):
            while sum(len(v) for v in got.values()) < expected_total:
                frame = await client.expect("msg")
                got[frame["room"]].append(frame)
        for room in mine:
            check_exact(got[room], stored[room], 0)
        assert max(m["seq"] for v in got.values() for m in v) <= last
    for client in clients:
        await client.close()


async def test_a_long_replay_does_not_hold_up_the_connection(make_edge: Any, backend: Any) -> None:
    edge = await make_edge(max_pending_bytes=64 * 1024)
    js = backend.jetstream()
    blob = b'{"blob":"' + b"x" * 4000 + b'"}'
    seqs = [(await js.publish("rooms.long", blob)).seq for _ in range(300)]
    client = await connect(edge.url)
    await client.send(type="join", room="long", since=seqs[0])
    await client.send(type="ping", ref="during")
    frames = [await client.recv() for _ in range(1 + 299 + 1)]
    kinds = [f["type"] for f in frames]
    # Requests run side by side (PROTOCOL.md 9.1): the pong may come before `joined`, never a msg before it.
    assert kinds.index("joined") < kinds.index("msg") and kinds.count("msg") == 299 and kinds.count("pong") == 1
    # The replay (1.2 MB through a 64 KiB outbox) is paced by our reading, and
    # the ping was answered while it ran, not after it.
    assert kinds.index("pong") < len(kinds) - 50
    assert [f["seq"] for f in frames if f["type"] == "msg"] == seqs[1:]
    await client.close()
