"""The deployment topology for real: 3 clustered nats-servers (stream at R3), 2 edges,
HAProxy round robin in front. 300 clients in 10 rooms through the load balancer
while backends publish; then an edge is killed, the other drained while the first
restarts, and the stream's leader is killed. After each fault every client must
have every stored message of its room after its join point: none lost, none twice,
none out of order."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from pathlib import Path
from typing import Any

import nats
import pytest

import jetsock
from edge.localcluster import BACKEND_INBOX, LocalCluster
from tests.conftest import SECRET, token
from tests.edge.checker import stored_seqs

CLIENTS = 300
ROOMS = [f"cluster.r{i}" for i in range(10)]
FAST = jetsock.Backoff(base=0.2, cap=2.0, reset_after=10.0)
REPORT = Path(__file__).parent / ".last-run.json"


@pytest.fixture
async def cluster(tmp_path: Path) -> Any:
    from core.embedded import free_port

    local = LocalCluster(tmp_path / "cluster", port=free_port(), jwt_secret=SECRET)
    await asyncio.to_thread(local.start)
    yield local
    await asyncio.to_thread(local.stop)


class Watcher:
    """One client in one room, recording what it receives."""

    def __init__(self, index: int, room: str) -> None:
        self.index = index
        self.room_name = room
        self.start_seq = 0
        self.seqs: list[int] = []
        self.nodes: list[str] = []
        self.client: Any = None
        self.task: asyncio.Task[None] | None = None

    async def run(self, url: str, ready: asyncio.Event) -> None:
        async with jetsock.connect(url, token=token(f"w{self.index}", ttl=3600), backoff=FAST) as client:
            self.client = client
            client.on_state(lambda state, info: state == "connected" and self.nodes.append(str(info.get("node"))))
            room = await client.join(self.room_name)
            self.start_seq = room.seq
            ready.set()
            async for msg in room:
                self.seqs.append(msg.seq)


async def until(condition: Any, timeout: float) -> float:
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_faults_through_a_real_load_balancer(cluster: LocalCluster) -> None:
    watchers = [Watcher(i, ROOMS[i % len(ROOMS)]) for i in range(CLIENTS)]
    for batch in range(0, CLIENTS, 50):
        events = []
        for watcher in watchers[batch : batch + 50]:
            ready = asyncio.Event()
            events.append(ready)
            watcher.task = asyncio.create_task(watcher.run(cluster.url, ready))
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
    nodes = {w.nodes[0] for w in watchers if w.nodes}
    assert len(nodes) == 2, f"round robin should use both edges: {nodes}"

    # A backend as deploy/nats-server.conf admits one: its own user, its own reply inboxes.
    nc = await nats.connect(
        cluster.nats_urls,
        user="backend",
        password=cluster.backend_password,
        inbox_prefix=BACKEND_INBOX,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
    )
    js = nc.jetstream(timeout=2)
    acked: dict[str, list[int]] = {room: [] for room in ROOMS}
    publishing = asyncio.Event()
    publishing.set()
    stop = asyncio.Event()
    failures = 0

    async def backend(room: str) -> None:
        nonlocal failures
        n = 0
        while not stop.is_set():
            try:
                ack = await js.publish(
                    f"rooms.{room}", json.dumps({"n": n}).encode(), headers={"Nats-Msg-Id": f"{room}-{n}"}
                )
                acked[room].append(ack.seq)
                n += 1
            except Exception:
                failures += 1
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.05)

    backends = [asyncio.create_task(backend(room)) for room in ROOMS]
    report: dict[str, Any] = {"clients": CLIENTS, "rooms": len(ROOMS)}

    def alive_url() -> str:
        """A running server, as the edge user (reading the stream is the edge's right, not a backend's)."""
        alive = next(i for i, n in enumerate(cluster.nats) if n.process is not None and n.process.poll() is None)
        return cluster.nats_url_as("edge", alive)

    async def resumed_after(fault_at: float) -> dict[str, Any]:
        """Time from the fault until every client holds every message stored up to 1 s after it."""
        await asyncio.sleep(max(0.0, fault_at + 1.0 - time.monotonic()))
        heads = {room: (await stored_seqs(alive_url(), room))[-1] for room in ROOMS}
        await until(lambda: all(w.seqs and w.seqs[-1] >= heads[w.room_name] for w in watchers), 60)
        return {"full_resume_s": round(time.monotonic() - fault_at, 2)}

    await asyncio.sleep(2)

    # 1. SIGKILL one edge: its clients reconnect through HAProxy to the other and resume.
    fault = time.monotonic()
    cluster.edges[0].signal(signal.SIGKILL)
    cluster.edges[0].wait()
    report["edge_killed"] = await resumed_after(fault)

    # 2. Restart it, and drain (SIGTERM) the other meanwhile.
    fault = time.monotonic()
    restart = asyncio.create_task(asyncio.to_thread(cluster.edges[0].start))
    cluster.edges[1].signal(signal.SIGTERM)
    report["drained"] = await resumed_after(fault)
    await restart
    assert await asyncio.to_thread(cluster.edges[1].wait, 30) == 0
    await asyncio.to_thread(cluster.edges[1].start)

    # 3. Kill the NATS stream leader: publishing resumes within seconds, nothing acked is lost.
    leader = cluster.stream_leader()
    before = sum(len(v) for v in acked.values())
    fault = time.monotonic()
    leader.kill()
    resumed = await until(lambda: sum(len(v) for v in acked.values()) > before + len(ROOMS), 30)
    report["leader_killed"] = {"publishing_resumed_s": round(resumed, 2)}
    report["leader_killed"].update(await resumed_after(fault))
    await asyncio.sleep(2)
    stop.set()
    await asyncio.gather(*backends)
    leader.start()

    # The invariant, for every client: exactly the stored messages after its join point.
    lost = duplicated = reordered = 0
    stored = {room: await stored_seqs(alive_url(), room) for room in ROOMS}
    for room in ROOMS:
        missing_acked = set(acked[room]) - set(stored[room])
        assert not missing_acked, f"acknowledged messages lost by the stream in {room}: {sorted(missing_acked)[:5]}"
    # The last messages published may still be in flight: let every client catch up
    # (a client that never does is counted as having lost them).
    try:
        await until(lambda: all(w.seqs and w.seqs[-1] >= stored[w.room_name][-1] for w in watchers), 30)
    except TimeoutError:
        pass
    for watcher in watchers:
        expected = [s for s in stored[watcher.room_name] if s > watcher.start_seq]
        got = watcher.seqs
        missing = sorted(set(expected) - set(got))
        if missing:
            report.setdefault("missing", []).append(
                {
                    "client": watcher.index,
                    "room": watcher.room_name,
                    "seqs": missing[:5],
                    "start": watcher.start_seq,
                    "last": got[-1] if got else None,
                    "nodes": watcher.nodes,
                    "around": [s for s in got if missing[0] - 40 < s < missing[0] + 40],
                }
            )
        lost += len(missing)
        duplicated += len(got) - len(set(got))
        reordered += sum(1 for a, b in itertools.pairwise(got) if b <= a)
    report.update(
        lost=lost,
        duplicated=duplicated,
        reordered=reordered,
        messages=sum(len(v) for v in stored.values()),
        deliveries=sum(len(w.seqs) for w in watchers),
        publish_failures_during_faults=failures,
        clients_that_changed_node=sum(1 for w in watchers if len(set(w.nodes)) > 1),
    )
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    for watcher in watchers:
        assert watcher.task is not None
        watcher.task.cancel()
    await asyncio.gather(*(w.task for w in watchers if w.task), return_exceptions=True)
    await nc.close()
    assert (lost, duplicated, reordered) == (0, 0, 0), report
