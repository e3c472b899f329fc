"""Presence through faults (PROTOCOL.md section 10, schemas/PROTOCOL.md 9.13), on real nats-servers:
a node SIGKILLed with 500 users on it, and a NATS restart under two edges."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from core.embedded import EmbeddedNats, free_port
from tests.conftest import SECRET, Client, Edge, wait_ready
from tests.edge.test_presence import events, join, listed, present_on, subs, tok
from tests.hostile.rawws import OP_PING, OP_PONG, OP_TEXT, RawWS
from tests.hostile.support import raise_nofile_limit

JETSOCK = str(Path(sys.executable).parent / "jetsock")
ROOM = "chat.crowd"
TTL = 2.0
INTERVAL = 0.2
USERS = 500


class EdgeProcess:
    """`jetsock serve` as a process of its own, on an existing nats-server (another node of the cluster)."""

    def __init__(self, nats_url: str, workdir: Path, **settings: str) -> None:
        self.port = free_port()
        self.nats_url = nats_url
        self.workdir = workdir
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "edge.log"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self) -> EdgeProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("JETSOCK_")},
            "JETSOCK_NATS_URL": self.nats_url,
            "JETSOCK_JWT_SECRET": SECRET,
            "JETSOCK_PORT": str(self.port),
            "JETSOCK_LOG_LEVEL": "warning",
            **{f"JETSOCK_{k.upper()}": v for k, v in self.settings.items()},
        }
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [JETSOCK, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        await wait_ready(self.http, self.process, 30, self.output)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


async def raw_member(port: int, sub: str, room: str) -> RawWS:
    """A bare socket authenticated as `sub` and joined to `room` (cheaper than a client session)."""
    ws = await RawWS.open(port, ("jetsock.v1", "bearer." + tok(sub, info={"n": sub})))
    assert ws.upgraded, ws.response_head
    welcome = await ws.read_frame()
    assert welcome is not None and json.loads(welcome.payload)["type"] == "welcome", welcome
    await ws.send(OP_TEXT, json.dumps({"type": "join", "room": room}).encode())
    while True:
        got = await ws.read_frame()
        assert got is not None, f"{sub}: dropped before joined"
        if got.opcode == OP_PING:
            await ws.send(OP_PONG, got.payload)
        elif got.opcode == OP_TEXT and json.loads(got.payload)["type"] == "joined":
            return ws


@pytest.fixture
async def edge_process(nats_server: EmbeddedNats, tmp_path: Path) -> Any:
    started: list[EdgeProcess] = []

    async def factory(**settings: str) -> EdgeProcess:
        process = await EdgeProcess(nats_server.url, tmp_path / f"edge-{len(started)}", **settings).start()
        started.append(process)
        return process

    yield factory
    for process in started:
        process.kill()


async def test_a_sigkilled_node_takes_its_500_users_out_within_the_ttl(
    make_edge: Any, edge_process: Any, clients: list[Client]
) -> None:
    raise_nofile_limit()
    doomed = await edge_process(
        node="doomed",
        presence_rooms="chat.*",
        presence_ttl=str(TTL),
        presence_interval=str(INTERVAL),
        heartbeat="60",
        max_connections_per_source="0",
        max_unauthenticated_per_source="0",
    )
    survivor = await make_edge(presence_rooms="chat.*", presence_ttl=TTL, presence_interval=INTERVAL)
    watcher = await join(survivor, "watcher", ROOM)
    clients.append(watcher)
    names = [f"user-{i:03d}" for i in range(USERS)]
    sockets: list[RawWS] = []
    for batch in range(0, USERS, 100):
        sockets += await asyncio.gather(*(raw_member(doomed.port, name, ROOM) for name in names[batch : batch + 100]))
    await present_on([survivor], ROOM, {"watcher", *names}, timeout=30)
    seen = await events(watcher, lambda got: len(set(subs(got, "joined"))) >= USERS + 1, timeout=30)
    assert set(subs(seen, "joined")) == {"watcher", *names}

    killed = time.monotonic()
    doomed.kill()
    await present_on([survivor], ROOM, {"watcher"}, timeout=TTL * 3)
    gone_after = time.monotonic() - killed
    lefts = await events(watcher, lambda got: len(set(subs(got, "left"))) >= USERS, timeout=TTL * 3)
    told_after = time.monotonic() - killed
    for ws in sockets:
        ws.abort()
    assert sorted(subs(lefts, "left")) == names  # each once
    assert subs(lefts, "joined") == []
    reply = survivor.node.presence.who(ROOM)
    assert (reply.count, reply.connections) == (1, 1)
    # Dropped when silent for the ttl, noticed at the next beat (ttl / 3); the events at the next flush.
    assert gone_after <= TTL + TTL / 3 + 0.5, gone_after
    assert told_after <= TTL + TTL / 3 + INTERVAL + 0.5, told_after
    print(
        f"\n{USERS} users of a SIGKILLed node: out of `who` after {gone_after:.2f} s, all `left` received after "
        f"{told_after:.2f} s, in {len(lefts)} frame(s) (ttl {TTL} s, beat {TTL / 3:.2f} s, interval {INTERVAL} s)"
    )


@pytest.mark.parametrize("outage", [0.0, TTL * 2.5], ids=["restart", "outage-longer-than-ttl"])
async def test_a_nats_restart_loses_nobody_who_stayed(
    make_edge: Any, nats_server: EmbeddedNats, clients: list[Client], outage: float
) -> None:
    settings = {"presence_rooms": "chat.*", "presence_ttl": TTL, "presence_interval": INTERVAL}
    a: Edge = await make_edge(**settings)
    b: Edge = await make_edge(**settings)
    watcher_a = await join(a, "watcher-a", ROOM)
    watcher_b = await join(b, "watcher-b", ROOM)
    stayers = {f"a{i}": await join(a, f"a{i}", ROOM) for i in range(10)}
    stayers |= {f"b{i}": await join(b, f"b{i}", ROOM) for i in range(10)}
    stayers["both"] = await join(a, "both", ROOM)
    both_b = await join(b, "both", ROOM)
    leaver = await join(a, "leaver", ROOM)  # closes while NATS is down
    clients += [watcher_a, watcher_b, *stayers.values(), both_b]
    everyone = {"watcher-a", "watcher-b", "leaver", *stayers}
    await present_on([a, b], ROOM, everyone)
    for watcher in (watcher_a, watcher_b):
        await events(watcher, lambda got: set(subs(got, "joined")) >= everyone)

    recorded: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}

    async def record(name: str, watcher: Client) -> None:
        while True:
            frame = await watcher.recv(timeout=60)
            if frame["type"] == "presence":
                recorded[name].append(frame)

    readers = [asyncio.create_task(record("a", watcher_a)), asyncio.create_task(record("b", watcher_b))]
    try:
        down = time.monotonic()
        nats_server.stop()
        async with asyncio.timeout(10):
            while a.node.broker.connected or b.node.broker.connected:
                await asyncio.sleep(0.05)
        await leaver.close()
        await asyncio.sleep(outage)
        nats_server.start()
        async with asyncio.timeout(20):
            while not (a.node.broker.connected and b.node.broker.connected):
                await asyncio.sleep(0.05)
        back = time.monotonic()
        stayed = everyone - {"leaver"}
        await present_on([a, b], ROOM, stayed, timeout=TTL * 3)
        healed = time.monotonic() - back
        # Past the ttl (and a beat) after NATS came back: still everybody who stayed, on both nodes.
        await asyncio.sleep(TTL + TTL / 3 + INTERVAL * 2)
        for edge in (a, b):
            assert listed(edge, ROOM) == stayed, (edge.settings.port, stayed ^ listed(edge, ROOM))
            members = edge.node.presence.who(ROOM)
            assert members.connections == len(stayed) + 1  # "both" has two connections
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    for name, frames in recorded.items():
        assert [s for s in subs(frames, "left") if s != "leaver"] == [], (name, frames)
        assert subs(frames, "joined") == [], (name, frames)
        assert subs(frames, "left") == ["leaver"], (name, frames)
    print(
        f"\nNATS down {back - down:.2f} s (outage {outage} s, ttl {TTL} s): the leaver gone from both nodes "
        f"{healed:.2f} s after NATS was back; nobody who stayed was missing, no left/joined pair"
    )


async def test_workers_on_the_embedded_nats_share_presence(tmp_path: Path) -> None:
    """`jetsock serve --workers 2` on its embedded nats-server (the edge user's permissions of
    core/natsauth.py): each worker is a node, and each answers `who` for both."""
    from tests.conftest import connect
    from tests.edge.devserver import ServeProcess

    serve = ServeProcess(
        tmp_path,
        args=["--workers", "2"],
        env={"JETSOCK_JWT_SECRET": SECRET, "JETSOCK_PRESENCE_ROOMS": "chat.*", "JETSOCK_PRESENCE_INTERVAL": "0.2"},
    )
    await serve.start(banner=False)
    clients: list[Client] = []
    try:
        await wait_ready(serve.http, serve.process, 30, serve.output)
        async with asyncio.timeout(30):
            while len({c.welcome["node"] for c in clients if c.welcome}) < 2 or len(clients) < 6:
                clients.append(await connect(serve.url, f"u{len(clients)}", tok(f"u{len(clients)}")))
        for client in clients:
            assert (await client.request(type="join", room=ROOM))["type"] == "joined"
        # Sorted as the edge sorts subs (as strings): u10 comes before u2 when the second worker
        # was slow to start and the first took more than ten of the connections.
        everyone = sorted(f"u{i}" for i in range(len(clients)))

        async def all_agree() -> bool:
            for client in clients:
                await client.send(type="who", room=ROOM, ref="w")
                while (reply := await client.recv())["type"] != "members":
                    pass
                if [m["sub"] for m in reply["members"]] != everyone:
                    return False
            return True

        async with asyncio.timeout(10):
            while not await all_agree():
                await asyncio.sleep(0.2)
        assert "permissions violation" not in serve.output().lower(), serve.output()[-2000:]
    finally:
        for client in clients:
            await client.close()
        assert await serve.stop() == 0
