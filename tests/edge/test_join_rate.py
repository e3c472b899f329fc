"""The join/leave rate limit (edge/session.py) and room_grace (edge/interest.py), on in-process edges.

Joins and leaves share one token bucket per connection: past it they get
`error` `rate_limited` with their ref, and the `rate_limit_strikes`-th
refusal in a row closes with 4029; an accepted request starts the count
again. A room's NATS subscription outlives its last local member by
`room_grace` seconds, so leaving and rejoining does not churn NATS interest:
counted at a nats-server of this module's own with its monitoring port on
(`/subsz`: `num_inserts`, `num_removes`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from core.embedded import EmbeddedNats, free_port
from tests.conftest import Client, Edge, connect, edge_settings


async def send_all(client: Client, *frames: dict[str, Any]) -> None:
    """Frames written back to back, without waiting for replies."""
    for frame in frames:
        await client.ws.send_str(json.dumps(frame))


async def replies_by_ref(client: Client, count: int) -> dict[Any, dict[str, Any]]:
    """The next `count` replies, by ref (joins answer beside the read loop, refusals at once)."""
    got: dict[Any, dict[str, Any]] = {}
    while len(got) < count:
        reply = await client.recv()
        got[reply.get("ref")] = reply
    return got


def kind(reply: dict[str, Any]) -> str:
    return str(reply["type"] if reply["type"] != "error" else reply["code"])


async def test_leaves_take_tokens_like_joins_and_a_refill_admits_again(make_edge: Any) -> None:
    edge = await make_edge(join_rate=0.5, join_burst=2, rate_limit_strikes=10)
    client = await connect(edge.url)
    try:
        await send_all(
            client,
            {"type": "join", "room": "rate.a", "ref": 1},
            {"type": "leave", "room": "rate.a", "ref": 2},
            {"type": "join", "room": "rate.b", "ref": 3},
            {"type": "leave", "room": "rate.b", "ref": 4},
        )
        got = await replies_by_ref(client, 4)
        assert {ref: kind(reply) for ref, reply in got.items()} == {
            1: "joined",
            2: "left",
            3: "rate_limited",
            4: "rate_limited",
        }, got
        await asyncio.sleep(2.5)  # at 0.5 a second, a token is back
        joined = await client.request(type="join", room="rate.b", ref=5)
        assert kind(joined) == "joined" and joined["ref"] == 5, joined
    finally:
        await client.close()


async def test_the_strikes_th_refusal_in_a_row_closes_4029_and_an_accepted_request_starts_the_count_again(
    make_edge: Any,
) -> None:
    edge = await make_edge(join_rate=0.5, join_burst=1, rate_limit_strikes=3)
    client = await connect(edge.url)
    try:
        await send_all(client, *({"type": "join", "room": f"strike.{i}", "ref": i} for i in range(3)))
        got = await replies_by_ref(client, 3)
        assert [kind(got[i]) for i in range(3)] == ["joined", "rate_limited", "rate_limited"], got
        await asyncio.sleep(2.5)  # a token is back: the next join is accepted, and the strikes start over
        await send_all(client, *({"type": "join", "room": f"strike.{i}", "ref": i} for i in range(3, 6)))
        got = await replies_by_ref(client, 3)
        assert [kind(got[i]) for i in range(3, 6)] == ["joined", "rate_limited", "rate_limited"], got
        pong = await client.request(type="ping", ref="still-open")
        assert pong == {"type": "pong", "ref": "still-open"}, pong
        await send_all(client, {"type": "leave", "room": "strike.0", "ref": 6})
        code, reason = await client.closed()
        assert code == 4029, (code, reason)
    finally:
        await client.close()


@dataclass
class MonitoredNats:
    server: EmbeddedNats
    monitor_port: int

    @property
    def url(self) -> str:
        return self.server.url

    async def interest_churn(self) -> tuple[int, int]:
        """(subscriptions added, removed) so far, as the nats-server counts them."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.monitor_port}/subsz") as r,
        ):
            state = await r.json(content_type=None)
        return int(state["num_inserts"]), int(state["num_removes"])


@pytest.fixture
def monitored_nats(tmp_path: Path) -> Iterator[MonitoredNats]:
    port = free_port()
    server = EmbeddedNats(tmp_path / "nats", extra_args=["-m", str(port)]).start()
    yield MonitoredNats(server, port)
    server.stop()


async def test_a_room_keeps_its_nats_subscription_for_room_grace_after_its_last_member_leaves(
    monitored_nats: MonitoredNats,
) -> None:
    settings = edge_settings(monitored_nats.url, room_grace=1.0)
    edge = await Edge(settings, settings.nats_servers).start()
    room = "grace.room"
    client = await connect(edge.url)
    try:
        assert kind(await client.request(type="join", room=room, ref="first")) == "joined"
        added, removed = await monitored_nats.interest_churn()
        for n in range(20):
            assert kind(await client.request(type="leave", room=room, ref=f"l{n}")) == "left"
            assert room in edge.node.broker.feeds, "the room's feed stopped at once, not after room_grace"
            assert kind(await client.request(type="join", room=room, ref=f"j{n}")) == "joined"
        assert await monitored_nats.interest_churn() == (added, removed), "a rejoin within room_grace churned NATS"
        assert kind(await client.request(type="leave", room=room, ref="last")) == "left"
        async with asyncio.timeout(10):
            while room in edge.node.broker.feeds:
                await asyncio.sleep(0.05)
        async with asyncio.timeout(10):
            while (await monitored_nats.interest_churn())[1] == removed:
                await asyncio.sleep(0.05)
    finally:
        await client.close()
        await edge.stop()
