"""The outbox: frames of one loop pass leave in one write; overflow calls back instead of blocking."""

from __future__ import annotations

import asyncio
import time

from edge.outbox import Flusher, Outbox
from edge.wsframe import PING_FRAME, pong_frame, text_frame


class RecordingTransport(asyncio.Transport):
    """Records writes; `unread` plays the bytes the peer has not taken yet."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.unread = 0
        self.stalled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        if self.stalled:
            self.unread += len(data)

    def get_write_buffer_size(self) -> int:
        return self.unread

    def is_closing(self) -> bool:
        return False


async def test_frames_of_one_pass_leave_in_one_write() -> None:
    transport = RecordingTransport()
    outbox = Outbox(transport, 1 << 20, Flusher(), lambda: None)
    for i in range(3):
        outbox.push(b"frame%d" % i)
    assert transport.writes == []
    await asyncio.sleep(0)
    assert transport.writes == [b"frame0frame1frame2"]
    outbox.push(b"next")
    await asyncio.sleep(0)
    assert transport.writes == [b"frame0frame1frame2", b"next"]


async def test_one_flush_serves_every_dirty_outbox() -> None:
    flusher = Flusher()
    transports = [RecordingTransport() for _ in range(50)]
    outboxes = [Outbox(t, 1 << 20, flusher, lambda: None) for t in transports]
    for outbox in outboxes:
        outbox.push(b"a")
        outbox.push(b"b")
    await asyncio.sleep(0)
    assert all(t.writes == [b"ab"] for t in transports)


async def test_overflow_calls_back_and_drops_the_rest() -> None:
    transport = RecordingTransport()
    overflowed: list[bool] = []
    outbox = Outbox(transport, 100, Flusher(), lambda: overflowed.append(True))
    transport.unread, transport.stalled = 90, True  # the peer stopped reading
    outbox.push(b"x" * 20)
    await asyncio.sleep(0)
    assert overflowed == [True] and outbox.closed
    outbox.push(b"more")
    await asyncio.sleep(0)
    assert transport.writes == [b"x" * 20]


async def test_seal_writes_what_is_queued_then_accepts_nothing() -> None:
    transport = RecordingTransport()
    outbox = Outbox(transport, 1 << 20, Flusher(), lambda: None)
    outbox.push(b"last words")
    outbox.seal()
    outbox.push(b"ignored")
    await asyncio.sleep(0)
    assert transport.writes == [b"last words"]


def test_frame_headers_follow_rfc6455() -> None:
    assert text_frame(b"hi") == b"\x81\x02hi"
    assert text_frame(b"x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert text_frame(b"x" * 70000)[:10] == b"\x81\x7f" + (70000).to_bytes(8, "big")
    assert PING_FRAME == b"\x89\x00"
    assert pong_frame(b"abc") == b"\x8a\x03abc"


async def test_fanout_shares_one_write_per_pass_and_keeps_each_connections_order() -> None:
    flusher = Flusher()
    transports = [RecordingTransport() for _ in range(3)]
    first, second, third = (Outbox(t, 1 << 20, flusher, lambda: None) for t in transports)
    first.push(b"reply;")  # queued before the room's frames: stays first
    batch = flusher.fanout((first, second, third), b"m1;", None)
    second.push(b"pong;")  # between the room's frames, for one member only
    flusher.fanout((first, second, third), b"m2;", batch)
    await asyncio.sleep(0)
    assert transports[0].writes == [b"reply;m1;m2;"]
    assert transports[1].writes == [b"m1;pong;m2;"]
    assert transports[2].writes == [b"m1;m2;"]


async def test_an_outbox_that_flushed_early_does_not_get_a_batch_twice() -> None:
    flusher = Flusher()
    transports = [RecordingTransport() for _ in range(2)]
    early, other = (Outbox(t, 1 << 20, flusher, lambda: None) for t in transports)
    batch = flusher.fanout((early, other), b"m1;", None)
    early.flush()  # as a paced replay or a close does
    flusher.fanout((early, other), b"m2;", batch)
    await asyncio.sleep(0)
    assert transports[0].writes == [b"m1;", b"m2;"]
    assert transports[1].writes == [b"m1;m2;"]


async def test_an_outbox_idle_after_a_batch_began_gets_only_later_frames() -> None:
    flusher = Flusher()
    transports = [RecordingTransport() for _ in range(2)]
    member, newcomer = (Outbox(t, 1 << 20, flusher, lambda: None) for t in transports)
    batch = flusher.fanout((member,), b"m1;", None)
    flusher.fanout((member, newcomer), b"m2;", batch)  # joined after m1
    await asyncio.sleep(0)
    assert transports[0].writes == [b"m1;m2;"]
    assert transports[1].writes == [b"m2;"]


async def test_a_shared_batch_past_the_limit_overflows_its_outboxes() -> None:
    flusher = Flusher()
    overflowed: list[int] = []
    transports = [RecordingTransport() for _ in range(2)]
    outboxes = tuple(Outbox(t, 100, flusher, lambda i=i: overflowed.append(i)) for i, t in enumerate(transports))
    batch = flusher.fanout(outboxes, b"x" * 60, None)
    assert overflowed == []
    flusher.fanout(outboxes, b"y" * 60, batch)
    assert sorted(overflowed) == [0, 1] and all(o.closed for o in outboxes)
    await asyncio.sleep(0)
    assert all(t.writes == [] for t in transports)


class SlowTransport(RecordingTransport):
    """A write that costs time, like a send(2) on a busy node."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        super().write(data)
        time.sleep(0.0002)


async def test_after_a_busy_flush_the_next_waits_so_frames_share_writes() -> None:
    loop = asyncio.get_running_loop()
    flusher = Flusher(max_delay=0.5)
    transports = [SlowTransport() for _ in range(20)]  # ~4 ms of writes: a busy pass
    outboxes = tuple(Outbox(t, 1 << 20, flusher, lambda: None) for t in transports)
    flusher.fanout(outboxes, b"m1;", None)
    await asyncio.sleep(0)
    ended = loop.time()
    assert all(t.writes == [b"m1;"] for t in transports)
    batch = flusher.fanout(outboxes, b"m2;", None)
    flusher.fanout(outboxes, b"m3;", batch)
    await asyncio.sleep(0.001)
    assert all(t.writes == [b"m1;"] for t in transports)  # held: the last pass was busy
    while transports[-1].writes == [b"m1;"]:
        await asyncio.sleep(0.001)
    assert loop.time() - ended < 0.1  # waited about as long as the busy pass took, not max_delay
    assert all(t.writes == [b"m1;", b"m2;m3;"] for t in transports)


async def test_a_quiet_node_writes_at_the_end_of_the_pass() -> None:
    flusher = Flusher(max_delay=0.5)
    transport = RecordingTransport()
    outbox = Outbox(transport, 1 << 20, flusher, lambda: None)
    for frame in (b"a", b"b"):
        outbox.push(frame)
        await asyncio.sleep(0)
    assert transport.writes == [b"a", b"b"]


async def test_rooms_sharing_members_in_one_pass_keep_order_and_batches_do_not_grow() -> None:
    flusher = Flusher()
    transports = [RecordingTransport() for _ in range(2)]
    outboxes = tuple(Outbox(t, 1 << 20, flusher, lambda: None) for t in transports)
    room_a = room_b = None
    for i in range(3):
        room_a = flusher.fanout(outboxes, b"a%d;" % i, room_a)
        room_b = flusher.fanout(outboxes, b"b%d;" % i, room_b)  # nobody idle: private copies
        await asyncio.sleep(0)
        assert len(room_a.frames) == len(room_b.frames) == 1  # a new batch each pass
    assert all(t.writes == [b"a0;b0;", b"a1;b1;", b"a2;b2;"] for t in transports)
