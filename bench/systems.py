"""The systems under test, started the way their users run them, with a backend that publishes.

jetsock: `jetsock serve --workers N` (its own supervisor) on an embedded
nats-server; backends publish straight into JetStream with nats-py.
python-socketio: N `bench.peer_socketio` processes on one port (SO_REUSEPORT)
and a local redis-server; backends publish with a write-only AsyncRedisManager.
Both restart a killed worker after the same pause (jetsock's supervisor does;
for the peer, this module does what its process manager would).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats
import redis.asyncio
import socketio
from aiohttp import web
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from bench import procstat
from core.embedded import EmbeddedNats, die_with_parent, free_port
from edge.workers import RESTART_PAUSE

SECRET = "bench-secret-that-is-long-enough-for-hs256"
HOST = "127.0.0.1"


class System(ABC):
    name = ""
    protocol = ""
    """The client protocol its load generators speak (bench.clients.CLIENTS)."""

    def __init__(self, workdir: Path, workers: int) -> None:
        self.workdir = workdir
        self.workers = workers
        self.port = free_port()

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    def server_pids(self) -> list[int]:
        """The processes that serve WebSockets: their CPU and RSS are the system's."""

    @abstractmethod
    def infra_pids(self) -> list[int]:
        """The broker behind them (nats-server, redis-server), reported apart."""

    @abstractmethod
    async def publish(self, room: str, data: dict[str, Any]) -> None:
        """What a backend does to send `data` to everyone in `room`."""

    async def kill_worker(self) -> None:
        """SIGKILL one serving process; it comes back after the same pause for every system."""
        os.kill(self.server_pids()[0], signal.SIGKILL)

    @abstractmethod
    async def stop(self) -> None: ...

    async def wait_listening(self, path: str | None, timeout: float = 30.0) -> None:
        """Until `path` answers over HTTP (or, for None, until the port accepts)."""
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    if path is None:
                        _reader, writer = await asyncio.open_connection(HOST, self.port)
                        writer.close()
                        return
                    async with http.get(f"http://{HOST}:{self.port}{path}") as response:
                        if response.status == 200:
                            return
                except (aiohttp.ClientError, OSError):
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"{self.name} did not answer on port {self.port} within {timeout} s")
                await asyncio.sleep(0.1)


class Jetsock(System):
    name = "jetsock"
    protocol = "jetsock"

    def __init__(self, workdir: Path, workers: int) -> None:
        super().__init__(workdir, workers)
        # With its monitoring endpoint: the history scenario counts the edge's requests in /varz.
        self.monitor_port = free_port()
        self.nats = EmbeddedNats(workdir / "nats", extra_args=["-m", str(self.monitor_port)])
        self.supervisor: subprocess.Popen[bytes] | None = None
        self.nc: NatsClient | None = None
        self.js: JetStreamContext | None = None
        self.extra_env: dict[str, str] = {}
        """Settings a scenario adds (the presence scenario's JETSOCK_PRESENCE_*), set before start()."""

    def env(self) -> dict[str, str]:
        """The edges' environment, before the telemetry settings."""
        return {
            **os.environ,
            "JETSOCK_NATS_URL": self.nats.url,
            "JETSOCK_JWT_SECRET": SECRET,
            "JETSOCK_PORT": str(self.port),
            "JETSOCK_WORKERS": str(self.workers),
            "JETSOCK_LOG_LEVEL": "warning",
            "JETSOCK_DRAIN_SECONDS": "1",
            # The fd hard limit (20,000) less what a worker needs besides client sockets.
            "JETSOCK_MAX_CONNECTIONS": "19900",
            **self.extra_env,
        }

    async def start(self) -> None:
        self.nats.start()
        env = {**self.env(), **await self.telemetry_env()}
        jetsock = Path(sys.executable).parent / "jetsock"
        self.supervisor = subprocess.Popen([str(jetsock), "serve"], env=env, preexec_fn=die_with_parent)
        await self.wait_listening("/readyz")
        while len(self.server_pids()) < self.workers:
            await asyncio.sleep(0.1)
        await self.connect_backend()

    async def connect_backend(self) -> None:
        self.nc = await nats.connect(self.nats.url)
        self.js = self.nc.jetstream()

    async def telemetry_env(self) -> dict[str, str]:
        """Telemetry as deployed by default: metrics on for /metrics, no OTLP export."""
        return {}

    def server_pids(self) -> list[int]:
        assert self.supervisor is not None
        return procstat.children(self.supervisor.pid)

    def infra_pids(self) -> list[int]:
        assert self.nats.process is not None
        return [self.nats.process.pid]

    async def varz(self) -> dict[str, Any]:
        """nats-server's /varz: `in_msgs` counts the messages clients sent it (requests included)."""
        url = f"http://{HOST}:{self.monitor_port}/varz"
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            data: dict[str, Any] = await response.json()
            return data

    async def publish(self, room: str, data: dict[str, Any]) -> None:
        assert self.js is not None
        await self.js.publish(f"rooms.{room}", json.dumps(data).encode())

    async def stop(self) -> None:
        if self.nc is not None:
            await self.nc.close()
        if self.supervisor is not None:
            self.supervisor.terminate()
            await asyncio.to_thread(self.supervisor.wait)
        self.nats.stop()


class JetsockEdges(Jetsock):
    """`workers` separate edges (`jetsock serve`, one process each, each its own node and port) on one
    nats-server: a cluster of nodes that clients can be sent to one by one (the presence scenario).

    `port` is the first edge's; `ports` lists them all, `edge_pids()` gives each edge's process."""

    name = "jetsock-edges"

    def __init__(self, workdir: Path, workers: int) -> None:
        super().__init__(workdir, workers)
        self.ports = [self.port, *(free_port() for _ in range(workers - 1))]
        self.edges: list[subprocess.Popen[bytes]] = []

    async def start(self) -> None:
        self.nats.start()
        jetsock = Path(sys.executable).parent / "jetsock"
        base = {**self.env(), **await self.telemetry_env(), "JETSOCK_WORKERS": "1"}
        for index, port in enumerate(self.ports):
            env = {**base, "JETSOCK_PORT": str(port), "JETSOCK_NODE": f"edge-{index}"}
            self.edges.append(subprocess.Popen([str(jetsock), "serve"], env=env, preexec_fn=die_with_parent))
        first = self.port
        try:
            for port in self.ports:
                self.port = port
                await self.wait_listening("/readyz")
        finally:
            self.port = first
        await self.connect_backend()

    def server_pids(self) -> list[int]:
        return [edge.pid for edge in self.edges if edge.poll() is None]

    def edge_pids(self) -> list[int]:
        """Each edge's process, in the order of `ports` (a dead one too: its CPU reads 0)."""
        return [edge.pid for edge in self.edges]

    async def metrics(self, index: int) -> str:
        """Edge `index`'s /metrics (Prometheus text)."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://{HOST}:{self.ports[index]}/metrics") as response,
        ):
            return await response.text()

    async def stop(self) -> None:
        if self.nc is not None:
            await self.nc.close()
        for edge in self.edges:
            edge.terminate()
        for edge in self.edges:
            await asyncio.to_thread(edge.wait)
        self.nats.stop()


class RedisBacked(System):
    """A socket.io peer whose processes share rooms over a local redis-server (nothing kept on disk)."""

    def __init__(self, workdir: Path, workers: int) -> None:
        super().__init__(workdir, workers)
        self.redis_port = free_port()
        self.redis: subprocess.Popen[bytes] | None = None

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.redis_port}"

    def start_redis(self) -> None:
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise RuntimeError(f"the {self.name} peer needs redis-server: apt-get install redis-server")
        self.redis = subprocess.Popen(
            [redis_server, "--port", str(self.redis_port), "--bind", HOST, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )

    def infra_pids(self) -> list[int]:
        assert self.redis is not None
        return [self.redis.pid]


class PythonSocketIO(RedisBacked):
    name = "python-socketio"
    protocol = "python-socketio"

    def __init__(self, workdir: Path, workers: int) -> None:
        super().__init__(workdir, workers)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.emitter: socketio.AsyncRedisManager | None = None
        self.watchdog: asyncio.Task[None] | None = None

    def _start_worker(self) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "bench.peer_socketio", "--port", str(self.port)]
        args += ["--redis", self.redis_url, "--secret", SECRET]
        # Its own log: a peer out of file descriptors logs an error per accept attempt.
        with open(self.workdir / f"peer-{len(self.processes)}.log", "ab") as log:
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)

    async def start(self) -> None:
        self.start_redis()
        self.processes = [self._start_worker() for _ in range(self.workers)]
        await self.wait_listening(None)
        self.emitter = socketio.AsyncRedisManager(self.redis_url, write_only=True)
        self.watchdog = asyncio.create_task(self._restart_dead())

    async def _restart_dead(self) -> None:
        while True:
            for index, process in enumerate(self.processes):
                if process.poll() is not None:
                    await asyncio.sleep(RESTART_PAUSE)
                    self.processes[index] = self._start_worker()
            await asyncio.sleep(0.2)

    def server_pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.poll() is None]

    async def publish(self, room: str, data: dict[str, Any]) -> None:
        assert self.emitter is not None
        await self.emitter.emit("msg", {"room": room, **data}, room=room, namespace="/")

    async def stop(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
        for process in [*self.processes, *([self.redis] if self.redis else [])]:
            process.terminate()
        for process in [*self.processes, *([self.redis] if self.redis else [])]:
            await asyncio.to_thread(process.wait)


NODE_PEER = Path(__file__).parent / "peer_node_socketio"
"""bench/peer_node_socketio: its server.js, and its npm packages once `make bench-deps` installed them."""


class NodeSocketIO(RedisBacked):
    """Node's socket.io 4 (bench/peer_node_socketio/server.js): the cluster module's primary and
    its workers (all counted as the server), the redis adapter on a local redis-server, and
    backends emitting through redis as @socket.io/redis-emitter does. Its clients speak the same
    Engine.IO 4 / Socket.IO 5 protocol as python-socketio's, so they are the same load generators."""

    name = "node-socketio"
    protocol = "python-socketio"

    def __init__(self, workdir: Path, workers: int) -> None:
        super().__init__(workdir, workers)
        self.primary: subprocess.Popen[bytes] | None = None
        self.emitter: redis.asyncio.Redis | None = None

    async def start(self) -> None:
        node = shutil.which("node")
        if node is None or not (NODE_PEER / "node_modules" / ".package-lock.json").exists():
            raise RuntimeError("the node-socketio peer needs node and its packages: make bench-deps")
        self.start_redis()
        env = {
            **os.environ,
            "PORT": str(self.port),
            "HOST": HOST,
            "REDIS_URL": self.redis_url,
            "SECRET": SECRET,
            "WORKERS": str(self.workers),
            "RESTART_PAUSE": str(RESTART_PAUSE),
        }
        with open(self.workdir / "node-peer.log", "ab") as log:
            self.primary = subprocess.Popen(
                [node, str(NODE_PEER / "server.js")],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        await self.wait_listening(None)
        self.emitter = redis.asyncio.Redis(host=HOST, port=self.redis_port)

    def _workers(self) -> list[int]:
        if self.primary is None or self.primary.poll() is not None:
            return []
        try:
            text = Path(f"/proc/{self.primary.pid}/task/{self.primary.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def server_pids(self) -> list[int]:
        return (
            [self.primary.pid] if self.primary is not None and self.primary.poll() is None else []
        ) + self._workers()

    async def kill_worker(self) -> None:
        """SIGKILL one worker (not the primary); the primary forks another after RESTART_PAUSE."""
        os.kill(self._workers()[0], signal.SIGKILL)

    async def publish(self, room: str, data: dict[str, Any]) -> None:
        """What @socket.io/redis-emitter sends for `io.to(room).emit("msg", …)`: msgpack of [uid,
        packet, options] on the adapter's channel for that room."""
        packet = {"type": 2, "data": ["msg", {"room": room, **data}], "nsp": "/"}
        options = {"rooms": [room], "except": [], "flags": {}}
        assert self.emitter is not None
        await self.emitter.publish(f"socket.io#/#{room}#", msgspec.msgpack.encode(["emitter", packet, options]))

    async def stop(self) -> None:
        for process in (self.primary, self.redis):
            if process is not None:
                process.terminate()
        for process in (self.primary, self.redis):
            if process is not None:
                await asyncio.to_thread(process.wait)
        if self.emitter is not None:
            await self.emitter.aclose()


class JetsockTelemetryOff(Jetsock):
    """jetsock with metrics off (and no traces): the baseline for telemetry's cost."""

    name = "jetsock-telemetry-off"

    async def telemetry_env(self) -> dict[str, str]:
        return {"JETSOCK_METRICS": "false"}


class JetsockOtlp(Jetsock):
    """jetsock with everything on: metrics and sampled traces pushed over OTLP/HTTP to a local sink."""

    name = "jetsock-otlp"

    def __init__(self, workdir: Path, workers: int) -> None:
        super().__init__(workdir, workers)
        self.sink: web.AppRunner | None = None
        self.received = 0

    async def telemetry_env(self) -> dict[str, str]:
        async def accept(request: web.Request) -> web.Response:
            await request.read()
            self.received += 1
            return web.Response(status=200, content_type="application/x-protobuf")

        app = web.Application()
        app.router.add_post("/v1/{signal}", accept)
        self.sink = web.AppRunner(app, access_log=None)
        await self.sink.setup()
        port = free_port()
        await web.TCPSite(self.sink, HOST, port).start()
        return {"JETSOCK_OTLP_ENDPOINT": f"http://{HOST}:{port}", "JETSOCK_TRACE_SAMPLE_RATIO": "0.01"}

    async def stop(self) -> None:
        await super().stop()
        if self.sink is not None:
            await self.sink.cleanup()


SYSTEMS: dict[str, type[System]] = {
    cls.name: cls for cls in (Jetsock, PythonSocketIO, NodeSocketIO, JetsockTelemetryOff, JetsockOtlp)
}
DEFAULT_SYSTEMS = ("jetsock", "python-socketio")
