"""The broker: one NATS connection serving publish, head, replay and live feeds.

Everything an edge node needs from JetStream goes through here, so `edge/`
never imports nats: the node asks the broker to watch and unwatch rooms (the
live feeds deliver to the listener it was given), to publish, and to replay.
Room names are validated by the caller (core.rooms).

The broker also says whether NATS answers (`ready`): a probe pings the
server whenever nothing else has answered for a second, and any request that
times out marks it silent until the next answer (core.health).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError

from core.feed import FeedListener, LiveFeeds
from core.fetch import Batch, FetchError, RoomFetcher
from core.health import PROBE_INTERVAL, BrokerHealth
from core.history import ENVELOPE_BYTES, HistoryReader, Page
from core.natsconn import PlainTextRefused, StrictTlsClient, connect_options
from core.position import Position
from core.rooms import room_subject
from core.settings import Settings
from core.stored import FROM_HEADER, ID_HEADER, MSG_ID_HEADER, StoredMessage
from core.stream import ensure_stream, epoch_of
from core.tailcache import TailCache

log = logging.getLogger(__name__)

REPLAY_BATCH = 256
LAG_RETRIES = 5
LAG_PAUSE = 0.05
"""Seconds (times the attempt) before asking the stream again when a replica seems behind."""


class ReplaySlots:
    """At most `limit` replay reads in flight on a node; the rest wait their turn.

    A reconnect storm turns into many joins with `since` at once; bounding
    their reads keeps NATS and the event loop free for live traffic and repairs
    (which do not take a slot).
    """

    def __init__(self, limit: int) -> None:
        self._semaphore = asyncio.Semaphore(max(1, limit))
        self.in_flight = 0
        self.peak = 0

    async def fetch(
        self, fetcher: RoomFetcher, room: str, after: int, batch: int, up_to: int | None, max_bytes: int = 0
    ) -> Batch:
        async with self._semaphore:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                return await fetcher.fetch(room, after, batch, up_to, max_bytes)
            finally:
                self.in_flight -= 1


class Unavailable(Exception):
    """NATS or the stream cannot serve the request now; the client may retry."""


class PublishUncertain(Unavailable):
    """A publish was sent but not acknowledged (a timeout, a disconnect): it may have been
    stored, so a retry must carry the same id to be stored once."""


class PublishResult:
    __slots__ = ("duplicate", "seq")

    def __init__(self, seq: int, duplicate: bool) -> None:
        self.seq = seq
        self.duplicate = duplicate


class Replay:
    """The outcome of a join with `since`: whether it is recoverable, and its messages in batches.

    The first batch is read before `joined` is sent (it decides `recovered`);
    `batches()` yields it and then reads the rest one batch at a time, so a
    long replay is never held in memory whole and the caller can wait for the
    client between batches.
    """

    __slots__ = ("_after", "_fetcher", "_first", "_max_bytes", "_room", "_slots", "_upper", "count", "recovered")

    def __init__(
        self,
        recovered: bool,
        first: list[StoredMessage] | None = None,
        after: int = 0,
        room: str = "",
        upper: int = 0,
        fetcher: RoomFetcher | None = None,
        slots: ReplaySlots | None = None,
        max_bytes: int = 0,
    ) -> None:
        self.recovered = recovered
        self.count = 0
        """How many messages the replay holds, (after, upper]: `joined.replayed`."""
        self._first = first or []
        self._after = after
        self._room = room
        self._upper = upper
        self._fetcher = fetcher
        self._slots = slots
        self._max_bytes = max_bytes

    @property
    def after(self) -> int:
        """The replay sends the messages after this seq (up to its upper bound)."""
        return self._after

    @classmethod
    def held(cls, messages: list[StoredMessage], upper: int, max_bytes: int) -> Replay:
        """A replay of messages already in memory (the history cache's): sent in batches bounded
        like those read from the stream, so the client paces it the same way."""
        after = messages[0].seq - 1 if messages else upper
        replay = cls(True, messages, after, upper=upper, max_bytes=max_bytes)
        replay.count = len(messages)
        return replay

    async def batches(self) -> AsyncIterator[list[StoredMessage]]:
        """Every message in (since, upper]; `upper` is a room message's seq (the
        node's cursor), so a complete replay ends exactly on it. Direct gets are
        answered by any replica, and one may lag: a short read is retried."""
        if self._fetcher is None:
            for chunk in _chunks(self._first, REPLAY_BATCH, self._max_bytes):
                yield chunk
            return
        batch, last, lagging = self._first, self._after, 0
        while True:
            if batch:
                yield batch
                last, lagging = batch[-1].seq, 0
            if last >= self._upper or self._fetcher is None or self._slots is None:
                return
            if not batch:
                lagging += 1
                if lagging > LAG_RETRIES:
                    raise Unavailable("the stream replica answering is behind; retry")
                await asyncio.sleep(LAG_PAUSE * lagging)
            try:
                got = await self._slots.fetch(
                    self._fetcher, self._room, last, REPLAY_BATCH, self._upper, self._max_bytes
                )
            except FetchError as exc:
                raise Unavailable(str(exc)) from None
            batch = got.messages


def _chunks(messages: list[StoredMessage], count: int, max_bytes: int) -> Iterator[list[StoredMessage]]:
    """`messages` in runs of at most `count` and about `max_bytes` (at least one each; 0: no bound)."""
    start, size = 0, 0
    for i, message in enumerate(messages):
        add = len(message.data) + ENVELOPE_BYTES
        if i > start and (i - start >= count or (max_bytes and size + add > max_bytes)):
            yield messages[start:i]
            start, size = i, 0
        size += add
    if start < len(messages):
        yield messages[start:]


def redacted(url: str) -> str:
    """A NATS URL without its user:password part, fit for logs and errors."""
    scheme, sep, rest = url.partition("://")
    return scheme + sep + rest.rpartition("@")[2] if sep else url.rpartition("@")[2]


def scoped_msg_id(sub: str, room: str, key: str) -> str:
    """Nats-Msg-Id for a client's idempotency key.

    JetStream deduplicates across the whole stream, so the key is scoped by the
    publisher (two users' ids never collide) and by the room (an ack's seq is
    always a message of the room that was published to).
    """
    return f"{sub}:{room}:{key}"


class Broker:
    def __init__(self, settings: Settings, listener: FeedListener) -> None:
        self.settings = settings
        self._listener = listener
        self.nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._fetcher: RoomFetcher | None = None
        self._feeds: LiveFeeds | None = None
        self.reconnects = 0
        """NATS reconnections since start (a counter for metrics)."""
        self.epoch = ""
        self._closing = False
        self.replay_slots = ReplaySlots(settings.max_concurrent_replays)
        self._history: HistoryReader | None = None
        self.tail: TailCache | None = None
        """The stream's newest messages in memory (None when `history_cache_messages` is 0)."""
        self.reconnect_listeners: list[Callable[[], None]] = []
        """Called after every NATS reconnect (presence resyncs then)."""
        self.health = BrokerHealth(settings.nats_unready_after)
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle --------------------------------------------------------

    async def connect(self, servers: list[str], name: str) -> None:
        client = StrictTlsClient()
        client.on_pong = self.health.answered
        self.nc = client
        settings = self.settings
        try:
            # nats-py can wait forever after a failed TLS handshake: bound the first connect.
            await asyncio.wait_for(
                client.connect(
                    servers,
                    name=name,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,  # type: ignore[arg-type]  # typed int, takes seconds as float
                    ping_interval=settings.nats_ping_interval,  # type: ignore[arg-type]  # seconds as float
                    max_outstanding_pings=settings.nats_max_outstanding_pings,
                    reconnected_cb=self._on_reconnected,
                    disconnected_cb=self._on_disconnected,
                    error_cb=self._on_error,
                    # Nothing this connection publishes is for itself (presence ignores its own, a
                    # stream post for a local session never crosses NATS): the server need not echo it.
                    no_echo=True,
                    **connect_options(settings),
                ),
                settings.nats_connect_timeout,
            )
        except (TimeoutError, PlainTextRefused) as exc:
            await client.close()
            if client.refused_plain_text:
                raise Unavailable(
                    "a tls:// NATS URL points at a server that does not require TLS; refusing plain text"
                ) from None
            where = ", ".join(map(redacted, servers))
            raise Unavailable(
                f"could not connect to NATS at {where} within {settings.nats_connect_timeout:g} s"
            ) from exc
        self.health.answered()
        self._js = self.nc.jetstream(timeout=settings.nats_request_timeout)
        info = await ensure_stream(self._js, settings)
        self.epoch = epoch_of(info)
        self._fetcher = RoomFetcher(self.nc, settings.stream, settings.nats_request_timeout, self.health)
        await self._fetcher.start()
        self._feeds = LiveFeeds(self.nc, self._fetcher, self._listener)
        self._feeds.note_stored(info.state.last_seq)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._audit_loop()), loop.create_task(self._probe_loop())]
        if settings.history_cache_messages > 0:
            self.tail = TailCache(
                self._fetcher,
                self._stream_state,
                settings.history_cache_messages,
                settings.max_msgs_per_room,
                settings.max_age,
                max_bytes=settings.history_cache_bytes,
            )
            self._tasks.append(loop.create_task(self.tail.run()))

    async def _stream_state(self) -> tuple[str, int, int]:
        assert self._js is not None
        try:
            info = await self._js.stream_info(self.settings.stream)
        except Exception as exc:
            raise FetchError(f"stream info failed: {exc}") from None
        return epoch_of(info), info.state.first_seq, info.state.last_seq

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    @property
    def ready(self) -> bool:
        """Connected, and NATS answered within `nats_unready_after` with no request timed out since."""
        return self.connected and self.health.answering

    @property
    def feeds(self) -> LiveFeeds:
        assert self._feeds is not None, "Broker.connect() first"
        return self._feeds

    def repair_counts(self) -> tuple[int, int]:
        """(gap repairs started, messages they fetched); zeros before connect."""
        feeds = self._feeds
        return (feeds.repairs, feeds.repaired_messages) if feeds is not None else (0, 0)

    def refused_live(self) -> dict[str, int]:
        """Live messages not delivered as they came, by why: malformed headers, unconfirmed jumps, rebased cursors."""
        feeds = self._feeds
        if feeds is None:
            return {"malformed": 0, "unconfirmed": 0, "rebased": 0}
        malformed = feeds.malformed + self.fetcher.malformed
        return {"malformed": malformed, "unconfirmed": feeds.unconfirmed, "rebased": feeds.rebases}

    def history_cache_figures(self) -> tuple[int, int, int]:
        """(messages the history cache holds, reads answered from it, reads it left to the stream)."""
        tail = self.tail
        return (len(tail), tail.hits, tail.misses) if tail is not None else (0, 0, 0)

    @property
    def fetcher(self) -> RoomFetcher:
        assert self._fetcher is not None, "Broker.connect() first"
        return self._fetcher

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("NATS disconnected")

    async def _on_error(self, exc: Exception) -> None:
        log.warning("NATS error: %s", exc)

    async def _on_reconnected(self) -> None:
        self.reconnects += 1
        self.health.answered()
        log.info("NATS reconnected; repairing %d active rooms", len(self.feeds))
        try:
            await self._check_epoch()
        except Exception as exc:  # the stream may be briefly unavailable after a restart
            log.warning("could not re-read the stream after reconnect: %s", exc)
        self.feeds.repair_all()
        for listener in self.reconnect_listeners:
            try:
                listener()
            except Exception:
                log.exception("a reconnect listener failed")

    async def _check_epoch(self) -> None:
        """After a reconnect the stream may be a new one: reset every active room."""
        assert self._js is not None
        info = await ensure_stream(self._js, self.settings)
        epoch = epoch_of(info)
        if epoch == self.epoch:
            return
        log.warning("stream %s was recreated (epoch %s -> %s)", self.settings.stream, self.epoch, epoch)
        self.epoch = epoch
        if self.tail is not None:
            self.tail.reset(epoch, -1, 0)
        for room in self.feeds.rooms():
            head = await self.fetcher.head(room)
            self.feeds.rebase(room, head)
            self._listener.reset(room, Position(head, epoch))

    async def _probe_loop(self) -> None:
        """Ping NATS whenever nothing else answered for a probe interval (core.health)."""
        assert self.nc is not None
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            if not self.connected or not self.health.probe_due():
                continue
            sent_at = self.health.now()
            try:
                await self.nc.flush(timeout=self.settings.nats_unready_after)  # type: ignore[arg-type]
            except Exception as exc:  # nats-py: a timeout, or the connection going away meanwhile
                log.debug("NATS did not answer a probe: %s", type(exc).__name__)
                self.health.missed(sent_at)
            else:
                self.health.answered()

    async def _audit_loop(self) -> None:
        """Every `audit_interval` s: each room's stored head against its cursor (core.feed)."""
        while True:
            await asyncio.sleep(self.settings.audit_interval)
            if not self.connected:
                continue
            try:
                await self.feeds.audit_once()
            except FetchError as exc:
                log.debug("audit skipped: %s", exc)
            except Exception as exc:  # nats-py: timeouts, disconnects
                log.debug("audit skipped: %s", type(exc).__name__)

    # --- rooms the node follows --------------------------------------------

    async def watch(self, room: str) -> Position:
        """Make sure the room's live feed runs on this node; its position (the feed's cursor under
        the current epoch) once live."""
        if room not in self.feeds and not self.connected:
            # A new feed needs the room's head from the stream: fail now, not at a timeout.
            raise Unavailable("NATS is not connected")
        try:
            await self.feeds.watch(room)
        except FetchError as exc:
            raise Unavailable(str(exc)) from None
        except Exception as exc:  # nats-py: timeouts, connection closed, flush failures
            raise Unavailable(f"cannot follow room {room!r}: {type(exc).__name__}") from exc
        # Read after the feed is live: everything stored after it reaches the listener.
        return Position(self.cursor(room), self.epoch)

    def unwatch(self, room: str) -> None:
        """Stop following the room on this node (its last member left, and the grace period passed)."""
        if self._feeds is not None:
            self._feeds.unwatch(room)

    def cursor(self, room: str) -> int:
        """The last seq the room's feed delivered on this node; 0 when the room is not watched."""
        feeds = self._feeds
        return feeds.cursor(room) if feeds is not None and room in feeds else 0

    # --- publish ----------------------------------------------------------

    async def publish(
        self,
        room: str,
        data: bytes,
        *,
        sender: str | None,
        key: str | None,
        trace: dict[str, str] | None = None,
    ) -> PublishResult:
        """Store `data` (valid JSON) in the room; the ack's sequence is its `seq`.

        `trace` holds W3C trace-context headers (traceparent) to store with it.
        Raises Unavailable when nothing was sent, PublishUncertain when the
        publish went out but no acknowledgement came back."""
        assert self._js is not None
        if not self.connected:
            # nats-py would buffer the publish until reconnected; answer at once instead.
            raise Unavailable("NATS is not connected")
        headers: dict[str, str] = dict(trace) if trace else {}
        if sender is not None:
            headers[FROM_HEADER] = sender
        if key is not None:
            headers[MSG_ID_HEADER] = scoped_msg_id(sender or "", room, key)
            headers[ID_HEADER] = key
        sent_at = self.health.now()
        try:
            ack = await self._js.publish(room_subject(room), data, headers=headers or None)
        except NoStreamResponseError:
            raise PublishUncertain("the stream did not answer") from None
        except Exception as exc:  # timeouts, disconnects: the publish may or may not be stored
            if isinstance(exc, TimeoutError):  # nats.errors.TimeoutError is one too
                self.health.missed(sent_at)
            raise PublishUncertain(f"publish failed: {type(exc).__name__}") from exc
        self.health.answered()
        if self._feeds is not None:
            self._feeds.note_stored(ack.seq)
        return PublishResult(ack.seq, bool(ack.duplicate))

    # --- replay -----------------------------------------------------------

    async def replay(self, room: str, since: Position, up_to: int) -> Replay:
        """The replay of `room` for seq in (`since.seq`, `up_to`], or recovered=False.

        `since` is always a position the server handed out for this room (a
        delivered `seq`, or `joined.seq`, itself a room message's seq or 0)
        under `since.epoch`; under another epoch it means nothing. While that
        message is still stored, everything after it is too (streams discard
        oldest first), so the replay is complete. When it is gone, later ones
        may have expired with it: not recoverable.
        """
        if since.epoch != self.epoch:
            return Replay(False)
        limit = self.settings.max_replay
        after = since.seq
        upper = max(up_to, after)
        # A batch held for a client that reads slowly is bounded like its outbox (issue: stalled joiners).
        max_bytes = max(1, self.settings.max_pending_bytes // 4)
        try:
            if after == 0:
                if not await self._nothing_discarded(room):
                    return Replay(False)
                first = await self.replay_slots.fetch(
                    self.fetcher, room, 0, min(limit + 1, REPLAY_BATCH), upper, max_bytes
                )
                messages = first.messages
            else:
                for lagging in range(LAG_RETRIES + 1):
                    first = await self.replay_slots.fetch(
                        self.fetcher, room, after - 1, min(limit + 2, REPLAY_BATCH), upper, max_bytes
                    )
                    if first.messages and first.messages[0].seq == after:
                        break
                    # Gone, or not yet on the replica that answered: ask again before concluding.
                    await asyncio.sleep(LAG_PAUSE * (lagging + 1))
                else:
                    return Replay(False)
                messages = first.messages[1:]
        except FetchError as exc:
            raise Unavailable(str(exc)) from None
        if len(messages) + first.pending > limit:
            return Replay(False)
        replay = Replay(True, messages, after, room, upper, self.fetcher, self.replay_slots, max_bytes)
        replay.count = await self._count_up_to(room, after, messages, first.pending, upper, max_bytes)
        return replay

    async def _count_up_to(
        self, room: str, after: int, first: list[StoredMessage], pending: int, upper: int, max_bytes: int
    ) -> int:
        """How many of the room's messages lie in (after, upper], given the first batch read
        after `after` (already cut at `upper`) and the count of those after it. When the replay
        spans several batches, the rest is counted up to `upper` (core/history.py `count_in`: its
        probe bracketed by two of count(upper + 1), since a busy room grows meanwhile)."""
        if pending == 0 or (first and first[-1].seq >= upper):
            return len(first)
        last = first[-1].seq if first else after
        try:
            rest = await self.history.count_in(room, last + 1, upper, read_bytes=max_bytes)
        except FetchError as exc:
            raise Unavailable(str(exc)) from None
        return len(first) + rest

    async def replay_last(self, room: str, n: int, head: Position) -> Replay:
        """The room's newest `n` messages up to `head` (all of them when it holds fewer), as a
        replay through the same join seam as a `since` one (PROTOCOL.md section 9).

        The window is found by counting (core/history.py: a few direct gets, no consumer), and
        is exact (its size is `joined.replayed`) however fast the room is written meanwhile;
        its oldest message is read first, and the rest in batches paced by the client.
        """
        upper = head.seq
        if upper <= 0:
            return Replay(True)
        max_bytes = max(1, self.settings.max_pending_bytes // 4)
        if self.tail is not None:
            held = await self.tail.answer(room, n, upper + 1, upper)
            if held is not None:
                return Replay.held(held.messages, upper, max_bytes)
        try:
            window = await self.history.start_of_last(room, n, upper, read_bytes=max_bytes)
            if window.keep == 0:
                return Replay(True)
            first = await self.replay_slots.fetch(
                self.fetcher, room, window.start - 1, min(window.keep, REPLAY_BATCH), upper, max_bytes
            )
        except FetchError as exc:
            raise Unavailable(str(exc)) from None
        replay = Replay(True, first.messages, window.start - 1, room, upper, self.fetcher, self.replay_slots, max_bytes)
        replay.count = window.keep
        return replay

    async def history_page(self, room: str, before: int | None, limit: int) -> Page:
        """A page of the room's stored messages older than `before` (default: from the head)."""
        try:
            # Searching from the room's real head (one direct get), not from `before` as given:
            # a `before` far past the head would cost the search a step per bit of the gap.
            head = await self.fetcher.head(room)
            upper = head + 1 if before is None else min(before, head + 1)
            if head == 0:
                return Page([], False, 0, 0)
            if self.tail is not None:
                held = await self.tail.answer(room, limit, upper, upper - 1, self.settings.history_page_bytes)
                if held is not None:
                    return Page(held.messages, held.more, 0, 0)
            return await self.history.page(room, upper, limit, self.settings.history_page_bytes)
        except FetchError as exc:
            raise Unavailable(str(exc)) from None

    @property
    def history(self) -> HistoryReader:
        """The backward reader, its reads bounded like replays (max_concurrent_replays)."""
        if self._history is None:
            fetcher, slots = self.fetcher, self.replay_slots

            async def fetch(room: str, after: int, batch: int, up_to: int | None, max_bytes: int) -> Batch:
                return await slots.fetch(fetcher, room, after, batch, up_to, max_bytes)

            self._history = HistoryReader(fetch)
        return self._history

    async def _nothing_discarded(self, room: str) -> bool:
        """For `since` = 0: true when no message of the room can have been removed."""
        assert self._js is not None
        try:
            info = await self._js.stream_info(self.settings.stream, subjects_filter=room_subject(room))
        except Exception as exc:
            raise FetchError(f"stream info failed: {exc}") from None
        state = info.state
        count = (state.subjects or {}).get(room_subject(room), 0)
        per_room = self.settings.max_msgs_per_room
        return state.first_seq <= 1 and (per_room <= 0 or count < per_room)
