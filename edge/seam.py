"""The join seam: one member's messages of one room, from `joined` until they are live.

A join starts at a point `start` in the room (`joined.seq` without `since`,
or `since` when it is recoverable) and must give the member every stored
message after it, once, in order, whatever the timing of three sources:

- the replay, read from the stream in batches, covering (since, head];
- live messages the feed delivers meanwhile (they are held here);
- live messages after the member is live.

The member is added to the room before the feed's cursor (the head) is read,
so every message after the head reaches `offer`; some at or before it may too.
A member may also start ahead of this node's feed (it resumed with a `since`
got from a node whose feed is further on): live messages up to `since` are
then skipped until the feed passes it.

The whole rule is `merge`: of what comes, send what is past the last seq
sent, and advance. `JoinSeam` applies it as the events arrive; the hub and
the backlog task only move frames. Held frames count against the member's
outbound budget (`held_bytes`): a member that does not read is closed with
4008 like any slow consumer, instead of growing memory without bound.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def merge(last: int, frames: Iterable[tuple[int, T]]) -> tuple[list[tuple[int, T]], int]:
    """The frames to send after `last`, in order, each once, and the new last seq.

    `frames` arrive in increasing seq (each source is ordered); anything at or
    before `last` has been sent already.
    """
    out: list[tuple[int, T]] = []
    for seq, frame in frames:
        if seq > last:
            out.append((seq, frame))
            last = seq
    return out, last


class Phase(enum.Enum):
    REPLAYING = "replaying"
    """The replay (or the held frames after it) is being sent: live frames are held."""
    CATCHING_UP = "catching up"
    """Nothing is held; the member is ahead of the feed: live frames up to `last` are skipped."""


class JoinSeam:
    __slots__ = ("held", "held_bytes", "last", "phase")

    def __init__(self) -> None:
        self.phase = Phase.REPLAYING
        self.last = 0
        """The last seq this member has been sent (or starts after)."""
        self.held: list[tuple[int, bytes]] = []
        """Live frames that came while replaying, not yet merged."""
        self.held_bytes = 0

    def start(self, after: int) -> None:
        """The member starts after seq `after` (the head, or its `since`)."""
        self.last = after

    def offer(self, seq: int, frame: bytes) -> bool:
        """A live frame of the room. True when the member is caught up with the feed and
        this frame is its next one: the caller makes the member live and sends it."""
        if self.phase is Phase.REPLAYING:
            self.held.append((seq, frame))
            self.held_bytes += len(frame)
            return False
        return seq > self.last

    def replayed(self, seq: int) -> bool:
        """The replay is about to send `seq`; False when it was sent already (it is skipped)."""
        if seq <= self.last:
            return False
        self.last = seq
        return True

    def take(self) -> list[tuple[int, bytes]]:
        """The held frames to send now, merged after what was sent; the hold empties."""
        if not self.held:
            return []
        held, self.held, self.held_bytes = self.held, [], 0
        fresh, self.last = merge(self.last, held)
        return fresh

    def finish(self, feed_cursor: int) -> bool:
        """The replay and the held frames are sent (call with nothing held, and no await
        since the last `take`). True when the member can go live now; else it catches up."""
        assert not self.held, "take() until empty before finish()"
        self.phase = Phase.CATCHING_UP
        return feed_cursor >= self.last
