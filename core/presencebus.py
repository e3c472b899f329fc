"""Presence between nodes: deltas, beats with digests, snapshots on demand, over core NATS.

Every node subscribes to `jetsock.presence.>` once and keeps the cluster's view
(core/presence.py). A node incarnation (its name plus a random part, new at every
start) numbers what it sends, and sends:

- `jetsock.presence.delta`: the changes of `sub`s' connection counts in rooms on this
  node, each numbered: `{"n": incarnation, "b": [{"q": seq, "r": room, "s": sub, "c": count,
  "i": info}, ...]}`. The sender gathers the changes of DELTA_WINDOW seconds (up to about
  PART_BYTES) into one message: under churn one NATS message, and one decode on every other
  node, carries dozens of changes instead of one each. Nothing is sent per member. A
  single change in the form of version 1.1.0 (`{"n", "q", "r", "s", "c", "i"}`) is still
  applied, so a node of that version can take part in a rolling upgrade.
- `jetsock.presence.beat`, every `ttl / 3`: `{"n", "q", "d": {room: digest}}`, the
  digest of its members per room. A receiver whose own digest of that node differs
  (it missed deltas: a NATS reconnect, a late start) asks for a snapshot; a node not
  heard from for `ttl` is dropped with its members (a SIGKILLed node).
- `jetsock.presence.snap.<incarnation>` (a request, `{"r": [rooms], "to": subject}`, or
  `{"all": true, "to"}` for every room of that node): answered on the asker's
  `jetsock.presence.reply.<incarnation>` with `{"n", "q", "m": {room: {sub: [count, info]}}}`.

A beat or a snapshot larger than about PART_BYTES (a node with many rooms, a room of many
users with large `info`: NATS refuses a message over its max_payload, 1 MiB by default) is
sent in parts `"k": i, "of": n`, one after the other; the receiver applies a snapshot (and
checks a beat's missing rooms) once all its parts came, and a lost part just waits for
the next beat.
- `jetsock.presence.hello` at start and after every NATS reconnect: every node
  answers with a beat at once, so the newcomer resyncs within a round trip.
- `jetsock.presence.bye` when the node stops (after the deltas of its last closes): the
  others drop it at once instead of after `ttl`.

Silence is only held against another node while this one is connected: after its own
NATS connection was down, every known node gets a full `ttl` to be heard again, so a
NATS restart longer than `ttl` gives no `left`/`joined` pair for users who stayed.

Everything, replies included, arrives on the one subscription and is handled in
order inside nats-py's reader (core/inbox.py): a node's snapshot and its later deltas
cannot be applied out of order. A delta whose `q` skips ahead marks a gap and asks for
a snapshot; one at or below the last applied `q` (older than a snapshot) is ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeGuard

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.nuid import NUID

from core.inbox import subscribe_direct
from core.presence import Change, ClusterPresence, Info, digest

PREFIX = "jetsock.presence."
DELTA = PREFIX + "delta"
BEAT = PREFIX + "beat"
HELLO = PREFIX + "hello"
BYE = PREFIX + "bye"
SNAPSHOT = PREFIX + "snap."
REPLY = PREFIX + "reply."

PART_BYTES = 128 * 1024
"""About the most bytes of one beat or snapshot message (NATS refuses more than its
max_payload, 1 MiB by default): more go in parts `k` of `of`, one after the other."""
DELTA_WINDOW = 0.02
"""How long the sender waits after a change for more to send with it: well under what a
person notices, and presence events are coalesced over `presence_interval` anyway."""
MAX_ASKED_ROOMS = 1000
"""A snapshot request for more rooms asks for all of the node's rooms instead."""

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


class PresenceBus:
    """This node's side of the presence protocol."""

    def __init__(self, name: str, ttl: float, on_changes: Callable[[list[Change]], None]) -> None:
        self.incarnation = f"{name}.{NUID().next().decode()[:8]}"
        self.view = ClusterPresence(ttl)
        self._on_changes = on_changes
        self._ttl = ttl
        self._nc: NATS | None = None
        self._sub: Subscription | None = None
        self._seq = 0
        self._last: dict[str, int] = {}
        """Per other incarnation, the last `q` applied."""
        self._outgoing: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        """What to publish, in order; None stops the sender (after what came before it)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._asked: dict[str, float] = {}
        self._snapshots: dict[str, _Snapshot] = {}
        """Per other incarnation, a snapshot whose parts are still arriving."""
        self._beats: dict[str, _Beat] = {}
        """Per other incarnation, its beat whose parts are still arriving."""
        """Per incarnation, when a snapshot was last asked for (at most one per beat)."""
        self._cut_off = False
        """This node's NATS connection was seen down since the last expiry check."""
        self.sent = 0
        self.received = 0

    # --- lifecycle ----------------------------------------------------------------

    async def start(self, nc: NATS) -> None:
        self._nc = nc
        self._sub = await subscribe_direct(nc, PREFIX + ">", self._on_message)
        self._tasks = [
            asyncio.get_running_loop().create_task(self._send_loop(), name="presence send"),
            asyncio.get_running_loop().create_task(self._beat_loop(), name="presence beat"),
        ]
        self.hello()

    async def stop(self, timeout: float = 2.0) -> None:
        """Stop beating, send what is queued (the deltas of the last closes) and a bye, then stop."""
        if not self._tasks:
            return
        send, *others = self._tasks
        self._tasks = []
        for task in others:
            task.cancel()
        if not send.done():
            self._queue(BYE, {"n": self.incarnation})
            self._outgoing.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(send), timeout)
                if self._nc is not None and self._nc.is_connected:
                    await self._nc.flush(max(1, round(timeout)))
            except Exception as exc:  # NATS is down or slow: the others drop us after ttl.
                log.debug("presence bye not sent: %r", exc)
        for task in (send, *others):
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    def hello(self) -> None:
        """Ask every node for a beat (at start, after a NATS reconnect) and send ours."""
        self.view.refresh_all(time.monotonic())
        self._queue(HELLO, {"n": self.incarnation})
        self._send_beat()

    # --- this node's changes ----------------------------------------------------------

    def local(self, room: str, sub: str, connections: int, info: Info) -> None:
        """This node now holds `connections` of `sub` joined in `room`."""
        changes = self.view.set(self.incarnation, room, sub, connections, info, time.monotonic())
        self._seq += 1
        entry: dict[str, Any] = {"q": self._seq, "r": room, "s": sub, "c": connections}
        if info is not None and connections > 0:
            entry["i"] = msgspec.Raw(info)
        self._queue(DELTA, entry)  # An entry of a batch: _send_loop adds the "n".
        if changes:
            self._on_changes(changes)

    # --- the bus ---------------------------------------------------------------------

    def _on_message(self, msg: Msg) -> None:
        self.received += 1
        subject = msg.subject
        try:
            body = _decode(msg.data)
        except msgspec.MsgspecError:
            return  # Not a presence message: nothing to learn from it.
        sender = body.get("n")
        if not isinstance(sender, str) or sender == self.incarnation:
            return
        now = time.monotonic()
        if subject == DELTA:
            entries = body.get("b")
            if isinstance(entries, list):
                changes: list[Change] = []
                for entry in entries:
                    if isinstance(entry, dict):
                        changes += self._on_delta(sender, entry, now)
            else:
                changes = self._on_delta(sender, body, now)  # One change, as version 1.1.0 sent it.
            if changes:
                self._on_changes(changes)
        elif subject == BEAT:
            self._on_beat(sender, body, now)
        elif subject == HELLO:
            self.view.heard(sender, now)
            self._send_beat()
        elif subject == BYE:
            self._last.pop(sender, None)
            self._asked.pop(sender, None)
            self._snapshots.pop(sender, None)
            self._beats.pop(sender, None)
            changes = self.view.drop_node(sender)
            if changes:
                self._on_changes(changes)
        elif subject == SNAPSHOT + self.incarnation:
            self._answer_snapshot(body)
        elif subject == REPLY + self.incarnation:
            self._on_snapshot(sender, body, now)

    def _on_delta(self, sender: str, entry: dict[str, Any], now: float) -> list[Change]:
        """Apply one change of `sender`'s; what it changes in the cluster's view."""
        seq, room, sub, count = entry.get("q"), entry.get("r"), entry.get("s"), entry.get("c")
        if not (_is_int(seq) and isinstance(room, str) and isinstance(sub, str) and _is_int(count)):
            return []
        last = self._last.get(sender, 0)
        if seq <= last:
            return []  # Older than a snapshot already applied.
        self._last[sender] = seq
        info = entry.get("i")
        changes = self.view.set(sender, room, sub, max(0, count), _info_bytes(info), now)
        if seq != last + 1 and last != 0:
            self._ask_snapshot(sender, self.view.node_rooms(sender), now)
        return changes

    def _on_beat(self, sender: str, body: dict[str, Any], now: float) -> None:
        self.view.heard(sender, now)
        digests, seq = body.get("d"), body.get("q")
        part = _part_of(body)
        if not isinstance(digests, dict) or part is None:
            return
        index, parts = part
        stale = [
            room
            for room, said in digests.items()
            if isinstance(room, str) and said != _digest_or_none(self.view.node_members(sender, room))
        ]
        # One ask per beat, once all its parts came: the stale rooms of every part, and the
        # rooms held for the sender that no part listed.
        beat = self._beats.get(sender)
        if index == 0:
            beat = self._beats[sender] = _Beat(seq)
        if beat is None or beat.seq != seq or beat.next != index:
            self._beats.pop(sender, None)  # A part was lost: ask for what this one shows.
            self._ask_snapshot(sender, stale, now)
            return
        beat.next = index + 1
        beat.listed.update(room for room in digests if isinstance(room, str))
        beat.stale += stale
        if index == parts - 1:
            del self._beats[sender]
            missing = [room for room in self.view.node_rooms(sender) if room not in beat.listed]
            self._ask_snapshot(sender, beat.stale + missing, now)

    def _ask_snapshot(self, sender: str, rooms: list[str], now: float) -> None:
        if not rooms or now - self._asked.get(sender, -1e9) < min(1.0, self._ttl / 6):
            return
        self._asked[sender] = now
        body: dict[str, Any] = {"n": self.incarnation, "to": REPLY + self.incarnation}
        if len(rooms) > MAX_ASKED_ROOMS:
            body["all"] = True  # Shorter than the list, and it heals every room at once.
        else:
            body["r"] = rooms
        self._queue(SNAPSHOT + sender, body)

    def _answer_snapshot(self, body: dict[str, Any]) -> None:
        """This node's members of the rooms asked for (or all of them), in parts of at most
        about PART_BYTES each, queued one after the other (nothing can come between them)."""
        rooms, to, whole = body.get("r"), body.get("to"), body.get("all") is True
        if not isinstance(to, str) or not to.startswith(REPLY):
            return
        if whole:
            rooms = self.view.node_rooms(self.incarnation)
        elif not isinstance(rooms, list):
            return
        parts: list[dict[str, dict[str, list[Any]]]] = [{}]
        size = 0
        budget = self._part_bytes()
        for room in rooms[:MAX_ASKED_ROOMS] if not whole else rooms:
            if not isinstance(room, str):
                continue
            held = self.view.node_members(self.incarnation, room)
            if not held:
                size += len(room) + 8
                parts[-1][room] = {}
            for sub, (count, info) in held.items():
                entry = len(sub) + (len(info) if info is not None else 4) + len(room) + 24
                if size + entry > budget and parts[-1]:
                    parts.append({})
                    size = 0
                parts[-1].setdefault(room, {})[sub] = [count, msgspec.Raw(info) if info is not None else None]
                size += entry
        for index, members in enumerate(parts):
            reply: dict[str, Any] = {"n": self.incarnation, "q": self._seq, "m": members}
            if len(parts) > 1:
                reply |= {"k": index, "of": len(parts)}
            if whole:
                reply["all"] = True
            self._queue(to, reply)

    def _on_snapshot(self, sender: str, body: dict[str, Any], now: float) -> None:
        seq, rooms = body.get("q"), body.get("m")
        part = _part_of(body)
        if not _is_int(seq) or not isinstance(rooms, dict) or part is None:
            return
        self.view.heard(sender, now)
        index, parts = part
        if index == 0:
            pending = self._snapshots[sender] = _Snapshot(seq, body.get("all") is True)
        else:
            found = self._snapshots.get(sender)
            if found is None or found.seq != seq or found.next != index:
                self._snapshots.pop(sender, None)  # A part was lost: the next beat asks again.
                return
            pending = found
        pending.next = index + 1
        for room, held in rooms.items():
            if not isinstance(room, str) or not isinstance(held, dict):
                continue
            members = pending.rooms.setdefault(room, {})
            for sub, entry in held.items():
                if isinstance(sub, str) and _is_count_entry(entry):
                    members[sub] = (entry[0], _info_bytes(entry[1]) if len(entry) > 1 else None)
        if index < parts - 1:
            return
        del self._snapshots[sender]
        self._last[sender] = max(self._last.get(sender, 0), seq)
        if pending.whole:
            for room in self.view.node_rooms(sender):
                pending.rooms.setdefault(room, {})
        changes: list[Change] = []
        for room, members in pending.rooms.items():
            changes += self.view.replace(sender, room, members, now)
        if changes:
            self._on_changes(changes)

    def _part_bytes(self) -> int:
        """The budget of one message: PART_BYTES, or less under a server with a small max_payload."""
        most = getattr(self._nc, "max_payload", 0) or 0
        return min(PART_BYTES, most // 2) if most > 0 else PART_BYTES

    def _send_beat(self) -> None:
        """Our digest per room, in parts of at most about PART_BYTES (a node with very many rooms)."""
        rooms = self.view.node_rooms(self.incarnation)
        parts: list[dict[str, str]] = [{}]
        size = 0
        budget = self._part_bytes()
        for room in rooms:
            entry = len(room) + 32
            if size + entry > budget and parts[-1]:
                parts.append({})
                size = 0
            parts[-1][room] = digest(self.view.node_members(self.incarnation, room))
            size += entry
        for index, digests in enumerate(parts):
            beat: dict[str, Any] = {"n": self.incarnation, "q": self._seq, "d": digests}
            if len(parts) > 1:
                beat |= {"k": index, "of": len(parts)}
            self._queue(BEAT, beat)

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            self._send_beat()
            self.expire(time.monotonic())

    def expire(self, now: float) -> None:
        """Drop the nodes silent for `ttl`, unless this node itself could not hear them."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            self._cut_off = True
            return
        if self._cut_off:
            self._cut_off = False
            self.view.refresh_all(now)
            return
        changes = self.view.expire(now, keep=(self.incarnation,))
        if changes:
            self._on_changes(changes)

    def _queue(self, subject: str, body: dict[str, Any]) -> None:
        self._outgoing.put_nowait((subject, _encode(body)))

    async def _send_loop(self) -> None:
        queue = self._outgoing
        # What a batch took from the queue but not into itself: it is sent next.
        held: list[tuple[str, bytes] | None] = []
        while True:
            item = held.pop() if held else await queue.get()
            if item is None:
                return
            subject, payload = item
            if subject == DELTA:
                # Gather the changes of the next DELTA_WINDOW into this message, in order:
                # the first other message (a beat, a bye, the stop) ends the batch.
                await asyncio.sleep(DELTA_WINDOW)
                entries, size = [payload], len(payload)
                while size < PART_BYTES and not queue.empty():
                    following = queue.get_nowait()
                    if following is None or following[0] != DELTA:
                        held.append(following)
                        break
                    entries.append(following[1])
                    size += len(following[1])
                payload = delta_message(self.incarnation, entries)
            await self._publish(subject, payload)

    async def _publish(self, subject: str, payload: bytes) -> None:
        nc = self._nc
        if nc is None or not nc.is_connected:
            return  # Lost: the beats repair what others missed.
        try:
            await nc.publish(subject, payload)
            self.sent += 1
        except Exception as exc:  # A disconnect: the next beat and hello repair it.
            log.debug("presence publish failed: %s", exc)


def delta_message(incarnation: str, entries: list[bytes]) -> bytes:
    """One `delta` message from encoded entries, spliced (they are not decoded again)."""
    return b'{"n":' + _encode(incarnation) + b',"b":[' + b",".join(entries) + b"]}"


class _Beat:
    """A beat being received in parts."""

    __slots__ = ("listed", "next", "seq", "stale")

    def __init__(self, seq: object) -> None:
        self.seq = seq
        self.next = 0
        self.listed: set[str] = set()
        self.stale: list[str] = []


class _Snapshot:
    """A snapshot being received in parts."""

    __slots__ = ("next", "rooms", "seq", "whole")

    def __init__(self, seq: int, whole: bool) -> None:
        self.seq = seq
        self.whole = whole
        """All the sender's rooms: those it did not list are empty."""
        self.next = 0
        self.rooms: dict[str, dict[str, tuple[int, Info]]] = {}


def _part_of(body: dict[str, Any]) -> tuple[int, int] | None:
    """(`k`, `of`) of a message sent in parts, (0, 1) for one in one piece; None when invalid."""
    index, parts = body.get("k", 0), body.get("of", 1)
    if not (_is_int(index) and _is_int(parts) and 0 <= index < parts):
        return None
    return index, parts


def _info_bytes(info: object) -> Info:
    if info is None:
        return None
    return bytes(_encode(info))


def _digest_or_none(members: dict[str, tuple[int, Info]]) -> str | None:
    return digest(members) if members else None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count_entry(entry: object) -> bool:
    """A snapshot's `[count, info]`, with a positive integer count."""
    return isinstance(entry, list) and bool(entry) and _is_int(entry[0]) and entry[0] > 0
