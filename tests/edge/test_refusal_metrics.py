"""What the edge refuses is counted where an operator looks: /metrics."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp

from tests.conftest import Edge, connect


async def counter(edge: Edge, name: str, reason: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(edge.http + "/metrics") as response:
        text = await response.text()
    match = re.search(rf'^{name}\{{[^}}]*jetsock_reason="{reason}"[^}}]*\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_malformed_and_unconfirmed_live_messages_are_counted(edge: Edge, backend: Any) -> None:
    client = await connect(edge.url, "counted")
    await client.request(type="join", room="counted")
    await backend.publish("live.rooms.counted", b"1", headers={"Nats-Sequence": "not-a-number"})
    await backend.publish("live.rooms.counted", b"2", headers={"Nats-Sequence": str(10**15)})
    await backend.flush()
    async with asyncio.timeout(5):
        while await counter(edge, "jetsock_live_refused_total", "malformed") < 1:
            await asyncio.sleep(0.05)
        while await counter(edge, "jetsock_live_refused_total", "unconfirmed") < 1:
            await asyncio.sleep(0.05)
    await client.close()


async def test_sockets_refused_by_a_per_source_cap_are_counted(make_edge: Any) -> None:
    edge = await make_edge(max_unauthenticated_per_source=2)
    held = [await asyncio.open_connection("127.0.0.1", edge.settings.port) for _ in range(2)]
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.settings.port)
    head = await asyncio.wait_for(reader.read(200), 5)
    assert head.startswith(b"HTTP/1.1 503"), head
    assert b"waiting to authenticate" in head
    writer.close()
    for _r, w in held:
        w.close()
    # Metrics from another address: 127.0.0.1 is at its cap until those sockets are gone.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as http, http.get(edge.http + "/metrics") as response:
        text = await response.text()
    assert re.search(
        r'^jetsock_sockets_refused_total\{[^}]*jetsock_reason="unauthenticated_per_source"[^}]*\} 1\.0$', text, re.M
    ), text[-2000:]
