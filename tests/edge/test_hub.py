"""The registry's seam without NATS: held frames, going live, members ahead of the feed, reset."""

from __future__ import annotations

import asyncio
from typing import Any

from core.stored import StoredMessage
from edge.outbox import Flusher, Outbox
from edge.registry import Registry, encode_msg
from tests.edge.test_outbox import RecordingTransport


class FakeFeeds:
    def __init__(self, head: int) -> None:
        self.head = head
        self.unwatched: list[str] = []

    def cursor(self, _room: str) -> int:
        return self.head

    def unwatch(self, room: str) -> None:
        self.unwatched.append(room)


class FakeReplay:
    recovered = True


class FakeBroker:
    epoch = "e1"

    def __init__(self, head: int) -> None:
        self.feeds = FakeFeeds(head)

    async def watch(self, _room: str) -> int:
        return self.feeds.head

    async def replay(self, _room: str, _since: int, _head: int) -> FakeReplay:
        return FakeReplay()


def message(seq: int) -> StoredMessage:
    return StoredMessage(room="r", seq=seq, ts=0, data=b"%d" % seq)


def make(head: int) -> tuple[Registry, FakeBroker, Flusher]:
    flusher = Flusher()
    registry = Registry(flusher)
    broker = FakeBroker(head)
    registry.broker = broker  # type: ignore[assignment]
    return registry, broker, flusher


def deliver(registry: Registry, broker: FakeBroker, *seqs: int) -> None:
    for seq in seqs:
        broker.feeds.head = seq
        registry.deliver("r", [message(seq)])


async def live_member(registry: Registry, flusher: Flusher, since: int | None = None) -> tuple[Any, RecordingTransport]:
    transport = RecordingTransport()
    conn: Any = Outbox(transport, 1 << 20, flusher)
    result = await registry.join(conn, "r", since, None)
    assert result is not None
    assert not registry.take_held(result.member)
    registry.go_live(result.member)
    return conn, transport


async def test_a_member_ahead_of_the_feed_skips_what_it_already_has() -> None:
    registry, broker, flusher = make(head=10)
    _, caught_up = await live_member(registry, flusher)
    # Resumed with a seq got from a node whose feed is further on than this one.
    _, ahead = await live_member(registry, flusher, since=12)
    deliver(registry, broker, 11, 12, 13)
    await asyncio.sleep(0)
    assert caught_up.writes == [b"".join(encode_msg(message(s)) for s in (11, 12, 13))]
    assert ahead.writes == [encode_msg(message(13))]
    assert not registry.rooms["r"].ahead
    deliver(registry, broker, 14)
    await asyncio.sleep(0)
    assert ahead.writes[-1] == caught_up.writes[-1] == encode_msg(message(14))


async def test_held_frames_follow_the_join_without_gap_or_duplicate() -> None:
    registry, broker, flusher = make(head=10)
    transport = RecordingTransport()
    conn: Any = Outbox(transport, 1 << 20, flusher)
    result = await registry.join(conn, "r", 5, None)
    assert result is not None
    deliver(registry, broker, 11, 12)  # during the replay: held
    await asyncio.sleep(0)
    assert transport.writes == []
    assert [seq for seq, _ in registry.take_held(result.member)] == [11, 12]
    registry.go_live(result.member)
    deliver(registry, broker, 13)
    await asyncio.sleep(0)
    assert transport.writes == [encode_msg(message(13))]


async def test_reset_reaches_every_member_and_clears_ahead() -> None:
    registry, broker, flusher = make(head=10)
    _, ahead = await live_member(registry, flusher, since=20)
    registry.reset("r", "e2", 3)
    deliver(registry, broker, 4)
    await asyncio.sleep(0)
    assert b'"type":"reset"' in ahead.writes[0] and ahead.writes[0].endswith(encode_msg(message(4)))


async def test_leaving_the_last_member_stops_the_feed() -> None:
    registry, broker, flusher = make(head=1)
    conn, _ = await live_member(registry, flusher)
    assert registry.leave(conn, "r") and not registry.leave(conn, "r")
    assert "r" not in registry.rooms and broker.feeds.unwatched == ["r"]
