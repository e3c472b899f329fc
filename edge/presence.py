"""Presence on this node: counting joined connections per user, `who`, coalesced `presence` events.

The node counts, per presence room (`presence_rooms`) and `sub`, its own joined
connections, and hands every change of that count to the presence bus
(core/presencebus.py), which keeps the cluster's view and tells the other nodes. From
that view come `who` (a read of memory, the same on every node) and the events: the
view's changes (a user's first connection anywhere joined, or its last one left) are
collected per room and, once per `presence_interval`, netted (a user who joined and
left within one interval is not shown) and sent as one `presence` frame per room,
encoded once per framing and pushed to this node's members of the room that hold the
`rooms.presence` right. Above `presence_events_max_members` present users a room sends
no events (only `who` and counts); a frame is at most `presence_frame_bytes`, more
changes go in more frames. Events count against no rate limit: they are bounded by the
interval and the frame size, not by what clients ask.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec

from core.broker import Broker
from core.presence import Change, Info
from core.presencebus import PresenceBus
from core.rooms import NO_RIGHTS, RoomRights
from core.settings import Settings
from edge.connection import Connection
from schemas import Members, Presence, PresenceLeft, PresenceMember

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode


def presence_rights(settings: Settings) -> RoomRights:
    patterns = [p.strip() for p in settings.presence_rooms.split(",") if p.strip()]
    return RoomRights.parse(patterns) if patterns else NO_RIGHTS


class NodePresence:
    def __init__(self, settings: Settings, name: str) -> None:
        if settings.presence_rooms.strip() and (settings.presence_ttl <= 0 or settings.presence_interval <= 0):
            raise ValueError("JETSOCK_PRESENCE_TTL and JETSOCK_PRESENCE_INTERVAL must be more than 0 seconds")
        self.settings = settings
        self.rooms = presence_rights(settings)
        self.bus = PresenceBus(name, settings.presence_ttl, self._on_changes)
        self._local: dict[tuple[str, str], int] = {}
        """(room, sub) -> this node's joined connections of sub in room."""
        self._watchers: dict[str, dict[Connection, None]] = {}
        """Per presence room, this node's joined connections (events go to those with the right)."""
        self._pending: dict[str, dict[str, tuple[bool, Info]]] = {}
        """Per room, per sub changed this interval: (present before the first change, latest info)."""
        self._flusher: asyncio.Task[None] | None = None
        self.events_sent = 0
        """`presence` frames pushed to sockets."""
        self.on_event: Callable[[str, int], None] | None = None
        """Called with (room, frames) after each room's flush (metrics)."""

    @property
    def enabled(self) -> bool:
        return bool(self.rooms.patterns)

    def kept_for(self, room: str) -> bool:
        return self.rooms.allows(room)

    async def start(self, broker: Broker) -> None:
        if not self.enabled:
            return
        assert broker.nc is not None, "started after the broker connected"
        await self.bus.start(broker.nc)
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop(), name="presence events")

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        await self.bus.stop()

    def reconnected(self) -> None:
        """NATS came back: others may have missed our deltas, and we theirs."""
        if self.enabled:
            self.bus.hello()

    # --- this node's members ----------------------------------------------------

    def joined(self, conn: Connection, room: str) -> None:
        """`conn` is a member of `room` (its `joined` was sent)."""
        principal = conn.principal
        if not self.enabled or principal is None or not self.kept_for(room):
            return
        watchers = self._watchers.setdefault(room, {})
        if conn in watchers:
            return
        watchers[conn] = None
        key = (room, principal.sub)
        count = self._local.get(key, 0) + 1
        self._local[key] = count
        self.bus.local(room, principal.sub, count, principal.info)

    def left(self, conn: Connection, room: str) -> None:
        """`conn` is no longer a member of `room` (left, refused, or closed)."""
        watchers = self._watchers.get(room)
        if watchers is None or watchers.pop(conn, 0) is not None:
            return
        if not watchers:
            del self._watchers[room]
        principal = conn.principal
        if principal is None:
            return
        key = (room, principal.sub)
        count = self._local.get(key, 1) - 1
        if count > 0:
            self._local[key] = count
        else:
            self._local.pop(key, None)
        self.bus.local(room, principal.sub, count, principal.info)

    # --- reading -------------------------------------------------------------------

    def figures(self) -> tuple[int, int, int, int, int]:
        """For the metrics: (users, connections) over the presence rooms, events pushed,
        bus messages sent and received."""
        view = self.bus.view
        users = connections = 0
        for room in view.rooms():
            u, c = view.counts(room)
            users += u
            connections += c
        return users, connections, self.events_sent, self.bus.sent, self.bus.received

    def top_rooms(self, limit: int = 10) -> list[tuple[str, int, int]]:
        """The presence rooms with the most present users: (room, users, connections)."""
        view = self.bus.view
        counted = [(room, *view.counts(room)) for room in view.rooms()]
        counted.sort(key=lambda item: (-item[1], item[0]))
        return counted[:limit]

    def who(self, room: str, ref: object = None) -> Members:
        view = self.bus.view
        count, connections = view.counts(room)
        members, truncated = view.members(room, self.settings.max_presence_list)
        listed = [
            PresenceMember(m.sub, msgspec.Raw(m.info) if m.info is not None else msgspec.UNSET, m.connections)
            for m in members
        ]
        return Members(
            room=room,
            count=count,
            connections=connections,
            members=listed,
            truncated=truncated,
            ref=ref if isinstance(ref, int | str) else None,
        )

    # --- events ----------------------------------------------------------------------

    def _on_changes(self, changes: list[Change]) -> None:
        for change in changes:
            room = self._pending.setdefault(change.room, {})
            before = room.get(change.sub)
            was_present = (not change.joined) if before is None else before[0]
            room[change.sub] = (was_present, change.info)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.presence_interval)
            try:
                self.flush()
            except Exception:  # A bug here must not stop presence for good.
                log.exception("presence flush failed")

    def flush(self) -> None:
        """Send this interval's netted changes, one frame (or a few) per room."""
        pending, self._pending = self._pending, {}
        view = self.bus.view
        for room, subs in pending.items():
            watchers = self._watchers.get(room)
            if not watchers:
                continue
            if view.counts(room)[0] > self.settings.presence_events_max_members:
                continue
            joined: list[PresenceMember] = []
            left: list[PresenceLeft] = []
            for sub, (was_present, info) in subs.items():
                now_present = view.is_present(room, sub)
                if now_present and not was_present:
                    joined.append(PresenceMember(sub, msgspec.Raw(info) if info is not None else msgspec.UNSET))
                elif was_present and not now_present:
                    left.append(PresenceLeft(sub))
            if joined or left:
                frames = self._frames(room, joined, left)
                self._send(room, watchers, frames)

    def _frames(self, room: str, joined: list[PresenceMember], left: list[PresenceLeft]) -> list[bytes]:
        """The events as frames of at most `presence_frame_bytes` each (counting the frame's
        own fields; a single entry larger than that goes alone in a frame of its own)."""
        limit = self.settings.presence_frame_bytes
        envelope = len(_encode(Presence(room=room, joined=[], left=[])))
        frames: list[bytes] = []
        part_joined: list[PresenceMember] = []
        part_left: list[PresenceLeft] = []
        size = envelope
        items: list[PresenceMember | PresenceLeft] = [*joined, *left]
        for item in items:
            item_size = len(_encode(item)) + 1  # and its comma: a little more than the frame needs
            if size + item_size > limit and (part_joined or part_left):
                frames.append(_encode(Presence(room=room, joined=part_joined, left=part_left)))
                part_joined, part_left, size = [], [], envelope
            if isinstance(item, PresenceMember):
                part_joined.append(item)
            else:
                part_left.append(item)
            size += item_size
        if part_joined or part_left:
            frames.append(_encode(Presence(room=room, joined=part_joined, left=part_left)))
        return frames

    def _send(self, room: str, watchers: dict[Connection, None], frames: list[bytes]) -> None:
        framed: dict[object, list[bytes]] = {}
        sent = 0
        for conn in watchers:
            principal = conn.principal
            if principal is None or conn.closing or not principal.can_see_presence(room):
                continue
            framing = conn.transport_adapter.framing
            ready = framed.get(framing)
            if ready is None:
                ready = framed[framing] = [framing.frame(frame) for frame in frames]
            for frame in ready:
                conn.push(frame)
            sent += len(ready)
        self.events_sent += sent
        if self.on_event is not None and sent:
            self.on_event(room, sent)
