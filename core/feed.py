"""Live feeds: per-room subscriptions to the stream's republished messages.

A node subscribes to `live.rooms.<room>` only while it has members in the room.
Each room keeps a cursor; a republished message whose `Nats-Last-Sequence`
is ahead of the cursor reveals a gap (core NATS is at most once), and the room
is repaired from the stream before anything newer is delivered. After a NATS
reconnect every active room is repaired the same way. The listener therefore
sees, per room, every stored message once, in order, from the cursor on.

Nothing that arrives on `live.rooms.>` is trusted further than it can be
checked cheaply (a NATS without permissions lets anyone publish there):

- headers are parsed defensively; a message whose sequence does not parse is
  dropped and counted (`malformed`), and nothing a handler does can raise into
  nats-py's reader (core/inbox.py);
- a sequence past `ceiling` (far beyond anything the node has seen stored) is
  a jump the stream has not confirmed: the room is read from the stream
  instead (which delivers the message if it is real), so only stored messages
  are delivered and a forged sequence cannot move the cursor (`unconfirmed`);
- a repair never chases a sequence the stream does not hold: once the room's
  stored head stays at or below the cursor, the target is dropped;
- a cursor found ahead of the room's stored head at two audits in a row (it
  was moved by a message the stream never stored) is rebased onto the head.

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
from core.position import Position
from core.rooms import LIVE_SUBJECT_PREFIX, live_subject
from core.stored import LAST_SEQUENCE_HEADER, SEQUENCE_HEADER, StoredMessage, parse_sequence, stored_message

log = logging.getLogger(__name__)

REPAIR_RETRY_MAX = 5.0
"""Longest pause, in seconds, between attempts to repair a room while NATS is unreachable."""
REPAIR_CONFIRMATIONS = 5
"""Reads in a row that find nothing past the cursor before a repair drops its target: a
replica may lag for a moment, a sequence the stream never stored stays missing."""
JUMP_SLACK = 1_000_000
"""How far past the highest sequence known to be stored a live message may be and still be
delivered as it comes. The known sequence rises with every message, PubAck and read the node
sees; a real message past the ceiling (the stream stored a million elsewhere meanwhile) costs
one read of its room from the stream, which delivers it."""


class FeedListener(Protocol):
    def deliver(self, room: str, messages: list[StoredMessage]) -> None:
        """Messages of `room`, in order, each exactly once."""

    def reset(self, room: str, position: Position) -> None:
        """Continuity for `room` was lost; go on after `position` (a new epoch)."""


class _RoomFeed:
    __slots__ = ("behind", "cursor", "ready", "repairing", "room", "sub", "suspect", "target")

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
        # The cursor the last audit found ahead of the room's stored head (0: none).
        self.behind = 0


class LiveFeeds:
    """The node's live subscriptions, one per room with local members."""

    def __init__(self, nc: NATS, fetcher: RoomFetcher, listener: FeedListener) -> None:
        self._nc = nc
        self._fetcher = fetcher
        self._listener = listener
        self._rooms: dict[str, _RoomFeed] = {}
        self._unsubscribing: set[asyncio.Task[None]] = set()
        """Background tasks (feed starts, unsubscribes), held so they are not collected."""
        self.known_stored = 0
        """The highest sequence this node knows the stream has stored (PubAcks, reads, deliveries)."""
        self.repairs = 0
        """Gap repairs started (a counter for tests and metrics)."""
        self.repaired_messages = 0
        self.malformed = 0
        """Live messages dropped because their sequence headers did not parse."""
        self.unconfirmed = 0
        """Live messages whose sequence was a jump the stream had not confirmed: not delivered as they
        came, the room was read from the stream instead (a real one is delivered from there)."""
        self.rebases = 0
        """Cursors moved back onto the stored head (they had been moved by something never stored)."""
        self.drop_filter: Callable[[str, int], bool] | None = None
        """Test hook: return True to drop a live message as if core NATS lost it."""

    def __contains__(self, room: str) -> bool:
        return room in self._rooms

    def __len__(self) -> int:
        return len(self._rooms)

    def cursor(self, room: str) -> int:
        return self._rooms[room].cursor.seq

    def note_stored(self, seq: int) -> None:
        """The stream is known to have stored `seq` (a PubAck, its state): raises the ceiling."""
        if seq > self.known_stored:
            self.known_stored = seq

    @property
    def ceiling(self) -> int:
        return self.known_stored + JUMP_SLACK

    async def watch(self, room: str) -> int:
        """Start the room's feed (or join one starting); returns the cursor once live.

        The start runs in a task of its own: a joiner that is cancelled (its
        connection closed) stops waiting, and the start goes on for the others.
        """
        feed = self._rooms.get(room)
        if feed is None:
            feed = _RoomFeed(room, asyncio.get_running_loop().create_future())
            self._rooms[room] = feed
            starting = asyncio.get_running_loop().create_task(self._start_or_fail(feed))
            self._unsubscribing.add(starting)
            starting.add_done_callback(self._unsubscribing.discard)
        return await asyncio.shield(feed.ready)

    async def _start_or_fail(self, feed: _RoomFeed) -> None:
        try:
            await self._start(feed)
        except BaseException as exc:
            if self._rooms.get(feed.room) is feed:
                self.unwatch(feed.room)
            if not feed.ready.done():
                feed.ready.set_exception(exc if isinstance(exc, Exception) else FetchError("cancelled"))
                # Retrieved here: the joiners awaiting it see it; none may be left.
                feed.ready.exception()
            if not isinstance(exc, Exception):
                raise

    async def _start(self, feed: _RoomFeed) -> None:
        feed.sub = await subscribe_direct(self._nc, live_subject(feed.room), self._on_live)
        # The subscription must be in place before the head is read, so that
        # nothing stored after the head can be missed.
        await self._nc.flush(timeout=5)
        head = await self._fetcher.head(feed.room)
        self.note_stored(head)
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
        seq = parse_sequence(headers.get(SEQUENCE_HEADER))
        last_text = headers.get(LAST_SEQUENCE_HEADER)
        last = 0 if last_text is None else parse_sequence(last_text)
        if seq is None or last is None:
            self.malformed += 1
            return
        if self.drop_filter is not None and self.drop_filter(room, seq):
            return
        ceiling = self.ceiling
        if not feed.ready.done() or feed.repairing is not None:
            # Remembered as something to reach, unless it is a jump nobody confirmed.
            if seq <= ceiling:
                feed.target = max(feed.target, seq)
            return
        verdict = feed.cursor.judge(seq, last, ceiling)
        if verdict is Verdict.DELIVER:
            feed.cursor.seq = seq
            self.note_stored(seq)
            try:
                self._listener.deliver(room, [stored_message(room, seq, headers, msg.data)])
            except Exception:  # a listener bug must not stop nats-py's reader for every room
                log.exception("delivering seq %d of room %s failed", seq, room)
        elif verdict is Verdict.GAP:
            feed.target = seq
            self._start_repair(feed)
        elif verdict is Verdict.UNCONFIRMED:
            self.unconfirmed += 1
            # Whatever the room really holds past the cursor is read from the stream, once:
            # the jump's own sequence is no target to wait for.
            feed.target = feed.cursor.seq
            self._start_repair(feed)

    def _start_repair(self, feed: _RoomFeed) -> None:
        self.repairs += 1
        feed.repairing = asyncio.get_running_loop().create_task(self._repair(feed))

    async def _repair(self, feed: _RoomFeed) -> None:
        """Deliver from the stream until the cursor reaches everything seen live that the stream holds.

        A read that finds the stream holding nothing past the cursor (after
        delivering what it found, or not) confirms that what was seen live and
        is still missing may not exist: REPAIR_CONFIRMATIONS of them give the
        target up, so a forged sequence costs a few reads, and a busy room goes
        back to live delivery at once. Waiting (for a lagging replica, or an
        unreachable NATS) grows between reads that find nothing, and starts
        over after one that does."""
        pause = 0.1
        confirmations = 0
        try:
            while True:
                try:
                    messages = await self._fetcher.fetch_all(feed.room, feed.cursor.seq)
                    head = await self._fetcher.head(feed.room)
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
                    self.note_stored(feed.cursor.seq)
                    self.repaired_messages += len(fresh)
                    self._listener.deliver(feed.room, fresh)
                if feed.cursor.seq >= feed.target:
                    return
                if head <= feed.cursor.seq:
                    confirmations += 1
                    if confirmations >= REPAIR_CONFIRMATIONS:
                        # What was seen live is not in the stream: it was never stored.
                        log.warning(
                            "room %s: sequence %d seen live is not in the stream; dropped", feed.room, feed.target
                        )
                        feed.target = feed.cursor.seq
                        return
                if fresh:
                    pause = 0.1
                    continue
                # The replica that answered may be behind what was seen live: give it a moment.
                await asyncio.sleep(pause)
                pause = min(pause * 2, REPAIR_RETRY_MAX)
        finally:
            feed.repairing = None

    async def audit_once(self, chunk: int = 64) -> int:
        """Compare each room's stored head with its cursor; the number of repairs started.

        The broker runs this every `audit_interval` s. A gap is noticed when a
        later message arrives; the last message before a room goes quiet has no
        later one. A head that is still ahead of the cursor at the next audit
        (not merely in flight) starts a repair; a head behind the cursor twice
        rebases the cursor.
        """
        rooms = [room for room, feed in self._rooms.items() if feed.ready.done() and feed.repairing is None]
        started = 0
        for i in range(0, len(rooms), chunk):
            heads = await self._fetcher.heads(rooms[i : i + chunk])
            for room in rooms[i : i + chunk]:
                feed = self._rooms.get(room)
                if feed is None or feed.repairing is not None or not feed.ready.done():
                    continue
                head = heads.get(room, 0)
                self.note_stored(head)
                cursor = feed.cursor.seq
                if head < cursor:
                    feed.suspect = 0
                    if feed.behind == cursor:
                        # Twice, with nothing delivered in between: not a lagging replica.
                        log.warning("room %s: cursor %d is ahead of the stream's head %d; rebased", room, cursor, head)
                        self.rebases += 1
                        feed.cursor.seq = feed.target = head
                        feed.behind = 0
                    else:
                        feed.behind = cursor
                    continue
                feed.behind = 0
                if head == cursor:
                    feed.suspect = 0
                elif feed.suspect and feed.suspect <= head and cursor < feed.suspect:
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
