"""The `compression` scenario (issue 17): permessage-deflate on vs off, on both systems, in one run.

Every variant runs twice, once with the load generator's clients offering permessage-deflate as
Chromium does (`bench.wire`: the offer, inflation, and every client message compressed) and once
without, with the bench's ~100-byte payload and a ~2 KB one (`bench.payloads`: a chat message
with its metadata). What compression costs is on the server side; what it saves is the bytes on
the wire per delivery, counted by the clients (each room message's WebSocket frame, header
included).

- fanout: one room of `compression_members` members (one in 10 decodes, the rest count); a
  backend publishes at 10 msg/s, then at the rates of `compression_rates` until deliveries/s stop
  growing (saturation): server CPU per delivery at 10 msg/s and at saturation.
- chat: `compression_chat_clients` clients in rooms of 10, each publishing once per
  `compression_chat_interval` s: server CPU per delivery and latency.
- idle: `compression_idle` connections in 2 rooms each, on a fresh system per variant (RSS after
  a wave of sockets is not comparable): RSS per connection once connected, and again after every
  connection got one 2 KB room message (the point where a per-connection compressor exists).

jetsock compresses each room message once per node and keeps no compression state per
connection (PROTOCOL.md 9.15). python-socketio serves on aiohttp, whose WebSocketResponse takes
the same offer by default (compress=True) and compresses every frame with a compressor of its own
per connection, with context takeover; its clients must inflate everything in order. The
compressibility of a few payload shapes under the edge's own compressor is computed apart
(`shapes`), with no server involved.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from typing import TYPE_CHECKING, Any

from bench import hist, payloads
from bench.conductor import Run, chat_round, progress, running
from bench.shapes import all_rooms
from core.settings import Settings
from edge.deflate import DeflateFraming

if TYPE_CHECKING:
    from bench.scenarios import Scale

WORKERS = 2
SAMPLE_EVERY = 10
PAYLOADS = ("100B", "2KB")
TARGET_WIRE_CUT = 3.0
"""Issue 17: bytes on the wire per delivery of the 2 KB payload, off over on, at least this."""
TARGET_CPU_RATIO = 1.2
"""Issue 17: server CPU per delivery with compression at most this times without, at 5,000 members."""
TARGET_RSS_KB = 0.5
"""Issue 17: RSS per idle connection, compressing or not, the same within this many KB."""
STEADY_RATE = 10
DEFAULTS = Settings()


def _label(payload: str, deflate: bool) -> str:
    return f"{payload} {'deflate' if deflate else 'plain'}"


async def _publish_at(run: Run, room: str, rate: float, seconds: float, payload: str) -> int:
    """A backend publishes `payload` messages to `room` at `rate` per second for `seconds`; the count sent."""
    started = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(rate * elapsed) + 1 - sent
        if due > 0:
            await asyncio.gather(
                *(
                    run.system.publish(room, {"t": time.time() * 1000.0, "n": 0, **payloads.body(payload)})
                    for _ in range(due)
                )
            )
            sent += due
        await asyncio.sleep(0.005)
    return sent


async def _step(run: Run, rate: float, seconds: float, payload: str) -> dict[str, Any]:
    """One fan-out step: publish, let the backlog drain (up to `seconds` more), count."""
    await run.each("reset")
    cpu_before, loadgen_before, started = run.cpu(), run.loadgen_cpu(), time.monotonic()
    sent = await _publish_at(run, "fanout.all", rate, seconds, payload)
    members = (await run.stats())["connected"]
    for _ in range(int(seconds * 10)):
        if (await run.stats())["deliveries"] >= sent * members:
            break
        await asyncio.sleep(0.1)
    elapsed, cpu = time.monotonic() - started, run.cpu() - cpu_before
    loadgen_cpu = run.loadgen_cpu() - loadgen_before
    stats = await run.stats()
    delivered = stats["deliveries"]
    return {
        "rate": rate,
        "members": members,
        "deliveries_per_s": round(delivered / elapsed),
        "delivered_fraction": round(delivered / max(sent * members, 1), 3),
        "cpu_us_per_delivery": round(cpu / max(delivered, 1) * 1e6, 3),
        "cpu_busy": round(cpu / elapsed, 2),
        "loadgen_cpu_busy": round(loadgen_cpu / elapsed, 2),
        "wire_bytes_per_delivery": round(stats["wire_bytes"] / max(delivered, 1), 1),
        **hist.summary(stats["histogram"]),
    }


async def _fanout(run: Run, scale: Scale, payload: str, deflate: bool) -> dict[str, Any]:
    label = _label(payload, deflate)
    members = scale.compression_members
    connected = await run.open("fanout", members, sample_every=SAMPLE_EVERY, deflate=deflate)
    await _publish_at(run, "fanout.all", 5, scale.compression_settle, payload)  # warm up, not counted
    await asyncio.sleep(scale.compression_settle)
    progress(f"{run.label}: fanout {label}, {STEADY_RATE} msg/s to {connected} members")
    steady = await _step(run, STEADY_RATE, scale.compression_step, payload)
    steps = [steady]
    for rate in scale.compression_rates:
        progress(f"{run.label}: fanout {label}, {rate} msg/s to {connected} members")
        steps.append(await _step(run, rate, scale.compression_step, payload))
        best_before = max(s["deliveries_per_s"] for s in steps[:-1])
        if steps[-1]["delivered_fraction"] < 0.8 or steps[-1]["deliveries_per_s"] < 1.1 * best_before:
            break
    await run.each("close")
    await asyncio.sleep(scale.compression_settle)  # what the system still had queued for them goes with the sockets
    top = max(steps, key=lambda s: s["deliveries_per_s"])
    return {
        "payload": payload,
        "deflate": deflate,
        "members": connected,
        "wire_bytes_per_delivery": steady["wire_bytes_per_delivery"],
        "cpu_us_per_delivery_10_msg_s": steady["cpu_us_per_delivery"],
        "cpu_us_per_delivery_saturation": top["cpu_us_per_delivery"],
        "deliveries_per_s_saturation": top["deliveries_per_s"],
        "saturation_rate": top["rate"],
        "steps": steps,
    }


async def _chat(run: Run, scale: Scale, payload: str, deflate: bool) -> dict[str, Any]:
    label = _label(payload, deflate)
    connected = await run.open("chat", scale.compression_chat_clients, deflate=deflate, payload=payload)
    await run.each("reset")
    progress(f"{run.label}: chat {label}, {connected} clients publishing every {scale.compression_chat_interval:g} s")
    figures, stats = await chat_round(
        run, scale.compression_chat_interval, scale.compression_chat_seconds, scale.compression_settle
    )
    return {
        "payload": payload,
        "deflate": deflate,
        "connections": connected,
        **figures,
        "wire_bytes_per_delivery": round(stats["wire_bytes"] / max(figures["deliveries"], 1), 1),
        "errors": stats["errors"],
    }


async def _idle(system: str, scale: Scale, deflate: bool) -> dict[str, Any]:
    count = scale.compression_idle
    label = f"compression {system} idle {'deflate' if deflate else 'plain'}"
    async with running(system, WORKERS, count, label) as run:
        await asyncio.sleep(scale.compression_settle)
        before = run.rss_kb()
        connected = await run.open("idle", count, deflate=deflate)
        await asyncio.sleep(scale.compression_settle)
        idle = run.rss_kb()
        rooms = all_rooms("idle", count)
        await run.each("expect", rooms={room: 1 for room in rooms})
        for room in rooms:  # one at a time, as the idle scenario does
            await run.system.publish(room, {"t": time.time() * 1000.0, "n": 1, **payloads.body("2KB")})
        for _ in range(200):
            if len((await run.stats())["caught_up_at"]) >= connected:
                break
            await asyncio.sleep(0.1)
        received = len((await run.stats())["caught_up_at"])
        await asyncio.sleep(scale.compression_settle)
        after = run.rss_kb()
    return {
        "deflate": deflate,
        "connections": connected,
        "received_a_message": received,
        "rss_kb_per_conn_idle": round((idle - before) / max(connected, 1), 2),
        "rss_kb_per_conn_after_a_message": round((after - before) / max(connected, 1), 2),
        "rss_mb": round(after / 1024, 1),
    }


def shapes() -> list[dict[str, Any]]:
    """Bytes of a few payload shapes as `msg` frames, before and after the edge's own compressor."""
    rng = random.Random(5)
    items = [
        {"id": f"evt-{i:05d}", "user": {"id": 1000 + i % 37, "name": f"user-{i % 37}"}, "score": rng.random()}
        for i in range(120)
    ]
    candidates: dict[str, Any] = {
        "bench 100 B (t, n, pad)": {"t": 1718000000000.5, "n": 7, **payloads.body("100B")},
        "bench 2 KB chat message with metadata": {"t": 1718000000000.5, "n": 7, **payloads.body("2KB", rng)},
        "2 KB feed update (a list of like items)": {"kind": "feed", "items": items[:18]},
        "8 KB feed update": {"kind": "feed", "items": items[:75]},
        "2 KB of random base64 (incompressible)": {"blob": base64.b64encode(rng.randbytes(1500)).decode()},
    }
    framing = DeflateFraming(DEFAULTS.compress_min_bytes, DEFAULTS.compress_level)
    out = []
    for name, data in candidates.items():
        frame = json.dumps(
            {"type": "msg", "room": "fanout.all", "seq": 123456, "ts": 1718000000000, "data": data},
            separators=(",", ":"),
        ).encode()
        wire = framing.message(frame)
        out.append(
            {
                "payload": name,
                "frame_bytes": len(frame),
                "compressed_frame_bytes": len(wire),
                "ratio": round((len(frame) + 4) / len(wire), 2),
            }
        )
    return out


def _summary(fanout: list[dict[str, Any]], chat: list[dict[str, Any]], idle: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 17's targets, measured: off over on, on over off."""

    def pick(rows: list[dict[str, Any]], payload: str | None, deflate: bool) -> dict[str, Any]:
        return next((r for r in rows if r.get("payload") == payload and r["deflate"] == deflate), {})

    summary: dict[str, Any] = {}
    for payload in PAYLOADS:
        off, on = pick(fanout, payload, False), pick(fanout, payload, True)
        chat_off, chat_on = pick(chat, payload, False), pick(chat, payload, True)
        summary[payload] = {
            "wire_cut_fanout": _div(off.get("wire_bytes_per_delivery"), on.get("wire_bytes_per_delivery")),
            "wire_cut_chat": _div(chat_off.get("wire_bytes_per_delivery"), chat_on.get("wire_bytes_per_delivery")),
            "cpu_ratio_fanout_10_msg_s": _div(
                on.get("cpu_us_per_delivery_10_msg_s"), off.get("cpu_us_per_delivery_10_msg_s")
            ),
            "cpu_ratio_fanout_saturation": _div(
                on.get("cpu_us_per_delivery_saturation"), off.get("cpu_us_per_delivery_saturation")
            ),
            "cpu_ratio_chat": _div(chat_on.get("cpu_us_per_delivery"), chat_off.get("cpu_us_per_delivery")),
        }
    idle_off, idle_on = pick(idle, None, False), pick(idle, None, True)
    for key in ("rss_kb_per_conn_idle", "rss_kb_per_conn_after_a_message"):
        if key in idle_off and key in idle_on:
            summary[f"{key}_delta"] = round(idle_on[key] - idle_off[key], 2)
    return summary


def _div(a: Any, b: Any) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return None
    return round(a / b, 3)


async def compression(system: str, scale: Scale) -> dict[str, Any]:
    idle = [await _idle(system, scale, deflate) for deflate in (False, True)]
    label = f"compression {system}"
    clients = max(scale.compression_members, scale.compression_chat_clients)
    fanout: list[dict[str, Any]] = []
    chat: list[dict[str, Any]] = []
    async with running(system, WORKERS, clients, label) as run:
        for payload in PAYLOADS:
            for deflate in (False, True):
                fanout.append(await _fanout(run, scale, payload, deflate))
        for payload in PAYLOADS:
            for deflate in (False, True):
                chat.append(await _chat(run, scale, payload, deflate))
    summary = _summary(fanout, chat, idle)
    big_on = next(f for f in fanout if f["payload"] == "2KB" and f["deflate"])
    chat_on = next(c for c in chat if c["payload"] == "2KB" and c["deflate"])
    return {
        "connections": big_on["members"],
        "cpu_us_per_delivery": big_on["cpu_us_per_delivery_saturation"],
        "deliveries_per_s": big_on["deliveries_per_s_saturation"],
        "rss_kb_per_conn": idle[1]["rss_kb_per_conn_after_a_message"],
        **{k: chat_on[k] for k in ("p50_ms", "p99_ms", "p999_ms") if k in chat_on},
        "summary": summary,
        "targets": {
            "wire_cut_2kb": {
                "goal": TARGET_WIRE_CUT,
                "measured": summary["2KB"]["wire_cut_fanout"],
                "met": (summary["2KB"]["wire_cut_fanout"] or 0) >= TARGET_WIRE_CUT,
            },
            "cpu_ratio_2kb_saturation": {
                "goal": TARGET_CPU_RATIO,
                "measured": summary["2KB"]["cpu_ratio_fanout_saturation"],
                "met": (summary["2KB"]["cpu_ratio_fanout_saturation"] or 99) <= TARGET_CPU_RATIO,
                "members": big_on["members"],
            },
            "cpu_ratio_2kb_10_msg_s": {
                "goal": TARGET_CPU_RATIO,
                "measured": summary["2KB"]["cpu_ratio_fanout_10_msg_s"],
                "met": (summary["2KB"]["cpu_ratio_fanout_10_msg_s"] or 99) <= TARGET_CPU_RATIO,
                "members": big_on["members"],
            },
            "rss_kb_per_idle_conn_delta": {
                "goal": TARGET_RSS_KB,
                "measured": summary.get("rss_kb_per_conn_after_a_message_delta"),
                "met": abs(summary.get("rss_kb_per_conn_after_a_message_delta", 99)) <= TARGET_RSS_KB,
            },
        },
        "fanout": fanout,
        "chat": chat,
        "idle": idle,
        "shapes": shapes(),
        "compress_level": DEFAULTS.compress_level,
        "compress_min_bytes": DEFAULTS.compress_min_bytes,
    }
