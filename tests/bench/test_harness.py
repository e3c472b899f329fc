"""The benchmark harness itself: its client, its histograms, and a small real run of it.

`make bench` is too long for CI, so these tests keep it from rotting: the lean
WebSocket client against a real aiohttp server, and `python -m bench --quick`
for the storm scenario against both real systems (jetsock on nats-server,
python-socketio on redis-server), its result files and its report, and for the
history scenario (jetsock only).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from aiohttp import WSMsgType, web

from bench import hist
from bench.__main__ import FIXED_KEYS
from bench.wire import WsProtocol, handshake

REPO = Path(__file__).parents[2]


def test_percentiles_read_the_distribution_within_the_bucket_resolution() -> None:
    histogram: dict[int, int] = {}
    for ms in range(1, 1001):  # 1..1000 ms, one sample each
        key = hist.bucket(float(ms))
        histogram[key] = histogram.get(key, 0) + 1
    merged = hist.merge([histogram, {}])
    summary = hist.summary(merged)
    assert abs(summary["p50_ms"] - 500) / 500 < 0.03
    assert abs(summary["p99_ms"] - 990) / 990 < 0.03
    assert hist.summary({}) == {}


async def test_lean_client_speaks_websocket_to_aiohttp() -> None:
    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("jetsock.v1",))
        await ws.prepare(request)
        await ws.ping(b"are you there")
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                if message.data == "bye":
                    await ws.close(code=4321)
                else:
                    await ws.send_str(message.data.upper() * 100)  # > 125 bytes: the 16-bit length form
        return ws

    app = web.Application()
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    received: list[bytes] = []
    closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
    try:
        loop = asyncio.get_running_loop()
        _transport, proto = await loop.create_connection(
            lambda: WsProtocol(handshake("127.0.0.1", port, "/ws", "jetsock.v1"), received.append, closed.set_result),
            "127.0.0.1",
            port,
        )
        await asyncio.wait_for(proto.upgraded, 5)
        proto.send_text(b"hello")
        for _ in range(50):
            if received:
                break
            await asyncio.sleep(0.05)
        assert received == [b"HELLO" * 100]
        proto.send_text(b"bye")
        assert await asyncio.wait_for(closed, 5) == 4321
    finally:
        await runner.cleanup()


def test_quick_storm_against_both_systems_writes_fixed_keys_and_a_report(tmp_path: Path) -> None:
    results = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "storm", "--results", str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    jetsock = json.loads((results / "storm-jetsock.json").read_text())
    peer = json.loads((results / "storm-python-socketio.json").read_text())
    for figures in (jetsock, peer):
        assert set(figures) <= set(FIXED_KEYS)
        assert {"scenario", "system", "connections", "lost", "machine"} <= set(figures)
        assert figures["connections"] == 300
    # jetsock resumes every client with nothing lost; the peer has no replay.
    assert jetsock["lost"] == 0
    assert jetsock["catchup_s"] > 0
    assert peer["lost"] > 0
    details = json.loads((results / "details" / "storm-jetsock.json").read_text())
    assert details["duplicates"] == 0 and details["reconnects"] > 0
    report = (tmp_path / "REPORT.md").read_text()
    assert "## storm" in report and "make bench-quick" in report
    assert (tmp_path / "plots" / "storm-caught-up.png").stat().st_size > 1000


def test_quick_history_pages_and_join_storm_on_jetsock_only(tmp_path: Path) -> None:
    """Issue 14's scenario, small: a loaded stream, paced pages, a storm of joins with `last`."""
    results = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "history", "--results", str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "load rate" in run.stderr and "python-socketio has no history" in run.stderr
    assert not (results / "history-python-socketio.json").exists()
    figures = json.loads((results / "history-jetsock.json").read_text())
    assert set(figures) <= set(FIXED_KEYS)
    assert {"scenario", "system", "connections", "p50_ms", "p99_ms", "catchup_s", "lost"} <= set(figures)
    assert figures["connections"] == 500 and figures["lost"] == 0
    details = json.loads((results / "details" / "history-jetsock.json").read_text())
    pages = details["pages"]
    assert pages["pages"] > 0 and pages["page_errors"] == 0 and pages["pages_unordered"] == 0
    # Every page is a few direct gets, whichever way they are counted.
    assert 3 <= pages["js_requests_per_page"] <= 10
    assert 3 <= pages["counted"]["requests_per_page"] <= 10
    counted = pages["counted"]
    assert abs(counted["server_counted_per_page"] - counted["requests_per_page"]) <= 0.05
    storm = details["storm"]
    assert storm["held"] == storm["joiners"] == 500 and storm["received"] == 500 * 50
    assert storm["duplicates"] == 0
    report = (tmp_path / "REPORT.md").read_text()
    assert "## history" in report and "python-socketio keeps no messages" in report
    assert (tmp_path / "plots" / "history-page-latency.png").stat().st_size > 1000
