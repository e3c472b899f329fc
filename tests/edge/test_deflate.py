"""permessage-deflate on the wire (RFC 7692, PROTOCOL.md section 12 and 9.15), read with a raw client.

The raw client (tests/hostile/rawws.py) sends the offers real clients send and
reads every frame's bits and bytes off the socket, so these tests see what the
edge really writes: the answer to each offer (taken with both
no-context-takeover parameters, or declined and the connection opened
uncompressed), RSV1 on room messages of at least `compress_min_bytes` and on
nothing else, one compression per room message per node (three compressing
members read byte-identical frames), and what the edge does with every kind of
bad compressed input: a bomb is closed with 1009 after inflating at most the
limit, data that does not inflate with 1002, reserved bits with 1002, and RSV1
on a control frame is ignored (the frame is read as it is, never inflated).
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
import tracemalloc
import zlib
from typing import Any

import aiohttp
import pytest
from aiohttp._websocket import reader_py
from prometheus_client.parser import text_string_to_metric_families

from edge.deflate import ACCEPTED, accepts
from edge.ws import StatelessInflateReader
from tests.conftest import Edge, connect, token
from tests.hostile.rawws import (
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Frame,
    RawWS,
    deflate,
    frame,
    inflate,
)

CHROMIUM = "permessage-deflate; client_max_window_bits"
"""What Chromium sends (and Safari); Firefox sends the bare name."""
WEBSOCKETS = "permessage-deflate; client_max_window_bits"
"""The `websockets` library's client (its default factory: client_max_window_bits=True)."""
NODE_WS = "permessage-deflate; client_max_window_bits"
"""Node's `ws` client (perMessageDeflate: true, its default)."""
ROOM = "deflate.room"


def message_data(size: int, seed: int = 0) -> dict[str, Any]:
    """A JSON message of about `size` bytes, as a chat or feed would send: text and metadata."""
    items = []
    n = 0
    while len(json.dumps(items)) < size - 120:
        items.append(
            {
                "id": f"evt-{seed}-{n:05d}",
                "user": {"id": 1000 + n % 37, "name": f"user-{n % 37}", "role": "member" if n % 5 else "admin"},
                "text": f"Message {n} of the thread: the build on branch feature/{n % 11} passed its checks.",
                "ts": 1_700_000_000_000 + 1377 * n,
                "reactions": {"+1": n % 4, "eyes": n % 3},
            }
        )
        n += 1
    return {"kind": "thread.update", "seed": seed, "items": items}


class Member(RawWS):
    welcome: dict[str, Any] = {}


async def rawws(edge: Edge, offer: str | None = CHROMIUM, sub: str = "raw", authenticate: bool = True) -> Member:
    """A raw socket upgraded with `offer` (None: no Sec-WebSocket-Extensions), its welcome read."""
    protocols = ("jetsock.v1", "bearer." + token(sub)) if authenticate else ("jetsock.v1",)
    headers = (("Sec-WebSocket-Extensions", offer),) if offer is not None else ()
    ws = await Member.open(edge.settings.port, protocols, headers=headers)
    assert isinstance(ws, Member) and ws.upgraded, ws.response_head
    if authenticate:
        welcome = await ws.read_frame()
        assert welcome is not None and welcome.opcode == OP_TEXT and welcome.rsv == 0, welcome
        ws.welcome = json.loads(welcome.payload)
    return ws


async def next_text(ws: RawWS, timeout: float = 5.0) -> Frame:
    """The next text frame (pings answered, pongs skipped, nothing else expected)."""
    while True:
        got = await ws.read_frame(timeout)
        assert got is not None, "the connection ended"
        if got.opcode == OP_PING:
            ws.write(frame(OP_PONG, got.payload))
            continue
        if got.opcode == OP_PONG:
            continue
        assert got.opcode == OP_TEXT, got
        return got


async def next_of(ws: RawWS, kind: str, timeout: float = 5.0) -> Frame:
    """The next text frame whose JSON `type` is `kind`, skipping others."""
    while True:
        got = await next_text(ws, timeout)
        if json.loads(got.text())["type"] == kind:
            return got


async def joined(ws: RawWS, room: str = ROOM, **extra: Any) -> Frame:
    await ws.send_text(json.dumps({"type": "join", "room": room, **extra}))
    return await next_of(ws, "joined")


async def closed_with(ws: RawWS, timeout: float = 5.0) -> int | None:
    code, _frames = await ws.until_close(timeout)
    return code


async def scrape(edge: Edge) -> dict[str, float]:
    """Each metric of /metrics, its samples summed (this file also runs under `make test-latest`,
    whose environment has the project's dependencies only: no tests/deploy helpers)."""
    async with aiohttp.ClientSession() as http, http.get(f"{edge.http}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


async def publish(backend: Any, data: dict[str, Any] | bytes, room: str = ROOM) -> int:
    payload = data if isinstance(data, bytes) else json.dumps(data).encode()
    ack = await backend.jetstream().publish(f"rooms.{room}", payload)
    return int(ack.seq)


# --- negotiation ----------------------------------------------------------------


@pytest.mark.parametrize(
    "offer",
    [
        pytest.param(CHROMIUM, id="chromium"),
        pytest.param(WEBSOCKETS, id="websockets"),
        pytest.param(NODE_WS, id="node-ws"),
        pytest.param("permessage-deflate", id="firefox-bare"),
        pytest.param("permessage-deflate; client_max_window_bits=15", id="client-bits-15"),
        pytest.param('permessage-deflate; client_max_window_bits="10"', id="client-bits-quoted"),
        pytest.param("permessage-deflate; server_max_window_bits=15", id="server-bits-15"),
        pytest.param(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover", id="both-no-takeover"
        ),
        pytest.param("PerMessage-Deflate ; Client_Max_Window_Bits", id="case-and-spaces"),
        pytest.param("x-webkit-deflate-frame, permessage-deflate; client_max_window_bits", id="after-another"),
        pytest.param(
            "permessage-deflate; server_max_window_bits=10, permessage-deflate; client_max_window_bits",
            id="second-offer",
        ),
    ],
)
async def test_offers_real_clients_send_are_taken_with_both_no_context_takeover_parameters(
    make_edge: Any, offer: str
) -> None:
    edge = await make_edge()
    ws = await rawws(edge, offer)
    try:
        assert ws.header("Sec-WebSocket-Extensions") == ACCEPTED
        assert ACCEPTED == "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        assert ws.header("Sec-WebSocket-Protocol") == "jetsock.v1"
        assert "deflate" in ws.welcome["features"]
        conn = next(iter(edge.node.connections))
        assert conn.transport_adapter.framing is edge.node.deflate
    finally:
        ws.abort()


@pytest.mark.parametrize(
    "offer",
    [
        pytest.param("permessage-deflate; server_max_window_bits=10", id="server-bits-10"),
        pytest.param("permessage-deflate; server_max_window_bits=14", id="server-bits-14"),
        pytest.param("permessage-deflate; server_max_window_bits", id="server-bits-no-value"),
        pytest.param("permessage-deflate; client_max_window_bits; foo", id="unknown-param"),
        pytest.param("permessage-deflate; client_max_window_bits; client_max_window_bits", id="duplicate-param"),
        pytest.param("permessage-deflate; server_no_context_takeover; server_no_context_takeover", id="duplicate-flag"),
        pytest.param("permessage-deflate; client_max_window_bits=7", id="client-bits-7"),
        pytest.param("permessage-deflate; client_max_window_bits=16", id="client-bits-16"),
        pytest.param("permessage-deflate; client_max_window_bits=abc", id="client-bits-abc"),
        pytest.param("permessage-deflate; server_no_context_takeover=1", id="flag-with-value"),
        pytest.param("x-webkit-deflate-frame", id="another-extension"),
    ],
)
async def test_offers_that_cannot_be_honoured_open_the_connection_uncompressed(
    make_edge: Any, backend: Any, offer: str
) -> None:
    edge = await make_edge()
    assert not accepts([offer])
    ws = await rawws(edge, offer)
    try:
        assert ws.upgraded and ws.header("Sec-WebSocket-Extensions") is None, ws.response_head
        assert ws.header("Sec-WebSocket-Protocol") == "jetsock.v1"
        await joined(ws)
        data = message_data(4096)
        await publish(backend, data)
        msg = await next_of(ws, "msg")
        assert msg.rsv == 0 and json.loads(msg.payload)["data"] == data
        # And nothing compressed is read from it either: RSV1 was not negotiated.
        await ws.send(OP_TEXT, deflate(b'{"type":"ping"}'), rsv=4)
        assert await closed_with(ws) == 1002
    finally:
        ws.abort()


async def test_no_offer_no_header(make_edge: Any) -> None:
    edge = await make_edge()
    ws = await rawws(edge, None)
    try:
        assert ws.header("Sec-WebSocket-Extensions") is None
        assert "deflate" in ws.welcome["features"]  # the node has it on
    finally:
        ws.abort()


async def test_compression_off_declines_every_offer(make_edge: Any, backend: Any) -> None:
    edge = await make_edge(compression=False)
    ws = await rawws(edge, CHROMIUM)
    try:
        assert ws.header("Sec-WebSocket-Extensions") is None
        assert "deflate" not in ws.welcome["features"]
        await joined(ws)
        await publish(backend, message_data(4096))
        assert (await next_of(ws, "msg")).rsv == 0
        await ws.send(OP_TEXT, deflate(b'{"type":"ping"}'), rsv=4)
        assert await closed_with(ws) == 1002
    finally:
        ws.abort()
    assert edge.node.deflate.counters.messages == 0


# --- sending ----------------------------------------------------------------------


async def test_a_4kb_room_message_is_compressed_once_and_the_same_bytes_reach_every_compressing_member(
    make_edge: Any, backend: Any
) -> None:
    edge = await make_edge()
    members = [await rawws(edge, offer, sub=f"m{i}") for i, offer in enumerate((CHROMIUM, WEBSOCKETS, NODE_WS))]
    plain = await rawws(edge, None, sub="plain")
    try:
        for ws in [*members, plain]:
            await joined(ws)
        counters = edge.node.deflate.counters
        before = (counters.messages, counters.raw_bytes, counters.compressed_bytes)
        data = message_data(4096)
        seq = await publish(backend, data)
        got = [await next_of(ws, "msg") for ws in members]
        plain_msg = await next_of(plain, "msg")
        # Three sockets, one compressed frame: byte for byte the same, header included.
        assert all(g.rsv == 0b100 and g.fin for g in got), [g.rsv for g in got]
        assert got[0].raw == got[1].raw == got[2].raw
        assert plain_msg.rsv == 0
        # It inflates on its own (no context) to exactly what the plain member got.
        assert inflate(got[0].payload) == plain_msg.payload
        frame_json = json.loads(plain_msg.payload)
        assert frame_json["data"] == data and frame_json["seq"] == seq
        size = len(plain_msg.payload)
        assert size > 4096 and len(got[0].payload) * 3 < size
        # Counted once for the node, not once per member.
        assert (counters.messages, counters.raw_bytes, counters.compressed_bytes) == (
            before[0] + 1,
            before[1] + size,
            before[2] + len(got[0].payload),
        )
        # The next message is compressed alone too (the compressor keeps nothing across messages).
        data2 = message_data(4096, seed=1)
        await publish(backend, data2)
        second = [await next_of(ws, "msg") for ws in members]
        assert second[0].raw == second[1].raw == second[2].raw
        assert json.loads(inflate(second[0].payload))["data"] == data2
        await next_of(plain, "msg")
    finally:
        for ws in [*members, plain]:
            ws.abort()


async def test_small_messages_and_replies_go_uncompressed_replays_compressed(make_edge: Any, backend: Any) -> None:
    edge = await make_edge()
    ws = await rawws(edge, CHROMIUM)
    try:
        reply = await joined(ws)
        assert reply.rsv == 0
        # Under compress_min_bytes (256): plain, though the member compresses.
        small = {"text": "hi"}
        await publish(backend, small)
        msg = await next_of(ws, "msg")
        assert msg.rsv == 0 and len(msg.payload) < edge.settings.compress_min_bytes
        assert json.loads(msg.payload)["data"] == small
        # At the threshold: compressed.
        pad = "y" * 300
        await publish(backend, {"pad": pad})
        assert (await next_of(ws, "msg")).rsv == 0b100
        # A compressed publish: its ack is plain, the room message it makes is compressed.
        data = message_data(4096, seed=2)
        publish_frame = json.dumps({"type": "publish", "room": ROOM, "data": data, "ref": "p1"}).encode()
        await ws.send(OP_TEXT, deflate(publish_frame), rsv=4)
        seen: dict[str, Frame] = {}
        while len(seen) < 2:
            got = await next_text(ws)
            seen[json.loads(got.text())["type"]] = got
        assert seen["ack"].rsv == 0 and json.loads(seen["ack"].payload)["ref"] == "p1"
        assert seen["msg"].rsv == 0b100 and json.loads(seen["msg"].text())["data"] == data
        # An error reply: plain.
        await ws.send(OP_TEXT, deflate(b'{"type":"nope","ref":"e1"}'), rsv=4)
        error = await next_of(ws, "error")
        assert error.rsv == 0 and json.loads(error.payload)["ref"] == "e1"
        # A pong reply: plain.
        await ws.send(OP_TEXT, deflate(b'{"type":"ping","ref":"q"}'), rsv=4)
        assert (await next_of(ws, "pong")).rsv == 0
        # A history page of big messages (well over the threshold): a reply, so plain.
        await ws.send_text(json.dumps({"type": "history", "room": ROOM, "limit": 10, "ref": "h"}))
        page = await next_of(ws, "history")
        body = json.loads(page.payload)
        assert page.rsv == 0 and len(page.payload) > 4096 and len(body["messages"]) == 3
        # A join's replay (`last`) is room messages: compressed where big, like live ones.
        other = await rawws(edge, CHROMIUM, sub="late")
        try:
            assert (await joined(other, last=3)).rsv == 0
            replayed = [await next_of(other, "msg") for _ in range(3)]
            assert [r.rsv for r in replayed] == [0, 0b100, 0b100]
            assert json.loads(replayed[2].text())["data"] == data
        finally:
            other.abort()
    finally:
        ws.abort()


async def test_aiohttp_client_with_compression_gets_messages_inflated(make_edge: Any, backend: Any) -> None:
    """The smoke check, kept: aiohttp's client (compress=15) negotiates, reads inflated, publishes compressed."""
    edge = await make_edge()
    client = await connect(edge.url, "aio", compress=15)
    try:
        assert client.ws.compress == 15
        await client.request(type="join", room=ROOM)
        data = message_data(4800)
        await client.send(type="publish", room=ROOM, data=data, ref="a")
        kinds: dict[str, dict[str, Any]] = {}
        while len(kinds) < 2:
            got = await client.recv()
            kinds[got["type"]] = got
        assert kinds["msg"]["data"] == data and kinds["ack"]["ref"] == "a"
        assert edge.node.deflate.counters.messages == 1
    finally:
        await client.close()


# --- receiving --------------------------------------------------------------------


async def test_compressed_client_messages_are_inflated_fragmented_or_not(make_edge: Any) -> None:
    edge = await make_edge()
    ws = await rawws(edge, CHROMIUM)
    plain = await rawws(edge, None, sub="plain")
    try:
        await joined(ws)
        await joined(plain)
        data = message_data(4096, seed=3)
        body = deflate(json.dumps({"type": "publish", "room": ROOM, "data": data}).encode())
        await ws.send(OP_TEXT, body, rsv=4)
        assert json.loads((await next_of(plain, "msg")).payload)["data"] == data
        # Fragmented: RSV1 on the first frame only (RFC 7692 6.1), a ping between the fragments.
        data = message_data(4096, seed=4)
        body = deflate(json.dumps({"type": "publish", "room": ROOM, "data": data}).encode())
        third = len(body) // 3
        ws.write(frame(OP_TEXT, body[:third], fin=False, rsv=4))
        ws.write(frame(OP_PING, b"between"))
        ws.write(frame(OP_CONT, body[third : 2 * third], fin=False))
        ws.write(frame(OP_CONT, body[2 * third :]))
        await ws.writer.drain()
        assert json.loads((await next_of(plain, "msg")).payload)["data"] == data
        # A message compressed with BFINAL (Z_FINISH, as some encoders do): inflated too.
        compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        finished = compressor.compress(b'{"type":"ping","ref":"fin"}') + compressor.flush(zlib.Z_FINISH)
        await ws.send(OP_TEXT, finished, rsv=4)
        assert json.loads((await next_of(ws, "pong")).payload)["ref"] == "fin"
    finally:
        ws.abort()
        plain.abort()


def _bomb(inflated_mb: int) -> bytes:
    """A permessage-deflate message inflating to `inflated_mb` MiB of zeros (about 1 KiB per MiB):
    one full-flushed MiB of zeros stands alone, so it is repeated instead of compressing it all."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * inflated_mb


def test_the_bomb_inflates_to_what_it_says() -> None:
    bomb = _bomb(8)
    assert len(inflate(bomb)) == 8 << 20 and len(bomb) < 9 * 1024


@pytest.mark.parametrize(
    ("max_frame", "inflated_mb"),
    [
        pytest.param(65536, 60, id="60KB-frame-to-60MB"),
        pytest.param(1 << 20, 1000, id="1MB-frame-to-1GB"),
    ],
)
async def test_an_inflation_bomb_is_closed_with_1009_after_inflating_at_most_the_limit(
    make_edge: Any, max_frame: int, inflated_mb: int
) -> None:
    edge = await make_edge(max_frame_bytes=max_frame)
    control = await rawws(edge, CHROMIUM, sub="control")
    ws = await rawws(edge, CHROMIUM)
    bomb = _bomb(inflated_mb)
    assert len(bomb) < max_frame
    data = frame(OP_TEXT, bomb, rsv=4)
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        started = time.monotonic()
        ws.write(data)
        code = await closed_with(ws)
        seconds = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
        ws.abort()
    try:
        assert code == 1009
        assert seconds < 1.0, seconds
        # What the edge held at most (this test's client is in the same process): a few copies of
        # the frame as aiohttp reads, unmasks and feeds it to zlib (which keeps its unconsumed
        # input), and at most max_frame bytes inflated; never anything near the bomb's MiBs
        # (measured: 0.55 MB for the 60 MB bomb, 6.5 MB for the 1 GB one).
        assert peak < 10 * max_frame + (1 << 20), peak
        assert peak < (inflated_mb << 20) // 50, peak
        # The control client did not notice.
        await control.send_text('{"type":"ping","ref":"c"}')
        assert json.loads((await next_of(control, "pong")).payload)["ref"] == "c"
    finally:
        control.abort()


async def test_a_closed_bomb_leaves_nothing_behind_though_the_collector_is_frozen(make_edge: Any) -> None:
    """A reader's error keeps its traceback, whose frames hold what it was parsing (the socket's
    read, the payload, up to max_frame_bytes inflated) in a cycle with the reader. The node freezes
    the collector's survivors (edge/memory.py), so a connection open at a freeze leaves such a cycle
    uncollected until the next full collection, a thousand closes later: the edge drops the
    tracebacks (edge/ws.py `_forget`), so the buffers go with the socket."""
    edge = await make_edge()
    sockets = [await rawws(edge, CHROMIUM, sub=f"bomber-{i}") for i in range(20)]
    data = frame(OP_TEXT, _bomb(60), rsv=4)
    gc.collect()
    tracemalloc.start(40)
    gc.freeze()  # as the node does after a full collection: these readers are survivors now
    try:
        for ws in sockets:
            ws.write(data)
        codes = [await closed_with(ws) for ws in sockets]
        for ws in sockets:
            ws.abort()
        while edge.node.connections:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
    finally:
        gc.unfreeze()
        tracemalloc.stop()
    assert codes == [1009] * 20
    held = snapshot.filter_traces([tracemalloc.Filter(True, "*/aiohttp/_websocket/*", all_frames=True)])
    kept = sum(stat.size for stat in held.statistics("filename"))
    # Without `_forget`: ~190 KB per bomb (its read, its payload, 64 KB inflated), 3.8 MB in all.
    assert kept < 200 * 1024, kept


async def test_a_message_inflating_to_just_the_limit_is_read(make_edge: Any) -> None:
    edge = await make_edge(max_frame_bytes=65536)
    ws = await rawws(edge, CHROMIUM)
    try:
        # A ping padded to exactly max_frame_bytes once inflated: read (and answered), not refused.
        head = b'{"type":"ping","ref":"big","pad":"'
        body = head + b"z" * (65536 - len(head) - 2) + b'"}'
        assert len(body) == 65536
        await ws.send(OP_TEXT, deflate(body), rsv=4)
        assert json.loads((await next_of(ws, "pong")).payload)["ref"] == "big"
        await ws.send(OP_TEXT, deflate(body[:-2] + b'z"}'), rsv=4)  # one byte over
        assert await closed_with(ws) == 1009
    finally:
        ws.abort()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xff" * 64, id="reserved-block-type"),
        pytest.param(b"\x00\x05\x00\x00\x00hello", id="stored-length-mismatch"),
        pytest.param(bytes.fromhex("4b4c04020c0600"), id="distance-too-far-back"),
        pytest.param(bytes.fromhex("05445d21b9ccaa36"), id="invalid-code-lengths"),
        pytest.param(bytes.fromhex("437ea8127f351f0a"), id="invalid-distance-code"),
        pytest.param(bytes.fromhex("1b47f69a6ea98d35"), id="invalid-literal-length-code"),
    ],
)
async def test_data_that_does_not_inflate_closes_with_1002(make_edge: Any, data: bytes) -> None:
    edge = await make_edge()
    ws = await rawws(edge, CHROMIUM)
    try:
        with pytest.raises(zlib.error):
            inflate(data)
        await ws.send(OP_TEXT, data, rsv=4)
        assert await closed_with(ws) == 1002
    finally:
        ws.abort()


async def test_a_compressed_message_inflating_to_invalid_utf8_is_refused_as_a_plain_one_is(make_edge: Any) -> None:
    """Not a framing error: like any text frame that is not UTF-8, `error` bad_request (PROTOCOL.md 9.1)."""
    edge = await make_edge()
    ws = await rawws(edge, CHROMIUM)
    try:
        await ws.send(OP_TEXT, deflate(b'{"type":"ping","ref":"\xc3\x28"}'), rsv=4)
        error = json.loads((await next_of(ws, "error")).payload)
        assert error["code"] == "bad_request" and "UTF-8" in error["message"], error
        await ws.send_text('{"type":"ping","ref":"on"}')
        assert json.loads((await next_of(ws, "pong")).payload)["ref"] == "on"
    finally:
        ws.abort()


@pytest.mark.parametrize("offer", [CHROMIUM, None], ids=["compressing", "plain"])
@pytest.mark.parametrize(("rsv", "opcode"), [(0b010, OP_TEXT), (0b001, OP_TEXT), (0b011, OP_TEXT), (0b010, OP_PING)])
async def test_rsv2_and_rsv3_close_with_1002(make_edge: Any, offer: str | None, rsv: int, opcode: int) -> None:
    edge = await make_edge()
    ws = await rawws(edge, offer)
    try:
        await ws.send(opcode, b'{"type":"ping"}', rsv=rsv)
        assert await closed_with(ws) == 1002
    finally:
        ws.abort()


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_PING, OP_CLOSE], ids=["text", "ping", "close"])
async def test_rsv1_without_negotiation_closes_with_1002(make_edge: Any, opcode: int) -> None:
    edge = await make_edge()
    ws = await rawws(edge, None)
    try:
        payload = b"\x03\xe8" if opcode == OP_CLOSE else deflate(b'{"type":"ping"}')
        await ws.send(opcode, payload, rsv=4)
        assert await closed_with(ws) == 1002
    finally:
        ws.abort()


async def test_rsv1_before_authenticating_closes_with_1002(make_edge: Any) -> None:
    edge = await make_edge()
    ws = await rawws(edge, None, authenticate=False)
    try:
        await ws.send(OP_TEXT, deflate(json.dumps({"type": "auth", "token": token()}).encode()), rsv=4)
        assert await closed_with(ws) == 1002
    finally:
        ws.abort()


async def test_rsv1_on_a_continuation_frame_closes_with_1002(make_edge: Any) -> None:
    edge = await make_edge()
    ws = await rawws(edge, CHROMIUM)
    try:
        body = deflate(b'{"type":"ping","ref":"frag"}')
        ws.write(frame(OP_TEXT, body[:5], fin=False, rsv=4))
        ws.write(frame(OP_CONT, body[5:], rsv=4))
        await ws.writer.drain()
        assert await closed_with(ws) == 1002
    finally:
        ws.abort()


async def test_rsv1_on_a_control_frame_of_a_compressing_connection_is_ignored_never_inflated(
    make_edge: Any,
) -> None:
    """RFC 7692 6.1 says such a frame fails the connection; aiohttp's reader (the edge's) ignores
    RSV1 on control frames instead, for interop: the frame is read as it is, not inflated."""
    edge = await make_edge()
    ws = await rawws(edge, CHROMIUM)
    try:
        payload = deflate(b"hello, are you there?")
        await ws.send(OP_PING, payload, rsv=4)
        pong = await ws.read_frame()
        assert pong is not None and pong.opcode == OP_PONG
        assert pong.rsv == 0 and pong.payload == payload  # echoed as sent: never inflated
        await ws.send_text('{"type":"ping","ref":"after"}')
        assert json.loads((await next_of(ws, "pong")).payload)["ref"] == "after"
        # A close frame with RSV1: read as a plain close (its code is the raw first two bytes).
        await ws.send(OP_CLOSE, b"\x0f\xa0bye", rsv=4)
        assert await closed_with(ws) == 4000
    finally:
        ws.abort()


# --- no state kept per connection -------------------------------------------------


def _parser_of(edge: Edge, sub: str) -> Any:
    (conn,) = [c for c in edge.node.connections if c.principal is not None and c.principal.sub == sub]
    socket: Any = conn.transport_adapter.socket  # type: ignore[attr-defined]
    return socket.get_protocol()._payload_parser


async def test_no_inflater_outlives_a_message_so_many_messages_do_not_grow_the_connection(make_edge: Any) -> None:
    edge = await make_edge()
    ws = await rawws(edge, CHROMIUM, sub="many")
    try:
        parser = _parser_of(edge, "many")
        assert type(parser) is StatelessInflateReader and parser._decompressobj is None
        pings = [deflate(json.dumps({"type": "ping", "ref": i, "pad": "p" * 300}).encode()) for i in range(1000)]

        async def send_and_wait(first: int, count: int) -> None:
            for batch in range(first, first + count, 50):
                upto = min(batch + 50, first + count)
                ws.write(b"".join(frame(OP_TEXT, p, rsv=4) for p in pings[batch:upto]))
                for i in range(batch, upto):
                    assert json.loads((await next_of(ws, "pong")).payload)["ref"] == i

        def server_side(snapshot: tracemalloc.Snapshot) -> int:
            """Bytes held by what the edge and aiohttp allocated (the raw client's own left out)."""
            held = snapshot.filter_traces(
                [
                    tracemalloc.Filter(False, "*/tests/*", all_frames=True),
                    tracemalloc.Filter(False, tracemalloc.__file__),
                ]
            )
            return sum(stat.size for stat in held.statistics("filename"))

        await send_and_wait(0, 1)
        assert parser._decompressobj is None
        gc.collect()
        tracemalloc.start(30)
        try:
            await send_and_wait(1, 50)
            gc.collect()
            after_some = server_side(tracemalloc.take_snapshot())
            await send_and_wait(51, 949)
            gc.collect()
            after_many = server_side(tracemalloc.take_snapshot())
        finally:
            tracemalloc.stop()
        assert parser._decompressobj is None
        # Less than one kept inflater would be (the next test: tens of KiB), and not per message.
        assert after_many - after_some < 8 * 1024, after_many - after_some
    finally:
        ws.abort()


def test_aiohttp_stock_reader_would_keep_an_inflater_the_edge_reader_drops_it() -> None:
    """What the test above guards against: aiohttp's own reader keeps its ZLibDecompressor (a zlib
    stream with its 32 KiB window) for the connection's life; the edge's drops it after each message."""
    loop = asyncio.new_event_loop()
    try:
        sizes = {}
        for cls in (reader_py.WebSocketReader, StatelessInflateReader):

            class Protocol:
                _reading_paused = False

            queue = reader_py.WebSocketDataQueue(Protocol(), 2**16, loop=loop)  # type: ignore[arg-type]
            reader = cls(queue, 65537, compress=True, decode_text=False)
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                reader.feed_data(frame(OP_TEXT, deflate(b'{"type":"ping"}' * 40), rsv=4))
                message = queue._buffer.popleft()[0]
                del message
                gc.collect()
                sizes[cls.__name__] = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            kept = reader._decompressobj is not None
            assert kept is (cls is reader_py.WebSocketReader)
    finally:
        loop.close()
    # The stock reader keeps tens of KiB per compressing connection; the edge's nothing like it.
    assert sizes["WebSocketReader"] > 30 * 1024 > 2 * 1024 > sizes["StatelessInflateReader"], sizes


# --- metrics ------------------------------------------------------------------------


async def test_deflate_metrics_count_once_per_message_per_node(make_edge: Any, backend: Any) -> None:
    edge = await make_edge()
    members = [await rawws(edge, CHROMIUM, sub=f"m{i}") for i in range(2)]
    try:
        for ws in members:
            await joined(ws)
        before = await scrape(edge)
        for seed in range(3):
            await publish(backend, message_data(2048, seed=seed))
        await publish(backend, {"small": True})
        sizes = []
        for ws in members:
            got = [await next_of(ws, "msg") for _ in range(4)]
            sizes = [len(g.payload) for g in got]
            assert [g.rsv for g in got] == [4, 4, 4, 0]
        after = await scrape(edge)

        def moved(name: str) -> float:
            return after.get(name, 0.0) - before.get(name, 0.0)

        assert moved("jetsock_deflate_messages_total") == 3
        counters = edge.node.deflate.counters
        assert moved("jetsock_deflate_compressed_bytes_total") == counters.compressed_bytes == sum(sizes[:3])
        assert moved("jetsock_deflate_raw_bytes_total") == counters.raw_bytes
        assert counters.raw_bytes > 3 * counters.compressed_bytes
        # What went on the wire (jetsock.bytes.out) is the compressed size, once per member.
        assert moved("jetsock_bytes_out_bytes_total") < counters.raw_bytes
    finally:
        for ws in members:
            ws.abort()


async def test_aiohttp_client_sees_the_answer(make_edge: Any) -> None:
    """aiohttp's client parses the answer (it refuses one it cannot honour with an error)."""
    edge = await make_edge()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(edge.url, protocols=("jetsock.v1", "bearer." + token()), compress=15) as ws,
    ):
        assert ws.compress == 15 and ws.client_notakeover
        assert json.loads((await ws.receive()).data)["type"] == "welcome"
