"""Class 4: fragmented, oversized and malformed WebSocket frames, written byte by byte.

A message split into continuation frames is reassembled and answered; a
message (one frame or the sum of its fragments) over `max_frame_bytes` closes
with 1009, at most `max_frame_bytes` is read (PROTOCOL.md section 1); frames
that break RFC 6455 close the connection with 1002 (or 1007 for a close reason
that is not UTF-8), and nothing else on the node notices.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import struct
from collections.abc import Callable
from typing import Any

import pytest

from tests.hostile.conftest import Cases
from tests.hostile.rawws import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, frame
from tests.hostile.support import MAX_FRAME, ROOM, Hostile

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.hostile("fragmented and oversized frames")]


def ping(ref: str, size: int | None = None) -> bytes:
    """A `ping` frame's JSON, padded in its ref to exactly `size` bytes."""
    text = json.dumps({"type": "ping", "ref": ref}).encode()
    if size is None:
        return text
    pad = size - len(text)
    assert pad >= 0
    return json.dumps({"type": "ping", "ref": ref + "x" * pad}).encode()


def fragments(payload: bytes, pieces: int, opcode: int = OP_TEXT) -> bytes:
    """`payload` as one message of `pieces` fragments (RFC 6455 5.4)."""
    step = max(1, -(-len(payload) // pieces))
    chunks = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
    out = []
    for i, chunk in enumerate(chunks):
        out.append(frame(opcode if i == 0 else OP_CONT, chunk, fin=i == len(chunks) - 1))
    return b"".join(out)


def split_at(payload: bytes, cuts: list[int]) -> bytes:
    bounds = [0, *cuts, len(payload)]
    chunks = [payload[a:b] for a, b in itertools.pairwise(bounds)]
    return b"".join(frame(OP_TEXT if i == 0 else OP_CONT, c, fin=i == len(chunks) - 1) for i, c in enumerate(chunks))


PUBLISH = json.dumps(
    {"type": "publish", "room": ROOM, "ref": "split", "data": {"t": "h\u00e9llo \U0001f600"}}, ensure_ascii=False
).encode("utf-8")
_EMOJI_AT = PUBLISH.index("\U0001f600".encode())

Reply = Callable[[list[Any]], bool]


def answered(kind: str, ref: str | None = None) -> Reply:
    def check(texts: list[Any]) -> bool:
        return any(t.get("type") == kind and (ref is None or str(t.get("ref", "")).startswith(ref)) for t in texts)

    check.__doc__ = f"a {kind} reply" + (f" with ref {ref}..." if ref else "")
    return check


def cases_table() -> list[tuple[str, bytes, Reply | set[int]]]:
    """(name, bytes to write, the reply that must come or the close codes allowed)."""
    big = MAX_FRAME
    return [
        ("ping in 1-byte fragments", fragments(ping("frag1"), 10_000), answered("pong", "frag1")),
        (
            "publish split inside a 2- and a 4-byte character",
            split_at(PUBLISH, [PUBLISH.index(b"\xc3") + 1, _EMOJI_AT + 2]),
            answered("ack", "split"),
        ),
        (
            "WebSocket ping between fragments",
            frame(OP_TEXT, ping("mid")[:5], fin=False) + frame(OP_PING, b"between") + frame(OP_CONT, ping("mid")[5:]),
            answered("pong", "mid"),
        ),
        ("10,000 one-byte fragments", fragments(ping("many", 10_000), 10_000), answered("pong", "many")),
        (
            "empty fragments around a message",
            frame(OP_TEXT, b"", fin=False) + frame(OP_CONT, ping("empty"), fin=False) + frame(OP_CONT, b""),
            answered("pong", "empty"),
        ),
        ("fragments summing to max_frame_bytes - 1", fragments(ping("sum-1", big - 1), 16), answered("pong", "sum-1")),
        ("fragments summing to max_frame_bytes", fragments(ping("sum0", big), 16), answered("pong", "sum0")),
        ("fragments summing to max_frame_bytes + 1", fragments(ping("sum+1", big + 1), 16), {1009}),
        ("20 fragments of 4,000 bytes (80 KB)", fragments(ping("sum80", 80_000), 20), {1009}),
        ("one frame of max_frame_bytes - 1", frame(OP_TEXT, ping("one-1", big - 1)), answered("pong", "one-1")),
        ("one frame of max_frame_bytes", frame(OP_TEXT, ping("one0", big)), answered("pong", "one0")),
        ("one frame of max_frame_bytes + 1", frame(OP_TEXT, ping("one+1", big + 1)), {1009}),
        ("a header declaring 1 MB, then 1,000 bytes", frame(OP_TEXT, b"x" * 1000, length=1 << 20)[: 14 + 1000], {1009}),
        ("a header declaring 2**62 bytes, no payload", frame(OP_TEXT, b"", length=1 << 62), {1009}),
        ("a header declaring 2**63 bytes (top bit set)", frame(OP_TEXT, b"", length=1 << 63), {1002, 1009}),
        ("a binary header declaring 100 MB", frame(OP_BINARY, b"", length=100 << 20), {1009}),
        ("continuation with no message started", frame(OP_CONT, ping("orphan")), {1002}),
        ("text frame inside a fragmented message", frame(OP_TEXT, b"{", fin=False) + frame(OP_TEXT, ping("x")), {1002}),
        ("binary frame inside a fragmented text", frame(OP_TEXT, b"{", fin=False) + frame(OP_BINARY, b"1"), {1002}),
        ("fragmented ping (FIN=0)", frame(OP_PING, b"a", fin=False) + frame(OP_CONT, b"b"), {1002}),
        ("ping with a 126-byte payload", frame(OP_PING, b"p" * 126), {1002}),
        ("pong with a 200-byte payload", frame(OP_PONG, b"p" * 200), {1002}),
        ("RSV1 set without compression", frame(OP_TEXT, ping("rsv1"), rsv=4), {1002}),
        ("RSV2 set", frame(OP_TEXT, ping("rsv2"), rsv=2), {1002}),
        ("RSV3 set", frame(OP_TEXT, ping("rsv3"), rsv=1), {1002}),
        ("opcode 0x3", frame(0x3, b"x"), {1002}),
        ("opcode 0xB", frame(0xB, b"x"), {1002}),
        ("close with code 999", frame(OP_CLOSE, struct.pack("!H", 999)), {1002}),
        ("close with reserved code 1005", frame(OP_CLOSE, struct.pack("!H", 1005)), {1002}),
        ("close with a 1-byte payload", frame(OP_CLOSE, b"\x03"), {1002}),
        ("close with a reason that is not UTF-8", frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff\xfe"), {1007}),
    ]


async def _run(hostile: Hostile, name: str, data: bytes, expect: Reply | set[int]) -> str | None:
    ws = await hostile.raw()
    try:
        ws.write(data)
        try:
            await ws.writer.drain()
        except ConnectionError:
            pass
        texts: list[Any] = []
        pongs: list[bytes] = []
        done = False
        if isinstance(expect, set):
            code, before = await ws.until_close(15)
            if code not in expect:
                return f"closed with {code}, expected {sorted(expect)} (frames before: {before[:3]})"
            return None
        try:
            await ws.send(OP_TEXT, ping("done").replace(b"done", b"zz-done"))
        except ConnectionError:
            pass  # closed already: the read below says with what
        async with asyncio.timeout(15):
            while True:
                got = await ws.read_frame(15)
                if got is None or got.opcode == OP_CLOSE:
                    return f"closed with {got.close_code if got else None}, expected {expect.__doc__}"
                if got.opcode == OP_PONG:
                    pongs.append(got.payload)
                    continue
                if got.opcode != OP_TEXT:
                    continue
                reply = json.loads(got.payload)
                if reply.get("type") == "pong" and reply.get("ref") == "zz-done":
                    done = True
                elif reply.get("type") != "msg":
                    texts.append(reply)
                # A publish is answered once NATS stored it, which may be after the pong (9.1).
                if done and expect(texts):
                    break
        if not expect(texts):
            return f"expected {expect.__doc__}, got {[str(t)[:120] for t in texts]}"
        if b"between" in data and pongs != [b"between"]:
            return f"the ping between fragments got WebSocket pongs {pongs}"
        return None
    finally:
        ws.abort()


async def test_fragmented_and_oversized_frames(hostile: Hostile, cases: Cases) -> None:
    failures = []
    for name, data, expect in cases_table():
        problem = await _run(hostile, name, data, expect)
        cases.add()
        if problem is not None:
            failures.append(f"{name}: {problem}")
    cases.note("check", await hostile.check("fragmented and oversized frames"))
    assert not failures, f"{len(failures)} cases:\n" + "\n".join(failures)


async def test_unmasked_client_frames(hostile: Hostile, cases: Cases) -> None:
    """RFC 6455 5.1: a server closes on an unmasked client frame. Recorded, not required: aiohttp reads them."""
    ws = await hostile.raw()
    try:
        await ws.send(OP_TEXT, ping("unmasked"), mask=False)
        got = await ws.read_frame()
    finally:
        ws.abort()
    cases.add()
    behaviour = "closed" if got is None or got.opcode == OP_CLOSE else f"answered {got.payload[:60]!r}"
    cases.note("unmasked client frame", behaviour)
    assert got is None or got.opcode in (OP_CLOSE, OP_TEXT)
