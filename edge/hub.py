"""The node's local room hub: who is a member where, and fan-out.

Purely local: the hub knows outboxes and frames, not NATS. The node's feed
listener calls `deliver` with each room's messages in order, once per node;
the node asks the broker to watch a room when its first member comes and to
stop after its last one goes (edge/interest.py).

Each message's JSON is encoded once (`data` spliced raw), then framed once per
transport kind present in the room (`Framing`), and the same bytes are pushed
to every member of that kind; nothing here awaits a client. Live members are
kept as bare outboxes in a dict (an idle node holds no object per membership,
and fan-out does no per-member bookkeeping); members still in their join seam
(edge/seam.py) are kept apart with their `JoinSeam`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import msgspec

from core.position import Position
from core.stored import StoredMessage
from edge.framing import Framing
from edge.outbox import Batch, Flusher, Outbox
from edge.seam import JoinSeam
from schemas import Msg, Reset

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode


def encode_msg(message: StoredMessage) -> bytes:
    """The `msg` frame of a stored message, as JSON; `data` is spliced raw."""
    return _encode(
        Msg(
            room=message.room,
            seq=message.seq,
            ts=message.ts,
            data=msgspec.Raw(message.data),
            id=message.id,
            from_=message.sender,
            encoding=message.encoding,
        )
    )


class Group:
    """A room's live members that use one framing, and their shared frames of this pass."""

    __slots__ = ("batch", "framing", "members")

    def __init__(self, framing: Framing) -> None:
        self.framing = framing
        # A dict used as an ordered set: O(1) removal, and smaller than a set.
        self.members: dict[Outbox, None] = {}
        self.batch: Batch | None = None
        """The members' shared frames of this pass (see edge.outbox)."""


class Room:
    """A room's local members: live ones by framing, joining ones with their seam."""

    __slots__ = ("groups", "joining", "name", "version")

    def __init__(self, name: str) -> None:
        self.name = name
        self.groups: list[Group] = []
        self.joining: dict[Outbox, tuple[JoinSeam, Framing]] = {}
        self.version = 0
        """Counts changes to the live members, so fan-out knows when to look again."""

    def group(self, framing: Framing) -> Group:
        for group in self.groups:
            if group.framing is framing:
                return group
        group = Group(framing)
        self.groups.append(group)
        return group

    def __len__(self) -> int:
        return sum(len(group.members) for group in self.groups) + len(self.joining)

    def __contains__(self, member: Outbox) -> bool:
        return member in self.joining or any(member in group.members for group in self.groups)

    def members(self) -> Iterator[Outbox]:
        for group in self.groups:
            yield from group.members
        yield from self.joining


class Hub:
    """Rooms with local members; the feed listener's local half."""

    def __init__(self, flusher: Flusher) -> None:
        self.rooms: dict[str, Room] = {}
        self._flusher = flusher
        self.deliveries = 0
        """Frames pushed to members by fan-out (for metrics and benchmarks)."""
        self.on_message: Callable[[StoredMessage, int], None] | None = None
        """Called once per message fanned out, with its member count (telemetry)."""
        self.on_empty: Callable[[str], None] | None = None
        """Called with a room's name when its last member leaves (the node releases its NATS interest)."""

    # --- the feed's side ----------------------------------------------------

    def deliver(self, room: str, messages: list[StoredMessage]) -> None:
        hub = self.rooms.get(room)
        if hub is None:
            return
        version = -1
        snapshots: list[tuple[Group, tuple[Outbox, ...]]] = []
        for message in messages:
            payload = encode_msg(message)
            seq = message.seq
            frames: dict[Framing, bytes] = {}
            if hub.joining:
                self._offer(hub, seq, payload, frames)
            if hub.version != version:
                # A snapshot: pushes never change membership, but a joiner may have gone live above.
                version = hub.version
                snapshots = [(group, tuple(group.members)) for group in hub.groups]
            members = len(hub.joining)
            for group, outboxes in snapshots:
                framing = group.framing
                frame = frames.get(framing)
                if frame is None:
                    frame = frames[framing] = framing.message(payload)
                group.batch = self._flusher.fanout(outboxes, frame, group.batch)
                members += len(outboxes)
            self.deliveries += members
            if self.on_message is not None:
                self.on_message(message, members)

    def _offer(self, hub: Room, seq: int, payload: bytes, frames: dict[Framing, bytes]) -> None:
        """Give a live message to the members still in their join seam."""
        for member, (seam, framing) in tuple(hub.joining.items()):
            if member.closed:
                continue  # overflowed or closing: it leaves the room on the next pass
            frame = frames.get(framing)
            if frame is None:
                frame = frames[framing] = framing.message(payload)
            if seam.offer(seq, frame):
                # Caught up: live from this very message (the group fan-out below sends it).
                self._go_live(hub, member, framing)
            elif seam.held_bytes + member.pending > member.limit:
                # Held frames count against the member's budget: one that does not read is a slow consumer.
                seam.held.clear()
                seam.held_bytes = 0
                member.overflow()

    def reset(self, room: str, position: Position) -> None:
        """Continuity is lost (a new epoch): every member gets `reset` and goes on after `position`."""
        hub = self.rooms.get(room)
        if hub is None:
            return
        payload = _encode(Reset(room=room, epoch=position.epoch, seq=position.seq))
        for group in hub.groups:
            frame = group.framing.frame(payload)
            for member in tuple(group.members):
                member.push(frame)
        for member, (seam, framing) in tuple(hub.joining.items()):
            seam.held.clear()
            seam.held_bytes = 0
            seam.start(position.seq)
            member.push(framing.frame(payload))

    # --- the members' side --------------------------------------------------

    def add_joining(self, member: Outbox, room: str, framing: Framing) -> JoinSeam:
        """`member` enters `room`'s join seam: live frames are held for it from now on."""
        hub = self.rooms.get(room)
        if hub is None:
            hub = self.rooms[room] = Room(room)
        seam = JoinSeam()
        hub.joining[member] = (seam, framing)
        return seam

    def seam_of(self, member: Outbox, room: str) -> JoinSeam | None:
        """The member's join seam of `room`, while it is in it (not left, not live, not rejoined)."""
        hub = self.rooms.get(room)
        entry = hub.joining.get(member) if hub is not None else None
        return entry[0] if entry is not None else None

    def finish_seam(self, member: Outbox, room: str, seam: JoinSeam, feed_cursor: int) -> None:
        """The backlog is sent: live now, or once the feed passes what the member already has."""
        hub = self.rooms.get(room)
        entry = hub.joining.get(member) if hub is not None else None
        if hub is None or entry is None or entry[0] is not seam:
            return
        if seam.finish(feed_cursor):
            self._go_live(hub, member, entry[1])

    def _go_live(self, hub: Room, member: Outbox, framing: Framing) -> None:
        del hub.joining[member]
        hub.group(framing).members[member] = None
        hub.version += 1

    def leave(self, member: Outbox, room: str) -> bool:
        hub = self.rooms.get(room)
        if hub is None:
            return False
        if hub.joining.pop(member, None) is None:
            for group in hub.groups:
                if group.members.pop(member, 0) is None:
                    break
            else:
                return False
        hub.version += 1
        if not hub.joining and not any(group.members for group in hub.groups):
            del self.rooms[room]
            if self.on_empty is not None:
                self.on_empty(room)
        return True

    def members(self, room: str) -> list[Outbox]:
        hub = self.rooms.get(room)
        return list(hub.members()) if hub is not None else []
