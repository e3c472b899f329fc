"""The history cache (core/tailcache.py) against a real nats-server: what it answers is the stream's.

Every answer is compared with the room as the stream holds it, read by subject (the
reference core/history.py and the live feeds trust). The cache may decline (None: the
caller reads the stream), but only when something it does not hold could matter.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS

from core import tailcache
from core.embedded import EmbeddedNats
from core.fetch import RoomFetcher
from core.settings import load_settings
from core.stream import ensure_stream, epoch_of
from core.tailcache import TailCache

ROOMS = ["t.a", "t.b", "t.c", "t.d"]


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def fresh_stream(nc: NATS, per_room: int = -1) -> None:
    js = nc.jetstream()
    try:
        await js.delete_stream("ROOMS")
    except Exception:
        pass
    await ensure_stream(js, load_settings(environ={}, jwt_secret="x" * 32, max_msgs_per_room=per_room))


def state_of(nc: NATS) -> tailcache.StreamState:
    async def state() -> tuple[str, int, int]:
        info = await nc.jetstream().stream_info("ROOMS")
        return epoch_of(info), info.state.first_seq, info.state.last_seq

    return state


async def publish(nc: NATS, rooms: list[str]) -> int:
    """One message per entry, in order (async publishes); the last seq."""
    js = nc.jetstream()
    acks = [await js.publish_async(f"rooms.{room}", json.dumps({"i": i}).encode()) for i, room in enumerate(rooms)]
    last = 0
    for ack in acks:
        last = (await ack).seq
    return last


async def stored(fetcher: RoomFetcher, room: str) -> list[int]:
    return [m.seq for m in await fetcher.fetch_all(room, 0)]


class Following:
    """A TailCache whose follower runs for the duration of a block."""

    def __init__(self, cache: TailCache) -> None:
        self.cache = cache
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TailCache:
        self.task = asyncio.get_running_loop().create_task(self.cache.run())
        assert await self.cache.filled(timeout=5)
        return self.cache

    async def __aexit__(self, *exc: Any) -> None:
        assert self.task is not None
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


async def started(nc: NATS) -> RoomFetcher:
    fetcher = RoomFetcher(nc, "ROOMS")
    await fetcher.start()
    return fetcher


patterns = st.lists(st.sampled_from(ROOMS), max_size=120)


# No shrinking: a failing example can wait seconds on the real server, and shrinking would take
# minutes in CI; the example is printed as it failed.
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(
    before_start=patterns,
    after_start=patterns,
    capacity=st.integers(1, 260),
    max_bytes=st.sampled_from([0, 0, 200, 1000]),
    per_room=st.sampled_from([-1, 3, 20]),
    n=st.integers(1, 40),
    chunk=st.integers(1, 40),
    seed=st.integers(0, 1000),
)
async def test_every_answer_is_the_streams_and_it_declines_only_below_its_floor(
    nc: NATS,
    before_start: list[str],
    after_start: list[str],
    capacity: int,
    max_bytes: int,
    per_room: int,
    n: int,
    chunk: int,
    seed: int,
) -> None:
    """Messages stored before the follower starts and while it runs, over four rooms, with every
    capacity in messages and in bytes (evicting or not) and per-room limit: each page is the stream's exactly, `more`
    included, and the cache only declines when its floor hides older messages of the room."""
    await fresh_stream(nc, per_room)
    fetcher = await started(nc)
    last = await publish(nc, before_start)
    cache = TailCache(fetcher, state_of(nc), capacity, per_room, 0.0, max_bytes=max_bytes)
    async with Following(cache):
        for i in range(0, len(after_start), chunk):
            # In steps the follower reads one by one, so that it holds what the stream later discards.
            last = await publish(nc, after_start[i : i + chunk])
            assert await cache.reach(last, timeout=5)
        assert await cache.reach(last, timeout=5)
        rnd = random.Random(seed)
        declined = 0
        for room in ROOMS:
            seqs = await stored(fetcher, room)
            for before in {last + 1, *(rnd.randint(1, last + 1) for _ in range(3)), *(seqs[-3:] if seqs else [])}:
                older = [s for s in seqs if s < before]
                got = await cache.newest(room, n, before)
                if got is None:
                    declined += 1
                    assert cache.floor > 0 and len([s for s in older if s >= cache.floor]) < n, (room, before)
                    continue
                assert [m.seq for m in got.messages] == older[-n:], (room, before)
                assert got.more == (len(older) > n), (room, before)
                assert all(m.room == room for m in got.messages)
        assert len(cache) <= capacity and (not max_bytes or cache.held_bytes <= max_bytes)
    if capacity >= len(before_start) + len(after_start) and not max_bytes:
        assert cache.floor == 0 and declined == 0


async def test_pages_are_cut_by_bytes_to_their_newest(nats_server: EmbeddedNats, nc: NATS) -> None:
    await fresh_stream(nc)
    fetcher = await started(nc)
    js = nc.jetstream()
    for i in range(10):
        await js.publish("rooms.t.big", json.dumps({"i": i, "pad": "x" * 1000}).encode())
    cache = TailCache(fetcher, state_of(nc), 100, -1, 0.0)
    async with Following(cache):
        assert await cache.reach(10, timeout=5)
        got = await cache.newest("t.big", 10, 11, budget=3600)
        assert got is not None and [m.seq for m in got.messages] == [8, 9, 10] and got.more
        one = await cache.newest("t.big", 10, 11, budget=10)
        assert one is not None and [m.seq for m in one.messages] == [10] and one.more, "always one message"


async def test_messages_older_than_max_age_are_gone(nc: NATS) -> None:
    """The cache drops what the stream's max_age expires, by the messages' stored time."""
    await fresh_stream(nc)
    fetcher = await started(nc)
    await publish(nc, ["t.a"] * 5)
    await asyncio.sleep(0.05)
    await publish(nc, ["t.a"] * 3)
    newer = (await fetcher.fetch_all("t.a", 5))[0].ts
    now = [0.0]
    cache = TailCache(fetcher, state_of(nc), 100, -1, 10.0, clock=lambda: now[0])
    async with Following(cache):
        assert await cache.reach(8, timeout=5)
        now[0] = (newer + 10_000 - 1) / 1000
        got = await cache.newest("t.a", 50, 9)
        assert got is not None and [m.seq for m in got.messages] == [6, 7, 8] and not got.more
        now[0] = (newer + 20_000) / 1000
        gone = await cache.newest("t.a", 50, 9)
        assert gone is not None and (gone.messages, gone.more) == ([], False)


async def test_reach_waits_for_the_follower_and_gives_up_on_what_is_not_stored(nc: NATS) -> None:
    await fresh_stream(nc)
    fetcher = await started(nc)
    cache = TailCache(fetcher, state_of(nc), 100, -1, 0.0)
    async with Following(cache):
        assert await cache.reach(0, timeout=5)
        last = await publish(nc, ["t.a", "t.b"])
        # Woken by the read that needs it, not left to its idle poll.
        assert await cache.reach(last, timeout=tailcache.IDLE_POLL / 2)
        assert not await cache.reach(last + 5, timeout=0.3)


async def test_it_follows_only_once_wanted_and_stops_when_no_read_comes(
    nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a read before the first answer is asked for (that one goes to the stream: nothing to wait
    for while it fills); then filled and answering; IDLE_STOP without a read empties it."""
    monkeypatch.setattr(tailcache, "IDLE_STOP", 0.5)
    await fresh_stream(nc)
    fetcher = await started(nc)
    last = await publish(nc, ["t.a"] * 5)
    cache = TailCache(fetcher, state_of(nc), 100, -1, 0.0)
    task = asyncio.get_running_loop().create_task(cache.run())
    try:
        await asyncio.sleep(0.3)
        assert (cache.position, len(cache)) == (-1, 0), "nothing read before a read wants it"
        assert await cache.answer("t.a", 10, last + 1, last) is None, "the first read goes to the stream"
        assert cache.misses == 1
        assert await cache.filled(timeout=5) and len(cache) == 5
        got = await cache.answer("t.a", 10, last + 1, last)
        assert got is not None and [m.seq for m in got.messages] == [1, 2, 3, 4, 5] and cache.hits == 1
        async with asyncio.timeout(5):
            while cache.position >= 0:
                await asyncio.sleep(0.05)
        assert len(cache) == 0 and not cache.caught_up
    finally:
        task.cancel()


async def test_a_recreated_stream_refills_the_cache(nc: NATS, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deleted and created again under the follower: nothing of the old stream is served."""
    monkeypatch.setattr(tailcache, "CHECK_EVERY", 0.1)
    await fresh_stream(nc)
    fetcher = await started(nc)
    await publish(nc, ["t.a"] * 20)
    cache = TailCache(fetcher, state_of(nc), 100, -1, 0.0)
    async with Following(cache):
        assert await cache.reach(20, timeout=5)
        await fresh_stream(nc)
        await publish(nc, ["t.a"] * 3)
        async with asyncio.timeout(5):
            while len(cache) != 3:
                await asyncio.sleep(0.05)
        got = await cache.newest("t.a", 50, 4)
        assert got is not None and [m.seq for m in got.messages] == [1, 2, 3] and not got.more
