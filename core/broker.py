"""The broker: one NATS connection serving publish, head, replay and live feeds.

Everything an edge node needs from JetStream goes through here, so `edge/`
never imports nats. Room names are validated by the caller (core.rooms).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError

from core.feed import FeedListener, LiveFeeds
from core.fetch import Batch, FetchError, RoomFetcher
from core.natsconn import PlainTextRefused, StrictTlsClient, connect_options
from core.rooms import room_subject
from core.settings import Settings
from core.stored import FROM_HEADER, ID_HEADER, MSG_ID_HEADER, StoredMessage
from core.stream import ensure_stream, epoch_of

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

    async def fetch(self, fetcher: RoomFetcher, room: str, after: int, batch: int, up_to: int) -> Batch:
        async with self._semaphore:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                return await fetcher.fetch(room, after, batch, up_to)
            finally:
                self.in_flight -= 1


class Unavailable(Exception):
    """NATS or the stream cannot serve the request now; the client may retry."""


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

    __slots__ = ("_after", "_fetcher", "_first", "_room", "_slots", "_upper", "recovered")

    def __init__(
        self,
        recovered: bool,
        first: list[StoredMessage] | None = None,
        after: int = 0,
        room: str = "",
        upper: int = 0,
        fetcher: RoomFetcher | None = None,
        slots: ReplaySlots | None = None,
    ) -> None:
        self.recovered = recovered
        self._first = first or []
        self._after = after
        self._room = room
        self._upper = upper
        self._fetcher = fetcher
        self._slots = slots

    async def batches(self) -> AsyncIterator[list[StoredMessage]]:
        """Every message in (since, upper]; `upper` is a room message's seq (the
        node's cursor), so a complete replay ends exactly on it. Direct gets are
        answered by any replica, and one may lag: a short read is retried."""
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
                got = await self._slots.fetch(self._fetcher, self._room, last, REPLAY_BATCH, self._upper)
            except FetchError as exc:
                raise Unavailable(str(exc)) from None
            batch = got.messages


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
        self._audit: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------

    async def connect(self, servers: list[str], name: str) -> None:
        client = StrictTlsClient()
        self.nc = client
        try:
            # nats-py can wait forever after a failed TLS handshake: bound the first connect.
            await asyncio.wait_for(
                client.connect(
                    servers,
                    name=name,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,  # type: ignore[arg-type]  # typed int, takes seconds as float
                    reconnected_cb=self._on_reconnected,
                    disconnected_cb=self._on_disconnected,
                    error_cb=self._on_error,
                    **connect_options(self.settings),
                ),
                self.settings.nats_connect_timeout,
            )
        except (TimeoutError, PlainTextRefused) as exc:
            await client.close()
            if client.refused_plain_text:
                raise Unavailable(
                    "a tls:// NATS URL points at a server that does not require TLS; refusing plain text"
                ) from None
            where = ", ".join(map(redacted, servers))
            raise Unavailable(
                f"could not connect to NATS at {where} within {self.settings.nats_connect_timeout:g} s"
            ) from exc
        self._js = self.nc.jetstream(timeout=5)
        info = await ensure_stream(self._js, self.settings)
        self.epoch = epoch_of(info)
        self._fetcher = RoomFetcher(self.nc, self.settings.stream)
        await self._fetcher.start()
        self._feeds = LiveFeeds(self.nc, self._fetcher, self._listener)
        self._audit = asyncio.get_running_loop().create_task(self._feeds.audit_loop(self.settings.audit_interval))

    async def close(self) -> None:
        self._closing = True
        if self._audit is not None:
            self._audit.cancel()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    @property
    def feeds(self) -> LiveFeeds:
        assert self._feeds is not None, "Broker.connect() first"
        return self._feeds

    def repair_counts(self) -> tuple[int, int]:
        """(gap repairs started, messages they fetched); zeros before connect."""
        feeds = self._feeds
        return (feeds.repairs, feeds.repaired_messages) if feeds is not None else (0, 0)

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
        log.info("NATS reconnected; repairing %d active rooms", len(self.feeds))
        try:
            await self._check_epoch()
        except Exception as exc:  # the stream may be briefly unavailable after a restart
            log.warning("could not re-read the stream after reconnect: %s", exc)
        self.feeds.repair_all()

    async def _check_epoch(self) -> None:
        """After a reconnect the stream may be a new one: reset every active room."""
        assert self._js is not None
        info = await ensure_stream(self._js, self.settings)
        epoch = epoch_of(info)
        if epoch == self.epoch:
            return
        log.warning("stream %s was recreated (epoch %s -> %s)", self.settings.stream, self.epoch, epoch)
        self.epoch = epoch
        for room in self.feeds.rooms():
            head = await self.fetcher.head(room)
            self.feeds.rebase(room, head)
            self._listener.reset(room, epoch, head)

    # --- live feeds -------------------------------------------------------

    async def watch(self, room: str) -> int:
        """Make sure the room's live feed runs on this node; its cursor once live."""
        if room not in self.feeds and not self.connected:
            # A new feed needs the room's head from the stream: fail now, not at a timeout.
            raise Unavailable("NATS is not connected")
        try:
            return await self.feeds.watch(room)
        except FetchError as exc:
            raise Unavailable(str(exc)) from None
        except Exception as exc:  # nats-py: timeouts, connection closed, flush failures
            raise Unavailable(f"cannot follow room {room!r}: {type(exc).__name__}") from exc

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

        `trace` holds W3C trace-context headers (traceparent) to store with it."""
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
        try:
            ack = await self._js.publish(room_subject(room), data, headers=headers or None)
        except NoStreamResponseError:
            raise Unavailable("the stream did not answer") from None
        except Exception as exc:  # timeouts, disconnects: all mean "not stored, retry"
            raise Unavailable(f"publish failed: {type(exc).__name__}") from exc
        return PublishResult(ack.seq, bool(ack.duplicate))

    # --- replay -----------------------------------------------------------

    async def replay(self, room: str, since: int, up_to: int) -> Replay:
        """The replay of `room` for seq in (`since`, `up_to`], or recovered=False.

        `since` is always a sequence the server handed out for this room (a
        delivered `seq`, or `joined.seq`, itself a room message's seq or 0).
        While that message is still stored, everything after it is too
        (streams discard oldest first), so the replay is complete. When it is
        gone, later ones may have expired with it: not recoverable.
        """
        limit = self.settings.max_replay
        upper = max(up_to, since)
        try:
            if since == 0:
                if not await self._nothing_discarded(room):
                    return Replay(False)
                first = await self.replay_slots.fetch(self.fetcher, room, 0, min(limit + 1, REPLAY_BATCH), upper)
                messages = first.messages
            else:
                for lagging in range(LAG_RETRIES + 1):
                    first = await self.replay_slots.fetch(
                        self.fetcher, room, since - 1, min(limit + 2, REPLAY_BATCH), upper
                    )
                    if first.messages and first.messages[0].seq == since:
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
        return Replay(True, messages, since, room, upper, self.fetcher, self.replay_slots)

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
