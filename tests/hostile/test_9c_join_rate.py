"""Class 9c: join and leave floods.

An audit had 30 connections do 174,630 join/leave pairs in 40 s, each a NATS
subscribe, a head lookup and an unsubscribe. Now joins and leaves share a
per-connection token bucket (`join_rate` a second, `join_burst` at once):
excess gets `error` `rate_limited` with the request's ref, and the
`rate_limit_strikes`-th refusal in a row closes the connection with 4029
(edge/session.py). A room keeps its NATS subscription for `room_grace`
seconds after its last local member leaves (edge/interest.py), so joining and
leaving the same room does not churn NATS interest.

The shared world sets a huge join burst, so this class runs a `jetsock serve`
of its own (join_rate 10, join_burst 20, rate_limit_strikes 50) on a
nats-server with its monitoring port on. NATS interest churn is counted at
the server: `/subsz` reports `num_inserts` and `num_removes`, the server's
running totals of subscriptions added and removed (all clients; the edge is
the only one that subscribes during the flood).
"""

from __future__ import annotations

import asyncio
import json
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

from core.embedded import free_port
from tests.conftest import Client, connect, token
from tests.hostile.conftest import Cases
from tests.hostile.edgeproc import EdgeProcess
from tests.hostile.rawws import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawWS, frame
from tests.hostile.support import raise_nofile_limit

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.hostile("join and leave floods")]

JOIN_RATE = 10.0
JOIN_BURST = 20
STRIKES = 50
PAIRS = 1000
FLOODERS = 30
FLOOD_SECONDS = 8.0
CHURN_SLACK = 10
"""Subscriptions the server may see added besides one per flooded room (the control's room, inboxes)."""


class FloodEdge(EdgeProcess):
    """The class's edge, with the join limits under test and a nats-server whose monitoring counts subscriptions."""

    def __init__(self, workdir: Path) -> None:
        self.monitor_port = free_port()
        super().__init__(
            workdir,
            {
                "JETSOCK_NODE": "hostile-join-rate-edge",
                "JETSOCK_JOIN_RATE": str(JOIN_RATE),
                "JETSOCK_JOIN_BURST": str(JOIN_BURST),
                "JETSOCK_RATE_LIMIT_STRIKES": str(STRIKES),
            },
            ["-m", str(self.monitor_port)],
        )

    async def interest_churn(self) -> tuple[int, int]:
        """(subscriptions added, removed) so far, as the nats-server counts them."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.monitor_port}/subsz") as r,
        ):
            state = await r.json(content_type=None)
        return int(state["num_inserts"]), int(state["num_removes"])


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def flood_edge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FloodEdge]:
    raise_nofile_limit()
    edge = FloodEdge(tmp_path_factory.mktemp("join-rate"))
    try:
        await edge.start()
        yield edge
    finally:
        await edge.stop()


def pairs_frames(room: str, pairs: int) -> bytes:
    """`pairs` join/leave pairs of `room`, pipelined; refs 0, 1, ... in request order."""
    out = []
    for i in range(pairs):
        out.append(frame(OP_TEXT, json.dumps({"type": "join", "room": room, "ref": 2 * i}).encode()))
        out.append(frame(OP_TEXT, json.dumps({"type": "leave", "room": room, "ref": 2 * i + 1}).encode()))
    return b"".join(out)


@dataclass
class Flood:
    """What one connection's pipelined join/leave pairs got."""

    replies: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    seconds: float = 0.0
    dropped: bool = False
    timed_out: bool = False

    @property
    def refused(self) -> list[dict[str, Any]]:
        return [r for r in self.replies if r.get("type") == "error" and r.get("code") == "rate_limited"]

    @property
    def accepted(self) -> int:
        """Requests the bucket let through (whatever they then got: joined, left, not_joined...)."""
        return len(self.replies) - len(self.refused)

    def allowance(self) -> float:
        """What the bucket can let through in `seconds`: the burst, what refills meanwhile, one for rounding."""
        return JOIN_BURST + JOIN_RATE * self.seconds + 1


async def flood(edge: FloodEdge, sub: str, room: str, pairs: int = PAIRS, timeout: float = 30.0) -> Flood:
    """Authenticate as `sub`, pipeline `pairs` join/leave pairs of `room`, read until closed or all answered."""
    ws = await RawWS.open(edge.port, ("jetsock.v1", "bearer." + token(sub)))
    result = Flood()
    try:
        assert ws.upgraded, ws.response_head
        welcome = await ws.read_frame()
        assert welcome is not None and json.loads(welcome.payload)["type"] == "welcome", welcome
        started = time.monotonic()
        ws.write(pairs_frames(room, pairs))
        try:
            await ws.writer.drain()
        except ConnectionError:
            pass
        try:
            await read_flood_replies(ws, result, 2 * pairs, timeout)
        except TimeoutError:
            result.timed_out = True
        result.seconds = time.monotonic() - started
    finally:
        ws.abort()
    return result


async def flood_in_turn(edge: FloodEdge, sub: str, room: str, pairs: int = PAIRS, timeout: float = 30.0) -> Flood:
    """Like `flood`, but each request waits for its reply: joins that pass the bucket complete (NATS interest)."""
    ws = await RawWS.open(edge.port, ("jetsock.v1", "bearer." + token(sub)))
    result = Flood()
    try:
        assert ws.upgraded, ws.response_head
        welcome = await ws.read_frame()
        assert welcome is not None and json.loads(welcome.payload)["type"] == "welcome", welcome
        started = time.monotonic()
        try:
            for ref in range(2 * pairs):
                kind = "join" if ref % 2 == 0 else "leave"
                await ws.send(OP_TEXT, json.dumps({"type": kind, "room": room, "ref": ref}).encode())
                await read_flood_replies(ws, result, len(result.replies) + 1, timeout)
                if result.close_code is not None or result.dropped:
                    break
        except ConnectionError:
            result.dropped = True
        except TimeoutError:
            result.timed_out = True
        result.seconds = time.monotonic() - started
    finally:
        ws.abort()
    return result


async def read_flood_replies(ws: RawWS, result: Flood, count: int, timeout: float) -> None:
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
                reply = json.loads(got.payload)
                if reply.get("type") != "msg":
                    result.replies.append(reply)


def flood_problems(result: Flood) -> list[str]:
    """What is wrong with one flooded connection's outcome, as this class expects it."""
    problems = []
    if result.close_code != 4029:
        problems.append(
            f"closed with {result.close_code} (dropped: {result.dropped}, timed out: {result.timed_out}), not 4029"
        )
    if result.accepted > result.allowance():
        problems.append(f"{result.accepted} accepted in {result.seconds:.2f} s, allowance {result.allowance():.0f}")
    refs = [r.get("ref") for r in result.refused]
    if len(set(refs)) != len(refs) or not set(refs) <= set(range(2 * PAIRS)):
        problems.append(f"rate_limited errors without their own request's ref: {refs[:10]}")
    if len(refs) < STRIKES - 1:
        problems.append(f"only {len(refs)} rate_limited errors before the close")
    return problems


async def test_one_connection_pipelining_1000_join_leave_pairs(flood_edge: FloodEdge, cases: Cases) -> None:
    result = await flood(flood_edge, "flood-one", "flood.one")
    cases.add(2 * PAIRS)
    kinds = Counter(r["type"] if r.get("type") != "error" else r["code"] for r in result.replies)
    cases.note(
        "one connection",
        {
            "replies": dict(kinds),
            "accepted": result.accepted,
            "allowance": round(result.allowance(), 1),
            "seconds until closed": round(result.seconds, 3),
            "close code": result.close_code,
        },
    )
    assert not flood_problems(result), (flood_problems(result), dict(kinds))
    assert all(r.get("ref") in range(2 * PAIRS) for r in result.replies), result.replies[:5]


async def test_30_flooding_connections_neither_stop_a_control_client_nor_churn_nats_interest(
    flood_edge: FloodEdge, cases: Cases
) -> None:
    nc = await nats.connect(flood_edge.nats.url if flood_edge.nats else "")
    js = nc.jetstream()
    control = await connect(flood_edge.url, tok=token("flood-control"))
    stop = asyncio.Event()
    results: list[Flood] = []
    control_rounds = 0
    control_failures: list[str] = []
    try:
        control_room = "flood.control"
        # Warm up the control's path and the backend's reply inbox, so the count starts clean.
        await control_cycle(control, js, control_room, -1)
        await asyncio.sleep(0.5)
        added_before, removed_before = await flood_edge.interest_churn()

        async def flooder(n: int) -> None:
            # Like the audit's attackers: flood, and when closed, reconnect and flood again. Half of them
            # pipeline; the other half wait for each reply, so their joins complete and follow the room on NATS.
            attack = flood if n % 2 == 0 else flood_in_turn
            while not stop.is_set():
                results.append(await attack(flood_edge, f"flooder-{n}", f"flood.many.{n}"))

        async def control_loop() -> None:
            nonlocal control_rounds
            n = 0
            while not stop.is_set():
                try:
                    await control_cycle(control, js, control_room, n)
                except (AssertionError, TimeoutError) as exc:
                    control_failures.append(f"round {n}: {type(exc).__name__}: {str(exc)[:300]}")
                control_rounds += 1
                n += 1
                await asyncio.sleep(0.3)

        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(flooder(n)) for n in range(FLOODERS)]
        tasks.append(loop.create_task(control_loop()))
        await asyncio.sleep(FLOOD_SECONDS)
        stop.set()
        async with asyncio.timeout(60):
            await asyncio.gather(*tasks)
        added, removed = await flood_edge.interest_churn()
        # The count is live: a room new to the edge adds a subscription.
        await control_cycle(control, js, "flood.witness", -2)
        witnessed = (await flood_edge.interest_churn())[0] - added
    finally:
        stop.set()
        await control.close()
        await nc.close()
    churn = added - added_before, removed - removed_before
    accepted = sum(r.accepted for r in results)
    problems = Counter(problem.split(" ")[0] + "..." for r in results for problem in flood_problems(r))
    cases.add(sum(len(r.replies) for r in results) + control_rounds)
    cases.note(
        "30 connections",
        {
            "flooding connections (with reconnects)": len(results),
            "requests answered": sum(len(r.replies) for r in results),
            "accepted": accepted,
            "close codes": dict(Counter(str(r.close_code) for r in results)),
            "control rounds": control_rounds,
            "NATS subscriptions added, removed": list(churn),
            "joined replies": sum(1 for r in results for reply in r.replies if reply.get("type") == "joined"),
        },
    )
    assert witnessed >= 1, "the nats-server's /subsz did not count the edge's subscription of a new room"
    assert results and not problems, problems
    assert not control_failures, control_failures[:5]
    assert control_rounds >= 5
    # One subscription per flooded room (kept through the flood by room_grace), not one per join.
    assert churn[0] <= FLOODERS + CHURN_SLACK, f"{churn[0]} subscriptions added for {accepted} accepted requests"


async def control_cycle(control: Client, js: Any, room: str, n: int) -> None:
    """Join `room`, receive a backend's publish into it, leave."""
    async with asyncio.timeout(10):
        joined = await control.request(type="join", room=room, ref=f"j{n}")
        assert joined["type"] == "joined" and joined["ref"] == f"j{n}", joined
        ack = await js.publish("rooms." + room, json.dumps({"control": n}).encode())
        msg = await control.expect("msg")
        assert msg["seq"] == ack.seq, (msg, ack.seq)
        left = await control.request(type="leave", room=room, ref=f"l{n}")
        assert left["type"] == "left" and left["ref"] == f"l{n}", left
