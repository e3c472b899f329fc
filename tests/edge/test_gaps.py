"""Gap repair: live messages lost on the core-NATS path are fetched from the stream."""

from __future__ import annotations

import asyncio
from typing import Any

import nats

from core.embedded import EmbeddedNats
from tests.conftest import Edge, connect
from tests.edge.checker import check_exact, stored_seqs


async def read_until(client: Any, seq: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not got or got[-1]["seq"] < seq:
            frame = await client.recv(timeout=timeout)
            if frame["type"] == "msg":
                got.append(frame)
    return got


async def test_dropped_live_messages_are_repaired_in_order(edge: Edge, backend: Any, nats_server: EmbeddedNats) -> None:
    feeds = edge.node.broker.feeds
    clients = [await connect(edge.url, f"g{i}") for i in range(5)]
    for client in clients:
        await client.request(type="join", room="gappy")
    feeds.drop_filter = lambda room, seq: seq % 3 == 0  # as if core NATS lost every third
    js = backend.jetstream()
    acks = [await js.publish("rooms.gappy", b'{"i":%d}' % i) for i in range(60)]
    # The last message may itself be dropped, and nothing after it would reveal the gap:
    # one more message, let through, closes the test.
    feeds.drop_filter = None
    acks.append(await js.publish("rooms.gappy", b'"end"'))
    stored = await stored_seqs(nats_server.url, "gappy")
    for client in clients:
        check_exact(await read_until(client, acks[-1].seq), stored, 0)
        await client.close()
    assert feeds.repairs > 0 and feeds.repaired_messages >= 20


async def test_nats_restart_under_a_connected_edge_loses_nothing(edge: Edge, nats_server: EmbeddedNats) -> None:
    clients = [await connect(edge.url, f"r{i}") for i in range(3)]
    for client in clients:
        await client.request(type="join", room="restart")
    acked: list[int] = []
    stop = asyncio.Event()

    async def backend_publisher() -> None:
        # A backend with its own connection, retrying through the outage.
        nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        js = nc.jetstream(timeout=1)
        i = 0
        while not stop.is_set():
            try:
                acked.append((await js.publish("rooms.restart", b'{"i":%d}' % i)).seq)
                i += 1
            except Exception:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.005)
        await nc.close()

    task = asyncio.create_task(backend_publisher())
    await asyncio.sleep(0.5)
    nats_server.stop()
    await asyncio.sleep(1.0)
    nats_server.start()
    await asyncio.sleep(2.0)
    stop.set()
    await task
    assert len(acked) > 50
    stored = await stored_seqs(nats_server.url, "restart")
    assert set(acked) <= set(stored)  # nothing acknowledged was lost by the stream
    for client in clients:
        check_exact(await read_until(client, stored[-1]), stored, 0)
        await client.close()


async def test_publish_while_nats_is_down_answers_unavailable_and_readyz_503(
    edge: Edge, nats_server: EmbeddedNats
) -> None:
    import aiohttp

    client = await connect(edge.url)
    nats_server.stop()
    try:
        async with asyncio.timeout(10):
            while edge.node.broker.connected:
                await asyncio.sleep(0.05)
        reply = await client.request(type="publish", room="down", data=1)
        assert reply["type"] == "error" and reply["code"] == "unavailable"
        reply = await client.request(type="join", room="never.seen", ref=9)
        assert reply["type"] == "error" and reply["code"] == "unavailable" and reply["ref"] == 9
        async with aiohttp.ClientSession() as http, http.get(edge.http + "/readyz") as r:
            assert r.status == 503 and (await r.json())["nats"] is False
    finally:
        nats_server.start()
    async with asyncio.timeout(15):
        while not edge.node.broker.connected:
            await asyncio.sleep(0.05)
    assert (await client.request(type="publish", room="down", data=1))["type"] == "ack"
    assert (await client.request(type="join", room="never.seen"))["type"] == "joined"
    await client.close()


async def test_recreated_stream_resets_active_rooms(edge: Edge, backend: Any, nats_server: EmbeddedNats) -> None:
    client = await connect(edge.url)
    old_epoch = (await client.request(type="join", room="life"))["epoch"]
    js = backend.jetstream()
    await js.publish("rooms.life", b"1")
    await client.expect("msg")
    # Someone deletes the stream while the edge runs; NATS restarts and the edge recreates it.
    await js.delete_stream("ROOMS")
    nats_server.stop()
    nats_server.start()
    reset = await client.expect("reset", timeout=15)
    assert reset["room"] == "life" and reset["epoch"] != old_epoch and reset["seq"] == 0
    await client.close()


async def test_a_lost_last_message_is_found_by_the_audit(make_edge: Any, backend: Any) -> None:
    # Nothing after it would reveal the gap: the periodic head audit must.
    edge = await make_edge(audit_interval=0.2)
    client = await connect(edge.url)
    await client.request(type="join", room="quiet")
    js = backend.jetstream()
    first = (await js.publish("rooms.quiet", b"1")).seq
    assert (await client.expect("msg"))["seq"] == first
    edge.node.broker.feeds.drop_filter = lambda room, seq: True  # the live path loses everything now
    last = (await js.publish("rooms.quiet", b'"the last word"')).seq
    msg = await client.expect("msg", timeout=10)
    assert msg["seq"] == last and msg["data"] == "the last word"
    assert edge.node.broker.feeds.repairs >= 1
    await client.close()
