"""A place in a room's history: a stream sequence under one epoch.

`seq` numbers a stored message (the JetStream stream sequence); `epoch` names
the life of the stream it was stored in (core.stream.epoch_of). A `seq` means
nothing under another epoch, so the two travel together: in `joined` and
`reset`, in a replay's bounds, and from the feed to the hub.
"""

from __future__ import annotations

from typing import NamedTuple

MAX_SEQUENCE = 2**64 - 1
"""JetStream stream sequences are unsigned 64-bit."""


class Position(NamedTuple):
    seq: int
    """A stored message's sequence, or 0 before the first message of a room."""
    epoch: str
    """The stream's life this `seq` belongs to; compare for equality only."""
