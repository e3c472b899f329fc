"""Class 9i: local processes forging room messages through the embedded NATS of `jetsock serve`.

A `jetsock serve --dev` of this class's own, on its embedded nats-server, with
a WebSocket client joined to a room. Forgers try to reach NATS: nats-py
clients without credentials, with guessed users and passwords (the dev secret
and the dev token from the banner among them), with tokens; raw TCP clients
sending CONNECT frames of every shape and a PUB to `live.rooms.<room>`, with
or without CONNECT first. Every one is refused (`-ERR 'Authorization
Violation'`), and none gets a PONG. Even the edge's own user, whose password
only the config file holds, may not publish to `live.rooms.>`. The joined
client receives nothing forged: the next message it gets is the one
published through the edge afterwards.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from tests.conftest import Client, connect
from tests.edge.devserver import ServeProcess
from tests.hostile.conftest import Cases

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.hostile("forged NATS clients, embedded NATS")]

ROOM = "chat.lobby"
FORGED = json.dumps({"forged": True}).encode()


@pytest_asyncio.fixture(loop_scope="session")
async def embedded_edge(tmp_path: Path) -> AsyncIterator[ServeProcess]:
    edge = ServeProcess(tmp_path / "embedded-edge", env={"JETSOCK_LOG_LEVEL": "warning"})
    await edge.start()
    try:
        yield edge
    finally:
        await edge.stop()


def guesses(edge: ServeProcess) -> list[dict[str, Any]]:
    users = ["edge", "backend", "admin", "root", "sys", "$SYS", "jetsock", "", "a" * 1000]
    passwords = ["", "edge", "password", edge.secret, edge.token, "x" * 10_000]
    found: list[dict[str, Any]] = [{}]
    found += [{"user": user, "password": password} for user in users for password in passwords if user or password]
    found += [{"token": token} for token in ("", "x", edge.secret, edge.token)]
    return found


async def refusal(url: str, options: dict[str, Any]) -> str | None:
    """Why nats-py's connection was refused; None if it got in."""
    nc = NATS()
    try:
        await nc.connect(url, allow_reconnect=False, connect_timeout=3, **options)
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        return str(exc) or type(exc).__name__
    finally:
        if nc._transport is not None:
            nc._transport.close()
    await nc.close()
    return None


RAW_CONNECTS = [
    b"",
    b"CONNECT {}\r\n",
    b'CONNECT {"verbose":false,"pedantic":false,"protocol":1,"headers":true}\r\n',
    b'CONNECT {"user":"edge"}\r\n',
    b'CONNECT {"user":"edge","pass":""}\r\n',
    b'CONNECT {"auth_token":""}\r\n',
    b'CONNECT {"user":"edge","pass":null,"auth_token":null,"jwt":null,"nkey":null,"sig":null}\r\n',
    b'CONNECT {"nkey":"UAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","sig":"AAAA"}\r\n',
    b'CONNECT {"jwt":"eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.AAAA"}\r\n',
    b"CONNECT not json\r\n",
    b"CONNECT " + b"{" * 5000 + b"\r\n",
]


async def raw_attempt(host: str, port: int, connect_line: bytes) -> bytes:
    """What the server answers a raw client that sends `connect_line`, then a forged PUB and a PING,
    up to the end of the connection (it must end: the server drops a client it refuses)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        info = await asyncio.wait_for(reader.readline(), 5)
        assert info.startswith(b"INFO "), info
        # A live message as the stream's RePublish would send it, with a sequence far ahead.
        headers = b"NATS/1.0\r\nNats-Sequence: 999999\r\nNats-Last-Sequence: 0\r\n\r\n"
        subject = f"live.rooms.{ROOM}".encode()
        publish = b"HPUB %s %d %d\r\n" % (subject, len(headers), len(headers) + len(FORGED)) + headers + FORGED
        writer.write(connect_line + publish + b"\r\nPUB " + subject + b" 1\r\nx\r\nPING\r\n")
        await writer.drain()
        answer = b""
        try:
            async with asyncio.timeout(10):
                while chunk := await reader.read(4096):
                    answer += chunk
        except ConnectionError:
            pass
        except TimeoutError:
            answer += b"\r\n(still open after 10 s)"
        return answer
    finally:
        writer.close()


async def next_frame(client: Client) -> dict[str, Any]:
    return await client.recv(timeout=5)


async def test_forgers_are_refused_and_nothing_forged_reaches_a_client(
    embedded_edge: ServeProcess, cases: Cases
) -> None:
    url = embedded_edge.nats_url
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    client = await connect(embedded_edge.url, tok=embedded_edge.token)
    failures: list[str] = []
    try:
        assert (await client.request(type="join", room=ROOM))["type"] == "joined"
        reasons: dict[str, int] = {}
        for options in guesses(embedded_edge):
            why = await refusal(url, options)
            cases.add()
            if why is None:
                failures.append(f"nats-py with {sorted(options)} {str(options)[:80]} connected")
            else:
                # Authorization Violation, or refused earlier (a CONNECT over the server's control-line limit).
                reasons[why[:60]] = reasons.get(why[:60], 0) + 1
        for line in RAW_CONNECTS:
            answer = await raw_attempt(parts.hostname, parts.port, line)
            cases.add()
            # The server closes the connection (with -ERR, or silently for a CONNECT it cannot parse); never PONG.
            if b"PONG" in answer or b"+OK" in answer or b"still open" in answer:
                failures.append(f"raw {line[:60]!r}: {answer[:200]!r}")
            first = answer.split(b"\r\n", 1)[0].decode(errors="replace")[:60] or "(closed without a word)"
            reasons[first] = reasons.get(first, 0) + 1
        cases.note("refusals", reasons)
        # The edge's own user, with the password only the config file holds, may not forge either.
        config = (embedded_edge.store_dir / "nats-server.conf").read_text()
        match = re.search(r'password: "([^"]+)"', config)
        assert match
        errors: list[str] = []

        async def record(exc: Exception) -> None:
            errors.append(str(exc).lower())

        as_edge = await nats.connect(url, user="edge", password=match.group(1), error_cb=record, allow_reconnect=False)
        try:
            await as_edge.publish(f"live.rooms.{ROOM}", FORGED, headers={"Nats-Sequence": "999999"})
            await as_edge.flush()
            async with asyncio.timeout(5):
                while not errors:
                    await asyncio.sleep(0.02)
            cases.add()
            if not any(f'permissions violation for publish to "live.rooms.{ROOM}"' in e for e in errors):
                failures.append(f"the edge user published to live.rooms: {errors}")
        finally:
            await as_edge.close()
        # What the client gets next is the message published through the edge, nothing forged.
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{embedded_edge.http}/v1/rooms/{ROOM}/messages",
                json={"real": True},
                headers={"Authorization": f"Bearer {embedded_edge.token}"},
            ) as r,
        ):
            assert r.status == 201
            seq = (await r.json())["seq"]
        frame = await next_frame(client)
        assert frame["type"] == "msg" and (frame["seq"], frame["data"]) == (seq, {"real": True}), frame
        assert (await client.request(type="ping"))["type"] == "pong"
    finally:
        await client.close()
    assert not failures, f"{len(failures)} forgers got in:\n" + "\n".join(failures[:40])
