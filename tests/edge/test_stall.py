"""A replay that waits for a client that does not read has a deadline (`write_timeout`), and the wait is an event."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.conftest import token
from tests.hostile.rawws import OP_PING, OP_TEXT, RawWS


async def test_a_stalled_replay_in_a_quiet_room_is_closed_4008_at_write_timeout(make_edge: Any, backend: Any) -> None:
    """No live traffic to overflow the outbox: only the replay's own deadline can end the wait."""
    edge = await make_edge(max_pending_bytes=64 * 1024, write_timeout=1.5, close_timeout=1)
    js = backend.jetstream()
    payload = b'{"fill":"' + b"x" * 4000 + b'"}'
    first = (await js.publish("rooms.quiet", payload)).seq
    for _ in range(2000):  # 8 MB: more than the kernel's buffers and the outbox
        await js.publish("rooms.quiet", payload)
    ws = await RawWS.open(edge.settings.port, ("jetsock.v1", "bearer." + token("staller")))
    assert (await ws.read_frame()) is not None  # welcome
    ws.writer.transport.pause_reading()  # type: ignore[attr-defined]
    await ws.send(OP_TEXT, json.dumps({"type": "join", "room": "quiet", "since": first}).encode())
    (conn,) = list(edge.node.connections)
    async with asyncio.timeout(20):
        while not conn.closing:
            await ws.send(OP_PING, b"alive")  # alive for the heartbeat: it only does not read
            await asyncio.sleep(0.2)
    assert conn.close_code == 4008
    ws.abort()


async def test_a_reading_client_gets_the_whole_replay_however_long(make_edge: Any, backend: Any) -> None:
    """The deadline is for no progress at all: a client that reads slowly but steadily is not closed."""
    edge = await make_edge(max_pending_bytes=64 * 1024, write_timeout=1.0)
    js = backend.jetstream()
    payload = b'{"fill":"' + b"x" * 4000 + b'"}'
    seqs = [(await js.publish("rooms.slowread", payload)).seq for _ in range(400)]
    ws = await RawWS.open(edge.settings.port, ("jetsock.v1", "bearer." + token("reader")))
    assert (await ws.read_frame()) is not None
    await ws.send(OP_TEXT, json.dumps({"type": "join", "room": "slowread", "since": seqs[0]}).encode())
    got: list[int] = []
    async with asyncio.timeout(60):
        while len(got) < len(seqs) - 1:
            frame = await ws.read_frame()
            assert frame is not None, f"closed after {len(got)} replayed messages"
            if frame.opcode != OP_TEXT:
                continue
            message = json.loads(frame.payload)
            assert message["type"] in ("joined", "msg"), message
            if message["type"] == "msg":
                got.append(message["seq"])
                if len(got) % 20 == 0:
                    await asyncio.sleep(0.3)  # ~1.3 MB/s: slower than the edge writes, never stopped
    assert got == seqs[1:]
    ws.abort()
