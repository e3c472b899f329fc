"""Section 6 and 8: heartbeats, slow consumers, drain, readiness, metrics."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from core.embedded import EmbeddedNats
from tests.conftest import Edge, connect, open_ws, token
from tests.edge.checker import check_exact, stored_seqs


async def test_server_pings_and_silence_closes_4009(make_edge: Any) -> None:
    edge = await make_edge(heartbeat=0.4)
    # autoping off: this client answers nothing, like a zombie.
    silent = await open_ws(edge.url, ("jetsock.v1", "bearer." + token()), autoping=False)
    await silent.expect("welcome")
    alive = await connect(edge.url, "alive")

    async def keep_alive() -> None:
        # Any frame counts as life: this client talks, the silent one does not.
        while True:
            assert (await alive.request(type="ping"))["type"] == "pong"
            await asyncio.sleep(0.1)

    talker = asyncio.create_task(keep_alive())
    got_ping = False
    async with asyncio.timeout(5):
        while True:
            msg = await silent.ws.receive()
            if msg.type is aiohttp.WSMsgType.PING:
                got_ping = True
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                break
    assert got_ping and silent.ws.close_code == 4009
    talker.cancel()
    # The client that answers pings (aiohttp's autoping) is still open.
    assert (await alive.request(type="ping"))["type"] == "pong"
    await silent.close()
    await alive.close()


FAST_WINDOW = 8
"""Messages of 16 KB published ahead of what the fast reader has read."""


async def test_slow_consumer_closed_4008_fast_one_unaffected_and_resume_loses_nothing(
    make_edge: Any, backend: Any, nats_server: EmbeddedNats
) -> None:
    edge = await make_edge(max_pending_bytes=64 * 1024, close_timeout=10)
    # The slow client stops reading from its socket.
    slow = await connect(edge.url, "slow")
    fast = await connect(edge.url, "fast")
    epoch = (await slow.request(type="join", room="flood"))["epoch"]
    await fast.request(type="join", room="flood")
    js = backend.jetstream()
    payload = b'{"blob":"' + b"x" * 16000 + b'"}'
    slow.ws._response.connection.transport.pause_reading()  # type: ignore[union-attr]
    # Enough to fill both kernels' socket buffers on loopback (several MB) and then ours.
    count = 1500
    fast_got: list[dict[str, Any]] = []

    async def read_fast() -> None:
        for _ in range(count):
            fast_got.append(await fast.expect("msg", timeout=20))

    reading = asyncio.create_task(read_fast())
    acks = []
    for i in range(count):
        acks.append(await js.publish("rooms.flood", payload))
        # The fast one keeps up, in this process on a slow machine too: at most WINDOW messages
        # (128 KB, within the kernel's socket buffers) are ever between the edge and it.
        while i + 1 - len(fast_got) >= FAST_WINDOW and not reading.done():
            await asyncio.sleep(0.001)
    await reading
    assert [m["seq"] for m in fast_got] == [a.seq for a in acks]
    await asyncio.sleep(0.5)
    # The server gave up on the slow one; the room now holds only the fast one.
    members = edge.node.hub.members("flood")
    assert [c.principal.sub for c in members if c.principal] == ["fast"]
    slow.ws._response.connection.transport.resume_reading()  # type: ignore[union-attr]
    received: list[dict[str, Any]] = []
    code, _ = None, ""
    async with asyncio.timeout(20):
        while True:
            msg = await slow.ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                frame = json.loads(msg.data)
                if frame["type"] == "msg":
                    received.append(frame)
            else:
                code = slow.ws.close_code
                break
    assert code == 4008
    await slow.close()
    # Resume from the last seq it saw: nothing lost, nothing twice.
    last = received[-1]["seq"] if received else 0
    again = await connect(edge.url, "slow")
    joined = await again.request(type="join", room="flood", since=last, epoch=epoch)
    assert joined["recovered"] is True
    rest = [await again.expect("msg") for _ in range(len([a for a in acks if a.seq > last]))]
    check_exact(received + rest, await stored_seqs(nats_server.url, "flood"), 0)
    await again.close()
    await fast.close()


async def test_drain_closes_1012_spread_out_and_readyz_turns_503(make_edge: Any) -> None:
    edge = await make_edge(drain_seconds=1.0)
    clients = [await connect(edge.url, f"d{i}") for i in range(20)]
    closed_at: list[float] = []

    async def watch(client: Any) -> None:
        code, _ = await client.closed()
        assert code == 1012
        closed_at.append(asyncio.get_running_loop().time())

    watchers = [asyncio.create_task(watch(c)) for c in clients]
    async with aiohttp.ClientSession() as http:
        async with http.get(edge.http + "/readyz") as r:
            assert r.status == 200
        drain = asyncio.create_task(edge.node.drain())
        await asyncio.sleep(0.05)
        async with http.get(edge.http + "/readyz") as r:
            assert r.status == 503 and (await r.json())["draining"] is True
        async with http.get(edge.http + "/healthz") as r:
            assert r.status == 200
        await asyncio.gather(*watchers)
        await drain
        # Spread over drain_seconds, not a thundering herd of reconnects.
        assert max(closed_at) - min(closed_at) >= 0.5
        try:
            await http.ws_connect(edge.url)
            raise AssertionError("upgrade accepted while draining")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 503
    for client in clients:
        await client.close()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` whose labels include `labels` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_move_with_traffic(edge: Edge) -> None:
    async def scrape() -> str:
        async with aiohttp.ClientSession() as http, http.get(edge.http + "/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            return await r.text()

    before = await scrape()
    client = await connect(edge.url)
    await client.request(type="join", room="m")
    await client.send(type="publish", room="m", data=1)
    # The ack and the msg race each other: either may come first.
    assert sorted([(await client.recv())["type"], (await client.recv())["type"]]) == ["ack", "msg"]
    after = await scrape()
    assert (
        metric(after, "jetsock_messages_in_total", source="client")
        == metric(before, "jetsock_messages_in_total", source="client") + 1
    )
    assert metric(after, "jetsock_joins_total") == metric(before, "jetsock_joins_total") + 1
    assert metric(after, "jetsock_connections") == 1
    assert metric(after, "jetsock_rooms_active") == 1
    assert metric(after, "jetsock_messages_out_total") == metric(before, "jetsock_messages_out_total") + 1
    await client.close()


async def test_overflow_during_fanout_closes_members_without_breaking_the_room(make_edge: Any, backend: Any) -> None:
    # A message bigger than the whole outbox overflows every member while the
    # fan-out loop is still walking the room: the loop must survive it.
    edge = await make_edge(max_pending_bytes=16 * 1024)
    members = [await connect(edge.url, f"m{i}") for i in range(3)]
    for member in members:
        await member.request(type="join", room="burst")
    bystander = await connect(edge.url, "b")
    await bystander.request(type="join", room="calm")
    js = backend.jetstream()
    await js.publish("rooms.burst", b'"' + b"x" * 20000 + b'"')
    for member in members:
        code, _ = await member.closed()
        assert code == 4008
    ack = await js.publish("rooms.calm", b"1")
    assert (await bystander.expect("msg"))["seq"] == ack.seq
    assert "burst" not in edge.node.hub.rooms
    for client in [*members, bystander]:
        await client.close()
