"""`jetsock cluster` (`make cluster`) as a developer runs it: a secret of its own per run, printed with a
token that verifies under it; NATS with deploy/nats-server.conf's accounts, closed to anonymous clients."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import jwt
import nats

from core.embedded import free_port
from tests.conftest import connect, refused_connect
from tests.edge.devserver import JETSOCK
from tests.edge.sse import open_stream


async def start_cluster(workdir: Path) -> tuple[subprocess.Popen[bytes], Path, int]:
    port = free_port()
    log = workdir / "cluster.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOCK_")}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [JETSOCK, "cluster", "--port", str(port), "--dir", str(workdir / "cluster")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 90
    while "Ctrl-C stops all of it." not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        await asyncio.sleep(0.2)
    return process, log, port


async def test_cluster_prints_its_own_secret_and_refuses_anonymous_nats(tmp_path: Path) -> None:
    process, log, port = await start_cluster(tmp_path)
    try:
        text = log.read_text()
        secret = re.search(r"\n  secret  (\S+)  \(HS256 key of this run only\)", text)
        token = re.search(r"\n  token   (eyJ[\w-]+\.[\w-]+\.[\w-]+)", text)
        nats_urls = re.search(r"\n  NATS    (\S+)", text)
        assert secret and token and nats_urls, text
        assert len(secret.group(1)) >= 32
        assert jwt.decode(token.group(1), secret.group(1), algorithms=["HS256"])["sub"] == "dev-user"
        client = await connect(f"ws://127.0.0.1:{port}/ws", tok=token.group(1))
        await client.close()
        await stream_through_the_cluster(port, token.group(1))
        url = nats_urls.group(1).split(",")[0]
        refused = await refused_connect(url)
        assert isinstance(refused, nats.errors.Error) and "authorization" in str(refused).lower(), refused
        credentials = (tmp_path / "cluster" / "credentials.env").read_text()
        assert (tmp_path / "cluster" / "credentials.env").stat().st_mode & 0o077 == 0
        password = re.search(r"^BACKEND_PASSWORD=(\S+)$", credentials, re.MULTILINE)
        assert password
        backend = await nats.connect(url, user="backend", password=password.group(1), allow_reconnect=False)
        await backend.close()
    finally:
        os.killpg(process.pid, signal.SIGINT)
        assert await asyncio.to_thread(process.wait, 60) == 0


async def stream_through_the_cluster(port: int, token: str) -> None:
    """An HTTP stream (PROTOCOL.md 11) through the cluster's HAProxy: posts on fresh connections go
    round robin to both edges, and every one reaches the session, wherever it lives (NATS with
    deploy/nats-server.conf's edge user between them)."""
    stream = await open_stream(f"http://127.0.0.1:{port}", tok=token)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            for ref in range(6):
                url = f"http://127.0.0.1:{port}/v1/stream/{stream.session}"
                body = {"type": "ping", "ref": ref}
                async with http.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 204, (ref, r.status, await r.text())
                assert await stream.expect("pong") == {"type": "pong", "ref": ref}
    finally:
        await stream.close()
