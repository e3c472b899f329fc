"""The `stream` scenario (issue 16): HTTP stream sessions beside WebSocket connections, in one run.

jetsock only: python-socketio's fallback is Engine.IO long-polling, another protocol with other
costs (and sticky sessions); what is measured here is what jetsock's own fallback (PROTOCOL.md
section 11) costs against its WebSocket. The load generator's clients are the same lean ones
(`bench.clients`), with `bench.streamwire` under them instead of `bench.wire`: a session opens
with `POST /v1/stream` (a bearer token, the joins in the body), reads its events as they come,
and posts a `ping` to `/v1/stream/<session>` every heartbeat (the server closes a session that
posted nothing for two with 4009), over one keep-alive connection per session, as a browser's or
the SDK's connection pool does, so that a session holds two sockets (the stream and its posts).

- idle: `stream_idle` clients in 2 rooms each (the idle scenario's rooms), on a fresh system per
  variant (RSS after a wave of sockets is not comparable; the WebSockets' system then serves the
  fan-out and the chat): WebSockets; stream sessions; stream
  sessions whose posts each have a connection of their own (`Connection: close`, the session
  alone between posts). RSS of the serving processes once connected and after
  `stream_idle_window` s idle (by then every stream session has posted its pings, so its post
  connection is open), over the clients; their sockets; their CPU over the window (heartbeats:
  a WebSocket is pinged by the server, a stream gets a keepalive comment and posts a ping); then
  one numbered message to every room: the clients still receiving are the ones held.
- fanout: one room of `stream_members` members (one in 10 decodes, the rest count), WebSockets
  then stream sessions on one system; a backend publishes at `stream_moderate_rate` msg/s (the
  latency), at 10 msg/s, then at the rates of `stream_rates` until deliveries/s stop growing
  (saturation): server CPU per delivery, wire bytes per delivery (the WebSocket frame, or the
  SSE event in its HTTP chunk), latency from the publisher's clock.
- chat: `stream_chat_clients` clients in rooms of 10 publishing once per `stream_chat_interval`
  s, WebSockets then stream sessions (whose publishes are posts, acked on the stream): server
  CPU per delivery, latency, and the posts' round trips.

Issue 16's targets stand beside the figures: an idle stream session at most 2x an idle
WebSocket's RSS, and CPU per delivery at fan-out saturation within 1.5x of WebSocket's.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from bench import hist, procstat
from bench.compression_scenario import _publish_at, _step
from bench.conductor import Run, chat_round, progress, running
from bench.shapes import all_rooms

if TYPE_CHECKING:
    from bench.scenarios import Scale

WORKERS = 2
SAMPLE_EVERY = 10
TRANSPORTS = ("websocket", "stream")
IDLE_VARIANTS = (("websocket", "keepalive"), ("stream", "keepalive"), ("stream", "close"))
"""(transport, how a stream session posts): a kept connection, or one per post. The first runs on the
system that then serves the fan-out and the chat, the others each on one of their own."""
STEADY_RATE = 10
TARGET_RSS_RATIO = 2.0
"""Issue 16: an idle stream session's RSS at most this times an idle WebSocket connection's."""
TARGET_CPU_RATIO = 1.5
"""Issue 16: CPU per delivery at fan-out saturation over the stream at most this times over WebSocket."""


def _sockets_per_client(transport: str) -> int:
    """Client sockets a session may hold (the load generators are sized by them)."""
    return 2 if transport == "stream" else 1


def _env(scale: Scale) -> dict[str, str] | None:
    return {"JETSOCK_HEARTBEAT": f"{scale.stream_heartbeat:g}"} if scale.stream_heartbeat else None


async def _idle(run: Run, scale: Scale, transport: str, posts: str) -> dict[str, Any]:
    """Idle clients on a fresh system (`run` has served nothing yet); they are closed after."""
    count = scale.stream_idle
    name = transport if transport == "websocket" else f"stream, posts {posts}"
    label = f"{run.label}: idle {name}"
    await asyncio.sleep(scale.stream_settle)
    pids = run.system.server_pids()
    before, sockets_before = run.rss_kb(), procstat.sockets(pids)
    connected = await run.open("idle", count, transport=transport, stream_posts=posts)
    await asyncio.sleep(scale.stream_settle)
    rss_connected, sockets_connected = run.rss_kb(), procstat.sockets(pids)
    await run.each("reset")
    progress(f"{label}: {connected} connected, idle for {scale.stream_idle_window:g} s")
    cpu_before, started = run.cpu(), time.monotonic()
    await asyncio.sleep(scale.stream_idle_window)
    cpu, seconds = run.cpu() - cpu_before, time.monotonic() - started
    rss_idle, sockets_idle = run.rss_kb(), procstat.sockets(pids)
    stats = await run.stats()
    held = await _probe(run, count)
    await run.each("close")
    await asyncio.sleep(scale.stream_settle)
    per = max(connected, 1)
    return {
        "transport": transport,
        "posts": posts if transport == "stream" else None,
        "attempted": count,
        "connections": connected,
        "held": held,
        "dropped_while_idle": connected - stats["connected"],
        "rss_kb_per_conn": round((rss_idle - before) / per, 2),
        "rss_kb_per_conn_connected": round((rss_connected - before) / per, 2),
        "rss_mb": round(rss_idle / 1024, 1),
        "server_sockets_per_conn": round((sockets_idle - sockets_before) / per, 2),
        "server_sockets_per_conn_connected": round((sockets_connected - sockets_before) / per, 2),
        "cpu_ms_per_conn_per_min": round(cpu * 1000 / per * 60 / seconds, 4),
        "idle_seconds": round(seconds, 1),
        "posts_per_conn_per_min": round(stats["posts"] / per * 60 / seconds, 2),
        "post_round_trip": hist.summary(stats["post_histogram"]),
        "closes": stats["closes"],
        "errors": stats["errors"],
    }


async def _probe(run: Run, count: int) -> int:
    """Clients that still receive: one numbered message to every room, and who got all of theirs."""
    rooms = all_rooms("idle", count)
    await run.each("expect", rooms={room: 1 for room in rooms})
    for room in rooms:
        await run.system.publish(room, {"t": time.time() * 1000.0, "n": 1})
    held = 0
    for _ in range(100):
        held = len((await run.stats())["caught_up_at"])
        if held >= count:
            break
        await asyncio.sleep(0.1)
    return held


def _since(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """What a counter of `Run.stats` (closes, errors: by code) gained since `before`."""
    gained = {key: n - before.get(key, 0) for key, n in after.items()}
    return {key: n for key, n in gained.items() if n > 0}


async def _fanout(run: Run, scale: Scale, transport: str) -> dict[str, Any]:
    members = scale.stream_members
    start = await run.stats()
    connected = await run.open("fanout", members, sample_every=SAMPLE_EVERY, transport=transport)
    await _publish_at(run, "fanout.all", 5, scale.stream_settle, "100B")  # warm up, not counted
    await asyncio.sleep(scale.stream_settle)
    steps = []
    for rate in [scale.stream_moderate_rate, STEADY_RATE, *scale.stream_rates]:
        progress(f"{run.label}: fanout over {transport}, {rate:g} msg/s to {connected} members")
        steps.append(await _step(run, rate, scale.stream_step, "100B"))
        if rate <= STEADY_RATE:
            continue
        best_before = max(s["deliveries_per_s"] for s in steps[:-1])
        if steps[-1]["delivered_fraction"] < 0.8 or steps[-1]["deliveries_per_s"] < 1.1 * best_before:
            break
    stats = await run.stats()
    await run.each("close")
    await asyncio.sleep(scale.stream_settle)  # what the edge still had queued for them goes with the sockets
    moderate, steady = steps[0], steps[1]
    top = max(steps, key=lambda s: s["deliveries_per_s"])
    return {
        "transport": transport,
        "members": connected,
        "moderate_rate": scale.stream_moderate_rate,
        "latency_moderate": {k: moderate[k] for k in ("p50_ms", "p99_ms", "p999_ms") if k in moderate},
        "wire_bytes_per_delivery": steady["wire_bytes_per_delivery"],
        "cpu_us_per_delivery_10_msg_s": steady["cpu_us_per_delivery"],
        "cpu_us_per_delivery_saturation": top["cpu_us_per_delivery"],
        "deliveries_per_s_saturation": top["deliveries_per_s"],
        "saturation_rate": top["rate"],
        "p99_ms_saturation": top.get("p99_ms"),
        "cpu_busy_saturation": top.get("cpu_busy"),
        "loadgen_cpu_busy_saturation": top.get("loadgen_cpu_busy"),
        "steps": steps,
        "closes": _since(stats["closes"], start["closes"]),
        "errors": _since(stats["errors"], start["errors"]),
    }


async def _chat(run: Run, scale: Scale, transport: str) -> dict[str, Any]:
    start = await run.stats()
    connected = await run.open("chat", scale.stream_chat_clients, transport=transport)
    await asyncio.sleep(scale.stream_settle)
    await run.each("reset")
    progress(
        f"{run.label}: chat over {transport}, {connected} clients publishing every {scale.stream_chat_interval:g} s"
    )
    figures, stats = await chat_round(run, scale.stream_chat_interval, scale.stream_chat_seconds, scale.stream_settle)
    return {
        "transport": transport,
        "connections": connected,
        **figures,
        "posts": stats["posts"],
        "post_round_trip": hist.summary(stats["post_histogram"]),
        "errors": _since(stats["errors"], start["errors"]),
        "closes": _since(stats["closes"], start["closes"]),
    }


def _div(a: Any, b: Any) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return None
    return round(a / b, 3)


def _same_rate(ws_steps: list[dict[str, Any]], stream_steps: list[dict[str, Any]]) -> dict[str, Any]:
    """CPU per delivery, stream over WebSocket, at the highest publish rate both transports ran:
    each one's saturation may be another rate, and a higher rate writes more per flush pass,
    which alone makes a delivery cheaper."""
    ws_by_rate = {s["rate"]: s for s in ws_steps}
    common = [s for s in stream_steps if s["rate"] in ws_by_rate]
    if not common:
        return {}
    top = max(common, key=lambda s: s["rate"])
    ws = ws_by_rate[top["rate"]]
    return {
        "rate": top["rate"],
        "websocket_cpu_us_per_delivery": ws.get("cpu_us_per_delivery"),
        "stream_cpu_us_per_delivery": top.get("cpu_us_per_delivery"),
        "ratio": _div(top.get("cpu_us_per_delivery"), ws.get("cpu_us_per_delivery")),
        "delivered_fraction": [ws.get("delivered_fraction"), top.get("delivered_fraction")],
    }


def _by(rows: list[dict[str, Any]], transport: str, posts: str | None = None) -> dict[str, Any]:
    return next((r for r in rows if r["transport"] == transport and (posts is None or r.get("posts") == posts)), {})


async def stream(system: str, scale: Scale) -> dict[str, Any]:
    """Idle WebSockets on a fresh system, which then runs the fan-out and the chat over both transports;
    idle stream sessions on a fresh system per variant."""
    label = f"stream {system}"
    clients = max(
        scale.stream_idle, max(scale.stream_members, scale.stream_chat_clients) * _sockets_per_client("stream")
    )
    idle: list[dict[str, Any]] = []
    fanout: list[dict[str, Any]] = []
    chat: list[dict[str, Any]] = []
    async with running(system, WORKERS, clients, label, env=_env(scale)) as run:
        idle.append(await _idle(run, scale, *IDLE_VARIANTS[0]))
        for transport in TRANSPORTS:
            fanout.append(await _fanout(run, scale, transport))
        for transport in TRANSPORTS:
            chat.append(await _chat(run, scale, transport))
    for transport, posts in IDLE_VARIANTS[1:]:
        count = scale.stream_idle * _sockets_per_client(transport)
        async with running(system, WORKERS, count, f"{label} ({transport}, posts {posts})", env=_env(scale)) as run:
            idle.append(await _idle(run, scale, transport, posts))
    idle_ws, idle_stream = _by(idle, "websocket"), _by(idle, "stream", "keepalive")
    idle_alone = _by(idle, "stream", "close")
    fan_ws, fan_stream = _by(fanout, "websocket"), _by(fanout, "stream")
    summary: dict[str, Any] = {
        "rss_ratio": _div(idle_stream.get("rss_kb_per_conn"), idle_ws.get("rss_kb_per_conn")),
        "rss_ratio_connected": _div(
            idle_stream.get("rss_kb_per_conn_connected"), idle_ws.get("rss_kb_per_conn_connected")
        ),
        "rss_ratio_posts_apart": _div(idle_alone.get("rss_kb_per_conn"), idle_ws.get("rss_kb_per_conn")),
        "idle_cpu_ratio": _div(idle_stream.get("cpu_ms_per_conn_per_min"), idle_ws.get("cpu_ms_per_conn_per_min")),
        "cpu_ratio_saturation": _div(
            fan_stream.get("cpu_us_per_delivery_saturation"), fan_ws.get("cpu_us_per_delivery_saturation")
        ),
        "cpu_ratio_10_msg_s": _div(
            fan_stream.get("cpu_us_per_delivery_10_msg_s"), fan_ws.get("cpu_us_per_delivery_10_msg_s")
        ),
        "cpu_ratio_same_rate": _same_rate(fan_ws.get("steps", []), fan_stream.get("steps", [])),
        "chat_cpu_ratio": _div(
            _by(chat, "stream").get("cpu_us_per_delivery"), _by(chat, "websocket").get("cpu_us_per_delivery")
        ),
    }
    rss_ratio, cpu_ratio = summary["rss_ratio"], summary["cpu_ratio_saturation"]
    return {
        "connections": idle_stream.get("held"),
        "rss_kb_per_conn": idle_stream.get("rss_kb_per_conn"),
        "cpu_us_per_delivery": fan_stream.get("cpu_us_per_delivery_saturation"),
        "deliveries_per_s": fan_stream.get("deliveries_per_s_saturation"),
        **fan_stream.get("latency_moderate", {}),
        "heartbeat": scale.stream_heartbeat or None,
        "summary": summary,
        "targets": {
            "rss_ratio": {
                "goal": TARGET_RSS_RATIO,
                "measured": rss_ratio,
                "met": rss_ratio is not None and rss_ratio <= TARGET_RSS_RATIO,
            },
            "cpu_ratio_saturation": {
                "goal": TARGET_CPU_RATIO,
                "measured": cpu_ratio,
                "met": cpu_ratio is not None and cpu_ratio <= TARGET_CPU_RATIO,
                "members": fan_stream.get("members"),
            },
        },
        "idle": idle,
        "fanout": fanout,
        "chat": chat,
    }
