"""compose.yaml for real: the image built from the Dockerfile, 3 NATS containers, 3 edge
replicas and HAProxy, faulted under load through the load balancer.

One client joined through HAProxy, a backend publishing over HTTP through HAProxy (each
message retried with its Idempotency-Key until acknowledged), then: the client's edge
killed (docker kill), one NATS container stopped and started again (docker stop / start),
and every edge restarted one at a time (`make rolling-restart`: SIGTERM, drain, close 1012).
The client resumes with `since` after each. At the end it must hold exactly the room's
stored messages after its join, in order, once each, and every acknowledged one among them.

Run by `make test-containers` (tests/containers/run.sh), which starts a Docker engine and
provides the base images; not part of `make test`. It needs a working Docker engine and
fails (rather than skips) when anything here does not work.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import jetsock
from core.auth import make_token
from core.embedded import free_port

REPO = Path(__file__).parents[2]
IMAGE = "jetsock:local"
"""compose.yaml's edge image; built here with the Dockerfile, then used by `up --no-build`."""
FAST = jetsock.Backoff(base=0.2, cap=2.0, reset_after=10.0)
PUBLISH_EVERY = 0.05
STEP_TIMEOUT = 90.0
"""Longest wait for one step (a resume, a container's health) before the test fails."""


def run(command: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run a command; its output, or an AssertionError carrying it."""
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{shlex.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


@dataclass
class Cluster:
    """A compose project of compose.yaml, under a name of its own."""

    project: str
    env: dict[str, str]
    port: int
    compose: list[str] = field(init=False)

    def __post_init__(self) -> None:
        binary = os.environ.get("JETSOCK_COMPOSE")
        base = [binary] if binary else ["docker", "compose"]
        self.compose = [*base, "--project-name", self.project, "--file", str(REPO / "compose.yaml")]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def token(self, sub: str) -> str:
        return make_token(self.env["JETSOCK_JWT_SECRET"], sub, [">"], [">"], ttl=3600)

    def up(self) -> None:
        run(
            [*self.compose, "up", "--detach", "--no-build", "--pull", "never", "--wait", "--wait-timeout", "180"],
            self.env,
        )

    def down(self) -> None:
        run([*self.compose, "down", "--volumes", "--remove-orphans", "--timeout", "5"], self.env, timeout=180)

    def logs(self) -> str:
        with contextlib.suppress(Exception):
            return run([*self.compose, "logs", "--no-color", "--timestamps", "--tail", "60"], self.env, timeout=60)
        return "(no logs)"

    def containers(self, service: str) -> list[str]:
        """Ids of the service's containers, running or not."""
        out = run(
            [
                "docker",
                "ps",
                "--all",
                "--quiet",
                "--filter",
                f"label=com.docker.compose.project={self.project}",
                "--filter",
                f"label=com.docker.compose.service={service}",
            ]
        )
        return out.split()

    def make(self, target: str) -> str:
        return run(["make", "--no-print-directory", target, f"COMPOSE={shlex.join(self.compose)}"], self.env)


def inspect(container: str, template: str) -> str:
    return run(["docker", "inspect", "--format", template, container]).strip()


def edge_of_node(cluster: Cluster, node: str) -> str:
    """The edge container serving `node`: node names are `<hostname>-<pid>`, and a
    container's hostname is its short id."""
    hostname = node.rsplit("-", 1)[0]
    (found,) = [c for c in cluster.containers("edge") if inspect(c, "{{.Config.Hostname}}") == hostname]
    return found


def busiest_nats(cluster: Cluster) -> tuple[str, int]:
    """The NATS service with the most client connections (edges), from its monitoring port."""
    counts: dict[str, int] = {}
    for service in ("nats-1", "nats-2", "nats-3"):
        (container,) = cluster.containers(service)
        connz = run(["docker", "exec", container, "wget", "-q", "-O", "-", "http://127.0.0.1:8222/connz"])
        counts[service] = int(json.loads(connz)["num_connections"])
    busiest = max(counts, key=lambda service: counts[service])
    return busiest, counts[busiest]


async def until(what: str, condition: Callable[[], bool], timeout: float = STEP_TIMEOUT) -> float:
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:g} s: {what}") from None
    return round(time.monotonic() - started, 2)


async def healthy(container: str) -> None:
    status = ""
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        status = await asyncio.to_thread(inspect, container, "{{.State.Status}} {{.State.Health.Status}}")
        if status == "running healthy":
            return
        await asyncio.sleep(1)
    raise AssertionError(f"{container} is not healthy after {STEP_TIMEOUT:g} s: {status}")


class Watcher:
    """The client in the room: what it received, on which nodes, and how each connection ended."""

    def __init__(self, cluster: Cluster, room: str) -> None:
        self.cluster = cluster
        self.room = room
        self.start_seq = 0
        self.seqs: list[int] = []
        self.numbers: list[int] = []
        self.nodes: list[str] = []
        self.close_codes: list[int | None] = []
        self.joined = asyncio.Event()

    def on_state(self, state: str, info: Any) -> None:
        if state == "connected":
            self.nodes.append(str(info.get("node")))
        elif state == "reconnecting":
            self.close_codes.append(info.get("code"))

    async def run(self) -> None:
        async with jetsock.connect(self.cluster.ws, token=self.cluster.token("watcher"), backoff=FAST) as client:
            client.on_state(self.on_state)
            room = await client.join(self.room)
            # None: the room held nothing yet.
            self.start_seq = room.seq or 0
            self.joined.set()
            async for msg in room:
                self.seqs.append(msg.seq)
                self.numbers.append(int(msg.data["n"]))

    def holds(self, seq: int) -> bool:
        return bool(self.seqs) and self.seqs[-1] >= seq


class Publisher:
    """A backend publishing over HTTP through HAProxy: message n is POSTed with the
    Idempotency-Key <room>-<n> until it is acknowledged (201), then n+1. A retry of a
    message the store already holds is answered with its first seq, not stored twice."""

    def __init__(self, cluster: Cluster, room: str) -> None:
        self.url = f"{cluster.http}/v1/rooms/{room}/messages"
        self.room = room
        self.headers = {"Authorization": f"Bearer {cluster.token('backend')}"}
        self.acked: list[int] = []
        self.retries = 0
        self.stop = asyncio.Event()

    @property
    def last(self) -> int:
        return self.acked[-1] if self.acked else 0

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for n in itertools.count():
                if self.stop.is_set():
                    return
                headers = {**self.headers, "Idempotency-Key": f"{self.room}-{n}"}
                while True:
                    try:
                        async with http.post(self.url, json={"n": n}, headers=headers) as response:
                            if response.status == 201:
                                self.acked.append(int((await response.json())["seq"]))
                                break
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                    self.retries += 1
                    await asyncio.sleep(0.2)
                await asyncio.sleep(PUBLISH_EVERY)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    # The image first, so that a broken Dockerfile fails here with its own output.
    # The legacy builder runs with every Docker CLI against a 20.10 engine, buildx or not.
    build = run(["docker", "build", "--tag", IMAGE, "."], {**os.environ, "DOCKER_BUILDKIT": "0"}, timeout=600)
    warnings = [line for line in build.splitlines() if "add warning:" in line]
    assert not warnings, f"the Dockerfile's user setup warns: {warnings}"
    env = {
        **os.environ,
        "JETSOCK_JWT_SECRET": secrets.token_hex(32),
        "EDGE_PASSWORD": secrets.token_hex(24),
        "BACKEND_PASSWORD": secrets.token_hex(24),
        # compose.yaml publishes HAProxy on 127.0.0.1:$HTTP_PORT; 8080 may be taken here.
        "HTTP_PORT": str(free_port()),
    }
    env.pop("BIND_ADDRESS", None)
    env.pop("COMPOSE_PROJECT_NAME", None)
    cluster = Cluster(f"jetsock-test-{secrets.token_hex(4)}", env, int(env["HTTP_PORT"]))
    try:
        try:
            cluster.up()
        except BaseException:
            print(cluster.logs())
            raise
        yield cluster
    finally:
        cluster.down()


async def ready_through_haproxy(cluster: Cluster) -> None:
    async def ready() -> bool:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with aiohttp.ClientSession() as http, http.get(cluster.http + "/readyz") as r:
                return r.status == 200
        return False

    deadline = time.monotonic() + STEP_TIMEOUT
    while not await ready():
        assert time.monotonic() < deadline, "HAProxy never answered /readyz with 200"
        await asyncio.sleep(0.5)


async def stored(cluster: Cluster, room: str) -> list[int]:
    """Every seq the room holds, read back through HAProxy with history pages."""
    seqs: list[int] = []
    async with jetsock.connect(cluster.ws, token=cluster.token("auditor"), backoff=FAST) as client:
        before: int | None = None
        while True:
            page = await client.history(room, before=before, limit=100)
            seqs[:0] = [m.seq for m in page.messages]
            if not page.more or not page.messages:
                return seqs
            before = page.messages[0].seq


@pytest.mark.timeout(600)
async def test_compose_cluster_survives_faults_through_haproxy(cluster: Cluster) -> None:
    room = f"containers.faults-{secrets.token_hex(3)}"
    report: dict[str, Any] = {"project": cluster.project}
    try:
        await ready_through_haproxy(cluster)
        watcher = Watcher(cluster, room)
        watching = asyncio.create_task(watcher.run())
        await asyncio.wait_for(watcher.joined.wait(), 30)
        publisher = Publisher(cluster, room)
        publishing = asyncio.create_task(publisher.run())
        await until("the first messages arrive", lambda: len(watcher.seqs) >= 20, 30)

        async def resumed(what: str, since: float) -> float:
            """Seconds from `since` (the fault) until 10 more messages are acknowledged and
            the client holds every message acknowledged so far."""
            count = len(publisher.acked)
            await until(f"{what}: publishing goes on", lambda: len(publisher.acked) >= count + 10)
            target = publisher.last
            await until(f"{what}: the client holds seq {target}", lambda: watcher.holds(target))
            return round(time.monotonic() - since, 2)

        # 1. The client's edge dies (SIGKILL): the client reconnects through HAProxy elsewhere.
        killed = await asyncio.to_thread(edge_of_node, cluster, watcher.nodes[-1])
        connections = len(watcher.nodes)
        fault = time.monotonic()
        await asyncio.to_thread(run, ["docker", "kill", killed])
        await until("the client reconnects after its edge was killed", lambda: len(watcher.nodes) > connections)
        report["edge_killed"] = {"resumed_s": await resumed("edge killed", fault), "now_on": watcher.nodes[-1]}
        # A killed container stays down (restart policies skip a docker kill): start it again.
        await asyncio.to_thread(run, ["docker", "start", killed])
        await healthy(killed)

        # 2. One NATS server stops (docker stop), the one holding the most edge connections,
        # so at least one edge must reconnect to another; the stream (R3) keeps a quorum.
        service, edges = await asyncio.to_thread(busiest_nats, cluster)
        (nats,) = await asyncio.to_thread(cluster.containers, service)
        fault = time.monotonic()
        await asyncio.to_thread(run, ["docker", "stop", nats])
        report["nats_stopped"] = {"service": service, "edges_on_it": edges}
        report["nats_stopped"]["resumed_s"] = await resumed("NATS stopped", fault)
        fault = time.monotonic()
        await asyncio.to_thread(run, ["docker", "start", nats])
        await healthy(nats)
        report["nats_started"] = {"resumed_s": await resumed("NATS started again", fault)}

        # 3. Every edge restarted gracefully, one at a time: the client's connection is
        # closed with 1012 during its edge's drain, at least once.
        drains = watcher.close_codes.count(1012)
        fault = time.monotonic()
        restart = await asyncio.to_thread(cluster.make, "rolling-restart")
        report["rolling_restart"] = {"took_s": round(time.monotonic() - fault, 2), "output": restart.splitlines()}
        report["rolling_restart"]["resumed_s"] = await resumed("rolling restart", fault)
        assert watcher.close_codes.count(1012) > drains, f"no close with 1012 in {watcher.close_codes}"

        publisher.stop.set()
        await asyncio.wait_for(publishing, 60)
        last = publisher.last
        await until(f"the client holds the last acknowledged seq {last}", lambda: watcher.holds(last))
        held = await stored(cluster, room)
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching

        expected = [seq for seq in held if seq > watcher.start_seq]
        got = watcher.seqs
        report.update(
            start_seq=watcher.start_seq,
            acked=len(publisher.acked),
            stored=len(expected),
            received=len(got),
            publish_retries=publisher.retries,
            nodes=watcher.nodes,
            close_codes=watcher.close_codes,
        )
        lost_acked = sorted(set(publisher.acked) - set(held))
        assert not lost_acked, f"acknowledged but not stored: {lost_acked[:10]}"
        assert publisher.acked == sorted(set(publisher.acked)), "acks must be distinct and increasing"
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        doubled = len(got) - len(set(got))
        out_of_order = sum(1 for a, b in itertools.pairwise(got) if b <= a)
        report.update(lost=len(missing), unknown=len(extra), doubled=doubled, out_of_order=out_of_order)
        assert (missing, extra, doubled, out_of_order) == ([], [], 0, 0), report
        assert got == expected
        # Idempotency keys: no publish retry stored a message twice.
        # The client joined before the first publish, so it holds message 0 onwards.
        assert watcher.numbers == list(range(len(got))), "a retried publish was stored twice"
        # Joined, moved after the kill, moved after a drain (node names may repeat: a restarted
        # container keeps its hostname, and jetsock runs as the same pid in it).
        assert len(watcher.nodes) >= 3, f"the client should have connected at least 3 times: {watcher.nodes}"
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        print(json.dumps(report, indent=2))
