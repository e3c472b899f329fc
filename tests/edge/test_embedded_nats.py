"""`jetsock serve` without JETSOCK_NATS_URL: its embedded nats-server takes only the edge's credentials,
so nobody else can forge the live messages the edge delivers (core/natsauth.py, SECURITY.md)."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import aiohttp

from core.natsauth import EDGE_USER
from tests.conftest import SECRET, Client, connect, refused_connect, wait_ready
from tests.edge.devserver import ServeProcess


async def test_embedded_nats_refuses_everyone_but_the_edge_which_works(tmp_path: Path) -> None:
    edge = await ServeProcess(tmp_path).start()
    try:
        banner = edge.output()
        assert "it accepts only this edge's own credentials" in banner
        assert "backends publish over HTTP here" in banner
        config = edge.store_dir / "nats-server.conf"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        text = config.read_text()
        assert f'user: "{EDGE_USER}"' in text and "no_auth_user" not in text.split("accounts", 1)[1]

        client = await connect(edge.url, tok=edge.token)
        joined = await client.request(type="join", room="chat.lobby")
        assert joined["type"] == "joined"
        # Anyone else on the machine: refused before they can publish anything, live.rooms.> included.
        for options in ({}, {"user": EDGE_USER, "password": "guess"}, {"user": "backend", "password": "x"}):
            assert "authorization violation" in str(await refused_connect(edge.nats_url, **options)).lower(), options
        # What is published through the edge (over HTTP, as backends do here) is all the client gets.
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                edge.http + "/v1/rooms/chat.lobby/messages",
                json={"text": "real"},
                headers={"Authorization": f"Bearer {edge.token}"},
            ) as r,
        ):
            assert r.status == 201
            seq = (await r.json())["seq"]
        msg = await client.expect("msg")
        assert (msg["seq"], msg["data"]) == (seq, {"text": "real"})
        assert (await client.request(type="ping"))["type"] == "pong"
        await client.close()
    finally:
        assert await edge.stop() == 0


async def test_workers_connect_to_the_embedded_nats_with_its_credentials(tmp_path: Path) -> None:
    workers = 2
    serve = ServeProcess(tmp_path, args=["--workers", str(workers)], env={"JETSOCK_JWT_SECRET": SECRET})
    await serve.start(banner=False)
    try:
        await wait_ready(serve.http, serve.process, 30, serve.output)
        clients: list[Client] = []
        async with asyncio.timeout(30):
            # Both workers listen once each has reached NATS: a client per worker, at least.
            while len({c.welcome["node"] for c in clients if c.welcome}) < workers:
                clients.append(await connect(serve.url, f"u{len(clients)}"))
        for client in clients:
            assert (await client.request(type="join", room="shared"))["type"] == "joined"
        ack = await clients[0].request(type="publish", room="shared", data={"via": "workers"})
        for client in clients[1:]:
            assert (await client.expect("msg"))["seq"] == ack["seq"]
        for client in clients:
            await client.close()
        assert "Authorization Violation" not in serve.output()
    finally:
        assert await serve.stop() == 0
