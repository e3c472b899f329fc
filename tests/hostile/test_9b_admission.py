"""Class 9b: sockets that never authenticate, from one source, against real clients from others.

An audit held 3,000 sockets with half-sent HTTP headers for minutes
(slowloris), and made 700 upgraded but unauthenticated sockets from one
address exhaust an edge with max_connections=500: every real client then
failed with 1013. Now (edge/admission.py) a socket without a complete request
head is dropped after `handshake_timeout`, sockets not yet authenticated have
a node budget of their own (`max_unauthenticated`) and no longer count
against `max_connections`, and a source past `max_unauthenticated_per_source`
or `max_connections_per_source` gets an HTTP 503 with a text body at once.

The shared world turns the per-source caps off (every attack there comes from
127.0.0.1), so this class runs a `jetsock serve` of its own. From 127.0.0.1,
for `ATTACK_SECONDS`: 3,000 slowloris slots (connect, send
"GET /ws HTTP/1.1\\r\\nHost: x\\r\\n", then one header byte a second, never the
final CRLF) and 700 slots of upgraded WebSockets that never authenticate;
each slot opens its next socket when its last one is dropped or refused, like
an attacker holding as many as it can. Meanwhile a control client from
127.0.0.2 connects, authenticates, joins a room and receives a backend's
publish, again and again, and 100 real clients from 127.0.0.3 all connect and
authenticate while the unauthenticated sockets are held. Checked: held
slowloris sockets are dropped within handshake_timeout plus a sweep and a
margin, sockets past the caps got a 503 with a text body, /metrics showed the
pending sockets (`jetsock_connections{jetsock_auth_state="pending"}`), and
afterwards the edge holds about as many file descriptors as before.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from tests.conftest import Client, token
from tests.hostile.conftest import Cases
from tests.hostile.edgeproc import EdgeProcess
from tests.hostile.rawws import RawWS
from tests.hostile.support import raise_nofile_limit

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.hostile("sockets that never authenticate")]

MAX_CONNECTIONS = 500
MAX_UNAUTHENTICATED = 300
MAX_UNAUTHENTICATED_PER_SOURCE = 100
MAX_CONNECTIONS_PER_SOURCE = 1000
HANDSHAKE_TIMEOUT = 2.0
AUTH_TIMEOUT = 2.0
SLOWLORIS = 3000
UNAUTHENTICATED = 700
LEGIT = 100
ATTACK_SECONDS = 12.0
LEGIT_AT = 4.0
"""Seconds into the attack when the 100 real clients connect."""
REFUSED_PAUSE = 2.0
"""Seconds a slot waits after a 503 before its next socket (so the attack is a siege, not a connect flood)."""
SWEEP = 1.0
"""The admission sweep's period (edge/admission.py SWEEP_INTERVAL)."""
DROP_SLACK = 3.0
"""Seconds past handshake_timeout plus a sweep that a drop may take on a busy 2-core machine."""
HELD_TOO_LONG = HANDSHAKE_TIMEOUT + SWEEP + DROP_SLACK
FD_SLACK = 10
ATTACKER = "127.0.0.1"
CONTROL = "127.0.0.2"
LEGIT_SOURCE = "127.0.0.3"
OPERATOR = "127.0.0.4"
"""Where /metrics and /proc are read from: not the attacker's address, whose budget is spent."""
ROOM = "admission.control"
PENDING = re.compile(r'^jetsock_connections\{[^}]*jetsock_auth_state="pending"[^}]*\} ([0-9.e+]+)$', re.MULTILINE)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def admission_edge(workdir: Path) -> EdgeProcess:
    return EdgeProcess(
        workdir,
        {
            "JETSOCK_NODE": "hostile-admission-edge",
            "JETSOCK_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
            "JETSOCK_MAX_UNAUTHENTICATED": str(MAX_UNAUTHENTICATED),
            "JETSOCK_MAX_UNAUTHENTICATED_PER_SOURCE": str(MAX_UNAUTHENTICATED_PER_SOURCE),
            "JETSOCK_MAX_CONNECTIONS_PER_SOURCE": str(MAX_CONNECTIONS_PER_SOURCE),
            "JETSOCK_HANDSHAKE_TIMEOUT": str(HANDSHAKE_TIMEOUT),
            "JETSOCK_AUTH_TIMEOUT": str(AUTH_TIMEOUT),
        },
    )


def refusal_body(response: bytes) -> str | None:
    """The text body of an HTTP 503 with a text/plain body; None when `response` is anything else."""
    head, sep, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not sep or not lines[0].startswith(b"HTTP/1.1 503 "):
        return None
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    if not headers.get(b"content-type", b"").startswith(b"text/plain") or not body.strip():
        return None
    return body.decode("utf-8", "replace").strip()


class Siege:
    """The attack from ATTACKER: slowloris slots and unauthenticated WebSocket slots, each reopening."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = asyncio.Event()
        self.opening = asyncio.Semaphore(200)
        """Sockets being opened at once (the listen backlog is aiohttp's 128)."""
        self.outcomes: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        """503 bodies, by text."""
        self.slowest_drop = 0.0
        self.held_too_long: list[float] = []
        self.other: list[str] = []
        self.auth_closes: Counter[str] = Counter()
        self.live = 0
        """Attack sockets open in this process right now."""
        self.peak_live = 0

    def _opened(self) -> None:
        self.live += 1
        self.peak_live = max(self.peak_live, self.live)

    async def slowloris(self) -> None:
        """Slowloris sockets: refused (503) or dropped at the handshake deadline; held past it is a failure."""
        while not self.stop.is_set():
            async with self.opening:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(ATTACKER, 0))
                except OSError as exc:
                    self.outcomes[f"slowloris: connect failed ({type(exc).__name__})"] += 1
                    await asyncio.sleep(REFUSED_PAUSE)
                    continue
            self._opened()
            started = time.monotonic()
            answer = b""
            try:
                writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
                while True:
                    try:
                        chunk = await asyncio.wait_for(reader.read(4096), 1.0)
                    except TimeoutError:
                        if time.monotonic() - started > HELD_TOO_LONG + 2:
                            break
                        writer.write(b"X")  # one more byte of a header name, never the final CRLF
                        continue
                    if not chunk:
                        break
                    answer += chunk
            except ConnectionError:
                pass
            finally:
                writer.transport.abort()
                self.live -= 1
            held = time.monotonic() - started
            if answer:
                body = refusal_body(answer)
                if body is None:
                    self.other.append(f"slowloris answered {answer[:200]!r}")
                else:
                    self.outcomes["slowloris: 503"] += 1
                    self.refusals[body] += 1
                await asyncio.sleep(REFUSED_PAUSE)
            elif held > HELD_TOO_LONG:
                self.held_too_long.append(round(held, 2))
            elif held < HANDSHAKE_TIMEOUT - 0.5:
                self.other.append(f"slowloris cut after {held:.2f} s without an answer")
            else:
                self.outcomes["slowloris: dropped at the deadline"] += 1
                self.slowest_drop = max(self.slowest_drop, held)

    async def unauthenticated(self) -> None:
        """Upgraded WebSockets that never send a token: refused (503) or closed 4501 at auth_timeout."""
        while not self.stop.is_set():
            async with self.opening:
                try:
                    ws = await RawWS.open(self.port)
                except OSError as exc:
                    self.outcomes[f"websocket: connect failed ({type(exc).__name__})"] += 1
                    await asyncio.sleep(REFUSED_PAUSE)
                    continue
            self._opened()
            try:
                if ws.status == 503:
                    rest = b""
                    try:
                        rest = await asyncio.wait_for(ws.reader.read(65536), 5)
                    except (TimeoutError, ConnectionError):
                        pass
                    body = refusal_body(ws.response_head + rest)
                    if body is None:
                        self.other.append(f"websocket refused with {(ws.response_head + rest)[:200]!r}")
                    else:
                        self.outcomes["websocket: 503"] += 1
                        self.refusals[body] += 1
                elif ws.upgraded:
                    self.outcomes["websocket: upgraded, never authenticated"] += 1
                    try:
                        code, _ = await ws.until_close(AUTH_TIMEOUT + 10)
                        closed = str(code)
                    except TimeoutError:
                        closed = "no close"
                    self.auth_closes[closed] += 1
                    continue  # reopen at once
                else:
                    self.other.append(f"websocket answered {ws.status}: {ws.response_head[:200]!r}")
            finally:
                ws.abort()
                self.live -= 1
            await asyncio.sleep(REFUSED_PAUSE)


@dataclass
class ControlLog:
    rounds: int = 0
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0


async def control_round(edge: EdgeProcess, js: Any, n: int) -> float:
    """From CONTROL: connect, authenticate, join, receive a backend's publish; the seconds it took."""
    started = time.monotonic()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(CONTROL, 0)))
    try:
        async with asyncio.timeout(15):
            ws = await session.ws_connect(
                edge.url, protocols=("jetsock.v1", "bearer." + token("admission-control")), max_msg_size=0
            )
            client = Client(session, ws)
            await client.expect("welcome")
            joined = await client.request(type="join", room=ROOM, ref=n)
            assert joined["type"] == "joined" and joined["ref"] == n, joined
            ack = await js.publish("rooms." + ROOM, json.dumps({"round": n}).encode())
            msg = await client.expect("msg", timeout=10)
            assert msg["seq"] == ack.seq and msg["data"] == {"round": n}, msg
            await ws.close()
    finally:
        await session.close()
    return time.monotonic() - started


async def pending_gauge(http: aiohttp.ClientSession, edge: EdgeProcess) -> float | None:
    async with http.get(edge.http + "/metrics") as r:
        found = PENDING.search(await r.text())
    return float(found.group(1)) if found else None


@pytest.mark.timeout(240)
async def test_slowloris_and_unauthenticated_sockets_do_not_shut_out_real_clients(tmp_path: Path, cases: Cases) -> None:
    raise_nofile_limit()
    edge = admission_edge(tmp_path / "admission")
    await edge.start()
    assert edge.process is not None and edge.nats is not None
    pid = edge.process.pid
    nc = await nats.connect(edge.nats.url)
    js = nc.jetstream()
    operator = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(OPERATOR, 0)))
    legit_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(LEGIT_SOURCE, 0), limit=0))
    siege = Siege(edge.port)
    control = ControlLog()
    legit: list[Client] = []
    legit_failures: list[str] = []
    pending_seen: list[float] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        # Warm up (one-time allocations, the room's feed), then the baseline.
        await control_round(edge, js, -1)
        await asyncio.sleep(1.0)
        fds_before = fd_count(pid)

        async def control_loop() -> None:
            n = 0
            while not siege.stop.is_set():
                try:
                    control.slowest = max(control.slowest, await control_round(edge, js, n))
                except Exception as exc:  # every kind of refusal is a failure of this class, reported at the end
                    control.failures.append(f"round {n}: {type(exc).__name__}: {str(exc)[:300]}")
                control.rounds += 1
                n += 1
                await asyncio.sleep(0.3)

        async def sampler() -> None:
            while not siege.stop.is_set():
                value = await pending_gauge(operator, edge)
                if value is not None:
                    pending_seen.append(value)
                await asyncio.sleep(0.5)

        async def one_legit(i: int) -> None:
            try:
                async with asyncio.timeout(20):
                    ws = await legit_session.ws_connect(
                        edge.url, protocols=("jetsock.v1", "bearer." + token(f"admission-legit-{i}")), max_msg_size=0
                    )
                    client = Client(legit_session, ws)
                    client.welcome = await client.expect("welcome", timeout=15)
                    legit.append(client)
            except Exception as exc:
                legit_failures.append(f"{i}: {type(exc).__name__}: {str(exc)[:300]}")

        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(siege.slowloris()) for _ in range(SLOWLORIS)]
        tasks += [loop.create_task(siege.unauthenticated()) for _ in range(UNAUTHENTICATED)]
        tasks += [loop.create_task(control_loop()), loop.create_task(sampler())]
        await asyncio.sleep(LEGIT_AT)
        held_attackers = siege.live
        await asyncio.gather(*(one_legit(i) for i in range(LEGIT)))
        legit_welcomed = len(legit)
        await asyncio.sleep(max(0.0, ATTACK_SECONDS - LEGIT_AT))
        siege.stop.set()
        async with asyncio.timeout(HELD_TOO_LONG + AUTH_TIMEOUT + 30):
            await asyncio.gather(*tasks)
        for client in legit:
            await client.ws.close()
        # Every socket of ours is closed: the edge's descriptors go back near the baseline.
        fds_after = fd_count(pid)
        deadline = time.monotonic() + 20
        while fds_after > fds_before + FD_SLACK and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            fds_after = fd_count(pid)
    finally:
        siege.stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in legit:
            await client.ws.close()
        await legit_session.close()
        await operator.close()
        await nc.close()
        await edge.stop()
    attempts = sum(siege.outcomes.values()) + len(siege.other) + len(siege.held_too_long)
    cases.add(attempts + control.rounds + LEGIT)
    report = {
        "attack sockets": dict(siege.outcomes),
        "503 bodies": dict(siege.refusals),
        "unauthenticated closes": dict(siege.auth_closes),
        "slowest slowloris drop (s)": round(siege.slowest_drop, 2),
        "slowloris held past the deadline (s)": siege.held_too_long[:10],
        "other answers": siege.other[:10],
        "attack sockets open in the test at the peak": siege.peak_live,
        "attack sockets open when the real clients came": held_attackers,
        "control rounds": control.rounds,
        "slowest control round (s)": round(control.slowest, 2),
        "real clients welcomed": legit_welcomed,
        "peak pending on /metrics": max(pending_seen, default=None),
        "edge fds before/after": [fds_before, fds_after],
    }
    cases.note("siege", report)
    assert not siege.held_too_long, f"slowloris sockets held past {HELD_TOO_LONG} s: {report}"
    assert not siege.other, report
    assert siege.outcomes["slowloris: dropped at the deadline"] > 0, report
    assert siege.outcomes["slowloris: 503"] > 0 and siege.outcomes["websocket: 503"] > 0, report
    assert set(siege.auth_closes) <= {"4501"}, report
    assert not control.failures, f"control rounds failed: {control.failures[:5]}; {report}"
    assert control.rounds >= 5, report
    assert legit_welcomed == LEGIT, f"{LEGIT - legit_welcomed} real clients were refused: {legit_failures[:5]}"
    assert pending_seen and max(pending_seen) >= MAX_UNAUTHENTICATED_PER_SOURCE / 2, report
    assert max(pending_seen) <= MAX_UNAUTHENTICATED + 1, report
    assert fds_after <= fds_before + FD_SLACK, report
