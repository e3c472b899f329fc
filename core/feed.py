"""Live feeds: per-room subscriptions to the stream's republished messages.

A node subscribes to `live.rooms.<room>` only while it has members in the room.
Each room keeps a cursor; a republished message whose `Nats-Last-Sequence`
is ahead of the cursor reveals a gap (core NATS is at most once), and the room
is repaired from the stream before anything newer is delivered. After a NATS
reconnect every active room is repaired the same way. The listener therefore
sees, per room, every stored message once, in order, from the cursor on.

Handlers run inside nats-py's reader (see core/inbox.py): the in-order path
does no I/O; a repair runs as a task, one per room being repaired.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from core.cursor import RoomCursor, Verdict
from core.fetch import FetchError, RoomFetcher
from core.inbox import subscribe_direct
from core.rooms import LIVE_SUBJECT_PREFIX, live_subject
from core.stored import LAST_SEQUENCE_HEADER, SEQUENCE_HEADER, StoredMessage, stored_message

log = logging.getLogger(__name__)

REPAIR_RETRY_MAX = 5.0
"""Longest pause, in seconds, between attempts to repair a room while NATS is unreachable."""


class FeedListener(Protocol):
    def deliver(self, room: str, messages: list[StoredMessage]) -> None:
        """Messages of `room`, in order, each exactly once."""

    def reset(self, room: str, epoch: str, seq: int) -> None:
        """Continuity for `room` was lost; go on from `seq` under `epoch`."""


class _RoomFeed:
    __slots__ = ("cursor", "ready", "repairing", "room", "sub", "suspect", "target")

    def __init__(self, room: str, ready: asyncio.Future[int]) -> None:
        self.room = room
        self.cursor = RoomCursor(0)
        self.sub: Subscription | None = None
        self.ready = ready
        self.repairing: asyncio.Task[None] | None = None
        # Highest sequence seen live while not delivering in order.
        self.target = 0
        # A head beyond the cursor seen by the last audit (0: none).
        self.suspect = 0


class LiveFeeds:
    """The node's live subscriptions, one per room with local members."""

    def __init__(self, nc: NATS, fetcher: RoomFetcher, listener: FeedListener) -> None:
        self._nc = nc
        self._fetcher = fetcher
        self._listener = listener
        self._rooms: dict[str, _RoomFeed] = {}
        self._unsubscribing: set[asyncio.Task[None]] = set()
        self.repairs = 0
        """Gap repairs started (a counter for tests and metrics)."""
        self.repaired_messages = 0
        self.drop_filter: Callable[[str, int], bool] | None = None
        """Test hook: return True to drop a live message as if core NATS lost it."""

    def __contains__(self, room: str) -> bool:
        return room in self._rooms

    def __len__(self) -> int:
        return len(self._rooms)

    def cursor(self, room: str) -> int:
        return self._rooms[room].cursor.seq

    async def watch(self, room: str) -> int:
        """Start the room's feed (or join one starting); returns the cursor once live."""
        feed = self._rooms.get(room)
        if feed is None:
            feed = _RoomFeed(room, asyncio.get_running_loop().create_future())
            self._rooms[room] = feed
            try:
                await self._start(feed)
            except BaseException as exc:
                if self._rooms.get(room) is feed:
                    self.unwatch(room)
                if not feed.ready.done():
                    feed.ready.set_exception(exc if isinstance(exc, Exception) else FetchError("cancelled"))
                    # Mark the exception retrieved: the awaiting joiners saw it.
                    feed.ready.exception()
                raise
        return await asyncio.shield(feed.ready)

    async def _start(self, feed: _RoomFeed) -> None:
        feed.sub = await subscribe_direct(self._nc, live_subject(feed.room), self._on_live)
        # The subscription must be in place before the head is read, so that
        # nothing stored after the head can be missed.
        await self._nc.flush(timeout=5)
        head = await self._fetcher.head(feed.room)
        feed.cursor.seq = head
        if feed.target > head and feed.repairing is None:
            self._start_repair(feed)
        feed.ready.set_result(head)

    def unwatch(self, room: str) -> None:
        """Stop the room's feed now; the unsubscribe goes out in the background."""
        feed = self._rooms.pop(room, None)
        if feed is None:
            return
        if feed.repairing is not None:
            feed.repairing.cancel()
        if feed.sub is not None and not self._nc.is_closed:
            task = asyncio.get_running_loop().create_task(self._unsubscribe(feed.sub))
            self._unsubscribing.add(task)
            task.add_done_callback(self._unsubscribing.discard)

    @staticmethod
    async def _unsubscribe(sub: Subscription) -> None:
        try:
            await sub.unsubscribe()
        except Exception as exc:  # closed or reconnecting: the interest dies with the connection
            log.debug("unsubscribe from %s failed: %s", sub.subject, exc)

    def _on_live(self, msg: Msg) -> None:
        room = msg.subject[len(LIVE_SUBJECT_PREFIX) :]
        feed = self._rooms.get(room)
        if feed is None:
            return
        headers = msg.headers or {}
        seq = int(headers.get(SEQUENCE_HEADER, 0))
        if self.drop_filter is not None and self.drop_filter(room, seq):
            return
        if not feed.ready.done() or feed.repairing is not None:
            feed.target = max(feed.target, seq)
            return
        verdict = feed.cursor.judge(seq, int(headers.get(LAST_SEQUENCE_HEADER, 0)))
        if verdict is Verdict.DELIVER:
            feed.cursor.seq = seq
            try:
                self._listener.deliver(room, [stored_message(room, seq, headers, msg.data)])
            except Exception:  # a listener bug must not stop nats-py's reader for every room
                log.exception("delivering seq %d of room %s failed", seq, room)
        elif verdict is Verdict.GAP:
            feed.target = seq
            self._start_repair(feed)

    def _start_repair(self, feed: _RoomFeed) -> None:
        self.repairs += 1
        feed.repairing = asyncio.get_running_loop().create_task(self._repair(feed))

    async def _repair(self, feed: _RoomFeed) -> None:
        """Deliver from the stream until the cursor reaches everything seen live."""
        pause = 0.1
        try:
            while True:
                try:
                    messages = await self._fetcher.fetch_all(feed.room, feed.cursor.seq)
                except FetchError as exc:
                    log.warning("repair of room %s failed, retrying: %s", feed.room, exc)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, REPAIR_RETRY_MAX)
                    continue
                if self._rooms.get(feed.room) is not feed:
                    return
                fresh = [m for m in messages if m.seq > feed.cursor.seq]
                if fresh:
                    feed.cursor.seq = fresh[-1].seq
                    self.repaired_messages += len(fresh)
                    self._listener.deliver(feed.room, fresh)
                if feed.cursor.seq >= feed.target:
                    return
                if not fresh:
                    # The replica that answered is behind what was seen live: give it a moment.
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, REPAIR_RETRY_MAX)
        finally:
            feed.repairing = None

    async def audit_loop(self, interval: float) -> None:
        """Every `interval` s, compare each room's stored head with its cursor.

        A gap is noticed when a later message arrives; the last message before a
        room goes quiet has no later one. A head that is still ahead of the
        cursor at the next audit (not merely in flight) starts a repair.
        """
        while True:
            await asyncio.sleep(interval)
            try:
                await self.audit_once()
            except FetchError as exc:
                log.debug("audit skipped: %s", exc)

    async def audit_once(self, chunk: int = 64) -> int:
        """One audit pass; the number of repairs it started."""
        rooms = [room for room, feed in self._rooms.items() if feed.ready.done() and feed.repairing is None]
        started = 0
        for i in range(0, len(rooms), chunk):
            heads = await self._fetcher.heads(rooms[i : i + chunk])
            for room in rooms[i : i + chunk]:
                feed = self._rooms.get(room)
                if feed is None or feed.repairing is not None or not feed.ready.done():
                    continue
                head = heads.get(room, 0)
                if head <= feed.cursor.seq:
                    feed.suspect = 0
                elif feed.suspect and feed.suspect <= head and feed.cursor.seq < feed.suspect:
                    feed.target = max(feed.target, head)
                    feed.suspect = 0
                    self._start_repair(feed)
                    started += 1
                else:
                    feed.suspect = head
        return started

    def repair_all(self) -> None:
        """After a reconnect: messages republished meanwhile were lost; fetch them."""
        for feed in self._rooms.values():
            if feed.ready.done() and feed.repairing is None:
                self._start_repair(feed)

    def rebase(self, room: str, seq: int) -> None:
        """Move a room's cursor (after the stream was recreated)."""
        feed = self._rooms.get(room)
        if feed is not None:
            feed.cursor.seq = seq
            feed.target = seq

    def rooms(self) -> list[str]:
        return list(self._rooms)
