"""The stream's newest messages, held in the node's memory by room: history without scans.

Why: nats-server's file store finds a room's messages by scanning the stream's messages
between them (core/history.py, and the cost table of bench/history_scenario.py): ~10 ms of
its CPU per page of 50 on a 1,000,000-message stream over 10,000 rooms, which caps pages
near 140/s on two cores. Reading the stream in seq order costs it ~5 us a message. So every
node follows the stream's tail in seq order (batched direct gets over every subject, no
consumer) and keeps its newest `history_cache_messages` messages (and at most
`history_cache_bytes` of their payloads), by room. A history page then costs nats-server
one direct get (the room's head, which it jumps to), and a join with `last` none beyond the
join's own.

The follower starts at the node's first read (a page or a join with `last`; those go to the
stream until it has filled) and stops after IDLE_STOP without one, so a node that serves no
history reads nothing more than before.

What the cache holds is exact: every message the stream stored with seq in [floor,
position] (`floor` is 0 when nothing below the position was ever left out), less what the
stream's own limits removed since, which it mirrors: `max_msgs_per_room` as it ingests
(the stream keeps a room's newest, and so does each room's deque here) and `max_age` at
read (a message older than it is treated as gone). A read answers from that range only
when it can prove its answer is the stream's:
- the position has reached what the read needs (a page: the room's head or `before - 1`,
  whichever is lower; a join: its cursor). Otherwise the follower is woken and the read
  waits for it a moment (`REACH_WAIT`), then falls back;
- the cached messages fill the answer, or the room has nothing older than the floor (no
  floor, or one direct get of the room's first message, which nats-server also jumps to).
When either fails, core/history.py reads from the stream as before (`None` here).

Not mirrored, so served until evicted: messages deleted by hand (`nats stream rmm`, a purge).
A stream recreated under the node (a new epoch, or a head below the position) resets the
cache. Cost, measured by the bench's `history` scenario: a node serving history reads every
message stored once more, ~19 us of a worker's CPU each (mostly nats-py's parse of each reply
message), and holds ~400 bytes of memory per 100-byte message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from itertools import islice

from core.fetch import FetchError, RoomFetcher
from core.history import ENVELOPE_BYTES
from core.stored import StoredMessage

log = logging.getLogger(__name__)

READ_BATCH = 256
"""Messages per read of the tail (one batched direct get)."""
READ_BYTES = 256 * 1024
"""Bytes per read of the tail, at most (a batch stops there)."""
IDLE_POLL = 0.25
"""Seconds between reads once the tail is reached; a read that needs more wakes the follower."""
CHECK_EVERY = 1.0
"""Seconds between checks (while idle) that the stream is still the one being followed."""
RETRY_MAX = 5.0
IDLE_STOP = 600.0
"""Seconds without a history read after which the follower stops and the cache is emptied: a node
that serves no history pays nothing for it."""
REACH_WAIT = 1.0
"""Seconds a read waits for the follower to reach what it needs before reading the stream instead."""

StreamState = Callable[[], Awaitable[tuple[str, int, int]]]
"""() -> (epoch, first seq, last seq) of the stream."""


def _seq(message: StoredMessage) -> int:
    return message.seq


@dataclass(frozen=True, slots=True)
class Newest:
    """A room's newest messages before a bound, as the cache proved them."""

    messages: list[StoredMessage]
    """In increasing seq."""
    more: bool
    """Older stored messages exist."""


class TailCache:
    """The newest messages of the stream, by room; `run()` follows the tail."""

    def __init__(
        self,
        fetcher: RoomFetcher,
        stream_state: StreamState,
        capacity: int,
        per_room: int,
        max_age: float,
        clock: Callable[[], float] = time.time,
        max_bytes: int = 0,
    ) -> None:
        self._fetcher = fetcher
        self._stream_state = stream_state
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._bytes = 0
        """Payload bytes of the messages in `_order`."""
        self._per_room = per_room
        self._max_age_ms = int(max_age * 1000)
        self._clock = clock
        self._rooms: dict[str, deque[StoredMessage]] = {}
        self._order: deque[StoredMessage] = deque()
        """Every message ingested and not evicted, in seq order (some already dropped from their
        room by max_msgs_per_room: eviction then finds them gone)."""
        self.position = -1
        """Every stored message with seq in [floor, position] is held; -1 before the first read."""
        self.floor = 0
        self.epoch = ""
        self._wake = asyncio.Event()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.hits = 0
        """Reads answered from the cache (pages and `last` windows)."""
        self.misses = 0
        """Reads that fell back to the stream."""
        self.caught_up = False
        """The follower has reached the stream's tail since it (re)started: a read may wait for it."""
        self._wanted = asyncio.Event()
        self._last_use = 0.0
        self._generation = 0
        """Counts resets, so that a read begun before one is not ingested after it."""

    # --- following the tail ------------------------------------------------

    def want(self) -> None:
        """A read needs the cache: start following (or go on) until IDLE_STOP passes without one."""
        self._last_use = time.monotonic()
        self._wanted.set()

    async def run(self) -> None:
        pause = 0.1
        checked = 0.0
        while True:
            await self._wanted.wait()
            try:
                if self.position < 0:
                    await self._start()
                    checked = time.monotonic()
                generation = self._generation
                got = await self._fetcher.request(
                    {"seq": self.position + 1, "batch": READ_BATCH, "max_bytes": READ_BYTES}
                )
                pause = 0.1
            except FetchError as exc:
                log.warning("reading the stream's tail failed, retrying: %s", exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX)
                continue
            if generation != self._generation:
                continue  # reset meanwhile (a new stream): what was read belongs to the old one
            self.ingest(got.messages)
            if got.messages and got.pending > 0:
                continue
            self.caught_up = True
            if time.monotonic() - self._last_use >= IDLE_STOP:
                log.info("no history read for %.0f s: the history cache stops following the stream", IDLE_STOP)
                self.reset("", -1, 0)
                self._wanted.clear()
                continue
            if time.monotonic() - checked >= CHECK_EVERY:
                checked = time.monotonic()
                await self._check()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), IDLE_POLL)
            except TimeoutError:
                pass

    async def _start(self) -> None:
        epoch, first, last = await self._stream_state()
        start = max(first, last - self._capacity + 1, 1)
        self.reset(epoch, start - 1, 0 if start <= max(first, 1) else start)

    async def _check(self) -> None:
        try:
            epoch, _, last = await self._stream_state()
        except Exception as exc:  # unreachable for now: the next read says so
            log.debug("stream state unavailable: %s", exc)
            return
        if epoch != self.epoch or last < self.position:
            log.warning("the stream changed under the history cache (epoch %s -> %s); refilling", self.epoch, epoch)
            self.reset(epoch, -1, 0)

    def reset(self, epoch: str, position: int, floor: int) -> None:
        """Empty, holding everything stored in [floor, position] (position -1: to be filled)."""
        self._rooms.clear()
        self._order.clear()
        self._bytes = 0
        self.epoch, self.position, self.floor = epoch, position, floor
        self.caught_up = False
        self._generation += 1

    def ingest(self, messages: Iterable[StoredMessage]) -> None:
        """Messages read from the tail, in seq order, all past the position."""
        rooms, order, per_room = self._rooms, self._order, self._per_room
        for message in messages:
            if message.seq <= self.position:
                continue
            self.position = message.seq
            if not message.room:
                continue
            held = rooms.get(message.room)
            if held is None:
                held = rooms[message.room] = deque()
            held.append(message)
            order.append(message)
            self._bytes += len(message.data)
            if 0 < per_room < len(held):
                held.popleft()
        max_bytes = self._max_bytes
        while len(order) > self._capacity or (max_bytes and self._bytes > max_bytes and order):
            old = order.popleft()
            self._bytes -= len(old.data)
            held = rooms.get(old.room)
            if held and held[0] is old:
                held.popleft()
                if not held:
                    del rooms[old.room]
            self.floor = old.seq + 1
        self._release()

    def _release(self) -> None:
        """Wake the reads waiting for a position now reached."""
        waiters, self._waiters = self._waiters, []
        for seq, future in waiters:
            if future.done():
                continue  # its read gave up waiting (and went to the stream)
            if seq <= self.position:
                future.set_result(None)
            else:
                self._waiters.append((seq, future))

    async def reach(self, seq: int, timeout: float = REACH_WAIT) -> bool:
        """Whether the cache holds everything stored up to `seq`, waiting up to `timeout` for it
        (not while it fills: the read goes to the stream at once instead)."""
        if 0 <= seq <= self.position:
            return True
        if not self.caught_up:
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, future))
        self._wake.set()
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        return seq <= self.position

    # --- reading -----------------------------------------------------------

    async def answer(self, room: str, n: int, before: int, needs: int, budget: int = 0) -> Newest | None:
        """`newest`, once the cache holds everything stored up to `needs` (the room's head, or
        `before - 1` when lower); None, counted, when it cannot answer."""
        self.want()
        got = await self.newest(room, n, before, budget) if await self.reach(needs) else None
        if got is None:
            self.misses += 1
        else:
            self.hits += 1
        return got

    async def newest(self, room: str, n: int, before: int, budget: int = 0) -> Newest | None:
        """The room's newest `n` messages with seq < `before` (at most about `budget` bytes of them,
        the newest kept, always one: 0 no bound; `n` >= 1), or None when the cache cannot prove them.
        The caller has made sure (`reach`) that the position is at least min(before - 1, head)."""
        generation = self._generation
        picked, cut, older = self._pick(room, n, before, budget)
        if cut or older:
            return Newest(picked, True)
        if self.floor > 0:
            # The room may hold older messages below the floor: its first one says.
            try:
                got = await self._fetcher.fetch(room, 0, 1)
            except FetchError:
                return None
            first = got.messages[0].seq if got.messages else None
            below = first is not None and first < self.floor
            if self._generation != generation or (below and len(picked) < n):
                return None
            return Newest(picked, below)
        return Newest(picked, False)

    def _pick(self, room: str, n: int, before: int, budget: int) -> tuple[list[StoredMessage], bool, bool]:
        """(the newest `n` cached before `before` within `budget`, cut by bytes, an older one cached)."""
        held = self._rooms.get(room)
        if not held:
            return [], False, False
        oldest_ts = int(self._clock() * 1000) - self._max_age_ms if self._max_age_ms > 0 else None
        picked: list[StoredMessage] = []
        size = 0
        # Those at or after `before` skipped in C: a page deep in a big room costs its own size.
        newer = len(held) - bisect_left(held, before, key=_seq)
        for message in islice(reversed(held), newer, None):
            if oldest_ts is not None and message.ts < oldest_ts:
                break
            if len(picked) == n:
                return picked[::-1], False, True
            add = len(message.data) + ENVELOPE_BYTES
            if budget and picked and size + add > budget:
                return picked[::-1], True, False
            picked.append(message)
            size += add
        return picked[::-1], False, False

    async def filled(self, timeout: float) -> bool:
        """Wanted, and until the follower has reached the tail (tests, the bench): False at `timeout`."""
        self.want()
        deadline = time.monotonic() + timeout
        while not self.caught_up:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    @property
    def held_bytes(self) -> int:
        """Payload bytes held (what `history_cache_bytes` bounds)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._order)
