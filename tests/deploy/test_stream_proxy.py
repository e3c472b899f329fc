"""HTTP streams (PROTOCOL.md section 11) through the HAProxy jetsock ships, for real.

A real `haproxy` runs deploy/haproxy.cfg (as `make cluster` does: LB_BIND and
LB_EDGE1/LB_EDGE2) in front of two edges, which reach each other over a
nats-server with the deployed edge permissions (core/natsauth.py's, equal to
deploy/nats-server.conf's). A stream opened through HAProxy lands on one edge; its
client's posts, through HAProxy on fresh connections, land on both (round robin) and
all reach the session, in order; each event comes through at once (without
`option http-no-delay`, ~200 ms late). Then, with the file's timeouts cut to 2 s
and a heartbeat of 3 s, the held response outlives `timeout server` and `timeout
client` thanks to the stream path's own server timeout, and without that line it
is cut: the setting is what keeps streams alive, not luck.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from core.embedded import EmbeddedNats, free_port
from core.natsauth import EdgeCredentials, edge_only_server
from tests.conftest import Edge, edge_settings
from tests.edge.sse import open_stream

REPO = Path(__file__).resolve().parents[2]
HAPROXY_CFG = REPO / "deploy" / "haproxy.cfg"
STREAM_TIMEOUT_LINE = "    http-request set-timeout server 1h if { path /v1/stream }\n"


def haproxy_binary() -> str:
    binary = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None
    )
    if binary is None:
        pytest.fail("haproxy is not installed: `make test` installs it as root (apt-get install haproxy)")
    return binary


class HAProxy:
    """deploy/haproxy.cfg (or an edited copy) in front of the given edges, on a free port."""

    def __init__(self, workdir: Path, edges: list[Edge], edit: Callable[[str], str] | None = None) -> None:
        self.port = free_port()
        config = HAPROXY_CFG.read_text()
        if edit is not None:
            config = edit(config)
            self.config = workdir / f"haproxy-{self.port}.cfg"
            self.config.write_text(config)
        else:
            self.config = HAPROXY_CFG
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LB_BIND": f"127.0.0.1:{self.port}"}
        for i, edge in enumerate(edges, start=1):
            self.env[f"LB_EDGE{i}"] = f"127.0.0.1:{edge.settings.port}"
        self.log = workdir / f"haproxy-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> HAProxy:
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [haproxy_binary(), "-W", "-db", "-f", str(self.config)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        async with aiohttp.ClientSession() as http, asyncio.timeout(15):
            while True:
                assert self.process.poll() is None, self.log.read_text()
                try:
                    async with http.get(self.http + "/readyz") as r:
                        if r.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def fenced_nats(tmp_path: Path) -> Iterator[tuple[EmbeddedNats, EdgeCredentials]]:
    server, credentials = edge_only_server(tmp_path / "nats", 0, "ROOMS")
    server.start()
    yield server, credentials
    server.stop()


@pytest.fixture
async def make_fenced_edge(fenced_nats: tuple[EmbeddedNats, EdgeCredentials]) -> AsyncIterator[Any]:
    server, credentials = fenced_nats
    edges: list[Edge] = []

    async def factory(**overrides: Any) -> Edge:
        settings = edge_settings(
            server.url, nats_user=credentials.user, nats_password=credentials.password, **overrides
        )
        edge = await Edge(settings, settings.nats_servers).start()
        edges.append(edge)
        return edge

    yield factory
    for edge in edges:
        await edge.stop()


@pytest.fixture
async def proxies(tmp_path: Path) -> AsyncIterator[list[HAProxy]]:
    started: list[HAProxy] = []
    yield started
    for proxy in started:
        proxy.stop()


def count_posts(edge: Edge) -> list[str]:
    """Record the sessions this edge is asked to post to (wherever the session lives)."""
    assert edge.node.streams is not None
    router = edge.node.streams.router
    seen: list[str] = []
    post = router.post

    async def counted(session: str, sub: str, frames: list[bytes]) -> str:
        seen.append(session)
        return await post(session, sub, frames)

    router.post = counted  # type: ignore[method-assign]
    return seen


async def test_a_stream_through_haproxy_opens_on_one_edge_and_takes_posts_through_both(
    make_fenced_edge: Any, proxies: list[HAProxy], tmp_path: Path
) -> None:
    first, second = await make_fenced_edge(node="edge-1"), await make_fenced_edge(node="edge-2")
    posted = {"edge-1": count_posts(first), "edge-2": count_posts(second)}
    proxy = await HAProxy(tmp_path, [first, second]).start()
    proxies.append(proxy)
    stream = await open_stream(
        proxy.http,
        frames=[{"type": "join", "room": "proxy.room", "ref": "j"}],
        headers={"Accept-Encoding": "gzip"},
    )
    try:
        headers = stream.response.headers
        assert stream.status == 200 and headers["Content-Type"].startswith("text/event-stream")
        assert "Content-Encoding" not in headers and headers.get("Transfer-Encoding") == "chunked"
        assert stream.welcome is not None and stream.welcome["node"] in posted
        assert (await stream.expect("joined"))["ref"] == "j"
        # Fresh connections: HAProxy balances each one to the next edge.
        fresh = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=fresh) as http:
            total = 0
            for turn in range(8):
                frames = [
                    {"type": "publish", "room": "proxy.room", "data": {"n": total + i}, "ref": total + i}
                    for i in range(3)
                ]
                url = f"{proxy.http}/v1/stream/{stream.session}"
                async with http.post(url, json=frames, headers={"Authorization": stream.auth or ""}) as r:
                    assert r.status == 204, (turn, await r.text())
                total += len(frames)
            acks: dict[int, int] = {}
            msgs: list[dict[str, Any]] = []
            async with asyncio.timeout(10):
                while len(acks) < total or len(msgs) < total:
                    frame = await stream.recv()
                    if frame["type"] == "ack":
                        acks[frame["ref"]] = frame["seq"]
                    else:
                        assert frame["type"] == "msg", frame
                        msgs.append(frame)
            assert [m["data"]["n"] for m in msgs] == list(range(total))
            assert [acks[ref] for ref in range(total)] == [m["seq"] for m in msgs]
            assert all(len(sessions) >= 2 for sessions in posted.values()), {k: len(v) for k, v in posted.items()}
            # Each event comes through at once: a ping's pong, posted through the proxy, well under 200 ms.
            times = []
            for ref in range(10):
                started = time.monotonic()
                async with http.post(
                    f"{proxy.http}/v1/stream/{stream.session}",
                    json={"type": "ping", "ref": ref},
                    headers={"Authorization": stream.auth or ""},
                ) as r:
                    assert r.status == 204
                assert await stream.expect("pong") == {"type": "pong", "ref": ref}
                times.append(time.monotonic() - started)
            assert statistics.median(times) < 0.1, times
    finally:
        await stream.close()


@pytest.mark.parametrize("stream_timeout", [True, False], ids=["as shipped", "without the stream timeout"])
async def test_the_held_response_outlives_haproxys_timeouts_because_of_the_stream_timeout(
    make_fenced_edge: Any, proxies: list[HAProxy], tmp_path: Path, stream_timeout: bool
) -> None:
    """Timeouts cut to 2 s, a keepalive every 3 s and nothing else on the response: only the
    stream path's own server timeout keeps it open."""

    def shortened(config: str) -> str:
        assert STREAM_TIMEOUT_LINE in config
        config = config.replace("    timeout client 30s\n", "    timeout client 2s\n")
        config = config.replace("    timeout server 30s\n", "    timeout server 2s\n")
        return config if stream_timeout else config.replace(STREAM_TIMEOUT_LINE, "")

    edge = await make_fenced_edge(heartbeat=3.0)
    proxy = await HAProxy(tmp_path, [edge], shortened).start()
    proxies.append(proxy)
    stream = await open_stream(proxy.http)
    alive = True

    async def keep_posting() -> None:
        # An empty array: life for the heartbeat check, and no event on the response.
        async with aiohttp.ClientSession() as http:
            while alive:
                url = f"{proxy.http}/v1/stream/{stream.session}"
                async with http.post(url, json=[], headers={"Authorization": stream.auth or ""}) as r:
                    if r.status != 204:
                        return
                await asyncio.sleep(1.0)

    poster = asyncio.create_task(keep_posting())
    try:
        opened = time.monotonic()
        ended: float | None = None
        try:
            frame = await stream.next(timeout=8.0)
            assert frame is None or frame["type"] == "close", frame
            ended = time.monotonic() - opened
        except TimeoutError:
            pass
    finally:
        alive = False
        await poster
        await stream.close()
    keepalives = [at for at, text in stream.comments if text == "keepalive"]
    if stream_timeout:
        assert ended is None, f"the stream ended after {ended:.1f} s:\n{proxy.log.read_text()[-2000:]}"
        assert len(keepalives) >= 2
    else:
        assert ended is not None and ended < 4.0, "without it HAProxy's `timeout server` cuts the stream"
        assert "sD" in proxy.log.read_text(), "cut by the server-side timeout in the data phase"
