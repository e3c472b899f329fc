"""Class 9l: hostile permessage-deflate input (RFC 7692; PROTOCOL.md 12 and 9.15).

The shared edge takes permessage-deflate (its default). Attackers negotiate it
and send what a decompressor fears: bombs (a frame under `max_frame_bytes`
that inflates to ~60 MB: whole, fragmented, with pings between the
fragments, as a thousand concatenated deflate streams, before authenticating),
data that does not inflate (a catalogue of zlib's errors, and random bytes
judged against zlib itself), reserved bits (RSV1 on a connection that did not
negotiate compression, RSV2, RSV3, on every opcode, before and after
authenticating), and compressed control frames.

Expected: a bomb is closed with 1009 after inflating at most
`max_frame_bytes` (so within milliseconds, and the edge's RSS does not move);
data that does not inflate with 1002; a reserved bit not negotiated with 1002;
RSV1 on a control frame of a compressing connection is ignored (aiohttp's
reader reads the frame as it is and never inflates it: a ping is answered
with its payload as sent, a close is a close). Meanwhile two control clients,
the suite's (uncompressed) and one of this class's that compresses, keep
getting every message and answering pings within 0.5 s (`Hostile.check`
after the class proves the rest: nothing lost, RSS near the baseline).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import connect, token
from tests.hostile.conftest import Cases
from tests.hostile.rawws import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawWS,
    deflate,
    frame,
    inflate,
)
from tests.hostile.support import MAX_FRAME, ROOM, Hostile

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.hostile("permessage-deflate")]

OFFER = (("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),)
"""Chromium's offer (the `websockets` library and Node's `ws` send the same)."""
ACCEPTED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
CONTROL_RTT_LIMIT = 0.5
RSV1, RSV2, RSV3 = 0b100, 0b010, 0b001


def bomb(inflated_mb: int) -> bytes:
    """A permessage-deflate message inflating to `inflated_mb` MiB of zeros (about 1 KiB per MiB)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * inflated_mb


def members_bomb(count: int) -> bytes:
    """`count` complete deflate streams (each BFINAL, 1 MiB of zeros) one after the other."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    member = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FINISH)
    return member * count


def fragmented(payload: bytes, pieces: int, between: bytes = b"") -> bytes:
    """One compressed message in `pieces` fragments (RSV1 on the first only), `between` after each but the last."""
    step = -(-len(payload) // pieces)
    chunks = [payload[i : i + step] for i in range(0, len(payload), step)]
    out = []
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        out.append(frame(OP_TEXT if i == 0 else OP_CONT, chunk, fin=last, rsv=RSV1 if i == 0 else 0))
        if not last:
            out.append(between)
    return b"".join(out)


class Controls:
    """The class's own control: a compressing client joined to ROOM, pinged in a loop; its worst round trip."""

    def __init__(self, hostile: Hostile) -> None:
        self.hostile = hostile
        self.rtts: list[float] = []
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Controls:
        self.client = await connect(self.hostile.url, tok=token("deflate-control", join=[ROOM]), compress=15)
        assert self.client.ws.compress == 15, "the control did not negotiate permessage-deflate"
        joined = await self.client.request(type="join", room=ROOM)
        assert joined["type"] == "joined", joined
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    async def _loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                await self.client.send(type="ping", ref=n)
                async with asyncio.timeout(5):
                    while True:
                        got = await self.client.recv(5)
                        if got["type"] == "pong" and got.get("ref") == n:
                            break
            except (AssertionError, TimeoutError) as exc:
                self.errors.append(f"ping {n}: {type(exc).__name__}: {str(exc)[:200]}")
                return
            self.rtts.append(time.monotonic() - started)
            n += 1
            await asyncio.sleep(0.02)

    async def __aexit__(self, *exc: object) -> None:
        # A quick class may end within a few pings: a few more, right after it, still count.
        for _ in range(100):
            if len(self.rtts) >= 5 or self.errors:
                break
            await asyncio.sleep(0.02)
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.client.close()

    def report(self) -> dict[str, Any]:
        return {"pings": len(self.rtts), "worst_rtt_ms": round(max(self.rtts, default=0) * 1000, 1)}

    def problems(self) -> list[str]:
        problems = list(self.errors)
        if len(self.rtts) < 5:
            problems.append(f"only {len(self.rtts)} control pings answered")
        if self.rtts and max(self.rtts) > CONTROL_RTT_LIMIT:
            problems.append(f"a control ping took {max(self.rtts) * 1000:.0f} ms")
        return problems


async def compressing(hostile: Hostile, authenticate: bool = True) -> RawWS:
    ws = await hostile.raw(authenticate=authenticate, headers=OFFER)
    assert ws.header("Sec-WebSocket-Extensions") == ACCEPTED, ws.response_head
    return ws


async def plain(hostile: Hostile, authenticate: bool = True) -> RawWS:
    ws = await hostile.raw(authenticate=authenticate)
    assert ws.header("Sec-WebSocket-Extensions") is None, ws.response_head
    return ws


async def close_code_after(ws: RawWS, data: bytes, timeout: float = 10.0) -> tuple[int | None, float]:
    """Write `data`; the close code that comes back and the seconds it took."""
    started = time.monotonic()
    ws.write(data)
    try:
        await ws.writer.drain()
    except ConnectionError:
        pass
    code, _frames = await ws.until_close(timeout)
    return code, time.monotonic() - started


async def run_cases(
    hostile: Hostile,
    cases: Cases,
    table: list[tuple[str, Callable[[], Awaitable[RawWS]], bytes, set[int]]],
    repeat: int = 1,
    concurrency: int = 50,
) -> tuple[list[str], list[float]]:
    """Each case `repeat` times at once (up to `concurrency` sockets): failures and the seconds each took."""
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []
    seconds: list[float] = []

    async def one(name: str, opener: Callable[[], Awaitable[RawWS]], data: bytes, expect: set[int]) -> None:
        async with gate:
            ws = await opener()
            try:
                code, took = await close_code_after(ws, data)
            finally:
                ws.abort()
        cases.add()
        seconds.append(took)
        if code not in expect:
            failures.append(f"{name}: closed with {code}, expected {sorted(expect)}")

    await asyncio.gather(*(one(*case) for case in table for _ in range(repeat)))
    return failures, seconds


async def test_inflation_bombs_close_with_1009_within_milliseconds(hostile: Hostile, cases: Cases) -> None:
    sixty = bomb(60)
    assert len(sixty) < MAX_FRAME and len(inflate(sixty)) == 60 << 20
    members = members_bomb(50)
    assert len(members) < MAX_FRAME
    # An auth frame's start, then (after a full flush, so it stands alone) 60 MB of zeros in its "pad".
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    auth_start = json.dumps({"type": "auth", "token": token("bomber"), "pad": ""}).encode()[:-2]
    auth_bomb = compressor.compress(auth_start) + compressor.flush(zlib.Z_FULL_FLUSH) + sixty

    def authed() -> Awaitable[RawWS]:
        return compressing(hostile)

    def unauthenticated() -> Awaitable[RawWS]:
        return compressing(hostile, authenticate=False)

    table: list[tuple[str, Callable[[], Awaitable[RawWS]], bytes, set[int]]] = [
        ("60 MB in one frame", authed, frame(OP_TEXT, sixty, rsv=RSV1), {1009}),
        ("60 MB in 8 fragments", authed, fragmented(sixty, 8), {1009}),
        ("60 MB in 8 fragments, pings between", authed, fragmented(sixty, 8, frame(OP_PING, b"p")), {1009}),
        ("60 MB as a binary frame", authed, frame(OP_BINARY, sixty, rsv=RSV1), {1009}),
        ("50 deflate streams of 1 MB each", authed, frame(OP_TEXT, members, rsv=RSV1), {1009}),
        (
            "an auth frame whose padding inflates to 60 MB",
            unauthenticated,
            frame(OP_TEXT, auth_bomb, rsv=RSV1),
            {1009},
        ),
        ("60 MB before authenticating", unauthenticated, frame(OP_TEXT, sixty, rsv=RSV1), {1009}),
    ]
    rss_before = hostile.rss_kb()
    peak = rss_before
    async with Controls(hostile) as control:
        watching = True

        async def watch_rss() -> None:
            nonlocal peak
            while watching:
                peak = max(peak, hostile.rss_kb())
                await asyncio.sleep(0.01)

        watcher = asyncio.get_running_loop().create_task(watch_rss())
        started = time.monotonic()
        failures, seconds = await run_cases(hostile, cases, table, repeat=30)
        elapsed = time.monotonic() - started
        watching = False
        await watcher
    seconds.sort()
    cases.note(
        "bombs",
        {
            "sockets": len(seconds),
            "inflated if all were inflated (GB)": round(len(seconds) * 60 / 1024, 1),
            "seconds for all": round(elapsed, 2),
            "close p50/max ms": [round(seconds[len(seconds) // 2] * 1000, 1), round(seconds[-1] * 1000, 1)],
            "edge RSS before/peak MB": [round(rss_before / 1024, 1), round(peak / 1024, 1)],
            "control": control.report(),
        },
    )
    cases.note("check after bombs", await hostile.check("permessage-deflate"))
    assert not failures, f"{len(failures)} cases:\n" + "\n".join(sorted(set(failures)))
    assert seconds[-1] < 2.0, f"a bomb took {seconds[-1]:.2f} s to be closed"
    # 210 bombs of 60 MB: had any been inflated whole, RSS would have jumped by 60 MB at least.
    assert peak - rss_before < 30 * 1024, f"edge RSS rose {(peak - rss_before) / 1024:.1f} MB during the bombs"
    assert not control.problems(), control.problems()


INVALID = {
    "reserved block type": b"\xff" * 64,
    "stored block lengths": b"\x00\x05\x00\x00\x00hello",
    "distance too far back": bytes.fromhex("4b4c04020c0600"),
    "invalid code lengths set": bytes.fromhex("05445d21b9ccaa36"),
    "invalid distance code": bytes.fromhex("437ea8127f351f0a"),
    "invalid literal/length code": bytes.fromhex("1b47f69a6ea98d35"),
    "too many length or distance symbols": bytes.fromhex("f4cabc95ad608bae"),
    "invalid bit length repeat": bytes.fromhex("540722413375ddaf"),
    "missing end-of-block": bytes.fromhex("240204c5717f09f4"),
}


def expected_for(data: bytes) -> set[int] | str:
    """What the edge must do with `data` as a compressed text message, judged by zlib itself as
    aiohttp's reader uses it (the 4-byte tail appended; after a stream's end, what follows is
    another stream, up to 1024): 1002 when it does not inflate, 1009 when it inflates past the
    limit, else "read" (random bytes are no client frame: a JSON error reply)."""
    limit = MAX_FRAME + 1  # what the edge's reader allows while inflating, plus the byte that tells
    rest = data + b"\x00\x00\xff\xff"
    total = 0
    for _member in range(1024):
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            total += len(inflater.decompress(rest, limit - total))
        except zlib.error:
            return {1002}
        if total > MAX_FRAME:
            return {1009}
        rest = inflater.unused_data if inflater.eof else b""
        if not rest:
            return "read"
    return {1009}


async def test_data_that_does_not_inflate_closes_with_1002(hostile: Hostile, cases: Cases) -> None:
    for name, data in INVALID.items():
        assert expected_for(data) == {1002}, name

    def authed() -> Awaitable[RawWS]:
        return compressing(hostile)

    table = [(name, authed, frame(OP_TEXT, data, rsv=RSV1), {1002}) for name, data in INVALID.items()]
    # Random bytes: zlib says whether each inflates; most do not (1002), a few inflate to garbage.
    rng = random.Random(7692)
    read: list[bytes] = []
    for i in range(300):
        data = rng.randbytes(rng.choice([1, 2, 3, 8, 64, 1000, 30_000]))
        expect = expected_for(data)
        if expect == "read":
            read.append(data)
        else:
            assert isinstance(expect, set)
            table.append((f"random bytes #{i} ({len(data)} B)", authed, frame(OP_TEXT, data, rsv=RSV1), expect))
    # Valid compressed data cut short or corrupted in its middle.
    body = deflate(json.dumps({"type": "ping", "ref": "x" * 500, "data": list(range(200))}).encode())
    for cut in range(8):
        corrupt = bytearray(body)
        corrupt[len(body) // 3 + cut] ^= 0xFF
        expect = expected_for(bytes(corrupt))
        if isinstance(expect, set):
            table.append(
                (f"corrupted at byte {len(body) // 3 + cut}", authed, frame(OP_TEXT, bytes(corrupt), rsv=RSV1), expect)
            )
    async with Controls(hostile) as control:
        failures, seconds = await run_cases(hostile, cases, table, repeat=3)
        # The random bytes that do inflate: read like any text frame (not JSON: `error`), session open.
        for data in read:
            ws = await compressing(hostile)
            try:
                await ws.send(OP_TEXT, data, rsv=RSV1)
                await ws.send(OP_TEXT, b'{"type":"ping","ref":"after"}')
                replies = []
                async with asyncio.timeout(10):
                    while (got := await ws.read_frame()) is not None and got.opcode != OP_CLOSE:
                        if got.opcode == OP_TEXT:
                            replies.append(json.loads(got.text()))
                            if replies[-1].get("ref") == "after":
                                break
                cases.add()
                kinds = [r["type"] if r["type"] != "error" else r["code"] for r in replies]
                if not replies or replies[-1].get("type") != "pong":
                    failures.append(f"random bytes that inflate ({len(data)} B): got {kinds}, then no pong")
            finally:
                ws.abort()
    cases.note(
        "invalid deflate data",
        {
            "cases": len(table) * 3 + len(read),
            "inflating random inputs (read, error replied)": len(read),
            "close max ms": round(max(seconds) * 1000, 1),
            "control": control.report(),
        },
    )
    cases.note("check after invalid data", await hostile.check("permessage-deflate"))
    assert not failures, f"{len(failures)} cases:\n" + "\n".join(failures[:20])
    assert not control.problems(), control.problems()


async def test_reserved_bits_not_negotiated_close_with_1002(hostile: Hostile, cases: Cases) -> None:
    payloads = {
        OP_TEXT: b'{"type":"ping","ref":"rsv"}',
        OP_BINARY: b"\x01\x02",
        OP_PING: b"p",
        OP_PONG: b"p",
        OP_CLOSE: b"\x03\xe8",
    }
    names = {OP_TEXT: "text", OP_BINARY: "binary", OP_PING: "ping", OP_PONG: "pong", OP_CLOSE: "close"}
    openers: dict[str, Callable[[], Awaitable[RawWS]]] = {
        "plain": lambda: plain(hostile),
        "plain, unauthenticated": lambda: plain(hostile, authenticate=False),
        "compressing": lambda: compressing(hostile),
        "compressing, unauthenticated": lambda: compressing(hostile, authenticate=False),
    }
    table: list[tuple[str, Callable[[], Awaitable[RawWS]], bytes, set[int]]] = []
    for who, opener in openers.items():
        bit_sets = {"RSV2": RSV2, "RSV3": RSV3, "RSV2+RSV3": RSV2 | RSV3, "all three": RSV1 | RSV2 | RSV3}
        if who.startswith("plain"):
            bit_sets["RSV1"] = RSV1
            bit_sets["RSV1+RSV3"] = RSV1 | RSV3
        for bits_name, bits in bit_sets.items():
            for opcode, payload in payloads.items():
                table.append(
                    (f"{bits_name} on {names[opcode]} ({who})", opener, frame(opcode, payload, rsv=bits), {1002})
                )
            table.append(
                (
                    f"{bits_name} on a continuation ({who})",
                    opener,
                    frame(OP_TEXT, b'{"type":', fin=False) + frame(OP_CONT, b'"ping"}', rsv=bits),
                    {1002},
                )
            )
        if who.startswith("compressing"):
            # RSV1 is "compressed" on a message's first frame only (RFC 7692 6.1).
            body = deflate(b'{"type":"ping","ref":"frag"}')
            table.append(
                (
                    f"RSV1 on a continuation ({who})",
                    opener,
                    frame(OP_TEXT, body[:4], fin=False, rsv=RSV1) + frame(OP_CONT, body[4:], rsv=RSV1),
                    {1002},
                )
            )
    async with Controls(hostile) as control:
        failures, _seconds = await run_cases(hostile, cases, table, repeat=2)
    cases.note("reserved bits", {"cases": len(table) * 2, "control": control.report()})
    cases.note("check after reserved bits", await hostile.check("permessage-deflate"))
    assert not failures, f"{len(failures)} cases:\n" + "\n".join(failures[:20])
    assert not control.problems(), control.problems()


async def test_compressed_control_frames_are_read_as_they_are(hostile: Hostile, cases: Cases) -> None:
    """RSV1 on a control frame of a compressing connection: ignored, never inflated (aiohttp's choice,
    for interop; RFC 7692 6.1 would fail the connection). Nothing is inflated, so nothing can blow up."""
    outcomes: Counter[str] = Counter()
    failures = []
    async with Controls(hostile) as control:
        for i in range(50):
            ws = await compressing(hostile)
            try:
                # A ping whose payload is a tiny bomb's start: echoed byte for byte, not inflated.
                payload = (deflate(b"are you there?") if i % 2 else bomb(1))[:125]
                await ws.send(OP_PING, payload, rsv=RSV1)
                await ws.send(OP_PONG, os.urandom(10), rsv=RSV1)
                await ws.send_text('{"type":"ping","ref":"open"}')
                pong = await ws.read_frame()
                reply = await ws.read_frame()
                cases.add(2)
                if pong is None or pong.opcode != OP_PONG or pong.payload != payload or pong.rsv:
                    failures.append(f"ping {i}: got {pong}")
                if reply is None or reply.opcode != OP_TEXT or json.loads(reply.payload).get("ref") != "open":
                    failures.append(f"ping {i}: the session did not go on: {reply}")
                outcomes["ping echoed as sent"] += 1
                code, _ = await close_code_after(ws, frame(OP_CLOSE, b"\x0f\xa0" + b"z" * 100, rsv=RSV1))
                cases.add()
                outcomes[f"close echoed {code}"] += 1
                if code != 4000:
                    failures.append(f"close {i}: echoed {code}, not the client's 4000")
            finally:
                ws.abort()
    cases.note("compressed control frames", {**outcomes, "control": control.report()})
    cases.note("check after control frames", await hostile.check("permessage-deflate"))
    assert not failures, failures[:10]
    assert not control.problems(), control.problems()
