"""Class 9: forged and malformed live messages, where NATS has no authentication.

The stream RePublishes every stored message to `live.rooms.<room>` with the
headers `Nats-Sequence`, `Nats-Last-Sequence` and `Nats-Time-Stamp`, and the
edges deliver what arrives there. The shared world's nats-server has no
authentication, so anyone may publish on that subject. An audit found that
`Nats-Sequence: not-a-number` raised inside nats-py's read loop and stopped it
(every publish got `unavailable` while /readyz said 200), and that a forged
`Nats-Sequence: 1000000000000` moved the room's cursor, so the next real
message never arrived.

Here an anonymous NATS client publishes on the control room's live subject:
sequence headers that do not parse (words, empty, negative, exponent,
non-ASCII digits, 30 digits, 2**64, missing), a `Nats-Last-Sequence` that
does not parse, jumps far past anything stored (with and without
`Nats-Last-Sequence`), payloads that are not JSON under headers shaped like a
RePublish's that claim a gap the stream does not hold. After each one a real
message published with JetStream must reach the control client within
`ARRIVAL` s. At the end: the control client got nothing forged (every seq
it got is stored, which `hostile.check` proves), /readyz is 200, a fresh
client's publish is acked, and the edge logged no crash of nats-py's reader
and no failing handler.

A forged sequence a little past the head, with a matching
`Nats-Last-Sequence`, cannot be told from a real one without NATS
permissions: it is delivered (the documented limit). The last test shows, on
an in-process edge of its own, that the audit then rebases the room's cursor
onto the stored head, so real messages flow again.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import pytest

from tests.conftest import Edge, connect, token
from tests.hostile.conftest import Cases
from tests.hostile.support import ROOM, STREAM, Hostile

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.hostile("forged and malformed live messages")]

LIVE_SUBJECT = "live." + "rooms." + ROOM
ROOM_SUBJECT = "rooms." + ROOM
STAMP = "2026-12-01T23:41:41.123456789Z"
ARRIVAL = 8.0
"""Seconds a real message may take to reach the control client after a forged one (a bound on the wait;
a room being read from the stream after an unconfirmed jump polls it with pauses of 0.1 s doubling)."""
SETTLE = 5.0
"""Seconds until a repair that finds nothing more has given up (core/feed.py: five empty reads, pauses of
0.1 s doubling), so the next forged message meets the room's cursor, not a running repair."""
REBASE_WAIT = 10.0
"""Seconds the in-process edge (audit every 0.5 s; two audits in a row) may take to rebase a cursor."""
BUSY_WAIT = 20.0
"""Seconds of steady traffic after a jump within which delivery must be live again (a repair that ends
gives up after five empty reads, about 1.5 s)."""
READER_CRASH = "nats: encountered error"
"""What nats-py logs when an exception stops its read loop."""
HANDLER_FAILED = "its handler failed"
"""What core/inbox.py logs when a subscription's handler raised (the reader survives it)."""


def forged_payload(nonce: str, label: str) -> bytes:
    """A forged message that the control client files under a probe name (Control records data["probe"])."""
    return json.dumps({"probe": f"forged-{nonce}", "case": label}).encode()


async def room_head(hostile: Hostile) -> int:
    """The seq of the last message stored in ROOM."""
    msg = await hostile.js.get_last_msg(STREAM, ROOM_SUBJECT)
    return int(msg.seq)


async def stream_last(hostile: Hostile) -> int:
    info = await hostile.js.stream_info(STREAM)
    return int(info.state.last_seq)


async def forge(hostile: Hostile, headers: Mapping[str, str] | None, payload: bytes) -> None:
    """Publish on the live subject as the stream's RePublish would, but from an anonymous client."""
    await hostile.nc.publish(LIVE_SUBJECT, payload, headers=dict(headers) if headers is not None else None)
    await hostile.nc.flush(timeout=5)


async def real_arrives(hostile: Hostile, after: str, timeout: float = ARRIVAL) -> tuple[int, float]:
    """Store a real message in ROOM with JetStream; its seq and how long the control client took to get it."""
    nonce = uuid.uuid4().hex
    ack = await hostile.js.publish(ROOM_SUBJECT, json.dumps({"probe": nonce, "after": after}).encode())
    started = time.monotonic()
    control = hostile.control
    deadline = started + timeout
    while nonce not in control.probes:
        assert control.alive, f"the control client lost its connection after {after}: {control.unexpected}"
        assert time.monotonic() < deadline, (
            f"the real message {ack.seq} stored after {after} did not reach the control client within {timeout} s; "
            f"it last got {control.seqs[-3:]}"
        )
        await asyncio.sleep(0.01)
    assert control.probes[nonce] == [ack.seq], (after, control.probes[nonce], ack.seq)
    return int(ack.seq), time.monotonic() - started


async def readyz(hostile: Hostile) -> int:
    async with aiohttp.ClientSession() as http, http.get(hostile.http + "/readyz") as r:
        return r.status


async def fresh_client_publish(hostile: Hostile) -> dict[str, Any]:
    """A new WebSocket client publishes into ROOM; the reply (an `ack` when NATS still answers)."""
    client = await connect(hostile.url, tok=token("hostile-forge-check", join=[], publish=[ROOM]))
    try:
        await client.send(type="publish", room=ROOM, data={"probe": uuid.uuid4().hex}, ref="fresh")
        return await client.recv(timeout=15)
    finally:
        await client.close()


def forged_received(hostile: Hostile, nonce: str) -> list[int]:
    return hostile.control.probes.get(f"forged-{nonce}", [])


def crashes_logged(text: str) -> dict[str, int]:
    return {marker: text.count(marker) for marker in (READER_CRASH, HANDLER_FAILED, "Traceback") if marker in text}


async def refusal_series(hostile: Hostile) -> list[str]:
    """Metric lines that count refused live messages, if /metrics exposes any (it may not)."""
    async with aiohttp.ClientSession() as http, http.get(hostile.http + "/metrics") as r:
        text = await r.text()
    words = ("malformed", "unconfirmed", "forged", "refused_live", "rebase")
    return [line for line in text.splitlines() if not line.startswith("#") and any(w in line for w in words)]


async def after_forgeries(hostile: Hostile, nonce: str, log_from: int, cases: Cases, name: str) -> None:
    """What every test of this class checks once its forged messages are out."""
    forged = forged_received(hostile, nonce)
    assert forged == [], f"the control client got forged messages at seqs {forged}"
    assert await readyz(hostile) == 200
    reply = await fresh_client_publish(hostile)
    assert reply.get("type") == "ack" and reply.get("ref") == "fresh", reply
    logged = crashes_logged(hostile.output()[log_from:])
    assert not logged, f"the edge logged {logged}:\n{hostile.output()[log_from:][-3000:]}"
    cases.note(f"{name}: metric lines counting refusals", await refusal_series(hostile) or "none exposed")
    cases.note(f"{name}: check", await hostile.check(name))


Headers = Callable[[int, int], dict[str, str] | None]
"""The headers of one forgery, given the room's stored head and the next seq the stream will store."""


def sequence(value: str) -> Headers:
    return lambda head, _next: {"Nats-Sequence": value, "Nats-Last-Sequence": str(head), "Nats-Time-Stamp": STAMP}


def claimed_gap(head: int, next_seq: int) -> dict[str, str]:
    """Headers shaped like a RePublish's, claiming a message the stream does not hold (and one before it)."""
    claimed = next_seq + 500_000
    return {
        "Nats-Stream": STREAM,
        "Nats-Subject": ROOM_SUBJECT,
        "Nats-Sequence": str(claimed),
        "Nats-Last-Sequence": str(claimed - 1),
        "Nats-Time-Stamp": STAMP,
    }


MALFORMED: list[tuple[str, Headers, bytes | None]] = [
    *(
        (f"Nats-Sequence {value!r}", sequence(value), None)
        for value in ("not-a-number", "", "-1", "1e3", "\u0663", "123456789012345678901234567890", str(2**64))
    ),
    ("no Nats-Sequence", lambda head, _next: {"Nats-Last-Sequence": str(head), "Nats-Time-Stamp": STAMP}, None),
    ("no headers at all", lambda _head, _next: None, None),
    (
        "Nats-Last-Sequence 'x' on the next seq",
        lambda _head, next_seq: {"Nats-Sequence": str(next_seq), "Nats-Last-Sequence": "x", "Nats-Time-Stamp": STAMP},
        None,
    ),
    ("non-JSON text, claiming a gap", claimed_gap, b"{not json at all"),
    ("bytes that are not UTF-8, claiming a gap", claimed_gap, b"\xff\xfe\x00\x80"),
]
"""(case, its headers, its payload: None for a JSON object the control client would file as a forged probe)."""


async def test_malformed_sequence_headers_cost_their_message_and_nothing_else(hostile: Hostile, cases: Cases) -> None:
    log_from = len(hostile.output())
    nonce = uuid.uuid4().hex
    waits: dict[str, float] = {}
    for label, headers, payload in MALFORMED:
        head, next_seq = await room_head(hostile), await stream_last(hostile) + 1
        await forge(hostile, headers(head, next_seq), forged_payload(nonce, label) if payload is None else payload)
        # Before the fix the first of these stopped nats-py's reader: nothing arrived any more.
        _, waited = await real_arrives(hostile, label)
        waits[label] = round(waited, 2)
        cases.add()
    cases.note("malformed: seconds until the next real message arrived", waits)
    await after_forgeries(hostile, nonce, log_from, cases, "malformed sequence headers")


async def test_a_jump_far_past_the_stored_head_moves_nothing(hostile: Hostile, cases: Cases) -> None:
    log_from = len(hostile.output())
    nonce = uuid.uuid4().hex
    waits: dict[str, float] = {}
    jumps = (
        ("jump without Nats-Last-Sequence", False),
        ("jump with Nats-Last-Sequence = the room's head", True),
    )
    for n, (label, with_last) in enumerate(jumps):
        # Let any repair still running finish: the jump must meet the cursor itself.
        await asyncio.sleep(SETTLE)
        head = await room_head(hostile)
        headers = {"Nats-Sequence": str(10**12 + n), "Nats-Time-Stamp": STAMP}
        if with_last:
            headers["Nats-Last-Sequence"] = str(head)
        await forge(hostile, headers, forged_payload(nonce, label))
        # The very next real message must arrive (before the fix it never did: the cursor sat at 10**12).
        seq, waited = await real_arrives(hostile, label)
        assert seq > head
        waits[label] = round(waited, 2)
        cases.add()
    # Real messages keep flowing in order after it.
    for i in range(3):
        await real_arrives(hostile, f"jumps, then real message {i}")
    cases.note("jumps: seconds until the next real message arrived", waits)
    assert all(seq < 10**12 for seq in hostile.control.seqs), hostile.control.seqs[-5:]
    await after_forgeries(hostile, nonce, log_from, cases, "jumps")


@pytest.mark.asyncio(loop_scope="function")
async def test_a_plausible_forgery_moves_the_cursor_until_the_audit_rebases_it(
    make_edge: Any, backend: Any, cases: Cases
) -> None:
    """The documented limit, on an in-process edge of its own (audit every 0.5 s, its own nats-server).

    A forged seq of head + 5 whose Nats-Last-Sequence is the head is delivered like a real message, and
    the real messages stored next (head + 1, head + 2: at or below the forged seq) are dropped as already
    delivered. The audit sees the cursor ahead of the room's stored head twice and rebases it onto that
    head; from there every real message reaches the member again.
    """
    edge: Edge = await make_edge(audit_interval=0.5)
    room = "forge.rebase"
    js = backend.jetstream()
    client = await connect(edge.url, sub="rebase-member")
    try:
        joined = await client.request(type="join", room=room, ref="j")
        assert joined["type"] == "joined", joined
        first = await js.publish("rooms." + room, b'{"real":0}')
        assert (await client.expect("msg"))["seq"] == first.seq
        head = first.seq
        forged_seq = head + 5
        await backend.publish(
            "live.rooms." + room,
            b'{"forged":true}',
            headers={"Nats-Sequence": str(forged_seq), "Nats-Last-Sequence": str(head), "Nats-Time-Stamp": STAMP},
        )
        forged = await client.expect("msg")
        assert forged["seq"] == forged_seq and forged["data"] == {"forged": True}, forged  # the documented limit
        below = [(await js.publish("rooms." + room, json.dumps({"below": i}).encode())).seq for i in range(2)]
        assert below == [head + 1, head + 2], below
        feeds = edge.node.broker.feeds
        started = time.monotonic()
        while feeds.cursor(room) != below[-1]:
            assert time.monotonic() - started < REBASE_WAIT, (
                f"the room's cursor is still {feeds.cursor(room)}, its stored head {below[-1]}: never rebased"
            )
            await asyncio.sleep(0.05)
        rebased_after = time.monotonic() - started
        after = [(await js.publish("rooms." + room, json.dumps({"after": i}).encode())).seq for i in range(4)]
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while not got or got[-1]["seq"] != after[-1]:
                frame = await client.expect("msg")
                got.append(frame)
        seqs = [frame["seq"] for frame in got]
        lost = [seq for seq in below if seq not in seqs]
        cases.add(1 + len(below) + len(after))
        cases.note(
            "rebase",
            {
                "head": head,
                "forged seq delivered": forged_seq,
                "real seqs below the forged one, never delivered": lost,
                "seconds until rebased": round(rebased_after, 2),
                "delivered after the rebase": seqs,
            },
        )
        assert seqs == after, f"after the rebase the member got {seqs}, the stream stored {after}"
    finally:
        await client.close()


@pytest.mark.asyncio(loop_scope="function")
async def test_after_a_jump_a_busy_room_goes_back_to_live_delivery(make_edge: Any, backend: Any, cases: Cases) -> None:
    """An unconfirmed jump makes the room be read from the stream (core/feed.py); once the stream holds
    nothing past the cursor, delivery must go back to the live path, even while messages keep coming.

    A message delivered by a repair counts in `repaired_messages` (the jetsock.gap.repair.messages metric);
    one delivered live does not. Messages are published one at a time, each after the last arrived.
    """
    edge: Edge = await make_edge()
    room = "forge.busy"
    js = backend.jetstream()
    client = await connect(edge.url, sub="busy-member")
    feeds = edge.node.broker.feeds
    try:
        assert (await client.request(type="join", room=room))["type"] == "joined"
        first = await js.publish("rooms." + room, b'{"real":0}')
        assert (await client.expect("msg"))["seq"] == first.seq
        headers = {"Nats-Sequence": str(10**12), "Nats-Last-Sequence": str(first.seq), "Nats-Time-Stamp": STAMP}
        await backend.publish("live.rooms." + room, b'{"forged":true}', headers=headers)
        await backend.flush()
        live_in_a_row = 0
        by_repair = 0
        started = time.monotonic()
        while live_in_a_row < 3:
            assert time.monotonic() - started < BUSY_WAIT, (
                f"{by_repair} messages in {BUSY_WAIT} s of steady traffic after the jump were all delivered by the "
                "repair, none live"
            )
            repaired = feeds.repaired_messages
            ack = await js.publish("rooms." + room, b'{"real":1}')
            msg = await client.expect("msg", timeout=10)
            assert msg["seq"] == ack.seq, (msg, ack.seq)
            if feeds.repaired_messages == repaired:
                live_in_a_row += 1
            else:
                live_in_a_row, by_repair = 0, by_repair + 1
            cases.add()
            await asyncio.sleep(0.3)
    finally:
        await client.close()
