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
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from core.broker import Broker, Replay
from core.stored import StoredMessage
from edge.outbox import Batch, Flusher
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
    """A connection joining a room: its seam state, until `go_live`.

    Live members are kept as bare connections (see `Room`), so an idle node
    holds no object per membership and fan-out does no per-member bookkeeping.
    """

    __slots__ = ("conn", "held", "room", "seq")

    def __init__(self, conn: Connection, room: str) -> None:
        self.conn = conn
        self.room = room
        self.seq = 0
        """The last seq sent to this member for this room."""
        self.held: list[tuple[int, bytes]] | None = []
        """Live frames kept while the join is in progress; None once live."""


class Room:
    """A room's local members, in three groups.

    `live` members get every frame fan-out delivers. `joining` members are in
    the join seam: their live frames are held. `ahead` members are live but
    have already received (through another node) messages up to a seq this
    node's feed has not reached; frames up to it are skipped for them. That
    last case is rare and short, so the common path tests nothing per member.
    """

    __slots__ = ("ahead", "batch", "joining", "live", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.batch: Batch | None = None
        """The live members' shared frames of this pass (see edge.outbox)."""
        # A dict used as an ordered set: O(1) removal, and smaller than a set.
        self.live: dict[Connection, None] = {}
        self.joining: dict[Connection, Member] = {}
        self.ahead: dict[Connection, int] = {}

    @property
    def members(self) -> list[Connection]:
        return [*self.live, *self.joining]

    def __contains__(self, conn: Connection) -> bool:
        return conn in self.live or conn in self.joining


class JoinResult:
    __slots__ = ("joined", "member", "replay")

    def __init__(self, joined: Joined, member: Member, replay: Replay | None) -> None:
        self.joined = joined
        self.member = member
        self.replay = replay


class Registry:
    """Rooms with local members; the core feed's listener."""

    def __init__(self, flusher: Flusher) -> None:
        self.rooms: dict[str, Room] = {}
        self._flusher = flusher
        self.broker: Broker | None = None
        self.deliveries = 0
        """Frames pushed to members by fan-out (for metrics and benchmarks)."""
        self.on_message: Callable[[StoredMessage, int], None] | None = None
        """Called once per message fanned out, with its member count (telemetry)."""

    # --- the feed's side ----------------------------------------------------

    def deliver(self, room: str, messages: list[StoredMessage]) -> None:
        hub = self.rooms.get(room)
        if hub is None:
            return
        # A snapshot: a member may leave while we walk them (a close from a timer, a test hook).
        live = tuple(hub.live)
        for message in messages:
            frame = encode_msg(message)
            seq = message.seq
            if hub.ahead:
                self._deliver_past_ahead(hub, live, seq, frame)
            else:
                hub.batch = self._flusher.fanout(live, frame, hub.batch)
            if hub.joining:
                for member in tuple(hub.joining.values()):
                    if member.held is not None:
                        member.held.append((seq, frame))
            members = len(live) + len(hub.joining)
            self.deliveries += members
            if self.on_message is not None:
                self.on_message(message, members)

    @staticmethod
    def _deliver_past_ahead(hub: Room, live: tuple[Connection, ...], seq: int, frame: bytes) -> None:
        """Fan-out while some members are ahead of the feed: skip what they already have."""
        ahead = hub.ahead
        for conn in live:
            floor = ahead.get(conn)
            if floor is None:
                conn.push(frame)
            elif seq > floor:
                del ahead[conn]
                conn.push(frame)

    def reset(self, room: str, epoch: str, seq: int) -> None:
        hub = self.rooms.get(room)
        if hub is None:
            return
        frame = text_frame(_encode(Reset(room=room, epoch=epoch, seq=seq)))
        # Everyone goes on from `seq`: nobody is ahead of it any more.
        hub.ahead.clear()
        for conn in tuple(hub.live):
            conn.push(frame)
        for member in tuple(hub.joining.values()):
            member.seq = seq
            if member.held is not None:
                member.held.clear()
            member.conn.push(frame)

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
        member = Member(conn, hub.name)
        hub.joining[conn] = member
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
            if hub.joining.get(conn) is member:
                self._remove(hub, conn)
            raise
        if hub.joining.get(conn) is not member or self.rooms.get(room) is not hub:
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

    def go_live(self, member: Member) -> None:
        """Switch a joined member to live delivery; nothing may be held any more."""
        assert not member.held, "take_held until empty before go_live"
        member.held = None
        hub = self.rooms.get(member.room)
        conn = member.conn
        if hub is None or hub.joining.get(conn) is not member:
            return
        del hub.joining[conn]
        hub.live[conn] = None
        # Everything up to the feed's cursor reached this member (replayed, held
        # or skipped as already seen). A member that is further on (it resumed
        # with a `since` got from a node whose feed is ahead of ours) must not
        # get the messages in between twice.
        if member.seq > self._broker().feeds.cursor(member.room):
            hub.ahead[conn] = member.seq

    def is_current(self, member: Member, room: str) -> bool:
        """Whether `member` still is its connection's membership of `room` (not left, not rejoined)."""
        hub = self.rooms.get(room)
        return hub is not None and hub.joining.get(member.conn) is member

    def leave(self, conn: Connection, room: str) -> bool:
        hub = self.rooms.get(room)
        if hub is None or conn not in hub:
            return False
        self._remove(hub, conn)
        return True

    def _remove(self, hub: Room, conn: Connection) -> None:
        if conn in hub.live:
            del hub.live[conn]
            hub.ahead.pop(conn, None)
        else:
            del hub.joining[conn]
        if not hub.live and not hub.joining and self.rooms.get(hub.name) is hub:
            del self.rooms[hub.name]
            self._broker().feeds.unwatch(hub.name)

    def _broker(self) -> Broker:
        assert self.broker is not None, "Registry.broker is set at start"
        return self.broker
