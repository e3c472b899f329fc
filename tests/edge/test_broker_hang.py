"""NATS hangs under a connected edge (issue 12): the edge keeps answering what needs no NATS,
says it is not ready, and loses nothing.

The nats-server is stopped with SIGSTOP for 15 s: its TCP connections stay
open and nothing answers (a hung server, not a dead one; nats-py stays
"connected" until its own pings go unanswered). Clients of the edge's room,
two with the Python client (clients/python) and two raw ones, publish before,
during and after the hang, each message with its own idempotency id. Checked,
with the issue's bounds:

- a `ping` sent after a `publish` (which waits on NATS) gets its `pong`
  within 1 s; a `join` of a room the edge already follows (other members are
  in it) gets `joined` within 1 s, and a `leave` gets `left` within 1 s;
- a publish during the hang is answered `unavailable`, saying it may have
  been stored and to retry with the same id; the raw clients retry it after
  the hang, the Python client resends on its own;
- /readyz answers 503 within 12 s of SIGSTOP (and stays 503 until SIGCONT),
  and 200 within 2 s of SIGCONT;
- the stream holds each id once, every acknowledged message is stored at the
  seq its ack gave, and every member ends with every stored message of the
  room exactly once, in order, without a `reset`.

The second test pins a fault the first one showed: /readyz, back at 200 after
the hang, fell to 503 again for a moment when a request sent before nats-py's
reconnect timed out after it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

import jetsock
from core.embedded import EmbeddedNats
from core.health import BrokerHealth
from tests.conftest import Client, Edge, connect, token
from tests.edge.checker import stored_messages

ROOM = "hang.room"
OTHER = "hang.other"
HANG = 15.0
"""Seconds the nats-server stays stopped."""
AT_ONCE = 1.0
"""The issue's bound for what needs no NATS: pong, joined of a followed room, left."""
UNREADY_WITHIN = 12.0
READY_AGAIN_WITHIN = 2.0
SETTLE = 30.0
"""A bound on waits that are not timing claims (acks after the hang, convergence): against hanging."""
FAST = jetsock.Backoff(base=0.2, factor=2.0, cap=1.0, reset_after=10.0)
"""The Python clients retry quickly; the arithmetic is the protocol's."""


class Raw:
    """A raw client (tests.conftest.Client) read by a task of its own: room messages, replies by ref, resets."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.seqs: dict[str, list[int]] = collections.defaultdict(list)
        self.resets: list[dict[str, Any]] = []
        self.unexpected: list[Any] = []
        self._replies: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._task = asyncio.get_running_loop().create_task(self._read())

    def _future(self, ref: Any) -> asyncio.Future[dict[str, Any]]:
        if ref not in self._replies:
            self._replies[ref] = asyncio.get_running_loop().create_future()
        return self._replies[ref]

    async def _read(self) -> None:
        ws = self.client.ws
        while True:
            message = await ws.receive()
            if message.type is not aiohttp.WSMsgType.TEXT:
                self.unexpected.append((str(message.type), message.data))
                return
            frame: dict[str, Any] = json.loads(message.data)
            if frame["type"] == "msg":
                self.seqs[frame["room"]].append(frame["seq"])
            elif frame["type"] == "reset":
                self.resets.append(frame)
            elif "ref" in frame and not self._future(frame["ref"]).done():
                self._future(frame["ref"]).set_result(frame)
            else:
                self.unexpected.append(frame)

    async def request(self, timeout: float = SETTLE, **frame: Any) -> tuple[dict[str, Any], float]:
        """Send `frame` (its `ref` must be fresh); its reply, and the seconds it took."""
        started = time.monotonic()
        await self.client.send(**frame)
        return await self.reply(frame["ref"], timeout), time.monotonic() - started

    async def reply(self, ref: Any, timeout: float = SETTLE) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(self._future(ref))

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        await self.client.close()


class Listener:
    """A Python client's room, iterated by a task of its own; its resets, if any."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.resets: list[jetsock.ResetInfo] = []
        self.room: jetsock.Room | None = None

    def on_reset(self, room: jetsock.Room, info: jetsock.ResetInfo) -> None:
        self.resets.append(info)

    def start(self, room: jetsock.Room) -> None:
        self.room = room
        self._task = asyncio.get_running_loop().create_task(self._read(room))

    async def _read(self, room: jetsock.Room) -> None:
        async for message in room:
            self.seqs.append(message.seq)


class Readiness:
    """/readyz polled every 0.1 s: (when the answer came, its status)."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.answers: list[tuple[float, int]] = []
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                async with http.get(self.edge.http + "/readyz") as response:
                    self.answers.append((time.monotonic(), response.status))
                await asyncio.sleep(0.1)

    async def first(self, status: int, after: float, within: float) -> float | None:
        """Seconds from `after` to the first answer `status` (waiting up to `within` for it), or None."""
        deadline = after + within
        while time.monotonic() < deadline + 0.5:
            for at, got in self.answers:
                if at >= after and got == status:
                    return at - after
            await asyncio.sleep(0.05)
        return None

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Callable[[], Any]]]:
    """Coroutine functions to await at the end, in reverse order."""
    steps: list[Callable[[], Any]] = []
    yield steps
    for step in reversed(steps):
        with contextlib.suppress(Exception):
            await step()


async def test_a_hung_nats_keeps_pings_joins_and_leaves_answered_and_loses_nothing(
    make_edge: Any, nats_server: EmbeddedNats, cleanup: list[Callable[[], Any]]
) -> None:
    edge: Edge = await make_edge()
    process = nats_server.process
    assert process is not None
    problems: list[str] = []
    acked: dict[str, int] = {}
    """id -> seq of every publish acknowledged."""

    # --- members of ROOM: two raw clients and two Python clients; a third raw client joins during the hang
    raws = [Raw(await connect(edge.url, f"raw-{n}")) for n in range(3)]
    cleanup.extend(raw.close for raw in raws)
    raw1, raw2, late = raws
    for raw in (raw1, raw2):
        joined, _ = await raw.request(type="join", room=ROOM, ref="join")
        assert joined["type"] == "joined" and joined["seq"] == 0, joined
    joined, _ = await raw2.request(type="join", room=OTHER, ref="join-other")
    assert joined["type"] == "joined", joined
    pys = [jetsock.connect(edge.url, token=token(f"py-{n}"), backoff=FAST) for n in range(2)]
    listeners = [Listener() for _ in pys]
    for py, listener in zip(pys, listeners, strict=True):
        await py.__aenter__()
        cleanup.append(py.close)
        room = await py.join(ROOM, on_reset=listener.on_reset)
        assert room.seq == 0
        listener.start(room)

    async def raw_publish(raw: Raw, key: str) -> dict[str, Any]:
        reply, _ = await raw.request(type="publish", room=ROOM, data={"id": key}, id=key, ref=key)
        return reply

    async def publish_round(label: str) -> None:
        for n, raw in enumerate((raw1, raw2)):
            for i in range(2):
                key = f"raw-{n}-{label}-{i}"
                reply = await raw_publish(raw, key)
                assert reply["type"] == "ack", reply
                acked[key] = reply["seq"]
        for n, py in enumerate(pys):
            for i in range(2):
                key = f"py-{n}-{label}-{i}"
                ack = await asyncio.wait_for(py.publish(ROOM, {"id": key}, id=key), SETTLE)
                acked[key] = ack.seq

    await publish_round("before")

    readiness = Readiness(edge)
    cleanup.append(readiness.stop)
    assert await readiness.first(200, time.monotonic() - 1, 2) is not None, "ready before the hang"

    # --- the hang
    stopped_at = time.monotonic()
    process.send_signal(signal.SIGSTOP)
    await asyncio.sleep(0.1)  # delivered asynchronously: a running server thread may answer for a moment
    py_during: list[asyncio.Task[jetsock.Ack]] = []
    unready: float | None = None
    late_from = 0
    try:
        # A publish (it waits on NATS), then a ping on the same connection.
        await raw1.client.send(type="publish", room=ROOM, data={"id": "raw-0-hang"}, id="raw-0-hang", ref="raw-0-hang")
        await raw2.client.send(type="publish", room=ROOM, data={"id": "raw-1-hang"}, id="raw-1-hang", ref="raw-1-hang")
        for n, py in enumerate(pys):
            key = f"py-{n}-hang"
            py_during.append(asyncio.create_task(py.publish(ROOM, {"id": key}, id=key)))
        pong, took = await raw1.request(type="ping", ref="hang-ping")
        if pong["type"] != "pong" or took > AT_ONCE:
            problems.append(f"ping after a publish during the hang: {pong} after {took:.2f} s")
        # A join of a room the edge follows already, and a leave.
        joined, took = await late.request(type="join", room=ROOM, ref="late-join")
        if joined["type"] != "joined" or took > AT_ONCE:
            problems.append(f"join of a followed room during the hang: {joined} after {took:.2f} s")
        late_from = joined.get("seq", 0)
        left, took = await raw2.request(type="leave", room=OTHER, ref="leave-other")
        if left["type"] != "left" or took > AT_ONCE:
            problems.append(f"leave during the hang: {left} after {took:.2f} s")
        # The stuck publishes: `unavailable`, maybe stored, retry with the same id.
        for raw, key in ((raw1, "raw-0-hang"), (raw2, "raw-1-hang")):
            reply = await raw.reply(key, timeout=HANG)
            message = str(reply.get("message", ""))
            if reply.get("code") != "unavailable" or not (
                "may have been stored" in message and "retry with the same id" in message
            ):
                problems.append(f"publish during the hang answered {reply}")
        unready = await readiness.first(503, stopped_at, UNREADY_WITHIN)
        if unready is None or unready > UNREADY_WITHIN:
            problems.append(f"/readyz did not turn 503 within {UNREADY_WITHIN:g} s of SIGSTOP: {unready}")
        await asyncio.sleep(max(0.0, stopped_at + HANG - time.monotonic()))
    finally:
        process.send_signal(signal.SIGCONT)
    resumed_at = time.monotonic()
    if unready is not None:
        during = [status for at, status in readiness.answers if stopped_at + unready < at < resumed_at]
        if 200 in during:
            problems.append(f"/readyz answered 200 again during the hang: {during}")
    ready = await readiness.first(200, resumed_at, READY_AGAIN_WITHIN)
    if ready is None or ready > READY_AGAIN_WITHIN:
        problems.append(f"/readyz did not turn 200 within {READY_AGAIN_WITHIN:g} s of SIGCONT: {ready}")

    # --- after: the raw clients retry with the same id; the Python clients' publishes resolve on their own
    for n, raw in enumerate((raw1, raw2)):
        key = f"raw-{n}-hang"
        reply, _ = await raw.request(type="publish", room=ROOM, data={"id": key}, id=key, ref=key + "-retry")
        if reply["type"] == "ack":
            acked[key] = reply["seq"]
        else:
            problems.append(f"the retry of {key} after the hang got {reply}")
    for n, task in enumerate(py_during):
        try:
            ack = await asyncio.wait_for(task, SETTLE)
        except Exception as exc:  # the Python client must resend after `unavailable`, not give up
            problems.append(f"py-{n}'s publish during the hang failed: {exc!r}")
        else:
            acked[f"py-{n}-hang"] = ack.seq
    await publish_round("after")

    # --- the stream holds each id once, at the acked seq; every member got exactly what it stored
    stored = await stored_messages(nats_server.url, ROOM)
    per_id = collections.Counter(m.id for m in stored)
    # The data carries the id too: a resend under a fresh id would store the same data twice.
    per_data = collections.Counter(m.data["id"] for m in stored)
    twice = {key: n for key, n in (per_id + per_data).items() if n != 2}
    if twice or set(per_id) != set(acked):
        problems.append(f"stored once per id: {dict(per_id)} by header, {dict(per_data)} by data; acked {acked}")
    where = {m.id: m.seq for m in stored}
    lost = {key: seq for key, seq in acked.items() if where.get(key) != seq}
    if lost:
        problems.append(f"acknowledged messages not stored at their acked seq: {lost} (stored: {where})")
    seqs = [m.seq for m in stored]
    members: dict[str, tuple[list[int], int]] = {
        "raw-0": (raw1.seqs[ROOM], 0),
        "raw-1": (raw2.seqs[ROOM], 0),
        "raw-2 (joined during the hang)": (late.seqs[ROOM], late_from),
        "py-0": (listeners[0].seqs, 0),
        "py-1": (listeners[1].seqs, 0),
    }
    expected = {name: [s for s in seqs if s > since] for name, (_, since) in members.items()}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(SETTLE):
            while any(len(got) < len(expected[name]) for name, (got, _) in members.items()):
                await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # anything more (a duplicate) would arrive meanwhile
    for name, (got, _) in members.items():
        if got != expected[name]:
            problems.append(f"{name} received {got}, stored {expected[name]}")
    for raw in raws:
        if raw.resets or raw.unexpected:
            problems.append(f"a raw client got resets {raw.resets} or unexpected frames {raw.unexpected}")
    for n, listener in enumerate(listeners):
        if listener.resets or listener.room is None or not listener.room.active:
            problems.append(f"py-{n}'s room lost continuity: resets {listener.resets}")
    for n, py in enumerate(pys):
        if py.state != "connected":
            problems.append(f"py-{n} is {py.state}: its connection did not survive the hang")
    assert not problems, "\n".join(problems)


async def test_readiness_does_not_fall_back_when_a_request_from_before_a_reconnect_times_out(
    make_edge: Any, nats_server: EmbeddedNats, cleanup: list[Callable[[], Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen in the hang above (a Python client's resend was in flight across nats-py's reconnect, and
    /readyz went 200, 503, 200 after SIGCONT); made certain here: a publish waits on a stopped server,
    the server dies and comes back on the same port and store, nats-py reconnects, then the publish
    times out. The node's readiness is read at the moment the timeout is noted (the window of the
    503 lasts only until the next probe, so polling /readyz alone would sometimes miss it)."""
    edge: Edge = await make_edge()
    noted: list[bool] = []
    """`Node.ready` right after each timed-out request is noted."""
    missed = BrokerHealth.missed

    def spy(health: BrokerHealth, sent_at: float) -> None:
        missed(health, sent_at)
        noted.append(edge.node.ready)

    monkeypatch.setattr(BrokerHealth, "missed", spy)
    raw = Raw(await connect(edge.url, "flap"))
    cleanup.append(raw.close)
    reply, _ = await raw.request(type="publish", room=ROOM, data={"warm": 1}, ref="warm")
    assert reply["type"] == "ack", reply
    readiness = Readiness(edge)
    cleanup.append(readiness.stop)
    process = nats_server.process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    await asyncio.sleep(0.1)  # delivered asynchronously: a running server thread may answer for a moment
    try:
        await raw.client.send(type="publish", room=ROOM, data={"stuck": 1}, id="stuck", ref="stuck")
        await asyncio.sleep(0.3)  # written to the stopped server's socket
    finally:
        process.kill()  # a stopped process dies of SIGKILL too
        process.wait()
    # The same server back, on the same port and store: nats-py reconnects to it.
    again = EmbeddedNats(nats_server.store_dir, port=nats_server.port).start()
    cleanup.append(lambda: asyncio.to_thread(again.stop))
    assert await readiness.first(200, time.monotonic(), SETTLE) is not None, "never ready again after the reconnect"
    ready_at = time.monotonic()
    noted.clear()
    timed_out = await raw.reply("stuck", SETTLE)
    assert timed_out["type"] == "error" and timed_out["code"] == "unavailable", timed_out
    await asyncio.sleep(READY_AGAIN_WITHIN)
    after = [(round(at - ready_at, 2), status) for at, status in readiness.answers if at > ready_at]
    assert noted, "the publish's timeout was not noted"
    assert all(noted), f"a request from before the reconnect made a node whose NATS answers unready; /readyz: {after}"
