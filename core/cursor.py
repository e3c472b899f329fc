"""A room's position on one node: which sequence it has delivered up to.

Republished messages travel over core NATS, at most once, so a node can miss
one. Each republished message carries `Nats-Last-Sequence`, the previous
sequence stored for the same subject. Comparing it with the cursor tells the
three cases apart, with no I/O here: the feed decides what to fetch.

Nothing on `live.rooms.>` is trusted to be stored: a message whose `seq` is
past `ceiling` (far beyond anything the node has seen stored) is a jump the
stream has not confirmed. It is not delivered; the feed reads the room from
the stream instead, so only stored messages are ever delivered and a forged
sequence cannot move the cursor.
"""

from __future__ import annotations

import enum

from core.position import MAX_SEQUENCE


class Verdict(enum.Enum):
    DELIVER = "deliver"
    """Next in order: deliver it and advance."""
    STALE = "stale"
    """At or before the cursor: already delivered, drop it."""
    GAP = "gap"
    """Messages between the cursor and this one are missing: repair first."""
    UNCONFIRMED = "unconfirmed"
    """A jump past the ceiling: read the room from the stream, do not trust this message."""


class RoomCursor:
    """The last sequence delivered for one room on this node."""

    __slots__ = ("seq",)

    def __init__(self, seq: int) -> None:
        self.seq = seq

    def judge(self, seq: int, last_seq: int, ceiling: int = MAX_SEQUENCE) -> Verdict:
        """Judge a live message stored at `seq` whose predecessor was `last_seq`;
        `ceiling` is the highest sequence the stream could plausibly have reached."""
        if seq <= self.seq:
            return Verdict.STALE
        if seq > ceiling:
            return Verdict.UNCONFIRMED
        if last_seq <= self.seq:
            # last_seq < cursor happens when the predecessor was removed and
            # the cursor already passed it through a repair: still in order.
            return Verdict.DELIVER
        return Verdict.GAP
