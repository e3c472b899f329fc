"""Class 5: thousands of joins; connections joining, leaving and vanishing in a hurry.

One connection pipelines 5,000 joins: exactly the first
`max_rooms_per_connection` (in request order) get `joined`, the rest
`too_many_rooms`, each request once. Replies to requests of different rooms
may come in any order (joins wait on NATS beside the read loop, refusals are
answered at once: PROTOCOL.md 9.1); for one room they come in request order.
Many connections join and leave the control room while a backend publishes
into it, and hundreds vanish without a close frame while they are members.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.conftest import token
from tests.hostile.conftest import Cases
from tests.hostile.rawws import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawWS, frame
from tests.hostile.support import MAX_ROOMS, ROOM, Hostile

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.hostile("thousands of joins")]


async def replies(ws: RawWS, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The next `count` replies (room messages and WebSocket pings are skipped)."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while len(out) < count:
            got = await ws.read_frame(timeout)
            assert got is not None and got.opcode != OP_CLOSE, f"closed after {len(out)} replies: {got}"
            if got.opcode == OP_PING:
                await ws.send(OP_PONG, got.payload)
                continue
            assert got.opcode == OP_TEXT, got
            reply = json.loads(got.payload)
            if reply["type"] != "msg":
                out.append(reply)
    return out


def joins(rooms: list[str], first_ref: int = 0) -> bytes:
    return b"".join(
        frame(OP_TEXT, json.dumps({"type": "join", "room": r, "ref": first_ref + i}).encode())
        for i, r in enumerate(rooms)
    )


async def test_5000_pipelined_joins_on_one_connection(hostile: Hostile, cases: Cases) -> None:
    ws = await hostile.raw()
    try:
        rooms = [ROOM] + [f"hostile.many.{i}" for i in range(1, 5000)]
        ws.write(joins(rooms))
        await ws.writer.drain()
        got = await replies(ws, len(rooms))
        cases.add(len(rooms))
        assert sorted(r.get("ref") for r in got) == list(range(len(rooms))), "every request answered once"
        by_ref = {r["ref"]: r["type"] if r["type"] != "error" else r["code"] for r in got}
        kinds = [by_ref[ref] for ref in range(len(rooms))]
        assert kinds[:MAX_ROOMS] == ["joined"] * MAX_ROOMS, kinds[:MAX_ROOMS]
        assert set(kinds[MAX_ROOMS:]) == {"too_many_rooms"}, {k for k in kinds[MAX_ROOMS:] if k != "too_many_rooms"}
        # Leaving frees the slots: 50 leaves, 50 new joins, and the 51st is refused again.
        ws.write(
            b"".join(
                frame(OP_TEXT, json.dumps({"type": "leave", "room": r, "ref": f"l{i}"}).encode())
                for i, r in enumerate(rooms[:MAX_ROOMS])
            )
        )
        fresh = [f"hostile.again.{i}" for i in range(MAX_ROOMS + 1)]
        ws.write(joins(fresh, first_ref=10_000))
        await ws.writer.drain()
        got = await replies(ws, MAX_ROOMS + len(fresh))
        cases.add(MAX_ROOMS + len(fresh))
        # Leaves need no NATS: answered at once, in order, before any of the joins sent after them.
        assert [r["type"] for r in got[:MAX_ROOMS]] == ["left"] * MAX_ROOMS
        answers = {r["ref"]: r["type"] if r["type"] != "error" else r["code"] for r in got[MAX_ROOMS:]}
        assert [answers[10_000 + i] for i in range(MAX_ROOMS)] == ["joined"] * MAX_ROOMS
        assert answers[10_000 + MAX_ROOMS] == "too_many_rooms", answers
    finally:
        ws.abort()
    cases.note("check_after_5000_joins", await hostile.check("5,000 joins"))


async def test_many_connections_join_and_leave_rapidly_while_messages_flow(hostile: Hostile, cases: Cases) -> None:
    stop = asyncio.Event()
    published = 0

    async def backend() -> None:
        nonlocal published
        while not stop.is_set():
            await hostile.js.publish("rooms." + ROOM, json.dumps({"churn": published}).encode())
            published += 1
            await asyncio.sleep(0.01)

    async def churner(n: int) -> int:
        tok = token(f"hostile-churn-{n}")
        ws = await RawWS.open(hostile.port, ("jetsock.v1", "bearer." + tok))
        try:
            assert (await replies(ws, 1))[0]["type"] == "welcome"
            other = f"hostile.churn.{n % 10}"
            for cycle in range(20):
                ws.write(
                    b"".join(
                        frame(OP_TEXT, json.dumps(f).encode())
                        for f in (
                            {"type": "join", "room": ROOM, "ref": cycle},
                            {"type": "join", "room": other, "ref": cycle},
                            {"type": "leave", "room": ROOM, "ref": cycle},
                            {"type": "leave", "room": other, "ref": cycle},
                        )
                    )
                )
                await ws.writer.drain()
                got = await replies(ws, 4)
                # Per room, in request order: the leave waits for its room's join.
                for room in (ROOM, other):
                    assert [r["type"] for r in got if r.get("room") == room] == ["joined", "left"], got
                assert all(r.get("ref") == cycle for r in got), got
        finally:
            ws.abort()
        return 40

    feeder = asyncio.get_running_loop().create_task(backend())
    try:
        done = await asyncio.gather(*(churner(n) for n in range(100)))
    finally:
        stop.set()
        await feeder
    cases.add(sum(done))
    cases.note("churn: joins", sum(done))
    cases.note("churn: messages published meanwhile", published)
    cases.note("check_after_churn", await hostile.check("join/leave churn"))


async def test_members_that_vanish_without_a_close_frame(hostile: Hostile, cases: Cases) -> None:
    async def member(n: int) -> RawWS:
        ws = await RawWS.open(hostile.port, ("jetsock.v1", "bearer." + token(f"hostile-vanish-{n}")))
        ws.write(joins([ROOM, f"hostile.vanish.{n % 7}"]))
        await ws.writer.drain()
        got = await replies(ws, 3)
        assert [r["type"] for r in got] == ["welcome", "joined", "joined"], got
        return ws

    sockets: list[RawWS] = []
    for start in range(0, 300, 100):
        sockets += await asyncio.gather(*(member(n) for n in range(start, start + 100)))
    await hostile.js.publish("rooms." + ROOM, b'{"to":"the vanishing"}')
    for ws in sockets:
        ws.abort()  # RST, no close frame
    cases.add(2 * len(sockets))
    cases.note("vanished members", len(sockets))
    cases.note("check_after_vanish", await hostile.check("vanishing members"))
