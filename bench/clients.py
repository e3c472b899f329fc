"""The benchmark's clients: one class per system, the same work for both.

A client opens its socket (`bench.wire`), authenticates with a JWT, joins its
rooms, then counts what arrives: every room message carries the publisher's
clock `t` (ms) and, when the publisher numbers them, `n` per room, so the
latency, the losses and the duplicates are measured the same way for both
systems. On a lost connection the client reconnects with the browser client's
backoff (jetsock.policy) and, where the system can, resumes: jetsock rejoins
with `since`; python-socketio has no replay, so it just rejoins.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from bench import hist, payloads
from bench.streamwire import StreamProtocol, open_request
from bench.wire import WsProtocol, handshake
from jetsock.policy import Backoff, Reconnect, decide, reconnect_delay


class Data(msgspec.Struct):
    """The bench payload: publisher time (unix ms), number within the room (0: not numbered)."""

    t: float = 0.0
    n: int = 0


class PageEntry(msgspec.Struct):
    """A message of a `history` page: only its seq is read (the order is checked)."""

    seq: int = 0


class JetsockFrame(msgspec.Struct):
    type: str
    room: str = ""
    seq: int = 0
    node: str = ""
    recovered: bool = False
    replayed: int = 0
    data: Data | None = None
    code: str = ""
    messages: list[PageEntry] = []
    more: bool = False
    ref: int | str | None = None


class PresenceSub(msgspec.Struct):
    """One entry of a `presence` frame's `joined`/`left`, or of `members`: only `sub` is read."""

    sub: str


class PresenceFrame(msgspec.Struct):
    """A `presence` event (PROTOCOL.md section 10): users who joined or left during one interval."""

    type: str
    room: str = ""
    joined: list[PresenceSub] = []
    left: list[PresenceSub] = []


class MembersFrame(msgspec.Struct):
    """The reply to `who`."""

    type: str
    room: str = ""
    count: int = 0
    connections: int = 0
    members: list[PresenceSub] = []
    truncated: bool = False
    ref: int | str | None = None


class SioMessage(msgspec.Struct):
    room: str
    t: float = 0.0
    n: int = 0


_decode_jetsock = msgspec.json.Decoder(JetsockFrame).decode
_decode_presence = msgspec.json.Decoder(PresenceFrame).decode
_decode_members = msgspec.json.Decoder(MembersFrame).decode
_decode_sio_event = msgspec.json.Decoder(tuple[str, SioMessage]).decode
_encode = msgspec.json.Encoder().encode
PAD = payloads.PAD
"""Makes `data` about 100 bytes, as the issue's fan-out asks."""


class Stats:
    """What one load-generator process counted; `snapshot` is sent to the conductor."""

    def __init__(self) -> None:
        self.connected = 0
        self.opened = 0
        self.wire_bytes = 0
        """Bytes on the wire (frame headers included) of the room messages counted in `deliveries`."""
        self.failed = 0
        self.reconnects = 0
        self.deliveries = 0
        self.acks = 0
        self.lost = 0
        self.duplicates = 0
        self.duplicate_samples: list[list[object]] = []
        """The first duplicates seen: room, number, the last number before it, the client's reconnects."""
        self.histogram: dict[int, int] = {}
        self.pages = PageStats()
        """`history` pages asked and answered (the history scenario)."""
        self.presence = PresenceStats()
        """`presence` events and `who` replies (the presence scenario)."""
        self.posts = 0
        """Posts to stream sessions answered 2xx (their failures count in `errors`, by outcome)."""
        self.post_histogram: dict[int, int] = {}
        """Their round trips, request written to answer read."""
        self.closes: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.expected: dict[str, int] = {}
        self.caught_up_at: list[float] = []
        """Unix times at which each client had everything in `expected` for all its rooms."""

    def delivered(self, room: str, sent_ms: float, number: int, client: BenchClient) -> None:
        self.deliveries += 1
        if client.proto is not None:
            self.wire_bytes += client.proto.frame_bytes
        if sent_ms:
            self.sample(sent_ms)
        if number:
            last = client.last_n.get(room, 0)
            if number <= last:
                self.duplicates += 1
                if len(self.duplicate_samples) < 20:
                    self.duplicate_samples.append([room, number, last, client.reconnect_log])
                return
            if last and number > last + 1:
                self.lost += number - last - 1
            client.last_n[room] = number
            if self.expected and not client.caught_up and number >= self.expected.get(room, 1 << 62):
                client.check_caught_up()

    def sample(self, since_ms: float) -> None:
        """Count the time from `since_ms` (unix ms) to now in the latency histogram."""
        key = hist.bucket(time.time() * 1000.0 - since_ms)
        self.histogram[key] = self.histogram.get(key, 0) + 1

    def reset(self) -> None:
        self.deliveries = 0
        self.wire_bytes = 0
        self.acks = 0
        self.histogram = {}
        self.posts = 0
        self.post_histogram = {}

    def snapshot(self) -> dict[str, object]:
        return {
            "connected": self.connected,
            "opened": self.opened,
            "failed": self.failed,
            "reconnects": self.reconnects,
            "deliveries": self.deliveries,
            "wire_bytes": self.wire_bytes,
            "acks": self.acks,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "duplicate_samples": self.duplicate_samples,
            "histogram": self.histogram,
            "posts": self.posts,
            "post_histogram": self.post_histogram,
            "closes": dict(self.closes),
            "errors": dict(self.errors),
            "caught_up_at": self.caught_up_at,
        }


class PageStats:
    """History pages of one load-generator process: latency by kind, request to reply."""

    def __init__(self) -> None:
        self.sent = 0
        self.answered = 0
        self.messages = 0
        self.more = 0
        self.errors = 0
        """Requests answered with an error frame (rate_limited, unavailable)."""
        self.unordered = 0
        """Pages whose seqs were not increasing, or not all below `before`."""
        self.histograms: dict[str, dict[int, int]] = {}

    def answer(self, kind: str, started: float, frame: JetsockFrame, before: int | None) -> None:
        key = hist.bucket((time.perf_counter() - started) * 1000.0)
        histogram = self.histograms.setdefault(kind, {})
        histogram[key] = histogram.get(key, 0) + 1
        self.answered += 1
        seqs = [m.seq for m in frame.messages]
        self.messages += len(seqs)
        self.more += frame.more
        if any(b <= a for a, b in itertools.pairwise(seqs)) or (before and seqs and seqs[-1] >= before):
            self.unordered += 1

    def snapshot(self) -> dict[str, object]:
        return {
            "sent": self.sent,
            "answered": self.answered,
            "messages": self.messages,
            "more": self.more,
            "errors": self.errors,
            "unordered": self.unordered,
            "histograms": self.histograms,
        }


class PresenceStats:
    """The presence scenario's counts in one load-generator process.

    Event delay: a tracked client (a user of the scenario) writes the unix ms at which it
    sent its join or its leave under its `sub`; a sampled watcher that receives a `presence`
    frame naming that `sub` counts the time since. Only the users of this process can be
    matched (their times are here), which is a sample of every user: the scenario interleaves
    users over the processes. Unsampled watchers only count frames and bytes.
    """

    def __init__(self) -> None:
        self.joins_sent: dict[str, float] = {}
        self.leaves_sent: dict[str, float] = {}
        self.reset()
        self.who_reset()

    def reset(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.joined_seen = 0
        self.left_seen = 0
        """Entries of `joined`/`left` read by the sampled watchers (all users, matched or not)."""
        self.join_delay: dict[int, int] = {}
        self.leave_delay: dict[int, int] = {}
        self.unmatched = 0
        """Entries naming one of this process's users whose send time is later than the event: none expected."""

    def who_reset(self) -> None:
        self.who_sent = 0
        self.who_answered = 0
        self.who_errors = 0
        self.who_by_port: dict[str, dict[int, int]] = {}
        """Request-to-reply latency histogram per edge port."""
        self.who_counts: list[int] = []
        """The smallest and largest `count` answered."""
        self.who_listed = 0
        self.who_truncated = 0

    def event(self, frame: PresenceFrame) -> None:
        now = time.time() * 1000.0
        self.joined_seen += len(frame.joined)
        self.left_seen += len(frame.left)
        for entries, sent, histogram in (
            (frame.joined, self.joins_sent, self.join_delay),
            (frame.left, self.leaves_sent, self.leave_delay),
        ):
            for entry in entries:
                at = sent.get(entry.sub)
                if at is None:
                    continue
                if at > now:
                    self.unmatched += 1
                    continue
                key = hist.bucket(now - at)
                histogram[key] = histogram.get(key, 0) + 1

    def answer(self, port: int, started: float, frame: MembersFrame) -> None:
        key = hist.bucket((time.perf_counter() - started) * 1000.0)
        histogram = self.who_by_port.setdefault(str(port), {})
        histogram[key] = histogram.get(key, 0) + 1
        self.who_answered += 1
        self.who_listed = max(self.who_listed, len(frame.members))
        self.who_truncated += frame.truncated
        counts = self.who_counts
        self.who_counts = [min(counts[0], frame.count), max(counts[1], frame.count)] if counts else [frame.count] * 2

    def snapshot(self) -> dict[str, object]:
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "joined_seen": self.joined_seen,
            "left_seen": self.left_seen,
            "join_delay": self.join_delay,
            "leave_delay": self.leave_delay,
            "unmatched": self.unmatched,
            "who_sent": self.who_sent,
            "who_answered": self.who_answered,
            "who_errors": self.who_errors,
            "who_by_port": self.who_by_port,
            "who_counts": self.who_counts,
            "who_listed": self.who_listed,
            "who_truncated": self.who_truncated,
        }


class BenchClient:
    """One connection with its rooms; subclasses speak one system's protocol."""

    system = ""
    path = ""

    def __init__(
        self,
        stats: Stats,
        host: str,
        port: int,
        token: str,
        rooms: Sequence[str],
        source: str,
        reconnect: bool = False,
        sampled: bool = True,
    ) -> None:
        self.stats = stats
        self.sampled = sampled
        """False: count room messages without decoding them (fan-out's many members)."""
        self.deflate = False
        """Offer permessage-deflate (the compression scenario); the server may still decline it."""
        self.payload = "100B"
        """What `publish` sends besides `t` and `n` (bench.payloads: "100B" or "2KB")."""
        self.host = host
        self.port = port
        self.token = token
        self.rooms = list(rooms)
        self.source = source
        self.reconnect = reconnect
        self.proto: WsProtocol | StreamProtocol | None = None
        self.ready: asyncio.Future[None] | None = None
        self.pending_joins = 0
        self.last_n: dict[str, int] = {}
        self.last_seq: dict[str, int] = {}
        """jetsock's stream seq per room, for `since` on resume."""
        self.caught_up = False
        self.attempt = 0
        self.stopped = False
        self.reopen_scheduled = False
        self.reconnect_log: list[object] = []
        """What happened to this connection since it opened, for a duplicate's report."""
        self.defer_join = False
        """True: authenticate only; the rooms are joined later, by `join_rooms` (with `last`)."""
        self.replay_left: dict[str, int] | None = None
        """After `join_rooms(last)`: per room, the replayed messages (joined.replayed) not yet received."""
        self.join_sent_ms = 0.0
        self.replayed = 0
        self.replay_received = 0
        self.sub = ""
        """The token's `sub` (LoadGenerator.make)."""
        self.tracked = False
        """True: write the time of every join and leave sent under `sub` (the presence scenario's users)."""

    async def open(self, timeout: float = 60.0) -> None:
        """Connect, authenticate and join every room; raise when any step fails."""
        loop = asyncio.get_running_loop()
        self.ready = loop.create_future()
        request = self.request()
        if self.proto is not None and not self.proto.closed:
            self.proto.abort()  # one socket per client, ever: a second would deliver everything twice
        self.proto = None

        def protocol() -> WsProtocol | StreamProtocol:
            # Set before any data arrives: the 101 and the first frame may come in one read.
            created = self.make_protocol(request, lambda code: self._lost(created, code))
            self.proto = created
            return created

        _transport, proto = await asyncio.wait_for(
            loop.create_connection(
                protocol,
                self.host,
                self.port,
                local_addr=(self.source, 0),
            ),
            timeout,
        )
        try:
            await asyncio.wait_for(asyncio.shield(proto.upgraded), timeout)
            await asyncio.wait_for(asyncio.shield(self.ready), timeout)
        except BaseException:
            proto.abort()
            raise
        self.stats.connected += 1
        self.attempt = 0

    def close(self) -> None:
        self.stopped = True
        if self.proto is not None:
            self.proto.close()

    def make_protocol(self, request: bytes, on_close: Callable[[int | None], None]) -> WsProtocol | StreamProtocol:
        """The socket's protocol: a WebSocket (bench.wire); the stream client's is an HTTP stream."""
        return WsProtocol(request, self.on_text, on_close, self.counting_compressed())

    def _lost(self, proto: WsProtocol | StreamProtocol, code: int | None) -> None:
        # Only the current socket's end counts: a superseded one must not start a second reconnect loop.
        if proto is self.proto:
            self.on_close(code)

    def on_close(self, code: int | None) -> None:
        was_ready = self.ready is not None and self.ready.done() and self.ready.exception() is None
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed with {code} before ready"))
            self.ready.exception()  # retrieved: open() may have stopped waiting already
        if was_ready:
            self.stats.connected -= 1
        self.stats.closes[code if code is not None else 1006] += 1
        self.reconnect_log.append(["close", code])
        if self.stopped or not self.reconnect:
            return
        decision = decide(code)
        if decision.reconnect is Reconnect.NEVER:
            return
        if self.reopen_scheduled:
            return
        delay = reconnect_delay(decision, Backoff(), self.attempt, random.random())
        self.attempt += 1
        self.reopen_scheduled = True
        asyncio.get_running_loop().call_later(delay, self._spawn_reopen)

    def _spawn_reopen(self) -> None:
        task = asyncio.ensure_future(self._reopen())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _reopen(self) -> None:
        self.reopen_scheduled = False
        if self.stopped:
            return
        try:
            await self.open(timeout=30.0)
        except (TimeoutError, OSError, ConnectionError):
            # A socket that opened schedules the next attempt from connection_lost;
            # one that never opened has nothing to do it.
            if self.proto is None:
                self.on_close(None)
            return
        self.stats.reconnects += 1

    def check_caught_up(self) -> None:
        expected = self.stats.expected
        if all(self.last_n.get(room, 0) >= expected.get(room, 0) for room in self.rooms):
            self.caught_up = True
            self.stats.caught_up_at.append(time.time())

    def request(self) -> bytes:
        raise NotImplementedError

    def counting_compressed(self) -> Callable[[int], None] | None:
        """What counts a compressed frame without inflating it (WsProtocol.on_compressed), if this client may."""
        return None

    def on_text(self, payload: bytes) -> None:
        raise NotImplementedError

    def publish(self, room: str, number: int = 0) -> None:
        raise NotImplementedError

    def join_rooms(self, last: int) -> None:
        """Join the rooms now with `last` (jetsock's history; the peer has none)."""
        raise NotImplementedError

    def history(self, room: str, before: int | None, limit: int, kind: str) -> None:
        raise NotImplementedError

    def who(self, room: str) -> None:
        """Ask who is present in `room` (jetsock's presence; the peer has none)."""
        raise NotImplementedError

    def leave_room(self, room: str) -> None:
        raise NotImplementedError

    def rejoin_room(self, room: str) -> None:
        raise NotImplementedError

    def _joined_one(self) -> None:
        self.pending_joins -= 1
        if self.pending_joins == 0 and self.ready is not None and not self.ready.done():
            self.ready.set_result(None)


_background: set[asyncio.Future[None]] = set()


class JetsockClient(BenchClient):
    """jetsock's protocol (PROTOCOL.md): token in the subprotocol, `join` with `since` on resume."""

    system = "jetsock"
    path = "/ws"
    page_ref = 0
    pages_out: dict[int, tuple[float, str, int | None]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pages_out = {}
        self.who_out: dict[int, float] = {}

    def request(self) -> bytes:
        return handshake(self.host, self.port, self.path, f"jetsock.v1, bearer.{self.token}", self.deflate)

    def counting_compressed(self) -> Callable[[int], None] | None:
        # The edge compresses room messages only: an unsampled member counts them unread.
        return None if self.sampled else self._count_compressed

    def _count_compressed(self, size: int) -> None:
        stats = self.stats
        stats.deliveries += 1
        stats.wire_bytes += size

    def on_text(self, payload: bytes) -> None:
        if not self.sampled and payload.startswith(b'{"type":"msg"'):
            self.stats.deliveries += 1
            if self.proto is not None:
                self.stats.wire_bytes += self.proto.frame_bytes
            return
        if payload.startswith(b'{"type":"presence"'):
            presence = self.stats.presence
            presence.frames += 1
            presence.bytes += len(payload)
            if self.sampled:
                presence.event(_decode_presence(payload))
            return
        if payload.startswith(b'{"type":"members"'):
            members = _decode_members(payload)
            asked_at = self.who_out.pop(members.ref, None) if isinstance(members.ref, int) else None
            if asked_at is not None:
                self.stats.presence.answer(self.port, asked_at, members)
            return
        frame = _decode_jetsock(payload)
        kind = frame.type
        if kind == "msg":
            self.last_seq[frame.room] = frame.seq
            data = frame.data
            if data is not None:
                self.stats.delivered(frame.room, data.t, data.n, self)
            else:
                self.stats.deliveries += 1
                if self.proto is not None:
                    self.stats.wire_bytes += self.proto.frame_bytes
            left = self.replay_left
            if left is not None and left.get(frame.room, 0) > 0:
                left[frame.room] -= 1
                self.replay_received += 1
                self._check_replayed()
        elif kind == "history":
            asked = self.pages_out.pop(frame.ref, None) if isinstance(frame.ref, int) else None
            if asked is not None:
                self.stats.pages.answer(asked[1], asked[0], frame, asked[2])
        elif kind == "ack":
            self.stats.acks += 1
        elif kind == "welcome":
            self.on_welcome(frame)
        elif kind == "joined":
            self.reconnect_log.append(["joined", frame.room, frame.seq, frame.recovered, self.last_n.get(frame.room)])
            self.last_seq.setdefault(frame.room, frame.seq)
            if self.replay_left is not None:
                self.replay_left[frame.room] = frame.replayed
                self.replayed += frame.replayed
                self._check_replayed()
            self._joined_one()
        elif kind == "error":
            self.stats.errors[frame.code] += 1
            if isinstance(frame.ref, int) and self.pages_out.pop(frame.ref, None) is not None:
                self.stats.pages.errors += 1
            if isinstance(frame.ref, int) and self.who_out.pop(frame.ref, None) is not None:
                self.stats.presence.who_errors += 1

    def on_welcome(self, frame: JetsockFrame) -> None:
        """Authenticated: join the rooms (resuming with `since`), or wait for `join_rooms`."""
        self.reconnect_log.append(["welcome", frame.node, dict(self.last_seq)])
        if self.defer_join:
            if self.ready is not None and not self.ready.done():
                self.ready.set_result(None)
            return
        self.pending_joins = len(self.rooms)
        assert self.proto is not None
        if self.tracked and self.rooms:
            self.stats.presence.joins_sent[self.sub] = time.time() * 1000.0
        for room in self.rooms:
            self.proto.send_text(self.join_frame(room))
        if not self.rooms and self.ready is not None:
            self.ready.set_result(None)

    def join_frame(self, room: str) -> bytes:
        join: dict[str, object] = {"type": "join", "room": room}
        if room in self.last_seq:
            join["since"] = self.last_seq[room]
        return _encode(join)

    def who(self, room: str) -> None:
        """Ask who is in `room`; the latency is counted per edge port when `members` with its ref comes."""
        if self.proto is None or self.proto.closed:
            return
        self.page_ref += 1
        self.who_out[self.page_ref] = time.perf_counter()
        self.stats.presence.who_sent += 1
        self.proto.send_text(_encode({"type": "who", "room": room, "ref": self.page_ref}))

    def leave_room(self, room: str) -> None:
        """Leave `room` (the presence scenario's churn); the time is written under `sub` when tracked."""
        if self.proto is None or self.proto.closed:
            return
        if self.tracked:
            self.stats.presence.leaves_sent[self.sub] = time.time() * 1000.0
        self.proto.send_text(_encode({"type": "leave", "room": room}))

    def rejoin_room(self, room: str) -> None:
        """Join `room` again after `leave_room` (no `since`: presence, not messages, is measured)."""
        if self.proto is None or self.proto.closed:
            return
        if self.tracked:
            self.stats.presence.joins_sent[self.sub] = time.time() * 1000.0
        self.proto.send_text(_encode({"type": "join", "room": room}))

    def join_rooms(self, last: int) -> None:
        """Join every room now with `last`; `caught_up_at` gets the time all replays have arrived."""
        if self.proto is None or self.proto.closed:
            return
        self.replay_left = {}
        self.join_sent_ms = time.time() * 1000.0
        self.pending_joins = len(self.rooms)
        for room in self.rooms:
            self.proto.send_text(_encode({"type": "join", "room": room, "last": last}))

    def _check_replayed(self) -> None:
        left = self.replay_left
        if left is None or self.caught_up or len(left) < len(self.rooms) or any(left.values()):
            return
        self.caught_up = True
        self.stats.caught_up_at.append(time.time())
        self.stats.sample(self.join_sent_ms)

    def history(self, room: str, before: int | None, limit: int, kind: str) -> None:
        """Ask for a page; its latency is counted under `kind` when the reply with its ref comes."""
        if self.proto is None or self.proto.closed:
            return
        self.page_ref += 1
        frame: dict[str, object] = {"type": "history", "room": room, "limit": limit, "ref": self.page_ref}
        if before is not None:
            frame["before"] = before
        self.pages_out[self.page_ref] = (time.perf_counter(), kind, before)
        self.stats.pages.sent += 1
        self.proto.send_text(_encode(frame))

    def publish(self, room: str, number: int = 0) -> None:
        if self.proto is not None:
            data = {"t": time.time() * 1000.0, "n": number, **payloads.body(self.payload)}
            self.proto.send_text(_encode({"type": "publish", "room": room, "data": data}))


class SocketIOClient(BenchClient):
    """Engine.IO 4 / Socket.IO 5 over a WebSocket only (no polling), as a production client would."""

    system = "python-socketio"
    path = "/socket.io/?EIO=4&transport=websocket"
    _JOIN_ACK = b"431"
    _PUBLISH_ACK = b"432"

    def request(self) -> bytes:
        # python-socketio serves on aiohttp, whose WebSocketResponse takes the offer (compress=True, its
        # default) and compresses every frame with a compressor of its own per connection.
        return handshake(self.host, self.port, self.path, deflate=self.deflate)

    def on_text(self, payload: bytes) -> None:
        assert self.proto is not None
        if payload.startswith(b'42["msg"'):
            if not self.sampled:
                self.stats.deliveries += 1
                self.stats.wire_bytes += self.proto.frame_bytes
                return
            _event, message = _decode_sio_event(payload[2:])
            self.stats.delivered(message.room, message.t, message.n, self)
        elif payload == b"2":
            self.proto.send_text(b"3")
        elif payload.startswith(self._PUBLISH_ACK):
            self.stats.acks += 1
        elif payload.startswith(self._JOIN_ACK):
            self._joined_one()
        elif payload.startswith(b"40"):
            self.pending_joins = len(self.rooms)
            for room in self.rooms:
                self.proto.send_text(b"421" + _encode(["join", room]))
            if not self.rooms and self.ready is not None:
                self.ready.set_result(None)
        elif payload.startswith(b"0{"):
            self.proto.send_text(b"40" + _encode({"token": self.token}))
        elif payload.startswith(b"44"):
            self.stats.errors["connect_error"] += 1
            self.proto.close()

    def publish(self, room: str, number: int = 0) -> None:
        if self.proto is not None:
            message = {"room": room, "t": time.time() * 1000.0, "n": number, **payloads.body(self.payload)}
            self.proto.send_text(b"422" + _encode(["publish", message]))


class JetsockStreamClient(JetsockClient):
    """jetsock over the HTTP stream (PROTOCOL.md section 11, bench.streamwire): the token as a bearer,
    the joins (with `since` on resume) in the opening POST's body as the SDK sends them, every other
    frame posted to the session, a `ping` posted every heartbeat; the server's frames are the same."""

    path = "/v1/stream"
    keepalive_posts = True
    """Posts over one keep-alive connection per session (a browser's, the SDK's); False: a connection each."""

    def request(self) -> bytes:
        frames = [] if self.defer_join else [self.join_frame(room) for room in self.rooms]
        if self.tracked and frames:
            self.stats.presence.joins_sent[self.sub] = time.time() * 1000.0
        return open_request(self.host, self.port, self.token, frames, self.path)

    def make_protocol(self, request: bytes, on_close: Callable[[int | None], None]) -> WsProtocol | StreamProtocol:
        return StreamProtocol(
            request,
            self.on_text,
            on_close,
            self.host,
            self.port,
            self.source,
            self.token,
            self.keepalive_posts,
            self._posted,
        )

    def on_welcome(self, frame: JetsockFrame) -> None:
        # The joins went with the opening request and run after the welcome: their `joined` follow.
        self.reconnect_log.append(["welcome", frame.node, dict(self.last_seq)])
        if self.defer_join or not self.rooms:
            if self.ready is not None and not self.ready.done():
                self.ready.set_result(None)
            return
        self.pending_joins = len(self.rooms)

    def _posted(self, outcome: str, seconds: float) -> None:
        stats = self.stats
        if outcome == "posted":
            stats.posts += 1
            key = hist.bucket(seconds * 1000.0)
            stats.post_histogram[key] = stats.post_histogram.get(key, 0) + 1
        else:
            stats.errors[outcome] += 1


CLIENTS: dict[str, type[BenchClient]] = {cls.system: cls for cls in (JetsockClient, SocketIOClient)}
