"""The `presence` scenario (issue 15): one big presence room on two edges, `who`, events, churn.

jetsock only: python-socketio has no presence (its rooms have no members list a client can
read, and no join or leave events).

Two edges (`jetsock serve`, one process and one node each, on two ports) share one
nats-server (with its monitoring port), with `presence.>` in JETSOCK_PRESENCE_ROOMS and
`presence_events_max_members` raised above the room's size: with the default (1,000) a
room this big sends no events at all, only `who` answers, and the events are what is
measured here. Every client goes to edge `i % 2`.

- `presence_watchers` users holding `rooms.presence` join the room first; they receive the
  events (one in `presence_sample_every` decodes them, the rest count frames and bytes).
  `presence_askers` clients with the right, not members, ask `who` later.
- idle: the edges' CPU and nats-server's /varz rates with everyone in, for the baseline.
- join: `presence_users` distinct users (an `info` claim each, no presence right) connect,
  authenticate and join over `presence_join_seconds`.
- who: the askers ask `who` for the room, `presence_who_rate` per second in all, round
  robin over both edges, open loop: latency request to reply, per edge.
- churn: `presence_churn_rate` users per second leave the room (a `leave` frame on their
  open socket) and each joins again two `presence_interval`s later (2 s), so as many join as leave, for
  `presence_churn_seconds`; then the same with the askers asking `who` meanwhile.

Per phase: edge CPU per presence change on each node (the edge's CPU time delta over
every change in the cluster: each node applies all of them), nats-server's CPU, NATS
messages and bytes per change (nats-server /varz `in_msgs`/`in_bytes`, what the edges
published, and `out_*`, what it delivered, less the idle rates) beside the edges' own
count of presence messages (/metrics `jetsock_presence_messages_total`), and the event
delay: from the moment a user's join or leave was sent to a watcher's receipt of the
`presence` frame naming it (one machine, one clock; matched in each load-generator
process for its own users, half of them with two processes).

Then issue 15's second target: the `churn` scenario's loops (connect, authenticate, join,
close) on two systems running side by side, one with its churned rooms (`churn.>`) in
JETSOCK_PRESENCE_ROOMS and one without, taking turns (plain, presence, presence, plain)
so that drift on the shared machine falls on both: presence's cost per cycle is the
ratio of their CPU per cycle. A py-spy profile of one worker of the presence-rooms
system during one more turn, apart from the measured ones, shows where that cost goes.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import hist, procstat, profile
from bench.conductor import Run, progress, running
from bench.systems import Jetsock, JetsockEdges
from core.settings import Settings

if TYPE_CHECKING:
    from bench.scenarios import Scale

EDGES = 2
ROOM = "presence.all"
PATTERN = "presence.>"
LAG_INTERVALS = 2.0
"""A churning user joins again this many presence_intervals after its leave: more than one,
so the two are never netted into nothing within one interval."""
TARGET_WHO_P99_MS = 50.0
TARGET_CHURN_OVERHEAD = 0.15
"""Issue 15's targets on the two-core box: `who` p99 for a room of 10,000, and what presence
adds to the churn scenario's CPU per cycle."""
DEFAULTS = Settings()
PROFILED = (
    "Client._flusher (client.py)",
    "PresenceBus._send_loop (presencebus.py)",
    "PresenceBus._on_message (presencebus.py)",
    "PresenceBus.local (presencebus.py)",
    "NodePresence.flush (presence.py)",
)
"""The functions whose share of a churning worker's samples (in all) the profile reports: nats-py's
flusher (every write to NATS; without presence the churn writes next to nothing there) and the
presence bus's and the node presence's own."""
COUNTERS = ("in_msgs", "in_bytes", "out_msgs", "out_bytes")


@dataclass(frozen=True)
class Mark:
    """The counters at one moment: wall clock, each edge's and nats-server's CPU, /varz, the edges' bus."""

    at: float
    edges: list[float]
    nats: float
    varz: dict[str, int]
    bus: list[dict[str, float]]


async def bus_counts(system: JetsockEdges, index: int) -> dict[str, float]:
    """Edge `index`'s presence counters from /metrics: bus messages sent and received, events pushed."""
    counts = {"sent": 0.0, "received": 0.0, "events": 0.0}
    for line in (await system.metrics(index)).splitlines():
        if line.startswith("jetsock_presence_messages_total{"):
            for direction in ("sent", "received"):
                if f'jetsock_direction="{direction}"' in line:
                    counts[direction] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("jetsock_presence_events_total"):
            counts["events"] = float(line.rsplit(" ", 1)[1])
    return counts


async def mark(run: Run) -> Mark:
    system = run.system
    assert isinstance(system, JetsockEdges)
    varz = await system.varz()
    bus = [await bus_counts(system, i) for i in range(len(system.ports))]
    return Mark(
        time.monotonic(),
        [procstat.cpu_seconds([pid]) for pid in system.edge_pids()],
        run.infra_cpu(),
        {key: int(varz[key]) for key in COUNTERS},
        bus,
    )


def costs(before: Mark, after: Mark, changes: int, idle: dict[str, float]) -> dict[str, Any]:
    """What the changes between two marks cost: per change, per edge and on nats-server."""
    seconds = after.at - before.at
    per = max(changes, 1)
    edge_cpu = [a - b for a, b in zip(after.edges, before.edges, strict=True)]
    nats = {key: after.varz[key] - before.varz[key] - idle.get(key, 0.0) * seconds for key in COUNTERS}
    bus = {
        key: sum(a[key] - b[key] for a, b in zip(after.bus, before.bus, strict=True))
        for key in ("sent", "received", "events")
    }
    per_edge = [round(cpu / per * 1e6, 1) for cpu in edge_cpu]
    return {
        "changes": changes,
        "seconds": round(seconds, 2),
        "changes_per_s": round(changes / seconds, 1) if seconds else None,
        "edge_cpu_us_per_change": per_edge,
        "edge_cpu_us_per_change_mean": round(sum(per_edge) / len(per_edge), 1),
        "edge_cpu_busy": [round(cpu / seconds, 3) for cpu in edge_cpu],
        "nats_cpu_us_per_change": round((after.nats - before.nats) / per * 1e6, 1),
        "nats_in_msgs_per_change": round(nats["in_msgs"] / per, 3),
        "nats_in_bytes_per_change": round(nats["in_bytes"] / per, 1),
        "nats_out_msgs_per_change": round(nats["out_msgs"] / per, 3),
        "nats_out_bytes_per_change": round(nats["out_bytes"] / per, 1),
        "bus_sent_per_change": round(bus["sent"] / per, 3),
        "bus_received_per_change": round(bus["received"] / per, 3),
        "event_frames_pushed": int(bus["events"]),
    }


async def presence_totals(run: Run) -> dict[str, Any]:
    """The load generators' presence counts added up, histograms merged."""
    parts = await run.each("presence")
    total: dict[str, Any] = {
        key: sum(p[key] for p in parts)
        for key in ("frames", "bytes", "joined_seen", "left_seen", "unmatched", "who_sent", "who_answered")
    }
    total["who_errors"] = sum(p["who_errors"] for p in parts)
    total["who_truncated"] = sum(p["who_truncated"] for p in parts)
    total["who_listed"] = max(p["who_listed"] for p in parts)
    counts = [c for p in parts for c in p["who_counts"]]
    total["who_counts"] = [min(counts), max(counts)] if counts else []
    total["join_delay"] = hist.merge(p["join_delay"] for p in parts)
    total["leave_delay"] = hist.merge(p["leave_delay"] for p in parts)
    by_port: dict[str, dict[int, int]] = {}
    for part in parts:
        for port, histogram in part["who_by_port"].items():
            by_port[port] = hist.merge([by_port.get(port, {}), histogram])
    total["who_by_port"] = by_port
    return total


async def settle(run: Run, field: str, expected: int, timeout: float) -> bool:
    """Until the sampled watchers have read `expected` entries of `field` (or `timeout`): the events are in."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(p[field] for p in await run.each("presence")) >= expected:
            return True
        await asyncio.sleep(0.2)
    return False


def events(totals: dict[str, Any], watchers: int, sampled: int, changes: dict[str, int]) -> dict[str, Any]:
    """The events of one phase, as the watchers saw them."""
    delay = hist.merge([totals["join_delay"], totals["leave_delay"]])
    expected = sampled * sum(changes.values())
    return {
        "frames_per_watcher": round(totals["frames"] / max(watchers, 1), 1),
        "bytes_per_watcher": round(totals["bytes"] / max(watchers, 1)),
        "bytes_per_change_per_watcher": round(totals["bytes"] / max(watchers, 1) / max(sum(changes.values()), 1), 1),
        "received_fraction": round((totals["joined_seen"] + totals["left_seen"]) / max(expected, 1), 4),
        "matched": sum(delay.values()),
        "unmatched": totals["unmatched"],
        "delay": hist.summary(delay),
        "join_delay": hist.summary(totals["join_delay"]),
        "leave_delay": hist.summary(totals["leave_delay"]),
        "delay_histogram": delay,
    }


def who_figures(totals: dict[str, Any], ports: list[int], seconds: float) -> dict[str, Any]:
    merged = hist.merge(totals["who_by_port"].values())
    return {
        "asked": totals["who_sent"],
        "answered": totals["who_answered"],
        "errors": totals["who_errors"],
        "unanswered": totals["who_sent"] - totals["who_answered"] - totals["who_errors"],
        "per_s": round(totals["who_answered"] / seconds, 1) if seconds else None,
        "count": totals["who_counts"],
        "listed": totals["who_listed"],
        "truncated": totals["who_truncated"],
        **hist.summary(merged),
        "by_edge": {
            f"edge-{i}": {"answered": sum(h.values()), **hist.summary(h)}
            for i, port in enumerate(ports)
            if (h := totals["who_by_port"].get(str(port)))
        },
        "histogram": merged,
    }


async def open_more(run: Run, shape: str, count: int, **options: Any) -> int:
    """Run.open, counting only the clients this call connected (Run.open counts everyone connected)."""
    before = int((await run.stats())["connected"])
    return await run.open(shape, count, **options) - before


async def presence_run(system: str, scale: Scale) -> dict[str, Any]:
    """The big room on two edges: joins, `who`, churn; figures per phase."""
    users, watchers, askers = scale.presence_users, scale.presence_watchers, scale.presence_askers
    interval = scale.presence_interval
    env = {
        "JETSOCK_PRESENCE_ROOMS": PATTERN,
        "JETSOCK_PRESENCE_INTERVAL": f"{interval:g}",
        # Above the room's size: with the default (1,000) a room of 10,000 sends no events at all.
        "JETSOCK_PRESENCE_EVENTS_MAX_MEMBERS": str(2 * (users + watchers)),
        # The askers measure `who` latency, not the per-connection limit (who_rate, 10/s by default).
        "JETSOCK_WHO_RATE": "1000",
        "JETSOCK_WHO_BURST": "1000",
    }
    label = f"presence {system}"
    async with running(system, EDGES, users + watchers + askers, label, env=env, cls=JetsockEdges) as run:
        edges = run.system
        assert isinstance(edges, JetsockEdges)
        ports = edges.ports
        generators = len(run.generators)
        common: dict[str, Any] = {"ports": ports, "presence": [PATTERN]}
        every = scale.presence_sample_every
        opened_watchers = await open_more(
            run, "presence", watchers, sample_every=every, role="watchers", sub_prefix="w-", **common
        )
        sampled = len(range(0, watchers, every))
        opened_askers = await open_more(run, "none", askers, role="askers", sub_prefix="a-", **common)
        # The watchers' own joins are events too: let them be flushed before the baseline.
        await asyncio.sleep(interval + 1.0)

        progress(f"{label}: idle for {scale.presence_idle_seconds:.0f} s (baseline)")
        start = await mark(run)
        await asyncio.sleep(scale.presence_idle_seconds)
        end = await mark(run)
        idle_s = end.at - start.at
        idle = {key: (end.varz[key] - start.varz[key]) / idle_s for key in COUNTERS}
        idle_cpu = [round((a - b) / idle_s, 4) for a, b in zip(end.edges, start.edges, strict=True)]

        # Joins: the users arrive over presence_join_seconds, spread over both edges.
        progress(f"{label}: {users} users join {ROOM} over {scale.presence_join_seconds:.0f} s")
        await run.each("presence_reset")
        before = await mark(run)
        joined = await open_more(
            run,
            "presence",
            users,
            role="users",
            sub_prefix="u-",
            ports=ports,
            info=True,
            track=True,
            rate=users / scale.presence_join_seconds / generators,
        )
        join_wall = time.monotonic() - before.at
        settled = await settle(run, "joined_seen", sampled * joined, interval * 2 + 5.0)
        after = await mark(run)
        totals = await presence_totals(run)
        join_phase = {
            **costs(before, after, joined, idle),
            "joins_s": round(join_wall, 2),
            "settled": settled,
            "events": events(totals, opened_watchers, sampled, {"joins": joined}),
        }
        present = joined + opened_watchers
        progress(f"{label}: {present} present, events p99 {join_phase['events']['delay'].get('p99_ms')} ms")

        # who, nothing else going on.
        who_rate = scale.presence_who_rate
        progress(f"{label}: {opened_askers} clients ask who, {who_rate:g}/s for {scale.presence_who_seconds:.0f} s")
        # A second of the same first, not counted: each edge's first answers (and the load
        # generators' first replies) carry one-time costs that are no one's steady latency.
        await run.each("who_pace", role="askers", rate=who_rate / generators, duration=1.0, room=ROOM)
        before = await mark(run)
        await run.each(
            "who_pace", role="askers", rate=who_rate / generators, duration=scale.presence_who_seconds, room=ROOM
        )
        after = await mark(run)
        totals = await presence_totals(run)
        who = who_figures(totals, ports, after.at - before.at)
        seconds = after.at - before.at
        who["edge_cpu_us_per_who"] = round(
            (sum(after.edges) - sum(before.edges) - sum(idle_cpu) * seconds) / max(who["answered"], 1) * 1e6
        )
        progress(f"{label}: who p50 {who.get('p50_ms')} ms, p99 {who.get('p99_ms')} ms")

        churn = await churn_phase(run, scale, idle, opened_watchers, sampled)
        progress(f"{label}: churn with who for {scale.presence_who_seconds:.0f} s")
        both = await asyncio.gather(
            run.each(
                "who_pace", role="askers", rate=who_rate / generators, duration=scale.presence_who_seconds, room=ROOM
            ),
            run.each(
                "presence_churn",
                role="users",
                rate=scale.presence_churn_rate / generators,
                duration=scale.presence_who_seconds,
                lag=LAG_INTERVALS * interval,
                room=ROOM,
            ),
        )
        totals = await presence_totals(run)
        under_churn = who_figures(totals, ports, max(r["seconds"] for r in both[0]))
        stats = await run.stats()
        await run.each("close")
    return {
        "present": present,
        "users": joined,
        "watchers": opened_watchers,
        "sampled_watchers": sampled,
        "askers": opened_askers,
        "edges": len(ports),
        "settings": env,
        "presence_interval": interval,
        "max_presence_list": DEFAULTS.max_presence_list,
        "idle": {"nats_per_s": {k: round(v, 2) for k, v in idle.items()}, "edge_cpu_busy": idle_cpu},
        "join": join_phase,
        "who": who,
        "churn": churn,
        "who_under_churn": under_churn,
        "errors": stats["errors"],
        "failed": stats["failed"],
        "closes": stats["closes"],
    }


async def churn_phase(run: Run, scale: Scale, idle: dict[str, float], watchers: int, sampled: int) -> dict[str, Any]:
    """Users leave and join again at `presence_churn_rate` each per second: the cost of a change."""
    rate, seconds = scale.presence_churn_rate, scale.presence_churn_seconds
    interval = scale.presence_interval
    lag = LAG_INTERVALS * interval
    progress(f"{run.label}: {rate:g} leaves and {rate:g} joins per second for {seconds:.0f} s")
    await run.each("presence_reset")
    before = await mark(run)
    replies = await run.each(
        "presence_churn",
        role="users",
        rate=rate / len(run.generators),
        duration=seconds,
        lag=lag,
        room=ROOM,
    )
    leaves, joins = sum(r["leaves"] for r in replies), sum(r["joins"] for r in replies)
    # Until the last interval's events are in (a timeout is reported as settled: false).
    settled = await settle(run, "joined_seen", sampled * joins, interval * 2 + 3.0)
    after = await mark(run)
    totals = await presence_totals(run)
    return {
        **costs(before, after, leaves + joins, idle),
        "leaves": leaves,
        "joins": joins,
        "rate": rate,
        "duration_s": seconds,
        "steady_changes_per_s": 2 * rate,
        "lag_s": lag,
        "settled": settled,
        "events": events(totals, watchers, sampled, {"leaves": leaves, "joins": joins}),
    }


async def churn_variant(scale: Scale) -> dict[str, Any]:
    """The churn scenario's loops with and without their rooms in presence_rooms, taking turns."""
    from bench.scenarios import WORKERS, churn_loops

    seconds, concurrency = scale.presence_variant_seconds, scale.churn_concurrency
    kept_env = {"JETSOCK_PRESENCE_ROOMS": "churn.>"}
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "presence": []}
    async with (
        running("jetsock", WORKERS, 0, "presence: churn, rooms without presence") as plain,
        running("jetsock", WORKERS, 0, "presence: churn, rooms in presence_rooms", env=kept_env) as kept,
    ):
        systems = {"plain": plain, "presence": kept}
        for name in ("plain", "presence", "presence", "plain"):
            run = systems[name]
            system = run.system
            assert isinstance(system, Jetsock)
            before = await system.varz()
            figures = await churn_loops(run, seconds, concurrency, first=len(runs[name]) * 1_000_000)
            after = await system.varz()
            figures["nats_in_msgs"] = int(after["in_msgs"]) - int(before["in_msgs"])
            runs[name].append(figures)
        recorded = await _profile(kept, scale) if scale.presence_profile_seconds > 0 else None
    result: dict[str, Any] = {"seconds_per_run": seconds, "order": ["plain", "presence", "presence", "plain"]}
    for name, parts in runs.items():
        cycles = sum(p["cycles"] for p in parts)
        cpu = sum(p["cpu_s"] for p in parts)
        wall = sum(p["seconds"] for p in parts)
        result[name] = {
            "cycles": cycles,
            "churn_per_s": round(cycles / wall, 1),
            "cpu_ms_per_cycle": round(cpu * 1000 / max(cycles, 1), 4),
            "nats_in_msgs_per_cycle": round(sum(p["nats_in_msgs"] for p in parts) / max(cycles, 1), 2),
            "failed": sum(p["failed"] for p in parts),
            "runs": parts,
        }
    result["profile"] = recorded
    plain_cpu = result["plain"]["cpu_ms_per_cycle"]
    result["overhead"] = round(result["presence"]["cpu_ms_per_cycle"] / plain_cpu - 1, 4) if plain_cpu else None
    return result


async def _profile(run: Run, scale: Scale) -> dict[str, Any] | None:
    """py-spy on one worker of the presence-rooms system during one more turn of churn, not measured."""
    from bench.scenarios import churn_loops

    seconds = scale.presence_profile_seconds
    progress(f"{run.label}: profiling one worker for {seconds:.0f} s of churn")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.txt"
        recording = asyncio.create_task(profile.record(run.system.server_pids()[0], seconds, raw))
        await churn_loops(run, seconds + 0.5, scale.churn_concurrency, first=9_000_000)
        if await recording is None:
            return None
        folded = profile.fold(raw.read_text(), top=60)
    # What presence's own code and its NATS writes take, in all (the stacks they are on).
    totals = dict(folded["total"])
    folded["presence_share"] = {name: totals[name] for name in PROFILED if name in totals}
    folded["total"] = folded["total"][:25]
    return folded


async def presence(system: str, scale: Scale) -> dict[str, Any]:
    """Issue 15's scenario: presence in a room of 10,000 on two edges, then the churn variant."""
    measured = await presence_run(system, scale)
    variant = await churn_variant(scale)
    who, churn = measured["who"], measured["churn"]
    p99 = who.get("p99_ms")
    overhead = variant["overhead"]
    delay = churn["events"]["delay"]
    return {
        "connections": measured["present"],
        **{k: who[k] for k in ("p50_ms", "p99_ms", "p999_ms") if k in who},
        "who_per_s": who["per_s"],
        "who_p99_under_churn_ms": measured["who_under_churn"].get("p99_ms"),
        "edge_cpu_us_per_change": churn["edge_cpu_us_per_change_mean"],
        "nats_msgs_per_change": churn["nats_in_msgs_per_change"],
        "nats_bytes_per_change": churn["nats_in_bytes_per_change"],
        "event_delay_p99_ms": delay.get("p99_ms"),
        "churn_presence_overhead": overhead,
        "targets": {
            "who_p99_ms": {
                "goal": TARGET_WHO_P99_MS,
                "measured": p99,
                "met": p99 is not None and p99 <= TARGET_WHO_P99_MS,
            },
            "churn_overhead": {
                "goal": TARGET_CHURN_OVERHEAD,
                "measured": overhead,
                "met": overhead is not None and overhead <= TARGET_CHURN_OVERHEAD,
            },
        },
        **measured,
        "churn_variant": variant,
    }
