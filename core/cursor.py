"""A room's position on one node: which sequence it has delivered up to.

Republished messages travel over core NATS, at most once, so a node can miss
one. Each republished message carries `Nats-Last-Sequence`, the previous
sequence stored for the same subject. Comparing it with the cursor tells the
three cases apart, with no I/O here: the feed decides what to fetch.
"""

from __future__ import annotations

import enum


class Verdict(enum.Enum):
    DELIVER = "deliver"
    """Next in order: deliver it and advance."""
    STALE = "stale"
    """At or before the cursor: already delivered, drop it."""
    GAP = "gap"
    """Messages between the cursor and this one are missing: repair first."""


class RoomCursor:
    """The last sequence delivered for one room on this node."""

    __slots__ = ("seq",)

    def __init__(self, seq: int) -> None:
        self.seq = seq

    def judge(self, seq: int, last_seq: int) -> Verdict:
        """Judge a live message stored at `seq` whose predecessor was `last_seq`."""
        if seq <= self.seq:
            return Verdict.STALE
        if last_seq <= self.seq:
            # last_seq < cursor happens when the predecessor was removed and
            # the cursor already passed it through a repair: still in order.
            return Verdict.DELIVER
        return Verdict.GAP
