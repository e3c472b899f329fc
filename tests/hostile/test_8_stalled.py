"""Class: joiners that stall their replay in a busy room.

An audit joined a busy room with `since`, never read, and sent a WebSocket
ping every 20 s: the edge held every live message for it (beside the replay
waiting for the client) and grew from 60 MB to 517 MB in 80 s, and the client
was never closed. Held frames now count against `max_pending_bytes`, every
replay wait has a deadline, and waiting is an event. So here 50 such joiners
in a room a backend fills at ~1 MB/s must all be closed with 4008 in bounded
time, the edge's RSS must stay within `max_pending_bytes` per stalled client
plus a margin while they are held, and the control client must not notice.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import aiohttp
import pytest

from tests.conftest import token
from tests.hostile.conftest import Cases
from tests.hostile.rawws import OP_PING, OP_TEXT, RawWS
from tests.hostile.support import Hostile

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.hostile("stalled replays in a busy room")]

BUSY = "hostile.busy"
STALLED = 50
MAX_PENDING = 1 << 20
"""The edge's max_pending_bytes (the hostile world keeps the default)."""
PER_CLIENT_BOUND = int(1.5 * MAX_PENDING)
"""What one stalled joiner may cost the edge: its outbox and held frames (max_pending_bytes together), and
the replay batch being written (a quarter of it), with room for the objects around them."""
MARGIN_KB = 40 * 1024
PAYLOAD = b'{"fill":"' + b"x" * 2000 + b'"}'


async def closes_4008(http: aiohttp.ClientSession, base: str) -> float:
    async with http.get(base + "/metrics") as response:
        text = await response.text()
    match = re.search(r'^jetsock_closes_total\{[^}]*websocket_close_code="4008"[^}]*\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def stalled_joiner(hostile: Hostile, since: int, stop: asyncio.Event) -> None:
    """Join with `since`, never read, ping every second so the heartbeat keeps it alive."""
    ws = await RawWS.open(hostile.port, ("jetsock.v1", "bearer." + token("hostile-staller", join=[BUSY])))
    assert ws.upgraded, ws.response_head
    welcome = await ws.read_frame()
    assert welcome is not None and json.loads(welcome.payload)["type"] == "welcome"
    ws.writer.transport.pause_reading()  # type: ignore[attr-defined]
    try:
        await ws.send(OP_TEXT, json.dumps({"type": "join", "room": BUSY, "since": since}).encode())
        while not stop.is_set():
            await ws.send(OP_PING, b"alive")
            await asyncio.sleep(1.0)
    except ConnectionError:
        pass  # closed by the edge
    finally:
        ws.abort()


async def test_stalled_since_joiners_are_closed_4008_and_memory_stays_bounded(hostile: Hostile, cases: Cases) -> None:
    js = hostile.js
    # A history to replay (4 MB), so each replay stalls on its client's outbox.
    first = (await js.publish("rooms." + BUSY, PAYLOAD)).seq
    for _ in range(2000):
        await js.publish("rooms." + BUSY, PAYLOAD)
    stop = asyncio.Event()
    published = 0

    async def backend() -> None:
        nonlocal published
        while not stop.is_set():
            await asyncio.gather(*(js.publish("rooms." + BUSY, PAYLOAD) for _ in range(10)))
            published += 10
            await asyncio.sleep(0.02)  # ~500 msg/s, ~1 MB/s

    async with aiohttp.ClientSession() as http:
        before = await closes_4008(http, hostile.http)
        baseline = hostile.rss_kb()
        feeder = asyncio.create_task(backend())
        joiners = [asyncio.create_task(stalled_joiner(hostile, first, stop)) for _ in range(STALLED)]
        peak = baseline
        started = time.monotonic()
        try:
            async with asyncio.timeout(60):
                while await closes_4008(http, hostile.http) < before + STALLED:
                    peak = max(peak, hostile.rss_kb())
                    await asyncio.sleep(0.1)
            took = time.monotonic() - started
        finally:
            stop.set()
            await feeder
            await asyncio.gather(*joiners, return_exceptions=True)
    cases.add(STALLED)
    grew_kb = peak - baseline
    cases.note("stalled joiners closed with 4008", STALLED)
    cases.note("seconds until all were closed", round(took, 1))
    cases.note("edge RSS growth while they were held, MB", round(grew_kb / 1024, 1))
    cases.note("messages published meanwhile", published)
    allowed_kb = STALLED * PER_CLIENT_BOUND // 1024 + MARGIN_KB
    assert grew_kb <= allowed_kb, f"RSS grew {grew_kb / 1024:.0f} MB for {STALLED} stalled joiners"
    cases.note("check_after_stalled", await hostile.check("stalled replays"))
