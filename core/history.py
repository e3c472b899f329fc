"""Reading a room backwards: where its newest `n` messages before a sequence start.

JetStream reads forwards only: a direct get with `next_by_subj` returns the room's
messages after a sequence, and nothing returns the ones before it. What it does return
with every message is `Nats-Num-Pending`, the number of the room's messages after that
one, so one direct get of a single message at sequence `x` tells exactly

    count(x) = the number of the room's stored messages with seq >= x

(and the seq of the first of them). `count` is a decreasing step function over the
stream's sequence, whatever other rooms hold in between, so the sequence where the
newest `n` messages before `B` start is where `count` crosses `count(B) + n`: found by
interpolation search, one probe per step, then read forwards from there in one batch.

Cost of a page of `n` (measured in tests/core/test_history.py and bench/; see the note
of issue 14):
- probes: 1 for `count(1)` (the room's size, which also answers `more`), 1 for
  `count(B)` when `B` is not past the head, then interpolation steps; rooms whose
  messages are spread evenly through the stream take 1 or 2 steps, whatever the
  room's and the stream's sizes; a room written in bursts takes more, at most about
  log2 of the sequence span (each step at least halves the bracket, see `_next_probe`);
- one forward read of at most `n + slack` messages (`slack` = n), bounded in bytes.
No consumer is created, and every request is a direct get that any replica answers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from core.fetch import Batch
from core.stored import StoredMessage

Probe = Callable[[int], Awaitable[tuple[int | None, int]]]
"""probe(x) -> (seq of the room's first message with seq >= x or None, count(x))."""


@dataclass(frozen=True, slots=True)
class Window:
    """Where a page starts: read forward from `start` and keep the last `keep` messages before `before`."""

    start: int
    """A sequence at or before the page's oldest message (0 when the room has nothing before `before`)."""
    span: int
    """How many of the room's messages lie in [start, before): the forward read's size."""
    keep: int
    """How many of them, the newest, make the page (min(n, all there are))."""
    more: bool
    """Older messages than the page's exist."""
    probes: int
    """Direct gets spent finding it (for metrics and the cost figures)."""


MAX_PROBES = 130
"""A safety bound: every other step at least halves the bracket (`find_window`), so 2 x 64
steps cover any 64-bit span."""


async def find_window(probe: Probe, n: int, before: int, *, slack: int | None = None) -> Window:
    """The window of the newest `n` messages with seq < `before` (before >= 1).

    `slack`: how many extra messages a final forward read may cover rather than
    probing again (default `n`); reading a few too many costs bytes, a probe costs a
    round trip.
    """
    if n < 1 or before < 1:
        raise ValueError("n and before are at least 1")
    slack = n if slack is None else slack
    probes = 0

    async def count(x: int) -> tuple[int | None, int]:
        nonlocal probes
        probes += 1
        return await probe(x)

    first, total = await count(1)
    if first is None or first >= before:
        return Window(0, 0, 0, False, probes)
    _, at_before = await count(before)
    available = total - at_before  # messages in [1, before)
    if available <= n + slack:
        # The whole room before `before` fits one read: no search.
        return Window(first, available, min(n, available), available > n, probes)
    target = at_before + n
    # Invariant: count(lo) >= target, lo being a message's seq; count(hi) < target.
    lo, count_lo = first, total
    hi, count_hi = before, at_before
    bisect = False
    while count_lo - at_before > n + slack and hi - lo > 1 and probes < MAX_PROBES:
        width = hi - lo
        x = lo + width // 2 if bisect else _interpolate(lo, count_lo, hi, count_hi, target)
        seq, c = await count(x)
        if seq is None or seq >= before or c < target:
            hi, count_hi = x, c
        else:
            lo, count_lo = seq, c
        # Interpolation that did not halve the bracket is not trusted for the next step:
        # bisecting then bounds a burst-written room at about 2 x log2(span) probes.
        bisect = not bisect and hi - lo > width // 2
    return Window(lo, count_lo - at_before, n, True, probes)


def _interpolate(lo: int, count_lo: int, hi: int, count_hi: int, target: int) -> int:
    """Where `count` reaches `target` if the room's messages in [lo, hi) are spread evenly.

    It aims a little past the target (towards older messages), so that the guess tends to
    land where count >= target: then the final forward read covers the page and no
    further probe is needed.
    """
    need = target - count_hi
    aim = need + max(1, need // 8)
    share = min(1.0, aim / max(1, count_lo - count_hi))
    guess = hi - round(share * (hi - lo))
    return min(max(guess, lo + 1), hi - 1)


# --- reading pages through direct gets ------------------------------------------

Fetch = Callable[[str, int, int, int | None, int], Awaitable[Batch]]
"""fetch(room, after, batch, up_to, max_bytes): RoomFetcher.fetch, or the replay slots' bounded one."""

ENVELOPE_BYTES = 160
"""What a message's `msg` fields add to its data in a page (room, seq, ts, id, from): an
estimate, only used to keep a page near `max_bytes`."""


@dataclass(frozen=True, slots=True)
class Page:
    messages: list[StoredMessage]
    """In increasing seq; all with seq < before."""
    more: bool
    """Older stored messages exist (the client pages back with before = messages[0].seq)."""
    probes: int
    reads: int
    """Direct gets of the forward read (1 unless the page is cut into batches by bytes)."""


class HistoryReader:
    """Pages and `last` windows of a room, from direct gets only (no consumer)."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch

    def probe_of(self, room: str) -> Probe:
        async def probe(x: int) -> tuple[int | None, int]:
            got = await self._fetch(room, x - 1, 1, None, 0)
            if not got.messages:
                return None, 0
            return got.messages[0].seq, 1 + got.pending

        return probe

    async def window(self, room: str, n: int, before: int, *, slack: int | None = None) -> Window:
        return await find_window(self.probe_of(room), n, before, slack=slack)

    async def start_of_last(self, room: str, n: int, up_to: int) -> Window:
        """The exact window of the newest `n` messages with seq <= up_to: `start` is the
        oldest of them (no slack, so no message before it is read)."""
        return await self.window(room, n, up_to + 1, slack=0)

    async def page(self, room: str, before: int, limit: int, max_bytes: int) -> Page:
        """The newest `limit` messages with seq < `before`, at most about `max_bytes` of them
        (always at least one): cut to its newest when larger, with `more` true."""
        window = await self.window(room, limit, before)
        if window.keep == 0:
            return Page([], False, window.probes, 0)
        kept: deque[StoredMessage] = deque()
        size = 0
        after, left, reads = window.start - 1, window.span, 0
        while left > 0:
            got = await self._fetch(room, after, min(left, READ_BATCH), before - 1, max_bytes)
            reads += 1
            if not got.messages:
                break  # A replica behind the one that counted: the page ends where it can read.
            for message in got.messages:
                kept.append(message)
                size += len(message.data) + ENVELOPE_BYTES
                while len(kept) > window.keep or (size > max_bytes and len(kept) > 1):
                    dropped = kept.popleft()
                    size -= len(dropped.data) + ENVELOPE_BYTES
            left -= len(got.messages)
            after = got.messages[-1].seq
            if after >= before - 1:
                break
        messages = list(kept)
        # Fewer than the window holds: cut by bytes (older ones exist), or a lagging replica.
        more = window.more or len(messages) < window.keep
        return Page(messages, more, window.probes, reads)


READ_BATCH = 256
"""Messages per forward read of a page (the direct get's batch)."""
