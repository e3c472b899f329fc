"""The hub and its join seam without NATS: held frames, going live, members ahead of the feed, reset."""

from __future__ import annotations

import asyncio
from typing import Any

from core.position import Position
from core.stored import StoredMessage
from edge.framing import WEBSOCKET_TEXT
from edge.hub import Hub, encode_msg
from edge.outbox import Flusher, Outbox
from tests.edge.test_outbox import RecordingTransport


def message(seq: int) -> StoredMessage:
    return StoredMessage(room="r", seq=seq, ts=0, data=b"%d" % seq)


def frame(seq: int) -> bytes:
    return WEBSOCKET_TEXT.frame(encode_msg(message(seq)))


class Feed:
    """Plays the node's feed: in order, once each, with a cursor."""

    def __init__(self, hub: Hub, head: int) -> None:
        self.hub = hub
        self.cursor = head

    def deliver(self, *seqs: int) -> None:
        for seq in seqs:
            self.cursor = seq
            self.hub.deliver("r", [message(seq)])


def make(head: int) -> tuple[Hub, Feed, Flusher]:
    flusher = Flusher()
    hub = Hub(flusher)
    return hub, Feed(hub, head), flusher


def live_member(hub: Hub, feed: Feed, flusher: Flusher, start: int | None = None) -> tuple[Any, RecordingTransport]:
    """A member that joined at the feed's head, or resumed after `start` (from a node further on)."""
    transport = RecordingTransport()
    member: Any = Outbox(transport, 1 << 20, flusher)
    seam = hub.add_joining(member, "r", WEBSOCKET_TEXT)
    seam.start(feed.cursor if start is None else start)
    assert not seam.take()
    hub.finish_seam(member, "r", seam, feed.cursor)
    return member, transport


async def test_a_member_ahead_of_the_feed_skips_what_it_already_has() -> None:
    hub, feed, flusher = make(head=10)
    _, caught_up = live_member(hub, feed, flusher)
    # Resumed with a seq got from a node whose feed is further on than this one.
    _, ahead = live_member(hub, feed, flusher, start=12)
    feed.deliver(11, 12, 13)
    await asyncio.sleep(0)
    assert caught_up.writes == [b"".join(frame(s) for s in (11, 12, 13))]
    assert ahead.writes == [frame(13)]
    assert not hub.rooms["r"].joining, "caught up: live"
    feed.deliver(14)
    await asyncio.sleep(0)
    assert ahead.writes[-1] == caught_up.writes[-1] == frame(14)


async def test_held_frames_follow_the_join_without_gap_or_duplicate() -> None:
    hub, feed, flusher = make(head=10)
    transport = RecordingTransport()
    member: Any = Outbox(transport, 1 << 20, flusher)
    seam = hub.add_joining(member, "r", WEBSOCKET_TEXT)
    feed.deliver(9, 10)  # between entering the seam and reading the head: at or before it, dropped
    seam.start(5)  # a join with since=5 whose replay sends 6..10
    feed.deliver(11, 12)  # during the replay: held
    await asyncio.sleep(0)
    assert transport.writes == []
    for seq in (6, 8, 10):
        assert seam.replayed(seq)
        member.push(frame(seq))
    held = seam.take()
    assert [seq for seq, _ in held] == [11, 12]
    for _seq, held_frame in held:
        member.push(held_frame)
    hub.finish_seam(member, "r", seam, feed.cursor)
    feed.deliver(13)
    await asyncio.sleep(0)
    assert b"".join(transport.writes) == b"".join(frame(s) for s in (6, 8, 10, 11, 12, 13))


async def test_reset_reaches_every_member_and_starts_the_seam_over() -> None:
    hub, feed, flusher = make(head=10)
    _, ahead = live_member(hub, feed, flusher, start=20)
    hub.reset("r", Position(3, "e2"))
    feed.cursor = 3
    feed.deliver(4)
    await asyncio.sleep(0)
    assert b'"type":"reset"' in ahead.writes[0] and ahead.writes[0].endswith(frame(4))


async def test_leaving_the_last_member_releases_the_room() -> None:
    hub, feed, flusher = make(head=1)
    released: list[str] = []
    hub.on_empty = released.append
    member, _ = live_member(hub, feed, flusher)
    assert hub.leave(member, "r") and not hub.leave(member, "r")
    assert "r" not in hub.rooms and released == ["r"]


async def test_held_frames_count_against_the_members_budget() -> None:
    """A joiner whose replay stalls cannot make the hub hold more than its outbox limit."""
    hub, _feed, flusher = make(head=0)
    overflowed: list[bool] = []
    member: Any = Outbox(RecordingTransport(), 4096, flusher, lambda: overflowed.append(True))
    seam = hub.add_joining(member, "r", WEBSOCKET_TEXT)
    seam.start(0)
    big = StoredMessage(room="r", seq=1, ts=0, data=b'"' + b"x" * 1000 + b'"')
    for seq in range(1, 10):
        hub.deliver("r", [StoredMessage(room="r", seq=seq, ts=0, data=big.data)])
    assert overflowed == [True]
    assert seam.held_bytes == 0 and not seam.held, "what was held is let go"
