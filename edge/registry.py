"""The node's rooms: who is a member where, the join seam, and fan-out.

The core feed calls `deliver` with each room's messages in order, once per
node. Each message is encoded into a WebSocket frame once, and the same bytes
are pushed to every member's outbox; nothing here awaits a client.

A member that is joining with `since` is "held": live messages for it are
kept aside while its replay is read. When the replay ends, held messages at or
below the last replayed `seq` are dropped and the rest follow, so the seam has
no gap and no duplicate.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec

from core.broker import Broker, Replay
from core.stored import StoredMessage
from edge.wsframe import text_frame
from schemas import Joined, Msg, Reset

if TYPE_CHECKING:
    from edge.connection import Connection

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode


def encode_msg(message: StoredMessage) -> bytes:
    """The `msg` frame of a stored message, as a WebSocket frame; `data` is spliced raw."""
    return text_frame(
        _encode(
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
    )


class Member:
    """One connection's membership of one room."""

    __slots__ = ("conn", "held", "seq")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.seq = 0
        """The last seq sent to this member for this room."""
        self.held: list[tuple[int, bytes]] | None = []
        """Live frames kept while the join is in progress; None once live."""


class Room:
    __slots__ = ("members", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: dict[Connection, Member] = {}


class JoinResult:
    __slots__ = ("joined", "member", "replay")

    def __init__(self, joined: Joined, member: Member, replay: Replay | None) -> None:
        self.joined = joined
        self.member = member
        self.replay = replay


class Registry:
    """Rooms with local members; the core feed's listener."""

    def __init__(self) -> None:
        self.rooms: dict[str, Room] = {}
        self.broker: Broker | None = None
        self.deliveries = 0
        """Frames pushed to members by fan-out (for metrics and benchmarks)."""

    # --- the feed's side ----------------------------------------------------

    def deliver(self, room: str, messages: list[StoredMessage]) -> None:
        hub = self.rooms.get(room)
        if hub is None:
            return
        # A snapshot: a member may leave while we walk them (a close from a timer, a test hook).
        members = tuple(hub.members.values())
        for message in messages:
            frame = encode_msg(message)
            seq = message.seq
            for member in members:
                if member.held is not None:
                    member.held.append((seq, frame))
                elif seq > member.seq:
                    member.seq = seq
                    member.conn.outbox.push(frame)
            self.deliveries += len(members)

    def reset(self, room: str, epoch: str, seq: int) -> None:
        hub = self.rooms.get(room)
        if hub is None:
            return
        frame = text_frame(_encode(Reset(room=room, epoch=epoch, seq=seq)))
        for member in tuple(hub.members.values()):
            member.seq = seq
            if member.held is not None:
                member.held.clear()
            member.conn.outbox.push(frame)

    # --- the connections' side ---------------------------------------------

    async def join(self, conn: Connection, room: str, since: int | None, epoch: str | None) -> JoinResult | None:
        """Make `conn` a member of `room`; None when the connection left meanwhile.

        The caller sends `joined`, then the replay's batches, then drains
        `take_held` until it is empty and calls `go_live` with no await between
        the last two, checking `is_current` after every await.
        """
        broker = self._broker()
        hub = self.rooms.get(room)
        if hub is None:
            hub = self.rooms[room] = Room(room)
        member = Member(conn)
        hub.members[conn] = member
        try:
            await broker.watch(room)
            # Read after watch returns: anything newer than this reaches `held`.
            head = broker.feeds.cursor(room)
            replay: Replay | None = None
            member.seq = head
            if since is not None and (epoch is None or epoch == broker.epoch):
                outcome = await broker.replay(room, since, head)
                if outcome.recovered:
                    replay = outcome
                    member.seq = max(head, since)
        except BaseException:
            if hub.members.get(conn) is member:
                self._remove(hub, conn)
            raise
        if hub.members.get(conn) is not member or self.rooms.get(room) is not hub:
            return None
        recovered = replay is not None
        return JoinResult(Joined(room=room, epoch=broker.epoch, seq=head, recovered=recovered), member, replay)

    @staticmethod
    def take_held(member: Member) -> list[tuple[int, bytes]]:
        """Frames held for a joining member since the last call (newer than what it got)."""
        if not member.held:
            return []
        held, member.held = member.held, []
        fresh = [(seq, frame) for seq, frame in held if seq > member.seq]
        if fresh:
            member.seq = fresh[-1][0]
        return fresh

    @staticmethod
    def go_live(member: Member) -> None:
        """Switch a joined member to live delivery; nothing may be held any more."""
        assert not member.held, "take_held until empty before go_live"
        member.held = None

    def is_current(self, member: Member, room: str) -> bool:
        """Whether `member` still is its connection's membership of `room` (not left, not rejoined)."""
        hub = self.rooms.get(room)
        return hub is not None and hub.members.get(member.conn) is member

    def leave(self, conn: Connection, room: str) -> bool:
        hub = self.rooms.get(room)
        if hub is None or conn not in hub.members:
            return False
        self._remove(hub, conn)
        return True

    def _remove(self, hub: Room, conn: Connection) -> None:
        del hub.members[conn]
        if not hub.members and self.rooms.get(hub.name) is hub:
            del self.rooms[hub.name]
            self._broker().feeds.unwatch(hub.name)

    def _broker(self) -> Broker:
        assert self.broker is not None, "Registry.broker is set at start"
        return self.broker
