"""Live feeds, task-free subscriptions and stream reads, against a real nats-server."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from core.embedded import EmbeddedNats
from core.feed import LiveFeeds
from core.fetch import FetchError, RoomFetcher
from core.inbox import subscribe_direct
from core.position import Position
from core.settings import load_settings
from core.stored import StoredMessage
from core.stream import ensure_stream


async def eventually(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def live_subscriptions(nc: NATS, subject: str) -> int:
    return sum(1 for sub in nc._subs.values() if sub.subject == subject)


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


# ----------------------------------------------------------- subscribe_direct


async def test_subscribe_direct_delivers_synchronously_without_tasks(nats_server: EmbeddedNats) -> None:
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    nc = await nats.connect(
        nats_server.url, reconnected_cb=on_reconnect, reconnect_time_wait=0.1, max_reconnect_attempts=-1
    )
    publisher: NATS | None = None
    try:
        got: list[tuple[str, bytes]] = []
        running_in: set[asyncio.Task[Any] | None] = set()

        def handler(msg: Msg) -> None:
            got.append((msg.subject, msg.data))
            running_in.add(asyncio.current_task())

        count = 2000
        before = len(asyncio.all_tasks())
        subs = [await subscribe_direct(nc, f"direct.{i}", handler) for i in range(count)]
        await nc.flush()
        # An edge with 10,000 rooms must not hold 10,000 tasks.
        assert len(asyncio.all_tasks()) - before <= 3

        for i in (0, 777, count - 1):
            await nc.publish(f"direct.{i}", b"%d" % i)
        await nc.flush()
        await eventually(lambda: len(got) == 3, what="3 messages")
        assert sorted(got) == sorted([("direct.0", b"0"), ("direct.777", b"777"), (f"direct.{count - 1}", b"1999")])
        # Handled inside nats-py's reader, not a task of the subscription's own; nothing queued.
        assert running_in == {nc._reading_task}
        assert all(sub._pending_queue.qsize() == 0 for sub in subs)
        assert all(sub._wait_for_msgs_task is None for sub in subs)

        # After a reconnect nats-py sends the subscriptions again, still task-free.
        nats_server.stop()
        nats_server.start()
        await asyncio.wait_for(reconnected.wait(), 15)
        await nc.flush()
        publisher = await nats.connect(nats_server.url)
        got.clear()
        await publisher.publish("direct.1234", b"again")
        await publisher.flush()
        await eventually(lambda: got == [("direct.1234", b"again")], what="message after reconnect")
        assert len(asyncio.all_tasks()) - before <= 6

        await subs[1234].unsubscribe()
        await nc.flush()
        await publisher.publish("direct.1234", b"gone")
        await publisher.publish("direct.1235", b"still")
        await publisher.flush()
        await eventually(lambda: ("direct.1235", b"still") in got, what="message on a kept subscription")
        assert ("direct.1234", b"gone") not in got
    finally:
        if publisher is not None:
            await publisher.close()
        await nc.close()


# ----------------------------------------------------------------- LiveFeeds


class Recorder:
    """A FeedListener that records everything."""

    def __init__(self) -> None:
        self.delivered: dict[str, list[StoredMessage]] = defaultdict(list)
        self.batches: list[tuple[str, int]] = []
        self.resets: list[tuple[str, str, int]] = []

    def deliver(self, room: str, messages: list[StoredMessage]) -> None:
        assert messages, "empty delivery"
        self.delivered[room].extend(messages)
        self.batches.append((room, len(messages)))

    def reset(self, room: str, position: Position) -> None:
        self.resets.append((room, position.epoch, position.seq))

    def seqs(self, room: str) -> list[int]:
        return [m.seq for m in self.delivered[room]]

    async def wait_for(self, room: str, seq: int, timeout: float = 10.0) -> None:
        await eventually(
            lambda: bool(self.delivered[room]) and self.delivered[room][-1].seq >= seq,
            timeout,
            f"seq {seq} in room {room}",
        )


@dataclass
class Rig:
    nc: NATS
    js: JetStreamContext
    fetcher: RoomFetcher
    feeds: LiveFeeds
    recorder: Recorder


@pytest.fixture
async def rig(nc: NATS) -> AsyncIterator[Rig]:
    js = nc.jetstream()
    settings = load_settings(environ={}, jwt_secret="x", stream="FEEDTEST")
    await ensure_stream(js, settings)
    fetcher = RoomFetcher(nc, settings.stream)
    await fetcher.start()
    recorder = Recorder()
    feeds = LiveFeeds(nc, fetcher, recorder)
    yield Rig(nc, js, fetcher, feeds, recorder)
    for room in feeds.rooms():
        feeds.unwatch(room)
    await asyncio.sleep(0.05)


async def publish(js: JetStreamContext, room: str, data: bytes) -> int:
    return (await js.publish(f"rooms.{room}", data)).seq


async def test_feed_delivers_every_message_once_in_order(rig: Rig) -> None:
    head = await rig.feeds.watch("chat.a")
    assert head == 0
    assert "chat.a" in rig.feeds and len(rig.feeds) == 1
    expected: list[int] = []
    for i in range(60):
        expected.append(await publish(rig.js, "chat.a", b'{"i":%d}' % i))
        await publish(rig.js, "chat.b", b"other")  # same stream, unwatched
        await publish(rig.js, "chat.a.sub", b"deeper")  # a different room under the same prefix
    await rig.recorder.wait_for("chat.a", expected[-1])
    await rig.nc.flush()
    assert rig.recorder.seqs("chat.a") == expected
    assert [m.data for m in rig.recorder.delivered["chat.a"]] == [b'{"i":%d}' % i for i in range(60)]
    assert all(m.room == "chat.a" for m in rig.recorder.delivered["chat.a"])
    assert set(rig.recorder.delivered) == {"chat.a"}
    assert rig.feeds.repairs == 0
    assert rig.feeds.cursor("chat.a") == expected[-1]
    assert rig.recorder.resets == []


async def test_watch_starts_from_the_head(rig: Rig) -> None:
    old = [await publish(rig.js, "hist", b"%d" % i) for i in range(5)]
    await publish(rig.js, "elsewhere", b"x")
    assert await rig.feeds.watch("hist") == old[-1]
    assert rig.feeds.cursor("hist") == old[-1]
    new = await publish(rig.js, "hist", b'"new"')
    await rig.recorder.wait_for("hist", new)
    assert rig.recorder.seqs("hist") == [new]


async def test_lost_live_messages_are_repaired_from_the_stream(rig: Rig) -> None:
    rooms = ["lossy.one", "lossy.two"]
    for room in rooms:
        await rig.feeds.watch(room)
    dropping = True
    dropped: list[int] = []

    def drop(room: str, seq: int) -> bool:
        if dropping and seq % 3 == 0:
            dropped.append(seq)
            return True
        return False

    rig.feeds.drop_filter = drop
    expected: dict[str, list[int]] = {room: [] for room in rooms}
    for burst in range(8):
        # Pipelined publishes: live messages keep arriving while a repair runs.
        targets = [rooms[(burst + i) % 2] for i in range(25)]
        acks = await asyncio.gather(*(rig.js.publish(f"rooms.{room}", b'{"b":%d}' % burst) for room in targets))
        for room, ack in zip(targets, acks, strict=True):
            expected[room].append(ack.seq)
        await publish(rig.js, "noise", b"n")
    # A loss is noticed when the next message of the room arrives: end with one
    # that is not dropped.
    dropping = False
    for room in rooms:
        expected[room].append(await publish(rig.js, room, b'"last"'))
    for room in rooms:
        await rig.recorder.wait_for(room, expected[room][-1])
    await asyncio.sleep(0.1)
    await rig.nc.flush()
    assert dropped
    for room in rooms:
        assert rig.recorder.seqs(room) == sorted(expected[room]), room
        assert rig.feeds.cursor(room) == expected[room][-1]
    assert rig.feeds.repairs > 0
    assert rig.feeds.repaired_messages >= len(dropped)
    assert rig.recorder.resets == []


async def test_every_message_dropped_live_still_arrives(rig: Rig) -> None:
    await rig.feeds.watch("allgone")
    stop = False
    rig.feeds.drop_filter = lambda room, seq: not stop
    seqs = [await publish(rig.js, "allgone", b"%d" % i) for i in range(20)]
    await asyncio.sleep(0.1)
    assert rig.recorder.seqs("allgone") == []  # nothing reveals the loss yet
    stop = True
    seqs.append(await publish(rig.js, "allgone", b'"end"'))
    await rig.recorder.wait_for("allgone", seqs[-1])
    assert rig.recorder.seqs("allgone") == seqs
    assert rig.feeds.repairs >= 1


async def test_unwatch_stops_delivery(rig: Rig) -> None:
    await rig.feeds.watch("brief")
    first = await publish(rig.js, "brief", b"1")
    await rig.recorder.wait_for("brief", first)
    rig.feeds.unwatch("brief")
    assert "brief" not in rig.feeds
    assert rig.feeds.rooms() == []
    await eventually(lambda: live_subscriptions(rig.nc, "live.rooms.brief") == 0, what="unsubscribe")
    await publish(rig.js, "brief", b"2")
    await rig.nc.flush()
    await asyncio.sleep(0.1)
    assert rig.recorder.seqs("brief") == [first]
    rig.feeds.unwatch("brief")  # a second unwatch is harmless
    # Watching again starts from the new head.
    head = await rig.feeds.watch("brief")
    third = await publish(rig.js, "brief", b"3")
    await rig.recorder.wait_for("brief", third)
    assert head > first
    assert rig.recorder.seqs("brief") == [first, third]


async def test_concurrent_watches_share_one_subscription(rig: Rig) -> None:
    before = await publish(rig.js, "shared", b"0")
    heads = await asyncio.gather(*(rig.feeds.watch("shared") for _ in range(5)))
    assert heads == [before] * 5
    assert live_subscriptions(rig.nc, "live.rooms.shared") == 1
    assert len(rig.feeds) == 1
    seq = await publish(rig.js, "shared", b"1")
    await rig.recorder.wait_for("shared", seq)
    await rig.nc.flush()
    await asyncio.sleep(0.05)
    assert rig.recorder.seqs("shared") == [seq]


async def test_feeds_hold_no_task_per_room(rig: Rig) -> None:
    before = len(asyncio.all_tasks())
    await asyncio.gather(*(rig.feeds.watch(f"many.{i}") for i in range(300)))
    assert len(rig.feeds) == 300
    assert len(asyncio.all_tasks()) - before <= 3
    seq = await publish(rig.js, "many.150", b"x")
    await rig.recorder.wait_for("many.150", seq)


# ----------------------------------------------------------------- RoomFetcher


@pytest.fixture
async def filled(rig: Rig) -> dict[str, list[int]]:
    """Rooms `a` and `a.x` interleaved with `b`: room name -> stored sequences."""
    seqs: dict[str, list[int]] = {"a": [], "b": [], "a.x": []}
    for i in range(30):
        seqs["a"].append(await publish(rig.js, "a", b'{"a":%d}' % i))
        seqs["b"].append(await publish(rig.js, "b", b'{"b":%d}' % i))
        if i % 5 == 0:
            seqs["a.x"].append(await publish(rig.js, "a.x", b"%d" % i))
    return seqs


async def test_fetch_reads_one_room_in_batches(rig: Rig, filled: dict[str, list[int]]) -> None:
    a = filled["a"]
    batch = await rig.fetcher.fetch("a", 0, 10)
    assert [m.seq for m in batch.messages] == a[:10]
    assert [m.data for m in batch.messages] == [b'{"a":%d}' % i for i in range(10)]
    assert all(m.room == "a" and m.ts > 0 for m in batch.messages)
    assert batch.pending == 20
    batch = await rig.fetcher.fetch("a", a[9], 10)
    assert [m.seq for m in batch.messages] == a[10:20]
    assert batch.pending == 10
    # `after` need not be one of the room's sequences.
    batch = await rig.fetcher.fetch("a", a[24] + 1, 100)
    assert [m.seq for m in batch.messages] == a[25:]
    assert batch.pending == 0
    batch = await rig.fetcher.fetch("a", a[-1], 10)
    assert batch.messages == [] and batch.pending == 0


async def test_fetch_with_up_to(rig: Rig, filled: dict[str, list[int]]) -> None:
    a = filled["a"]
    batch = await rig.fetcher.fetch("a", 0, 10, up_to=a[4])
    assert [m.seq for m in batch.messages] == a[:5]
    assert batch.pending >= 0
    # up_to between two of the room's messages (another room's sequence).
    batch = await rig.fetcher.fetch("a", a[2], 100, up_to=a[7] + 1)
    assert [m.seq for m in batch.messages] == a[3:8]
    assert (await rig.fetcher.fetch("a", a[5], 10, up_to=a[5])).messages == []
    assert (await rig.fetcher.fetch("a", a[5], 10, up_to=a[3])).messages == []


async def test_fetch_all(rig: Rig, filled: dict[str, list[int]]) -> None:
    for room, seqs in filled.items():
        got = await rig.fetcher.fetch_all(room, 0)
        assert [m.seq for m in got] == seqs, room
        assert [m.seq for m in await rig.fetcher.fetch_all(room, 0, batch=7)] == seqs, room
    a = filled["a"]
    assert [m.seq for m in await rig.fetcher.fetch_all("a", a[4])] == a[5:]
    assert [m.seq for m in await rig.fetcher.fetch_all("a", a[4], up_to=a[14])] == a[5:15]
    assert [m.seq for m in await rig.fetcher.fetch_all("a", a[4], up_to=a[14], batch=3)] == a[5:15]
    assert [m.seq for m in await rig.fetcher.fetch_all("a", a[4], up_to=a[14] + 1, batch=4)] == a[5:15]
    assert await rig.fetcher.fetch_all("a", a[-1]) == []
    assert await rig.fetcher.fetch_all("nothing.here", 0) == []


async def test_head(rig: Rig, filled: dict[str, list[int]]) -> None:
    for room, seqs in filled.items():
        assert await rig.fetcher.head(room) == seqs[-1], room
    assert await rig.fetcher.head("empty") == 0
    assert await rig.fetcher.head("a.y") == 0
    newest = await publish(rig.js, "a", b"1")
    assert await rig.fetcher.head("a") == newest


async def test_concurrent_fetches_share_the_inbox(rig: Rig, filled: dict[str, list[int]]) -> None:
    subs_before = len(rig.nc._subs)
    results = await asyncio.gather(*(rig.fetcher.fetch_all(room, 0, batch=4) for room in ["a", "b", "a.x"] * 10))
    for room, got in zip(["a", "b", "a.x"] * 10, results, strict=True):
        assert [m.seq for m in got] == filled[room]
    assert len(rig.nc._subs) == subs_before


async def test_fetch_of_a_missing_stream_fails(nc: NATS) -> None:
    fetcher = RoomFetcher(nc, "NO_SUCH_STREAM", timeout=1.0)
    await fetcher.start()
    with pytest.raises(FetchError):
        await fetcher.fetch("a", 0, 10)
    with pytest.raises(FetchError):
        await fetcher.head("a")


async def test_watch_while_the_room_is_being_published_is_exact_from_the_head(rig: Rig) -> None:
    rooms = [f"busy.{i}" for i in range(6)]
    stored: dict[str, list[int]] = {room: [] for room in rooms}
    stop = asyncio.Event()

    async def publisher() -> None:
        i = 0
        while not stop.is_set():
            room = rooms[i % len(rooms)]
            acks = await asyncio.gather(*(rig.js.publish(f"rooms.{room}", b"%d" % i) for _ in range(3)))
            stored[room].extend(ack.seq for ack in acks)
            i += 1

    task = asyncio.create_task(publisher())
    heads: dict[str, int] = {}
    try:
        for room in rooms:
            await asyncio.sleep(0.01)
            heads[room] = await rig.feeds.watch(room)
        await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    for room in rooms:
        stored[room].append(await publish(rig.js, room, b'"last"'))
        await rig.recorder.wait_for(room, stored[room][-1])
    for room in rooms:
        assert rig.recorder.seqs(room) == sorted(s for s in stored[room] if s > heads[room]), room
