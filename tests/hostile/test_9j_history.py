"""Class 9j: history requests as a flood.

A `history` request makes the edge read the stream (a few direct gets and a forward read
per page, schemas/PROTOCOL.md 9.12), so a client could try to make it read, encode and
hold pages without end. The limits: a rate limit per connection of its own
(`history_rate`, `history_burst`; the `rate_limit_strikes`-th refusal in a row closes
with 4029), one lane per connection counted against `max_requests_in_flight` (past it
the edge stops reading the socket), pages of at most `history_page_bytes`, and replies
that count against `max_pending_bytes` (4008 for a client that does not read).

On an edge of this class's own (history_rate 10, history_burst 20, rate_limit_strikes
50): one connection pipelines 1,000 history requests: what the bucket lets through stays
within its allowance, every refusal carries its own request's ref, and the connection is
closed with 4029; then 20 connections flood, reconnecting when closed, while a control
client pages the same room at its own pace and receives a backend's messages: it is never
refused, never waits long, and gets every message.

On the shared world (whose history limits are lifted): in a room of 300 messages of 16 KB,
clients that pipeline 200 pages each and never read are closed with 4008, clients that
page back through the room get exactly the stored room, rounds of concurrent HTTP pages
all answer 200 within the byte bound, and the edge's RSS stays within what those limits
allow; afterwards the control client still got every message (`hostile.check`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import pytest_asyncio

from tests.conftest import Client, connect, token
from tests.edge.checker import check_exact, stored_seqs
from tests.hostile.conftest import Cases
from tests.hostile.edgeproc import EdgeProcess
from tests.hostile.rawws import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawWS, frame
from tests.hostile.support import HISTORY_CACHE_MESSAGES, Hostile, raise_nofile_limit
from tests.hostile.test_8_stalled import closes_4008

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.hostile("history floods")]

HISTORY_RATE = 10.0
HISTORY_BURST = 20
STRIKES = 50
REQUESTS = 1000
FLOODERS = 20
FLOOD_SECONDS = 6.0
ROOM = "flood.history"


class HistoryEdge(EdgeProcess):
    """The class's edge, with the history limits under test."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(
            workdir,
            {
                "JETSOCK_NODE": "hostile-history-edge",
                "JETSOCK_HISTORY_RATE": str(HISTORY_RATE),
                "JETSOCK_HISTORY_BURST": str(HISTORY_BURST),
                "JETSOCK_RATE_LIMIT_STRIKES": str(STRIKES),
                "JETSOCK_MAX_CONNECTIONS_PER_SOURCE": "0",
                "JETSOCK_MAX_UNAUTHENTICATED_PER_SOURCE": "0",
            },
        )


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def history_edge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HistoryEdge]:
    raise_nofile_limit()
    edge = HistoryEdge(tmp_path_factory.mktemp("history-rate"))
    try:
        await edge.start()
        nc = await nats.connect(edge.nats.url if edge.nats else "")
        js = nc.jetstream()
        for i in range(60):
            await js.publish(f"rooms.{ROOM}", json.dumps({"n": i}).encode())
        await nc.close()
        yield edge
    finally:
        await edge.stop()


@functools.cache
def history_frames(room: str, count: int) -> bytes:
    """`count` history requests of `room`, pipelined; refs 0, 1, ... in request order (masked
    once: every flood sends the same bytes, so the test's CPU goes to reading replies)."""
    return b"".join(
        frame(OP_TEXT, json.dumps({"type": "history", "room": room, "limit": 5, "ref": i}).encode())
        for i in range(count)
    )


@dataclass
class Flood:
    """What one connection's pipelined history requests got."""

    replies: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    seconds: float = 0.0
    dropped: bool = False
    timed_out: bool = False

    @property
    def refused(self) -> list[dict[str, Any]]:
        return [r for r in self.replies if r.get("type") == "error" and r.get("code") == "rate_limited"]

    @property
    def pages(self) -> list[dict[str, Any]]:
        return [r for r in self.replies if r.get("type") == "history"]

    def allowance(self) -> float:
        """What the bucket can let through in `seconds`: the burst, what refills meanwhile, one for rounding."""
        return HISTORY_BURST + HISTORY_RATE * self.seconds + 1


async def read_replies(ws: RawWS, result: Flood, count: int, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while len(result.replies) < count:
            got = await ws.read_frame(timeout)
            if got is None:
                result.dropped = True
                return
            if got.opcode == OP_CLOSE:
                result.close_code = got.close_code
                return
            if got.opcode == OP_PING:
                ws.write(frame(OP_PONG, got.payload))
                continue
            if got.opcode == OP_TEXT:
                result.replies.append(json.loads(got.payload))


async def flood(edge: HistoryEdge, sub: str, requests: int = REQUESTS, timeout: float = 30.0) -> Flood:
    """Authenticate as `sub`, pipeline `requests` history requests, read until closed or all answered."""
    ws = await RawWS.open(edge.port, ("jetsock.v1", "bearer." + token(sub)))
    result = Flood()
    try:
        assert ws.upgraded, ws.response_head
        welcome = await ws.read_frame()
        assert welcome is not None and json.loads(welcome.payload)["type"] == "welcome", welcome
        started = time.monotonic()
        ws.write(history_frames(ROOM, requests))
        try:
            await ws.writer.drain()
        except ConnectionError:
            pass
        try:
            await read_replies(ws, result, requests, timeout)
        except TimeoutError:
            result.timed_out = True
        result.seconds = time.monotonic() - started
    finally:
        ws.abort()
    return result


def flood_problems(result: Flood) -> list[str]:
    """What is wrong with one flooded connection's outcome, as this class expects it."""
    problems = []
    if result.close_code != 4029:
        problems.append(
            f"closed with {result.close_code} (dropped: {result.dropped}, timed out: {result.timed_out}), not 4029"
        )
    accepted = len(result.replies) - len(result.refused)
    if accepted > result.allowance():
        problems.append(f"{accepted} accepted in {result.seconds:.2f} s, allowance {result.allowance():.0f}")
    refs = [r.get("ref") for r in result.refused]
    if len(set(refs)) != len(refs) or not set(refs) <= set(range(REQUESTS)):
        problems.append(f"rate_limited errors without their own request's ref: {refs[:10]}")
    if len(refs) < STRIKES - 1:
        problems.append(f"only {len(refs)} rate_limited errors before the close")
    pages = [int(r["ref"]) for r in result.pages]
    if pages != sorted(pages):
        problems.append(f"pages out of request order: {pages[:20]}")
    others = len(result.replies) - len(result.refused) - len(result.pages)
    if others:
        problems.append(f"{others} replies that are neither a page nor rate_limited")
    return problems


async def test_one_connection_pipelining_1000_history_requests(history_edge: HistoryEdge, cases: Cases) -> None:
    """The burst, then refusals with their refs, then 4029; pages in request order."""
    result = await flood(history_edge, "history-flood-one")
    cases.add(REQUESTS)
    kinds = Counter(r["type"] if r.get("type") != "error" else r["code"] for r in result.replies)
    cases.note(
        "one connection",
        {
            "replies": dict(kinds),
            "allowance": round(result.allowance(), 1),
            "seconds until closed": round(result.seconds, 3),
            "close code": result.close_code,
        },
    )
    assert not flood_problems(result), (flood_problems(result), dict(kinds))


class ControlReader:
    """A member of the room that pages it now and then, keeping the room messages that arrive."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.live: list[dict[str, Any]] = []

    async def page(self, ref: int) -> float:
        """One page of 10; the seconds it took (it must be a page, never `rate_limited`)."""
        started = time.monotonic()
        await self.client.send(type="history", room=ROOM, limit=10, ref=ref)
        while (reply := await self.client.recv(timeout=5.0))["type"] == "msg":
            self.live.append(reply)
        assert reply["type"] == "history" and reply["ref"] == ref, reply
        assert len(reply["messages"]) == 10 and reply["more"] is True, reply
        return time.monotonic() - started

    async def until(self, seq: int) -> None:
        """Read room messages until `seq` has come."""
        async with asyncio.timeout(10):
            while not self.live or self.live[-1]["seq"] < seq:
                reply = await self.client.recv()
                assert reply["type"] == "msg", reply
                self.live.append(reply)


async def test_flooding_connections_cost_a_control_reader_nothing(history_edge: HistoryEdge, cases: Cases) -> None:
    """20 connections flood (reconnecting after each 4029) while a control client, a member of
    the room, pages it five times a second and a backend publishes into it: every control page
    is answered (never `rate_limited`) within a second, and the control gets every message."""
    assert history_edge.nats is not None
    nc = await nats.connect(history_edge.nats.url)
    js = nc.jetstream()
    control = ControlReader(await connect(history_edge.url, tok=token("history-control")))
    joined = await control.client.request(type="join", room=ROOM)
    assert joined["type"] == "joined", joined
    stop = asyncio.Event()
    results: list[Flood] = []
    slowest = 0.0
    rounds = 0
    published = 0

    async def flooder(n: int) -> None:
        while not stop.is_set():
            results.append(await flood(history_edge, f"history-flooder-{n}"))

    async def backend() -> None:
        nonlocal published
        while not stop.is_set():
            await js.publish(f"rooms.{ROOM}", json.dumps({"live": published}).encode())
            published += 1
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(flooder(n)) for n in range(FLOODERS)] + [asyncio.create_task(backend())]
    try:
        deadline = time.monotonic() + FLOOD_SECONDS
        while time.monotonic() < deadline:
            slowest = max(slowest, await control.page(rounds))
            rounds += 1
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    await control.until((await js.publish(f"rooms.{ROOM}", b'{"last":true}')).seq)
    stored = await stored_seqs(history_edge.nats.url, ROOM)
    await control.client.close()
    await nc.close()
    codes = Counter(r.close_code for r in results)
    cases.add(sum(len(r.replies) for r in results) + rounds)
    cases.note(
        "20 connections",
        {
            "flooding connections (with reconnects)": len(results),
            "requests answered": sum(len(r.replies) for r in results),
            "close codes": {str(k): v for k, v in codes.items()},
            "control pages": rounds,
            "slowest control page (s)": round(slowest, 3),
            "messages published meanwhile": published,
        },
    )
    problems = [p for r in results for p in flood_problems(r)]
    assert not problems, problems[:10]
    assert slowest < 1.0, f"a control page took {slowest:.2f} s"
    check_exact(control.live, stored, joined["seq"])


# --- on the shared world -------------------------------------------------------------------

BIG = "hostile.history.big"
BIG_MESSAGES = 300
PAD = 16_000
STALLED = 10
STALLED_PAGES = 200
READERS = 10
HTTP_CONCURRENCY = 32
HTTP_ROUNDS = 5
PAGE_BYTES = 262_144
"""The edge's history_page_bytes (the hostile world keeps the default)."""
MAX_PENDING = 1 << 20
"""The edge's max_pending_bytes (the hostile world keeps the default)."""
PER_STALLED = MAX_PENDING + 2 * PAGE_BYTES
"""What a client that does not read may cost: its outbox, the page being read and the one being sent."""
PER_PAGE_IN_FLIGHT = 4 * PAGE_BYTES
"""A page being read, encoded and written: its messages, their encodings, the joined body, its copy."""
MARGIN_KB = 40 * 1024


async def stalled_reader(hostile: Hostile, stop: asyncio.Event) -> None:
    """Pipeline STALLED_PAGES pages of 100 from random `before`s, never read, ping every second
    so the heartbeat keeps it alive until the edge closes it."""
    ws = await RawWS.open(hostile.port, ("jetsock.v1", "bearer." + token("hostile-history-staller")))
    assert ws.upgraded, ws.response_head
    welcome = await ws.read_frame()
    assert welcome is not None and json.loads(welcome.payload)["type"] == "welcome"
    ws.writer.transport.pause_reading()  # type: ignore[attr-defined]
    rnd = random.Random(9)
    try:
        for i in range(STALLED_PAGES):
            request = {"type": "history", "room": BIG, "limit": 100, "ref": i}
            if i % 2:
                request["before"] = rnd.randint(1, 10**9)
            ws.write(frame(OP_TEXT, json.dumps(request).encode()))
        await ws.writer.drain()
        while not stop.is_set():
            await ws.send(OP_PING, b"alive")
            await asyncio.sleep(1.0)
    except ConnectionError:
        pass  # closed by the edge
    finally:
        ws.abort()


async def page_back(hostile: Hostile, n: int) -> list[int]:
    """Page back through BIG from its head to its first message; the seqs, oldest first."""
    client = await connect(hostile.url, tok=token(f"hostile-history-reader-{n}", join=[BIG], publish=[]))
    pages: list[list[int]] = []
    request: dict[str, Any] = {"type": "history", "room": BIG, "limit": 100}
    try:
        while True:
            reply = await client.request(**request, ref=len(pages))
            assert reply["type"] == "history" and reply["ref"] == len(pages), reply
            seqs = [m["seq"] for m in reply["messages"]]
            assert seqs and len(json.dumps(reply["messages"])) <= PAGE_BYTES + 100 * 200, len(seqs)
            pages.append(seqs)
            if not reply["more"]:
                return [s for p in reversed(pages) for s in p]
            request["before"] = seqs[0]
    finally:
        await client.close()


async def http_pages(hostile: Hostile) -> Counter[int]:
    """HTTP_ROUNDS rounds of HTTP_CONCURRENCY concurrent GETs of BIG's biggest page; statuses."""
    statuses: Counter[int] = Counter()
    headers = {"Authorization": "Bearer " + token("hostile-history-http", join=[BIG], publish=[])}
    url = f"{hostile.http}/v1/rooms/{BIG}/messages?limit=100"
    async with aiohttp.ClientSession() as http:

        async def one() -> None:
            async with http.get(url, headers=headers) as response:
                body = await response.read()
                statuses[response.status] += 1
                if response.status == 200:
                    assert len(body) <= PAGE_BYTES + 100 * 200 and json.loads(body)["more"] is True

        for _ in range(HTTP_ROUNDS):
            await asyncio.gather(*(one() for _ in range(HTTP_CONCURRENCY)))
    return statuses


async def test_slow_paging_and_http_readers_of_a_big_room(hostile: Hostile, cases: Cases) -> None:
    """Stalled readers are closed with 4008, readers paging back get exactly the stored room,
    HTTP pages answer 200, and the edge's RSS stays within the limits' bound meanwhile."""
    payload = json.dumps({"pad": "x" * PAD}).encode()
    for _ in range(BIG_MESSAGES):
        await hostile.js.publish(f"rooms.{BIG}", payload)
    stored = await stored_seqs(hostile.nats.url, BIG)
    assert len(stored) == BIG_MESSAGES
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as http:
        closed_before = await closes_4008(http, hostile.http)
        baseline = hostile.rss_kb()
        peak = baseline
        started = time.monotonic()
        stallers = [asyncio.create_task(stalled_reader(hostile, stop)) for _ in range(STALLED)]
        readers = asyncio.gather(*(page_back(hostile, n) for n in range(READERS)))
        gets = asyncio.create_task(http_pages(hostile))
        try:
            async with asyncio.timeout(90):
                while await closes_4008(http, hostile.http) < closed_before + STALLED or not (
                    readers.done() and gets.done()
                ):
                    peak = max(peak, hostile.rss_kb())
                    await asyncio.sleep(0.1)
            took = time.monotonic() - started
            walked = await readers
            statuses = await gets
        finally:
            stop.set()
            await asyncio.gather(*stallers, return_exceptions=True)
    grew_kb = peak - baseline
    cases.add(STALLED * STALLED_PAGES + READERS + HTTP_CONCURRENCY * HTTP_ROUNDS)
    cases.note(
        "big room",
        {
            "stalled readers closed with 4008": STALLED,
            "seconds until all were closed and every reader done": round(took, 1),
            "HTTP statuses": {str(k): v for k, v in statuses.items()},
            "edge RSS growth, MB": round(grew_kb / 1024, 1),
        },
    )
    assert all(seqs == stored for seqs in walked), "a reader paging back missed or repeated messages"
    assert statuses == Counter({200: HTTP_CONCURRENCY * HTTP_ROUNDS}), statuses
    allowed_kb = (STALLED * PER_STALLED + (READERS + HTTP_CONCURRENCY) * PER_PAGE_IN_FLIGHT) // 1024 + MARGIN_KB
    assert grew_kb <= allowed_kb, f"RSS grew {grew_kb / 1024:.0f} MB, allowed {allowed_kb / 1024:.0f} MB"
    held, answered = await history_cache_figures(hostile.http)
    cases.note("history cache", {"messages held": held, "reads it answered": answered})
    assert 0 < held <= HISTORY_CACHE_MESSAGES, held
    assert answered > 0, "the floods were all read from the stream: the cache never answered"
    cases.note("check_after_big_room", await hostile.check("history floods"))


async def history_cache_figures(base: str) -> tuple[float, float]:
    """From the edge's /metrics: the messages its history cache holds, and the reads it answered."""
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
        text = await response.text()
    held = re.findall(r"^jetsock_history_cache_messages(?:\{[^}]*\})? (\S+)$", text, re.M)
    answered = re.findall(r'^jetsock_history_cache_reads_total\{[^}]*jetsock_answer="cache"[^}]*\} (\S+)$', text, re.M)
    return sum(map(float, held)), sum(map(float, answered))
