"""The outbox: frames of one loop pass leave in one write; overflow calls back instead of blocking."""

from __future__ import annotations

import asyncio

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
    assert transport.writes[-1] == b"next" and outbox.bytes_out == len(b"frame0frame1frame2next")


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
