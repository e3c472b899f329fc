"""A first reading of the edge's cost, before the benchmark suite exists.

1. CPU per delivered message: one edge process, N clients in one room, a
   backend publishing M messages over NATS; edge CPU time (user + system, from
   /proc) divided by the deliveries the clients counted.
2. RSS per idle authenticated connection: the edge's RSS with K connections
   (authenticated, each in 2 rooms) minus its RSS before they connected,
   divided by K; once with no rooms, once with each connection in 2 rooms.

The edge runs as `jetsock serve` in its own process, against a nats-server
from the wheel; the clients run here, in this process, so their cost is not
counted. Run: .venv/bin/python -m bench.first_reading [--clients 1000 --messages 300 --idle 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import nats

from bench import procstat
from core.auth import make_token
from core.embedded import EmbeddedNats, free_port

SECRET = "bench-secret-that-is-long-enough-for-hs256"


def cpu_seconds(pid: int) -> float:
    return procstat.cpu_seconds([pid])


def rss_kb(pid: int) -> int:
    return procstat.rss_kb([pid])


def progress(text: str) -> None:
    print(f"\r{text:<78}", end="", file=sys.stderr, flush=True)


async def open_clients(
    url: str, count: int, rooms: list[str]
) -> tuple[aiohttp.ClientSession, list[aiohttp.ClientWebSocketResponse]]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    serial = iter(range(1 << 30))

    async def one() -> aiohttp.ClientWebSocketResponse:
        # One subject per connection, as real users (and max_connections_per_sub) expect.
        token = make_token(SECRET, f"bench-{next(serial)}", join=[">"], publish=[">"], ttl=3600)
        ws = await session.ws_connect(url, protocols=("jetsock.v1", "bearer." + token), max_msg_size=0)
        assert json.loads((await ws.receive()).data)["type"] == "welcome"
        for room in rooms:
            await ws.send_str(json.dumps({"type": "join", "room": room}))
            assert json.loads((await ws.receive()).data)["type"] == "joined"
        return ws

    for start in range(0, count, 200):
        sockets += await asyncio.gather(*(one() for _ in range(min(200, count - start))))
        progress(f"connected {len(sockets)}/{count}")
    return session, sockets


async def fanout(url: str, nats_url: str, pid: int, clients: int, messages: int) -> dict[str, float]:
    session, sockets = await open_clients(url, clients, ["bench.fanout"])
    received = 0
    done = asyncio.Event()
    target = clients * messages

    async def reader(ws: aiohttp.ClientWebSocketResponse) -> None:
        nonlocal received
        for _ in range(messages):
            await ws.receive()
            received += 1
        if received >= target:
            done.set()

    readers = [asyncio.create_task(reader(ws)) for ws in sockets]
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    payload = json.dumps({"text": "x" * 70}).encode()  # ~100 bytes of data
    cpu_before = cpu_seconds(pid)
    started = time.monotonic()
    for i in range(messages):
        await js.publish("rooms.bench.fanout", payload)
        if i % 20 == 0:
            progress(f"fan-out: published {i}/{messages}, delivered {received}/{target}")
            await asyncio.sleep(0.01)
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(pid) - cpu_before
    await asyncio.gather(*readers)
    await nc.close()
    for ws in sockets:
        await ws.close()
    await session.close()
    return {
        "clients": clients,
        "messages": messages,
        "deliveries": received,
        "edge_cpu_s": round(cpu, 3),
        "cpu_us_per_delivery": round(cpu / received * 1e6, 2),
        "deliveries_per_s": round(received / elapsed),
    }


async def idle(url: str, pid: int, count: int, rooms: list[str]) -> dict[str, float]:
    await asyncio.sleep(1)
    before = rss_kb(pid)
    session, sockets = await open_clients(url, count, rooms)
    await asyncio.sleep(2)
    after = rss_kb(pid)
    for ws in sockets:
        await ws.close()
    await session.close()
    return {
        "connections": count,
        "rooms_per_conn": len(rooms),
        "rss_before_kb": before,
        "rss_after_kb": after,
        "rss_kb_per_conn": round((after - before) / count, 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--idle", type=int, default=5000)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()}
    }
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(Path(tmp) / "nats") as server:
        scenarios: tuple[tuple[str, list[str]], ...] = (
            ("fanout", []),
            ("idle_no_rooms", []),
            ("idle_2_rooms", ["bench.idle.a", "bench.idle.b"]),
        )
        for name, rooms in scenarios:
            port = free_port()
            env = {
                **os.environ,
                "JETSOCK_NATS_URL": server.url,
                "JETSOCK_JWT_SECRET": SECRET,
                "JETSOCK_PORT": str(port),
                "JETSOCK_LOG_LEVEL": "warning",
                "JETSOCK_DRAIN_SECONDS": "1",
            }
            edge = subprocess.Popen([str(Path(sys.executable).parent / "jetsock"), "serve"], env=env)
            url = f"ws://127.0.0.1:{port}/ws"
            try:
                for _ in range(100):
                    try:
                        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
                if name == "fanout":
                    results[name] = await fanout(url, server.url, edge.pid, args.clients, args.messages)
                else:
                    results[name] = await idle(url, edge.pid, args.idle, rooms)
            finally:
                edge.terminate()
                edge.wait()
            progress("")
            print(f"\n{name}: {results[name]}", file=sys.stderr)
    out = Path(__file__).parent / "history" / "first-reading.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
