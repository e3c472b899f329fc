"""The benchmark harness itself: its client, its histograms, and a small real run of it.

`make bench` is too long for CI, so these tests keep it from rotting: the lean
WebSocket client against a real aiohttp server, and `python -m bench --quick`
for the storm scenario against both real systems (jetsock on nats-server,
python-socketio on redis-server), its result files and its report, for the
history scenario (jetsock only), and the presence, compression and stream scenarios at a tinier
scale; the lean HTTP stream client against the edge's own framing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from bench import hist
from bench.__main__ import FIXED_KEYS, run
from bench.history_scenario import COST_KINDS
from bench.scenarios import QUICK
from bench.streamwire import StreamProtocol
from bench.wire import WsProtocol, deflate_message, handshake
from edge.framing import END_OF_BODY, STREAM_EVENTS, http_chunk, sse_event

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


def bench_failure(stderr: str) -> str:
    """What a failed bench run said, without the edges' JSON log lines: a stray edge that
    outlives the run can fill the tail with its reconnect warnings and hide the traceback."""
    own = [line for line in stderr.splitlines() if not line.startswith('{"ts": ')]
    logs = len(stderr.splitlines()) - len(own)
    return "\n".join(own)[-4000:] + f"\n({logs} edge log lines left out)"


def test_quick_storm_against_both_systems_writes_fixed_keys_and_a_report(tmp_path: Path) -> None:
    results = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "storm", "--results", str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert run.returncode == 0, bench_failure(run.stderr)
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
    assert run.returncode == 0, bench_failure(run.stderr)
    assert "load rate" in run.stderr and "python-socketio has no history" in run.stderr
    assert not (results / "history-python-socketio.json").exists()
    figures = json.loads((results / "history-jetsock.json").read_text())
    assert set(figures) <= set(FIXED_KEYS)
    assert {"scenario", "system", "connections", "p50_ms", "p99_ms", "catchup_s", "lost"} <= set(figures)
    assert figures["connections"] == 500 and figures["lost"] == 0
    details = json.loads((results / "details" / "history-jetsock.json").read_text())
    pages = details["pages"]
    assert pages["pages"] > 0 and pages["page_errors"] == 0 and pages["pages_unordered"] == 0
    # From the edges' history caches a page costs one direct get (the room's head); read from the
    # stream (counted in-process, the cache off), a few.
    assert 0.9 <= pages["js_requests_per_page"] <= 1.5
    assert 3 <= pages["counted"]["requests_per_page"] <= 10
    fill = details["cache_fill"]
    assert not fill["timed_out"] and fill["edge_cpu_s"] > 0 and fill["workers"] == 2
    counted = pages["counted"]
    assert abs(counted["server_counted_per_page"] - counted["requests_per_page"]) <= 0.05
    storm = details["storm"]
    assert storm["held"] == storm["joiners"] == 500 and storm["received"] == 500 * 50
    assert storm["duplicates"] == 0
    costs = details["direct_get_costs"]
    assert list(costs) == list(COST_KINDS)
    assert all(c["requests"] == 50 and c["nats_cpu_us"] >= 0 and c["round_trip_ms"] > 0 for c in costs.values())
    report = (tmp_path / "REPORT.md").read_text()
    assert "## history" in report and "python-socketio keeps no messages" in report
    assert "What each kind of direct get costs nats-server" in report and COST_KINDS["by_seq"] in report
    assert (tmp_path / "plots" / "history-page-latency.png").stat().st_size > 1000


async def test_tiny_presence_on_two_edges_through_the_runner(tmp_path: Path, monkeypatch: Any) -> None:
    """Issue 15's scenario, tiny and in-process (the quick one takes longer than a test should):
    a presence room on two edges, events, `who` on both edges, churn, and the churn variant."""
    monkeypatch.chdir(REPO)  # the load generators run `python -m bench.loadgen`
    tiny = dataclasses.replace(
        QUICK,
        presence_users=200,
        presence_interval=0.25,
        presence_join_seconds=1.0,
        presence_watchers=20,
        presence_sample_every=2,
        presence_askers=2,
        presence_idle_seconds=0.5,
        presence_who_rate=20.0,
        presence_who_seconds=1.0,
        presence_churn_rate=20.0,
        presence_churn_seconds=1.0,
        presence_variant_seconds=1.0,
        presence_profile_seconds=0.0,
        churn_concurrency=4,
    )
    results = tmp_path / "results"
    await run(["presence"], ["jetsock", "python-socketio"], True, results, scale=tiny)
    assert not (results / "presence-python-socketio.json").exists()
    figures = json.loads((results / "presence-jetsock.json").read_text())
    assert set(figures) <= set(FIXED_KEYS)
    assert {"scenario", "system", "connections", "p50_ms", "p99_ms"} <= set(figures)
    assert figures["connections"] == 220  # the users and the watchers are present
    details = json.loads((results / "details" / "presence-jetsock.json").read_text())
    assert details["failed"] == 0 and not details["errors"]
    who = details["who"]
    assert who["answered"] == who["asked"] > 0 and who["count"] == [220, 220] and who["errors"] == 0
    assert set(who["by_edge"]) == {"edge-0", "edge-1"}
    churn = details["churn"]
    assert churn["leaves"] == churn["joins"] > 0 and churn["changes"] == churn["leaves"] + churn["joins"]
    # At most one delta message per change (changes within 20 ms share one), each published once
    # and delivered to the other edge only (no echo to its sender).
    sent, received = churn["bus_sent_per_change"], churn["bus_received_per_change"]
    assert 0 < sent <= 1.05 and abs(received - sent) <= 0.1 * sent, churn
    assert 0 < churn["nats_in_msgs_per_change"] <= 1.3, churn
    for phase in (details["join"], churn):
        assert phase["settled"] and phase["events"]["received_fraction"] == 1.0
        assert phase["events"]["matched"] > 0 and phase["events"]["unmatched"] == 0
        assert 0 < phase["events"]["delay"]["p99_ms"] < 2000
    variant = details["churn_variant"]
    assert variant["plain"]["cycles"] > 0 and variant["presence"]["cycles"] > 0
    assert variant["presence"]["nats_in_msgs_per_cycle"] > variant["plain"]["nats_in_msgs_per_cycle"], variant
    assert figures.keys() <= details.keys() and details["churn_presence_overhead"] == variant["overhead"]
    report = (tmp_path / "REPORT.md").read_text()
    assert "## presence" in report and "python-socketio has no presence" in report
    assert "`who` p99 in a presence room of 220 (issue 15)" in report
    assert (tmp_path / "plots" / "presence-latency.png").stat().st_size > 1000


async def test_lean_client_negotiates_deflate_with_aiohttp_and_inflates_with_context_takeover() -> None:
    """aiohttp's server (python-socketio's) compresses with context takeover: the client keeps one inflater."""

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=True)
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                for n in range(3):  # the same text again: with context, the later ones refer back
                    await ws.send_str(f"{message.data} #{n} " + "abcdefgh" * 50)
        return ws

    app = web.Application()
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    received: list[bytes] = []
    try:
        loop = asyncio.get_running_loop()
        request = handshake("127.0.0.1", port, "/ws", deflate=True)
        _transport, proto = await loop.create_connection(
            lambda: WsProtocol(request, received.append, lambda code: None), "127.0.0.1", port
        )
        await asyncio.wait_for(proto.upgraded, 5)
        assert proto.deflate and proto.server_takeover
        proto.send_text(b"hello")  # sent compressed (RSV1), read by aiohttp
        for _ in range(100):
            if len(received) == 3:
                break
            await asyncio.sleep(0.02)
        assert received == [b"hello #%d " % n + b"abcdefgh" * 50 for n in range(3)]
        assert proto.frame_bytes < 100  # the last one, compressed against the first
        proto.close()
    finally:
        await runner.cleanup()
    assert deflate_message(b"x" * 1000) != deflate_message(b"y" * 1000)


async def test_tiny_compression_on_both_systems_through_the_runner(tmp_path: Path, monkeypatch: Any) -> None:
    """Issue 17's scenario, tiny and in-process: every variant on both systems, the targets, the report."""
    monkeypatch.chdir(REPO)
    tiny = dataclasses.replace(
        QUICK,
        compression_members=30,
        compression_rates=[],
        compression_step=0.4,
        compression_chat_clients=30,
        compression_chat_interval=0.4,
        compression_chat_seconds=0.8,
        compression_idle=30,
        compression_settle=0.1,
    )
    results = tmp_path / "results"
    await run(["compression"], ["jetsock", "python-socketio"], True, results, scale=tiny)
    by_system = {}
    for system in ("jetsock", "python-socketio"):
        figures = json.loads((results / f"compression-{system}.json").read_text())
        assert set(figures) <= set(FIXED_KEYS)
        assert {"scenario", "system", "connections", "cpu_us_per_delivery", "rss_kb_per_conn"} <= set(figures)
        details = json.loads((results / "details" / f"compression-{system}.json").read_text())
        by_system[system] = details
        assert len(details["fanout"]) == len(details["chat"]) == 4 and len(details["idle"]) == 2
        for variant in details["fanout"]:
            assert variant["members"] == 30 and variant["steps"][0]["delivered_fraction"] == 1.0, variant
        for variant in details["chat"]:
            assert variant["acked"] == variant["published"] > 0 and not variant["errors"], variant
            assert variant["deliveries"] == 10 * variant["published"], variant
        for point in details["idle"]:
            assert point["received_a_message"] == point["connections"] == 30, point
        assert {"wire_cut_2kb", "cpu_ratio_2kb_saturation", "rss_kb_per_idle_conn_delta"} <= set(details["targets"])
    jetsock, peer = by_system["jetsock"]["summary"], by_system["python-socketio"]["summary"]
    # jetsock sends the 100-byte messages plain (under compress_min_bytes) and the 2 KB ones compressed alone;
    # the peer compresses everything, each message against the ones before (context takeover).
    assert 0.95 < jetsock["100B"]["wire_cut_fanout"] < 1.05
    assert 1.8 < jetsock["2KB"]["wire_cut_fanout"] < 3.5 and 1.8 < jetsock["2KB"]["wire_cut_chat"] < 3.5
    assert peer["100B"]["wire_cut_fanout"] > 3 and peer["2KB"]["wire_cut_fanout"] > 3
    shapes = {s["payload"]: s["ratio"] for s in by_system["jetsock"]["shapes"]}
    assert shapes["8 KB feed update"] > shapes["2 KB feed update (a list of like items)"] > 1.5
    report = (tmp_path / "REPORT.md").read_text()
    assert "## compression" in report and "2 KB payload: wire bytes per delivery, off over on" in report
    assert "wire bytes per delivery of the 2 KB payload, off over on (issue 17)" in report


async def test_lean_stream_client_reads_the_edges_events_however_the_chunks_are_cut() -> None:
    """bench.streamwire against the edge's own framing (edge/framing.py): every event, the keepalive
    skipped, the close event's code, the end of the body; whole, byte by byte and in random cuts."""
    frames = [
        b'{"type":"welcome","session":"r1.abc","node":"n","heartbeat":25,"exp":1}',
        b'{"type":"joined","room":"a","epoch":"e","seq":3,"recovered":false}',
        b'{"type":"msg","room":"a","seq":4,"ts":1,"data":{"t":1.5,"n":1,"p":"x"}}',
        b'{"type":"msg","room":"a","seq":5,"ts":1,"data":"line\\nbreak escaped"}',
    ]
    body = sse_event(frames[0]) + sse_event(frames[1]) + STREAM_EVENTS.keepalive
    body += sse_event(frames[2]) + http_chunk(b"data: " + frames[3][:20]) + http_chunk(frames[3][20:] + b"\n\n")
    close = json.dumps({"type": "close", "code": 4009, "reason": "heartbeat timeout"}).encode()
    body += sse_event(close) + END_OF_BODY
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n"
    wire = head + body
    rng = random.Random(16)

    async def read(cuts: list[int]) -> tuple[list[bytes], list[int | None], bool]:
        received: list[bytes] = []
        closed: list[int | None] = []
        proto = StreamProtocol(b"", received.append, closed.append, "127.0.0.1", 1, "127.0.0.1", "token")
        ends: list[bool] = []

        class Socket:
            def close(self) -> None:
                ends.append(True)

        proto.transport = Socket()  # type: ignore[assignment]
        at = 0
        for cut in [*cuts, len(wire)]:
            proto.data_received(wire[at:cut])
            at = cut
        assert proto.upgraded.done() and proto.session == "r1.abc"
        proto.connection_lost(None)
        return received, closed, bool(ends)

    whole = await read([])
    assert whole == (frames, [4009], True)
    assert await read(list(range(1, len(wire)))) == whole
    for _ in range(20):
        assert await read(sorted(rng.sample(range(1, len(wire)), 12))) == whole


async def test_tiny_stream_beside_websocket_through_the_runner(tmp_path: Path, monkeypatch: Any) -> None:
    """Issue 16's scenario, tiny and in-process: idle sessions kept alive by their pings past two
    heartbeats (0.5 s: the edge closes a silent one with 4009), fan-out and chat over both transports."""
    monkeypatch.chdir(REPO)
    tiny = dataclasses.replace(
        QUICK,
        stream_idle=30,
        stream_idle_window=1.25,
        stream_heartbeat=0.5,
        stream_members=30,
        stream_rates=[],
        stream_step=0.4,
        stream_chat_clients=30,
        stream_chat_interval=0.4,
        stream_chat_seconds=0.5,
        stream_settle=0.05,
    )
    results = tmp_path / "results"
    await run(["stream"], ["jetsock", "python-socketio"], True, results, scale=tiny)
    assert not (results / "stream-python-socketio.json").exists()
    figures = json.loads((results / "stream-jetsock.json").read_text())
    assert set(figures) <= set(FIXED_KEYS)
    assert {"scenario", "system", "connections", "rss_kb_per_conn", "cpu_us_per_delivery", "p99_ms"} <= set(figures)
    details = json.loads((results / "details" / "stream-jetsock.json").read_text())
    idle = {(point["transport"], point["posts"]): point for point in details["idle"]}
    assert set(idle) == {("websocket", None), ("stream", "keepalive"), ("stream", "close")}
    for point in idle.values():
        # Everyone still receives after 2.5 heartbeats: the streams posted their pings.
        assert point["held"] == point["connections"] == 30 and not point["closes"] and not point["errors"], point
    for posts in ("keepalive", "close"):
        assert idle["stream", posts]["posts_per_conn_per_min"] >= 50  # a ping per heartbeat: 2 or 3 in the window
    sockets = {key: point["server_sockets_per_conn"] for key, point in idle.items()}
    # The stream and its kept post connection; alone when each post has its own (a few of the edge's own besides).
    assert 0.8 <= sockets["stream", "keepalive"] - sockets["websocket", None] <= 1.2, sockets
    assert abs(sockets["stream", "close"] - sockets["websocket", None]) <= 0.2, sockets
    for fanout in details["fanout"]:
        assert fanout["members"] == 30 and not fanout["closes"] and not fanout["errors"], fanout
        assert [s["delivered_fraction"] for s in fanout["steps"]] == [1.0, 1.0], fanout
    wire = {f["transport"]: f["wire_bytes_per_delivery"] for f in details["fanout"]}
    assert 0 < wire["stream"] - wire["websocket"] < 20  # `data: `, the blank line and the chunk's size and CRLFs
    for chat in details["chat"]:
        assert chat["acked"] == chat["published"] > 0 and not chat["errors"], chat
        assert chat["deliveries"] == 10 * chat["published"], chat
    assert next(c for c in details["chat"] if c["transport"] == "stream")["posts"] >= details["chat"][1]["published"]
    assert {"rss_ratio", "cpu_ratio_saturation"} <= set(details["targets"])
    report = (tmp_path / "REPORT.md").read_text()
    assert "## stream" in report and "idle: RSS per client after " in report
    assert "idle HTTP stream session's RSS over an idle WebSocket's, 30 each (issue 16)" in report
    assert (tmp_path / "plots" / "stream-fanout.png").stat().st_size > 1000


async def test_tiny_fanout_and_chat_against_node_socketio(tmp_path: Path, monkeypatch: Any) -> None:
    """Issue 19's peer, tiny and in-process: Node's socket.io under the cluster module on redis
    (bench/peer_node_socketio), the same lean socket.io clients, the backend emitting through
    redis in the adapter's own format. Every published message reaches every member; every
    chat publish is acknowledged and reaches its room of ten."""
    monkeypatch.chdir(REPO)
    tiny = dataclasses.replace(
        QUICK,
        fanout_members=30,
        fanout_rates=[5],
        fanout_step=1.0,
        chat_clients=30,
        chat_interval=0.5,
        chat_duration=1.0,
    )
    results = tmp_path / "results"
    await run(["fanout", "chat"], ["node-socketio"], True, results, scale=tiny)
    fanout = json.loads((results / "details" / "fanout-node-socketio.json").read_text())
    assert fanout["system"] == "node-socketio" and fanout["connections"] == 30
    assert [step["delivered_fraction"] for step in fanout["steps"]] == [1.0], fanout["steps"]
    chat = json.loads((results / "details" / "chat-node-socketio.json").read_text())
    assert chat["acked"] == chat["published"] > 0 and not chat["errors"], chat
    assert chat["deliveries"] == 10 * chat["published"], chat
    report = (tmp_path / "REPORT.md").read_text()
    assert "node-socketio" in report
