"""The five scenarios of issue 6, each run the same way against every system, issue 14's
`history` (bench/history_scenario.py) and issue 15's `presence` (bench/presence_scenario.py),
jetsock only, issue 17's `compression` (bench/compression_scenario.py), both systems, and
issue 16's `stream` (bench/stream_scenario.py: HTTP stream sessions beside WebSockets), jetsock only.

Every figure is a ratio taken in one run: CPU seconds of the serving processes
(from /proc) over deliveries the clients counted, RSS over connections, and
latency from the publisher's clock in the payload (`t`, unix ms) to receipt,
on one machine. Each scenario returns the report's fixed keys (a figure it
does not measure is left out) plus its own details.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import floor, hist, profile
from bench.compression_scenario import compression
from bench.conductor import Run, progress, running
from bench.history_scenario import history
from bench.presence_scenario import presence
from bench.shapes import all_rooms
from bench.stream_scenario import stream
from bench.systems import HOST, SECRET

WORKERS = 2
FANOUT_SAMPLE_EVERY = 10
"""One fan-out member in ten measures latency; the rest count (see Run.open)."""


@dataclass(frozen=True)
class Scale:
    idle_counts: list[int] = field(default_factory=lambda: [5_000, 10_000, 20_000, 40_000])
    idle_window: float = 60.0
    fanout_members: int = 5_000
    fanout_rates: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 40, 80, 160, 320, 640])
    fanout_step: float = 8.0
    chat_clients: int = 10_000
    chat_interval: float = 10.0
    chat_duration: float = 60.0
    storm_clients: int = 10_000
    storm_per_room: int = 50
    storm_timeout: float = 60.0
    churn_seconds: float = 30.0
    churn_concurrency: int = 100
    history_rooms: int = 10_000
    history_messages: int = 1_000_000
    history_window: int = 4_000
    history_readers: int = 50
    history_rate: float = 200.0
    history_seconds: float = 30.0
    history_counted_pages: int = 200
    history_profile_seconds: float = 8.0
    history_joiners: int = 5_000
    history_cost_requests: int = 300
    history_timeout: float = 60.0
    presence_users: int = 10_000
    presence_interval: float = 1.0
    """JETSOCK_PRESENCE_INTERVAL (1 s, the default; the smoke test's tiny run shortens it)."""
    presence_join_seconds: float = 10.0
    presence_watchers: int = 1_000
    presence_sample_every: int = 10
    presence_askers: int = 20
    presence_idle_seconds: float = 5.0
    presence_who_rate: float = 50.0
    presence_who_seconds: float = 10.0
    presence_churn_rate: float = 100.0
    presence_churn_seconds: float = 20.0
    presence_variant_seconds: float = 10.0
    presence_profile_seconds: float = 6.0
    compression_members: int = 5_000
    compression_rates: list[int] = field(default_factory=lambda: [20, 40, 80, 160, 320, 640])
    """Fan-out rates after the 10 msg/s step, until saturation."""
    compression_step: float = 5.0
    compression_chat_clients: int = 10_000
    compression_chat_interval: float = 10.0
    compression_chat_seconds: float = 20.0
    compression_idle: int = 5_000
    compression_settle: float = 3.0
    """Seconds to let a system settle between phases (before RSS is read, after sockets close)."""
    stream_idle: int = 10_000
    stream_idle_window: float = 60.0
    stream_heartbeat: float = 0.0
    """JETSOCK_HEARTBEAT for the stream scenario's systems; 0: the edge's default (25 s)."""
    stream_members: int = 5_000
    stream_moderate_rate: float = 2.0
    """The fan-out rate (msg/s) whose latency is reported: moderate, far from saturation."""
    stream_rates: list[int] = field(default_factory=lambda: [20, 40, 80, 160, 320, 640])
    """Fan-out rates after the moderate and the 10 msg/s steps, until saturation."""
    stream_step: float = 5.0
    stream_chat_clients: int = 5_000
    stream_chat_interval: float = 10.0
    stream_chat_seconds: float = 20.0
    stream_settle: float = 3.0


FULL = Scale()
QUICK = Scale(
    idle_counts=[1_000],
    idle_window=5.0,
    fanout_members=300,
    fanout_rates=[5, 20],
    fanout_step=2.0,
    chat_clients=300,
    chat_interval=2.0,
    chat_duration=4.0,
    storm_clients=300,
    storm_per_room=10,
    storm_timeout=8.0,
    churn_seconds=3.0,
    churn_concurrency=10,
    history_rooms=500,
    history_messages=50_000,
    history_seconds=4.0,
    history_counted_pages=100,
    history_profile_seconds=3.0,
    history_joiners=500,
    history_cost_requests=50,
    history_timeout=20.0,
    presence_users=1_000,
    presence_join_seconds=4.0,
    presence_watchers=100,
    presence_sample_every=4,
    presence_askers=4,
    presence_idle_seconds=1.5,
    presence_who_seconds=3.0,
    presence_churn_seconds=4.0,
    presence_variant_seconds=2.0,
    presence_profile_seconds=2.0,
    compression_members=300,
    compression_rates=[40, 160],
    compression_step=2.0,
    compression_chat_clients=300,
    compression_chat_interval=2.0,
    compression_chat_seconds=4.0,
    compression_idle=1_000,
    compression_settle=1.0,
    stream_idle=1_000,
    stream_idle_window=5.0,
    stream_heartbeat=2.0,
    stream_members=300,
    stream_rates=[40, 160],
    stream_step=2.0,
    stream_chat_clients=300,
    stream_chat_interval=2.0,
    stream_chat_seconds=4.0,
    stream_settle=1.0,
)


async def idle(system: str, scale: Scale) -> dict[str, Any]:
    """RSS per authenticated connection in 2 rooms, and CPU per idle connection per minute (heartbeats)."""
    points = []
    for count in scale.idle_counts:
        label = f"idle {system} {count}"
        async with running(system, WORKERS, count, label) as run:
            await asyncio.sleep(2)
            before = run.rss_kb()
            connected = await run.open("idle", count)
            await asyncio.sleep(3)
            after = run.rss_kb()
            progress(f"{label}: {connected} connected, idle for {scale.idle_window:.0f} s")
            cpu_before = run.cpu()
            await asyncio.sleep(scale.idle_window)
            cpu = run.cpu() - cpu_before
            stats = await run.stats()
            alive = await _probe(run, count)
            points.append(
                {
                    "connections": alive,
                    "handshakes": connected,
                    "attempted": count,
                    "rss_kb_per_conn": round((after - before) / max(connected, 1), 2),
                    "rss_mb": round(after / 1024, 1),
                    "cpu_ms_per_conn_per_min": round(cpu * 1000 / max(connected, 1) * 60 / scale.idle_window, 4),
                    "dropped_while_idle": connected - stats["connected"],
                }
            )
    top = points[-1]
    return {**{k: top[k] for k in ("connections", "rss_kb_per_conn", "cpu_ms_per_conn_per_min")}, "points": points}


async def _probe(run: Run, count: int) -> int:
    """Clients that still receive: one numbered message to every room, and who got all of theirs.

    A connection the server accepted but can no longer serve (a process out of
    file descriptors, a lost broker link) is not a connection held.
    """
    rooms = all_rooms("idle", count)
    await run.each("expect", rooms={room: 1 for room in rooms})
    for room in rooms:  # one at a time: a burst of concurrent emits makes python-socketio's emitter retry
        await run.system.publish(room, {"t": time.time() * 1000.0, "n": 1})
    alive = 0
    for _ in range(100):
        alive = len((await run.stats())["caught_up_at"])
        if alive >= count:
            break
        await asyncio.sleep(0.1)
    return alive


async def _publish_at(run: Run, room: str, rate: float, seconds: float) -> int:
    """Publish numbered messages to `room` at `rate` per second for `seconds`; the count sent."""
    started = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(rate * elapsed) + 1 - sent
        if due > 0:
            await asyncio.gather(
                *(run.system.publish(room, {"t": time.time() * 1000.0, "n": 0, "p": "x" * 70}) for _ in range(due))
            )
            sent += due
        await asyncio.sleep(0.005)
    return sent


def rate_p99_stays_over(steps: list[dict[str, Any]], limit_ms: float) -> float | None:
    """The lowest publish rate from which p99 stays above `limit_ms` at every higher rate measured.

    "Stays": one step a hair over the line between steps under it is noise on a
    shared machine, not the point where the system gives way."""
    over = None
    for step in reversed(steps):
        if step.get("p99_ms", 0) <= limit_ms:
            break
        over = step["rate"]
    return over


async def _profile_at(run: Run, rate: float, seconds: float) -> dict[str, Any] | None:
    """py-spy on one serving process during one more step at `rate`, apart from the measured steps."""
    progress(f"{run.label}: profiling one process at {rate} msg/s")
    with tempfile.TemporaryDirectory() as tmp:
        recording = asyncio.create_task(profile.record(run.system.server_pids()[0], seconds, Path(tmp) / "raw.txt"))
        await _publish_at(run, "fanout.all", rate, seconds)
        return await recording


async def fanout(system: str, scale: Scale) -> dict[str, Any]:
    """One room of N members, 100-byte messages at rising rates, until p99 passes 100 ms."""
    members = scale.fanout_members
    label = f"fanout {system}"
    async with running(system, WORKERS, members, label) as run:
        connected = await run.open("fanout", members, sample_every=FANOUT_SAMPLE_EVERY)
        await _publish_at(run, "fanout.all", 5, 1.0)
        await asyncio.sleep(1)
        steps = []
        for rate in scale.fanout_rates:
            await run.each("reset")
            progress(f"{label}: {rate} msg/s to {connected} members")
            cpu_before, infra_before, started = run.cpu(), run.infra_cpu(), time.monotonic()
            sent = await _publish_at(run, "fanout.all", rate, scale.fanout_step)
            # Let the backlog drain, up to a second per step second: deliveries late are still counted.
            members_now = (await run.stats())["connected"]
            for _ in range(int(scale.fanout_step * 10)):
                stats = await run.stats()
                if stats["deliveries"] >= sent * members_now:
                    break
                await asyncio.sleep(0.1)
            seconds = time.monotonic() - started
            cpu, infra = run.cpu() - cpu_before, run.infra_cpu() - infra_before
            stats = await run.stats()
            delivered = stats["deliveries"]
            steps.append(
                {
                    "rate": rate,
                    "members": members_now,
                    "deliveries_per_s": round(delivered / seconds),
                    "cpu_us_per_delivery": round(cpu / max(delivered, 1) * 1e6, 2),
                    "infra_cpu_us_per_delivery": round(infra / max(delivered, 1) * 1e6, 2),
                    "cpu_busy": round(cpu / seconds, 2),
                    "delivered_fraction": round(delivered / max(sent * members_now, 1), 3),
                    **hist.summary(stats["histogram"]),
                    "closes": stats["closes"],
                }
            )
            # Past the rate where p99 passes 100 ms, go on to the saturation point: where
            # deliveries/s stop growing with the rate, or the members fall behind.
            best_so_far = max(s["deliveries_per_s"] for s in steps[:-1]) if len(steps) > 1 else 0
            passed_100ms = any(s.get("p99_ms", 0) > 100 for s in steps)
            if passed_100ms and (
                steps[-1]["delivered_fraction"] < 0.8 or steps[-1]["deliveries_per_s"] < 1.1 * best_so_far
            ):
                break
        best = max(steps, key=lambda s: s["deliveries_per_s"])
        profile = await _profile_at(run, best["rate"], scale.fanout_step)
    over = rate_p99_stays_over(steps, 100.0)
    result: dict[str, Any] = {
        "connections": connected,
        "deliveries_per_s": best["deliveries_per_s"],
        "cpu_us_per_delivery": best["cpu_us_per_delivery"],
        **{k: best[k] for k in ("p50_ms", "p99_ms", "p999_ms") if k in best},
        "saturation_rate": best["rate"],
        "rate_p99_over_100ms": over,
        "steps": steps,
        "profile": profile,
        "floor_us_per_send": await asyncio.to_thread(floor.us_per_send),
    }
    return result


async def chat(system: str, scale: Scale) -> dict[str, Any]:
    """Rooms of 10, every client publishing once per interval: latency from publisher to every member."""
    label = f"chat {system}"
    async with running(system, WORKERS, scale.chat_clients, label) as run:
        connected = await run.open("chat", scale.chat_clients)
        await run.each("reset")
        progress(f"{label}: {connected} clients publishing every {scale.chat_interval:.0f} s")
        cpu_before, started = run.cpu(), time.monotonic()
        sent = sum(
            r["sent"]
            for r in await run.each("publish_every", interval=scale.chat_interval, duration=scale.chat_duration)
        )
        await asyncio.sleep(1)
        seconds, cpu = time.monotonic() - started, run.cpu() - cpu_before
        stats = await run.stats()
    return {
        "connections": connected,
        "deliveries_per_s": round(stats["deliveries"] / seconds),
        "cpu_us_per_delivery": round(cpu / max(stats["deliveries"], 1) * 1e6, 2),
        **hist.summary(stats["histogram"]),
        "published": sent,
        "acked": stats["acks"],
        "deliveries": stats["deliveries"],
        "errors": stats["errors"],
        "closes": stats["closes"],
    }


async def storm(system: str, scale: Scale) -> dict[str, Any]:
    """Kill one of two workers under N clients; publish while they are away; time to caught up, and losses."""
    clients = scale.storm_clients
    rooms = all_rooms("storm", clients)
    label = f"storm {system}"
    async with running(system, WORKERS, clients, label) as run:
        connected = await run.open("storm", clients, reconnect=True)
        # One live message per room first: everyone is in and receiving before the kill.
        await run.each("expect", rooms={room: 1 for room in rooms})
        await asyncio.gather(*(run.system.publish(room, {"t": time.time() * 1000.0, "n": 1}) for room in rooms))
        for _ in range(300):
            if len((await run.stats())["caught_up_at"]) >= connected:
                break
            await asyncio.sleep(0.1)
        final = 1 + scale.storm_per_room
        await run.each("expect", rooms={room: final for room in rooms})
        killed_at = time.time()
        await run.system.kill_worker()
        await asyncio.sleep(0.05)

        async def burst(room: str) -> None:
            for n in range(2, final + 1):
                await run.system.publish(room, {"t": time.time() * 1000.0, "n": n})

        publishing = asyncio.gather(*(burst(room) for room in rooms))
        resumed_s = None
        while time.time() - killed_at < scale.storm_timeout:
            stats = await run.stats()
            if resumed_s is None and stats["connected"] >= connected:
                resumed_s = round(time.time() - killed_at, 2)
            caught = len(stats["caught_up_at"])
            progress(f"{label}: {time.time() - killed_at:5.1f} s after the kill: {caught}/{connected} caught up")
            if caught >= connected and publishing.done():
                break
            await asyncio.sleep(0.2)
        await publishing
        await asyncio.sleep(1)
        stats = await run.stats()
    caught_up = [round(t - killed_at, 3) for t in stats["caught_up_at"]]
    result: dict[str, Any] = {
        "connections": connected,
        "lost": stats["lost"] + stats["behind"],
        "duplicates": stats["duplicates"],
        "duplicate_samples": stats["duplicate_samples"],
        "published": len(rooms) * scale.storm_per_room,
        "resumed_s": resumed_s,
        "caught_up_clients": len(caught_up),
        "reconnects": stats["reconnects"],
        "closes": stats["closes"],
        "caught_up_curve": caught_up,
    }
    if len(caught_up) >= connected:
        result["catchup_s"] = max(caught_up)
    return result


async def churn(system: str, scale: Scale) -> dict[str, Any]:
    """Loops of connect, authenticate, join, close: cycles per second and connect-to-joined latency."""
    label = f"churn {system}"
    async with running(system, WORKERS, 0, label) as run:
        return await churn_loops(run, scale.churn_seconds, scale.churn_concurrency)


async def churn_loops(run: Run, seconds: float, concurrency: int, first: int = 0) -> dict[str, Any]:
    """`concurrency` churn loops per generator for `seconds` on a running system: the churn figures.

    Also run by the presence scenario, with and without the churned rooms in presence_rooms."""
    progress(f"{run.label}: {concurrency} loops per generator for {seconds:.0f} s")
    await run.each("reset")
    failed_before = (await run.stats())["failed"]
    cpu_before, started = run.cpu(), time.monotonic()
    cycles = sum(
        r["cycles"]
        for r in await run.each(
            "churn",
            system=run.system.protocol,
            host=HOST,
            port=run.system.port,
            secret=SECRET,
            shape="churn",
            first=first,
            duration=seconds,
            concurrency=concurrency,
        )
    )
    elapsed, cpu = time.monotonic() - started, run.cpu() - cpu_before
    stats = await run.stats()
    return {
        "connections": concurrency * len(run.generators),
        "churn_per_s": round(cycles / elapsed, 1),
        "cpu_ms_per_cycle": round(cpu * 1000 / max(cycles, 1), 3),
        **hist.summary(stats["histogram"]),
        "failed": stats["failed"] - failed_before,
        "cycles": cycles,
        "cpu_s": round(cpu, 3),
        "seconds": round(elapsed, 2),
    }


SCENARIOS = {
    "idle": idle,
    "fanout": fanout,
    "chat": chat,
    "storm": storm,
    "churn": churn,
    "history": history,
    "presence": presence,
    "compression": compression,
    "stream": stream,
}
JETSOCK_ONLY = {"history", "presence", "stream"}
"""Scenarios of features the peer does not have: run against jetsock's systems only."""
