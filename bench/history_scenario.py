"""The `history` scenario (issue 14): paging back through a big stream, and a storm of joins with `last`.

jetsock only: python-socketio stores nothing, so it has no history to page.

The stream: `history_messages` ~100-byte JSON messages over `history_rooms` rooms,
loaded with nats-py's async JetStream publishes (two windows of `history_window`
in flight), in a random order so that every room's messages are spread through
the whole stream. Rooms come in two tiers so that both paths of the backward read
(core/history.py) are measured: nine rooms in ten are small (50 messages: a page
of 50 is one read, no search), one in ten holds the rest (550 at full scale:
the page is found by interpolation search). Every message is numbered within its
room (`n`), so a replay's gaps and duplicates are counted.

(a) `history_readers` clients ask for pages of 50, paced at `history_rate` pages/s
in all: the room drawn with the tiers' share of the messages, half from the head,
half with a `before` drawn over the stream. Latency is the client's, request to
reply; edge CPU per page is the workers' CPU time (/proc) over the pages answered.
JetStream requests per page are counted twice: on the server, as nats-server's
/varz `in_msgs` delta over the phase less its idle rate (the edge exposes no
direct-get count; its `jetsock_history_*` metrics count pages, not requests),
and in this process, by running the edge's own reader (core.history through
core.fetch, as core.broker does) over the same mix of pages with every direct
get counted, which also gives the count by kind.

(b) `history_joiners` clients, connected and authenticated first, each join a
different room with `last: 50` at once: the time until every client has received
the `joined.replayed` messages it was promised, and the CPU the edge and
nats-server spent meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from nats.js import JetStreamContext

from bench import hist, profile
from bench.conductor import Run, progress, running
from bench.loadgen import _draw
from bench.systems import HOST, SECRET, Jetsock
from core.auth import make_token
from core.fetch import Batch, RoomFetcher
from core.history import HistoryReader
from core.rooms import room_subject
from core.settings import Settings

if TYPE_CHECKING:
    from bench.scenarios import Scale

WORKERS = 2
PREFIX = "history."
"""Room i of the stream is `history.<i>`: the load generators' `history` shape joins room i."""
PAD = "x" * 80
"""Makes a stored message about 100 bytes: {"n":123,"p":"xx…"}."""
SMALL_ROOM = 50
BIG_EVERY = 10
"""One room in BIG_EVERY is big: rooms 0 … rooms/BIG_EVERY - 1."""
PAGE_LIMIT = 50
LAST = 50
TARGET_P99_MS = 20.0
TARGET_STORM_S = 10.0
"""Issue 14's targets on the two-core box: p99 page at 200 pages/s, and the join storm."""
DEFAULTS = Settings()


@dataclass(frozen=True)
class Layout:
    rooms: int
    messages: int

    @property
    def big_rooms(self) -> int:
        return max(1, self.rooms // BIG_EVERY)

    @property
    def small_rooms(self) -> int:
        return self.rooms - self.big_rooms

    @property
    def big_messages(self) -> int:
        return self.messages - self.small_rooms * SMALL_ROOM

    def sizes(self) -> list[int]:
        if self.big_messages < self.big_rooms * SMALL_ROOM:
            raise ValueError(f"{self.messages} messages do not fill {self.rooms} rooms of at least {SMALL_ROOM}")
        share, extra = divmod(self.big_messages, self.big_rooms)
        return [share + (i < extra) for i in range(self.big_rooms)] + [SMALL_ROOM] * self.small_rooms

    def order(self, seed: int = 14) -> list[int]:
        """The room of every message, in publishing order: shuffled, so rooms spread through the stream."""
        rooms = [room for room, size in enumerate(self.sizes()) for _ in range(size)]
        random.Random(seed).shuffle(rooms)
        return rooms

    def tiers(self) -> list[list[Any]]:
        """For the load generators' `_draw`: [name, share of the pages, first room, room count]."""
        return [
            ["big", self.big_messages / self.messages, 0, self.big_rooms],
            ["small", self.small_rooms * SMALL_ROOM / self.messages, self.big_rooms, self.small_rooms],
        ]


async def load_stream(js: JetStreamContext, layout: Layout, window: int, label: str) -> dict[str, Any]:
    """Publish the layout's messages with async publishes, two windows in flight; the load rate."""
    order = layout.order()
    subjects = [f"rooms.{PREFIX}{i}" for i in range(layout.rooms)]
    numbers = [0] * layout.rooms
    started = time.monotonic()
    shown = started
    in_flight: list[asyncio.Future[Any]] = []
    last_seq = 0
    for index, room in enumerate(order, 1):
        numbers[room] += 1
        payload = b'{"n":%d,"p":"%s"}' % (numbers[room], PAD.encode())
        in_flight.append(await js.publish_async(subjects[room], payload))
        if len(in_flight) >= 2 * window or index == len(order):
            # The older window's acks; the newer one stays in flight while the next is sent.
            cut = len(in_flight) if index == len(order) else window
            done, in_flight = in_flight[:cut], in_flight[cut:]
            acks = await asyncio.gather(*done)
            last_seq = max(last_seq, max(ack.seq for ack in acks))
            if time.monotonic() - shown >= 1.0:
                shown = time.monotonic()
                rate = index / (shown - started)
                progress(f"{label}: loaded {index:,}/{len(order):,} ({rate:,.0f} msg/s)")
    seconds = time.monotonic() - started
    info = await js.stream_info(DEFAULTS.stream)
    stored = info.state.messages
    if stored != layout.messages:
        raise RuntimeError(f"the stream holds {stored} messages, {layout.messages} were published")
    rate = layout.messages / seconds
    progress(f"{label}: loaded {layout.messages:,} messages over {layout.rooms:,} rooms in {seconds:.1f} s")
    progress(f"{label}: load rate {rate:,.0f} msg/s (async publishes, {window:,} per window, 2 in flight)")
    return {
        "messages": layout.messages,
        "rooms": layout.rooms,
        "big_rooms": layout.big_rooms,
        "big_room_messages": layout.sizes()[0],
        "small_rooms": layout.small_rooms,
        "small_room_messages": SMALL_ROOM,
        "message_bytes": len(payload),
        "window": window,
        "seconds": round(seconds, 2),
        "msg_per_s": round(rate),
        "last_seq": last_seq,
        "stream_bytes": info.state.bytes,
    }


WARM_IDLE = 0.05
"""Edge CPU seconds per second under which the workers' history caches are taken as filled."""


WARM_REQUESTS = 32
"""HTTP pages asked, each on a connection of its own, to start every worker's history cache (a
worker's follower starts at its first history read; the kernel spreads connections over workers)."""


async def warm_up(run: Run, label: str, timeout: float = 300.0) -> dict[str, Any]:
    """Every edge worker's history cache started (by a history read) and filled with the loaded
    stream: their followers read it as fast as they can, then go idle (CPU under WARM_IDLE for a
    second). The time and the CPU that took."""
    progress(f"{label}: filling the edges' history caches")
    started, cpu_started = time.monotonic(), run.cpu()
    nats_started = run.infra_cpu()
    headers = {"Authorization": "Bearer " + make_token(SECRET, "warm", [">"], [])}
    url = f"http://{HOST}:{run.system.port}/v1/rooms/{PREFIX}0/messages?limit=1"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(WARM_REQUESTS):
            async with http.get(url, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"a history page to start the caches: {response.status}")
    before = run.cpu()
    while time.monotonic() - started < timeout:
        await asyncio.sleep(1.0)
        now = run.cpu()
        if now - before < WARM_IDLE:
            break
        before = now
    seconds = time.monotonic() - started
    return {
        "seconds": round(seconds, 1),
        "edge_cpu_s": round(run.cpu() - cpu_started, 2),
        "nats_cpu_s": round(run.infra_cpu() - nats_started, 2),
        "timed_out": seconds >= timeout,
    }


async def in_msgs(system: Jetsock) -> int:
    return int((await system.varz())["in_msgs"])


async def quiet(system: Jetsock, timeout: float, idle_rate: float = 0.0) -> bool:
    """Until nats-server receives no more than its idle rate for half a second (a backlog of pages
    served; the history caches' followers poll while idle); False at `timeout`."""
    deadline = time.monotonic() + timeout
    allowance = idle_rate * 0.5 * 2 + 1
    seen = await in_msgs(system)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = await in_msgs(system)
        if now - seen <= allowance:
            return True
        seen = now
    return False


async def count_requests(
    system: Jetsock, layout: Layout, last_seq: int, pages: int, idle_rate: float, seed: int = 14
) -> dict[str, Any]:
    """The edge's backward read (core.history over core.fetch, as core.broker.history_page runs it)
    over `pages` pages of the scenario's mix, one at a time, with every direct get counted; nats-server's
    count of them is less its idle rate (the edges' history caches poll meanwhile)."""
    assert system.nc is not None
    fetcher = RoomFetcher(system.nc, DEFAULTS.stream)
    await fetcher.start()
    calls = 0

    async def fetch(room: str, after: int, batch: int, up_to: int | None, max_bytes: int) -> Batch:
        nonlocal calls
        calls += 1
        return await fetcher.fetch(room, after, batch, up_to, max_bytes)

    reader = HistoryReader(fetch)
    rng = random.Random(seed)
    by_kind: dict[str, list[int]] = {}
    probes: dict[str, list[int]] = {}
    server_before, started = await in_msgs(system), time.monotonic()
    total = 0
    for _ in range(pages):
        name, first, count = _draw(rng, layout.tiers())
        room = f"{PREFIX}{first + rng.randrange(count)}"
        before = None if rng.random() < 0.5 else rng.randint(1, last_seq)
        kind = f"{name}-{'head' if before is None else 'before'}"
        calls = 0
        head = await fetcher.head(room)  # core.broker.history_page: the room's real head first
        upper = head + 1 if before is None else min(before, head + 1)
        page = await reader.page(room, upper, PAGE_LIMIT, DEFAULTS.history_page_bytes)
        by_kind.setdefault(kind, []).append(1 + calls)
        probes.setdefault(kind, []).append(page.probes)
        total += 1 + calls
    server = await in_msgs(system) - server_before - idle_rate * (time.monotonic() - started)
    return {
        "pages": pages,
        "requests_per_page": round(total / pages, 2),
        # The same pages counted by nats-server (/varz in_msgs): checks that method against this one.
        "server_counted_per_page": round(server / pages, 2),
        "by_kind": {
            kind: {
                "pages": len(counts),
                "mean": round(sum(counts) / len(counts), 2),
                "max": max(counts),
                "probes_mean": round(sum(probes[kind]) / len(counts), 2),
            }
            for kind, counts in sorted(by_kind.items())
        },
    }


COST_KINDS = {
    "next_from_first": "a room's first message (next_by_subj from seq 1, batch 1)",
    "next_from_random": "a room's next message after a random seq (next_by_subj, batch 1): a count probe",
    "fifty_from_first": "a small room's 50 messages from its first (next_by_subj, batch 50): a page's read",
    "last_of_room": "a room's newest message (multi_last, batch 1): its head",
    "by_seq": "one message by its seq (no subject)",
    "last_up_to_random": "a room's newest message at or before a random seq (multi_last, up_to_seq): a step back",
    "fifty_by_seq": "50 consecutive messages of the stream from a random seq (any room, batch 50): a plain read",
}
"""The kinds of direct get whose nats-server cost `direct_get_costs` measures one by one."""


async def direct_get_costs(run: Run, layout: Layout, last_seq: int, requests: int, seed: int = 41) -> dict[str, Any]:
    """nats-server's CPU and the round trip per direct get, kind by kind (COST_KINDS), one request at a
    time on the loaded stream, with nothing else running: what a page's requests cost where they go."""
    system = run.system
    assert isinstance(system, Jetsock) and system.nc is not None
    nc = system.nc
    fetcher = RoomFetcher(nc, DEFAULTS.stream)
    await fetcher.start()
    rng = random.Random(seed)
    api = f"$JS.API.DIRECT.GET.{DEFAULTS.stream}"

    def small_room() -> str:
        return f"{PREFIX}{layout.big_rooms + rng.randrange(layout.small_rooms)}"

    async def one(kind: str) -> None:
        if kind == "next_from_first":
            await fetcher.fetch(small_room(), 0, 1)
        elif kind == "next_from_random":
            await fetcher.fetch(small_room(), rng.randrange(last_seq), 1)
        elif kind == "fifty_from_first":
            await fetcher.fetch(small_room(), 0, SMALL_ROOM)
        elif kind == "last_of_room":
            await fetcher.head(small_room())
        elif kind == "last_up_to_random":
            subject = room_subject(small_room())
            await fetcher.request({"multi_last": [subject], "up_to_seq": rng.randrange(1, last_seq), "batch": 1})
        elif kind == "fifty_by_seq":
            await fetcher.request({"seq": rng.randrange(1, max(2, last_seq - SMALL_ROOM)), "batch": SMALL_ROOM})
        else:
            await nc.request(api, b'{"seq": %d}' % rng.randint(1, last_seq), timeout=10)

    costs: dict[str, Any] = {}
    for kind, meaning in COST_KINDS.items():
        _, seconds, _, infra = await _measured(run, functools.partial(_repeat, one, kind, requests))
        costs[kind] = {
            "meaning": meaning,
            "requests": requests,
            "nats_cpu_us": round(infra / requests * 1e6),
            "round_trip_ms": round(seconds / requests * 1e3, 2),
        }
    return costs


async def _repeat(one: Callable[[str], Awaitable[None]], kind: str, times: int) -> None:
    for _ in range(times):
        await one(kind)


async def _measured(run: Run, work: Callable[[], Awaitable[Any]]) -> tuple[Any, float, float, float]:
    """`work()`'s result, its wall seconds, and the edge's and nats-server's CPU seconds during it."""
    cpu, infra, started = run.cpu(), run.infra_cpu(), time.monotonic()
    result = await work()
    return result, time.monotonic() - started, run.cpu() - cpu, run.infra_cpu() - infra


async def pages_phase(run: Run, scale: Scale, layout: Layout, last_seq: int) -> dict[str, Any]:
    system = run.system
    assert isinstance(system, Jetsock)
    label = run.label
    readers = await run.open("none", scale.history_readers)
    # The edge's idle rate of messages to nats-server (none expected: its NATS probes are PINGs).
    idle_before, idle_started = await in_msgs(system), time.monotonic()
    await asyncio.sleep(2.0)
    idle_rate = (await in_msgs(system) - idle_before) / (time.monotonic() - idle_started)
    progress(
        f"{label}: {readers} clients asking {scale.history_rate} pages/s of {PAGE_LIMIT} "
        f"for {scale.history_seconds:.0f} s"
    )
    server_before = await in_msgs(system)
    share = scale.history_rate / len(run.generators)
    # Open loop: pages are asked at the rate whatever the answers; those late are waited for
    # (a third of the phase), those still unanswered then are reported.
    drain = max(5.0, scale.history_seconds / 3)
    replies, seconds, cpu, infra = await _measured(
        run,
        lambda: run.each(
            "history_pages",
            rate=share,
            duration=scale.history_seconds,
            limit=PAGE_LIMIT,
            prefix=PREFIX,
            last_seq=last_seq,
            tiers=layout.tiers(),
            drain=drain,
        ),
    )
    server = await in_msgs(system) - server_before - idle_rate * seconds
    settled = await quiet(system, 60.0, idle_rate)
    edge_profile = await _profile(run, scale, layout, last_seq, idle_rate)
    await run.each("close")
    await quiet(system, 60.0, idle_rate)
    answered = sum(r["answered"] for r in replies)
    by_kind: dict[str, dict[int, int]] = {}
    for reply in replies:
        for kind, histogram in reply["histograms"].items():
            by_kind[kind] = hist.merge([by_kind.get(kind, {}), histogram])
    merged = hist.merge(by_kind.values())
    progress(f"{label}: {answered} pages answered, p99 {hist.summary(merged).get('p99_ms')} ms")
    progress(f"{label}: counting the direct gets of {scale.history_counted_pages} pages in-process")
    counted = await count_requests(system, layout, last_seq, scale.history_counted_pages, idle_rate)
    return {
        "readers": readers,
        "pages": answered,
        "pages_sent": sum(r["sent"] for r in replies),
        "pages_unanswered": sum(r["sent"] - r["answered"] - r["errors"] for r in replies),
        "settled": settled,
        "page_errors": sum(r["errors"] for r in replies),
        "pages_unordered": sum(r["unordered"] for r in replies),
        "pages_per_s": round(answered / seconds, 1),
        "messages_per_page": round(sum(r["messages"] for r in replies) / max(answered, 1), 1),
        "pages_more": sum(r["more"] for r in replies),
        **hist.summary(merged),
        "page_latency_by_kind": {
            kind: {"pages": sum(h.values()), **hist.summary(h)} for kind, h in sorted(by_kind.items())
        },
        "page_histogram": merged,
        "page_histograms_by_kind": by_kind,
        "edge_cpu_us_per_page": round(cpu / max(answered, 1) * 1e6),
        "nats_cpu_us_per_page": round(infra / max(answered, 1) * 1e6),
        "edge_cpu_busy": round(cpu / seconds, 2),
        "js_requests_per_page": round(server / max(answered, 1), 2),
        "js_requests_method": (
            "nats-server /varz in_msgs delta over the phase, less its idle rate, over the pages answered;"
            " checked in-process with core.history over core.fetch, every direct get counted"
        ),
        "nats_idle_msgs_per_s": round(idle_rate, 2),
        "counted": counted,
        "profile": edge_profile,
    }


async def _profile(run: Run, scale: Scale, layout: Layout, last_seq: int, idle_rate: float) -> dict[str, Any] | None:
    """py-spy on one worker during one more stretch of pages at the same rate, apart from the measured one."""
    system = run.system
    assert isinstance(system, Jetsock)
    if scale.history_profile_seconds <= 0:
        return None
    progress(f"{run.label}: profiling one worker for {scale.history_profile_seconds:.0f} s of pages")
    with tempfile.TemporaryDirectory() as tmp:
        recording = asyncio.create_task(
            profile.record(run.system.server_pids()[0], scale.history_profile_seconds, Path(tmp) / "raw.txt")
        )
        await run.each(
            "history_pages",
            rate=scale.history_rate / len(run.generators),
            duration=scale.history_profile_seconds,
            limit=PAGE_LIMIT,
            prefix=PREFIX,
            last_seq=last_seq,
            tiers=layout.tiers(),
        )
        recorded = await recording
        await quiet(system, 60.0, idle_rate)
        return recorded


async def storm_phase(run: Run, scale: Scale, layout: Layout) -> dict[str, Any]:
    label = run.label
    joiners = min(scale.history_joiners, layout.rooms)
    connected = await run.open("history", joiners, defer_join=True)
    await asyncio.sleep(1.0)
    progress(f"{label}: {connected} clients join a room each with last: {LAST}")
    errors_before = (await run.stats())["errors"]
    cpu, infra = run.cpu(), run.infra_cpu()
    started = time.time()
    await run.each("join_rooms", last=LAST)
    sent_s = time.time() - started
    held = 0
    stats: dict[str, Any] = {}
    while time.time() - started < scale.history_timeout:
        stats = await run.stats()
        held = len(stats["caught_up_at"])
        if held >= connected:
            break
        progress(f"{label}: {time.time() - started:5.1f} s after the joins: {held}/{connected} hold their {LAST}")
        await asyncio.sleep(0.1)
    wall = time.time() - started
    cpu, infra = run.cpu() - cpu, run.infra_cpu() - infra
    replays = await run.each("replays")
    stats = await run.stats()
    curve = [round(t - started, 3) for t in stats["caught_up_at"]]
    received = sum(r["received"] for r in replays)
    result: dict[str, Any] = {
        "joiners": connected,
        "joins_sent_s": round(sent_s, 3),
        "held": len(curve),
        "replayed": sum(r["replayed"] for r in replays),
        "received": received,
        "short": connected * LAST - received,
        "lost": stats["lost"],
        "duplicates": stats["duplicates"],
        "errors": {k: n - errors_before.get(k, 0) for k, n in stats["errors"].items() if n > errors_before.get(k, 0)},
        "edge_cpu_s": round(cpu, 2),
        "nats_cpu_s": round(infra, 2),
        "edge_cpu_busy": round(cpu / wall, 2),
        "nats_cpu_busy": round(infra / wall, 2),
        "join_to_held": hist.summary(stats["histogram"]),
        "curve": curve,
    }
    if curve and len(curve) >= connected:
        result["storm_s"] = max(curve)
    else:
        result["timeout_s"] = scale.history_timeout
    return result


async def history(system: str, scale: Scale) -> dict[str, Any]:
    """Pages of 50 from a big stream at a steady rate, then a storm of joins with `last: 50`."""
    layout = Layout(scale.history_rooms, scale.history_messages)
    label = f"history {system}"
    clients = max(scale.history_readers, scale.history_joiners)
    # Each edge worker's history cache holds the whole stream (core/tailcache.py): pages and
    # joins are then answered from memory, which the report's figures are about.
    cache = {"JETSOCK_HISTORY_CACHE_MESSAGES": str(layout.messages + 1000), "JETSOCK_HISTORY_CACHE_BYTES": "0"}
    async with running(system, WORKERS, clients, label, env=cache) as run:
        jetsock = run.system
        if not isinstance(jetsock, Jetsock) or jetsock.js is None:
            raise ValueError(f"the history scenario runs against jetsock, not {system}")
        assert jetsock.nc is not None
        js = jetsock.nc.jetstream(publish_async_max_pending=2 * scale.history_window)
        rss_before = run.rss_kb()
        loaded = await load_stream(js, layout, scale.history_window, label)
        warm = await warm_up(run, label)
        held_kb = run.rss_kb() - rss_before
        warm["workers"] = WORKERS
        warm["edge_rss_mb"] = round(run.rss_kb() / 1024, 1)
        warm["edge_rss_bytes_per_message"] = round(held_kb * 1024 / max(layout.messages, 1) / WORKERS)
        progress(f"{label}: the nats-server cost of each kind of direct get, {scale.history_cost_requests} each")
        costs = await direct_get_costs(run, layout, loaded["last_seq"], scale.history_cost_requests)
        pages = await pages_phase(run, scale, layout, loaded["last_seq"])
        storm = await storm_phase(run, scale, layout)
    p99 = pages.get("p99_ms")
    storm_s = storm.get("storm_s")
    return {
        "connections": storm["joiners"],
        **{k: pages[k] for k in ("p50_ms", "p99_ms", "p999_ms") if k in pages},
        "catchup_s": storm_s,
        "lost": storm["short"] + storm["lost"],
        "pages_per_s": pages["pages_per_s"],
        "edge_cpu_us_per_page": pages["edge_cpu_us_per_page"],
        "nats_cpu_us_per_page": pages["nats_cpu_us_per_page"],
        "js_requests_per_page": pages["js_requests_per_page"],
        "storm_s": storm_s,
        "storm_edge_cpu_s": storm["edge_cpu_s"],
        "storm_nats_cpu_s": storm["nats_cpu_s"],
        "load_msg_per_s": loaded["msg_per_s"],
        "targets": {
            "p99_page_ms": {"goal": TARGET_P99_MS, "measured": p99, "met": p99 is not None and p99 <= TARGET_P99_MS},
            "storm_s": {
                "goal": TARGET_STORM_S,
                "measured": storm_s,
                "met": storm_s is not None and storm_s <= TARGET_STORM_S,
            },
        },
        "cache_fill_s": warm["seconds"],
        "cache_fill_edge_cpu_us_per_message": round(warm["edge_cpu_s"] / max(layout.messages, 1) * 1e6, 1),
        "load": loaded,
        "cache_fill": warm,
        "direct_get_costs": costs,
        "pages": pages,
        "storm": storm,
    }
