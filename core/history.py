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
- probes: 1 for `count(B)` (the reference, measured first; nothing when `B` is past the
  head), 1 for `count(1)` (the room's size and first seq, which also answers `more`),
  then interpolation steps; rooms whose messages are spread evenly through the stream
  take 1 or 2 steps, whatever the room's and the stream's sizes; a room written in
  bursts takes more, at most about 2 x log2 of the sequence span (every other step at
  least halves the bracket, see `find_window`);
- one forward read of at most `n + slack` messages (`slack` = n), bounded in bytes.
The start of a join's newest `last` costs one probe more (its confirmation, below).
No consumer is created, and every request is a direct get that any replica answers.

What those requests cost nats-server (bench/, `direct_get_costs`: 1,000,000 messages over
10,000 rooms, each room spread through the whole stream, nats-server 2.15, file store): a
room's first or last message and a message by seq cost 0.1-0.3 ms of its CPU, because it
jumps to them (its per-subject index knows a subject's first and last, and a seq is an
offset); a room's next message after an arbitrary seq costs 2.2-2.6 ms and a read of a small
room's 50 messages 17-27 ms (two runs), because the file store finds a subject's next message by scanning
its block from the given seq, message by message, and knows nothing finer than a subject's
first and last per 8 MB block. So a count probe and the forward read cost about the number
of the stream's messages between the room's (all of them, for a room spread through it), not
the room's size: that, not the number of requests, is what a page costs, and what keeps pages
of 50 from being served at 200/s on two cores. Fewer probes would not change it, nor would
walking back with `multi_last` and `up_to_seq` (a room's newest message at or before a random
seq costs ~1.7 ms: the same scan). What the store does cheaply is reading in seq order: 50
consecutive messages of any rooms cost ~0.27 ms (5 us a message), one by seq ~0.07 ms. So a
node first asks its history cache (core/tailcache.py), which follows the stream in seq order
and answers pages and `last` windows from memory; what it cannot prove (messages older than
it holds, a follower behind) is read here, by subject.

Messages stored meanwhile. A room written while it is read shifts every later count by what
was appended since (all of it at or after `before`): count_t(x) = c(x) + a(t), with c(x) the
room's messages in [x, before) and a(t) those at or after `before` at time t, which only
grows. So `count(before)` is measured first (the window's `reference`): every later count is
then at least c(x) + reference, the read sizes they give are never too small, and a search
can only end too late (fewer than `n` messages from its start), never too early. Then:
- a page reads forward from where the search ended and, when it got fewer than asked while
  older messages exist, searches again before its oldest one (`HistoryReader.page`): pages are
  exact whatever is written meanwhile, and the extra round is spent only when something was;
- the start of the newest `n` (a join with `last`, whose size `joined.replayed` is sent before
  the messages are read) is confirmed by measuring `count(before)` again: unchanged, nothing
  was appended during the search and every count was exact; changed, the search runs again,
  and a room written faster than a search runs has its start found by reading seqs
  (`SEARCH_TRIES`, `HistoryReader.start_of_last`);
- the size of a range (`HistoryReader.count_in`: a `since` replay's) brackets its probe
  between two of `count(up_to + 1)` the same way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import msgspec

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
    """How many of the room's messages lie in [start, before): the forward read's size (at least
    that many when messages were stored during the search)."""
    keep: int
    """How many of them, the newest, make the page (min(n, all there are))."""
    more: bool
    """Older messages than the page's exist."""
    probes: int
    """Direct gets spent finding it (for metrics and the cost figures)."""
    first: int = 0
    """The room's first stored seq (0 when it has none, or when not measured)."""
    reference: int = 0
    """count(before) as measured first: measured again and different, messages were stored meanwhile."""


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

    # The reference first: every count after it includes what it counted (module docstring).
    _, at_before = await count(before)
    first, total = await count(1)
    if first is None or first >= before:
        return Window(0, 0, 0, False, probes, first or 0, at_before)
    available = total - at_before  # messages in [1, before), or more if some were stored meanwhile
    if available <= n + slack:
        # The whole room before `before` fits one read: no search.
        return Window(first, available, min(n, available), available > n, probes, first, at_before)
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
    return Window(lo, count_lo - at_before, n, True, probes, first, at_before)


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
    """Direct gets of the forward reads (1 unless the page is read in several batches, or messages
    stored during the search needed a second round)."""


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

    async def start_of_last(self, room: str, n: int, up_to: int, *, read_bytes: int = 0) -> Window:
        """The exact window of the newest `n` messages with seq <= up_to: `start` is the oldest of
        them (no slack, so no message before it is read) and `keep` their number, whatever is
        stored meanwhile (module docstring). `read_bytes` bounds each read of the fallback."""
        probe = self.probe_of(room)
        probes = 0
        for _ in range(SEARCH_TRIES):
            window = await find_window(probe, n, up_to + 1, slack=0)
            probes += window.probes
            if window.keep == 0:
                return replace(window, probes=probes)
            _, again = await probe(up_to + 1)
            probes += 1
            if again == window.reference and window.span == window.keep:
                return replace(window, probes=probes)
        # Written faster than a search runs: the start by reading (seqs only, no data kept).
        newest = await self._newest(room, n, up_to + 1, None, read_bytes, light=True)
        probes += newest.probes
        if not newest.messages:
            return Window(0, 0, 0, False, probes)
        count = len(newest.messages)
        return Window(newest.messages[0].seq, count, count, newest.more, probes)

    async def count_in(self, room: str, start: int, up_to: int, *, read_bytes: int = 0) -> int:
        """How many of the room's messages have seq in [start, up_to], exactly: count(start) is
        bracketed by two measures of count(up_to + 1), equal when nothing was stored meanwhile;
        a room written faster than that is counted by reading."""
        if up_to < start:
            return 0
        probe = self.probe_of(room)
        _, beyond = await probe(up_to + 1)
        for _ in range(COUNT_TRIES):
            _, at = await probe(start)
            _, again = await probe(up_to + 1)
            if again == beyond:
                return at - beyond
            beyond = again
        count, after = 0, start - 1
        while after < up_to:
            got = await self._fetch(room, after, READ_BATCH, up_to, read_bytes)
            if not got.messages:
                break
            count += len(got.messages)
            after = got.messages[-1].seq
        return count

    async def page(self, room: str, before: int, limit: int, max_bytes: int) -> Page:
        """The newest `limit` messages with seq < `before`, at most about `max_bytes` of them
        (always at least one; 0: no bound): cut to its newest when larger, with `more` true."""
        return await self._newest(room, limit, before, max_bytes or None, max_bytes)

    async def _newest(
        self, room: str, n: int, before: int, budget: int | None, read_bytes: int, *, light: bool = False
    ) -> Page:
        """The newest `n` messages with seq < `before`, in rounds: a window, one forward read of
        it; when the read got fewer than the window promised (messages were stored during the
        search, which then ends too late) and older ones exist, a new window before the oldest
        read. `budget` bounds the page's bytes (the newest are kept); `light` keeps seqs only."""
        kept: deque[StoredMessage] = deque()
        size = probes = reads = 0
        bound, more = before, False
        while len(kept) < n:
            want = n - len(kept)
            window = await self.window(room, want, bound)
            probes += window.probes
            if window.keep == 0:
                more = False
                break
            left = None if budget is None else budget - size
            part, part_size, part_reads, cut = await self._read(
                room, window, bound, want, left, read_bytes, light, kept
            )
            reads += part_reads
            kept.extendleft(reversed(part))
            size += part_size
            if cut or not part:
                # Cut by bytes (older ones exist), or a replica behind the one that counted:
                # the page ends where it can read.
                more = True
                break
            bound = kept[0].seq
            more = window.first < bound
            if not more or (budget is not None and size >= budget):
                break
        return Page(list(kept), more, probes, reads)

    async def _read(
        self,
        room: str,
        window: Window,
        bound: int,
        want: int,
        budget: int | None,
        read_bytes: int,
        light: bool,
        newer: deque[StoredMessage],
    ) -> tuple[deque[StoredMessage], int, int, bool]:
        """One forward read of `window` up to `bound` (excluded): its newest `want` messages within
        `budget` bytes (all of them may go when `newer` ones are kept already), their size, the
        reads spent, and whether bytes cut it."""
        part: deque[StoredMessage] = deque()
        size = reads = 0
        cut = False
        after, left = window.start - 1, window.span
        while left > 0:
            got = await self._fetch(room, after, min(left, READ_BATCH), bound - 1, read_bytes)
            reads += 1
            if not got.messages:
                break
            for message in got.messages:
                if light:
                    message = msgspec.structs.replace(message, data=b"")
                part.append(message)
                size += len(message.data) + ENVELOPE_BYTES
                while len(part) > want:
                    size -= len(part.popleft().data) + ENVELOPE_BYTES
                while budget is not None and size > budget and (len(part) > 1 or (len(part) == 1 and bool(newer))):
                    size -= len(part.popleft().data) + ENVELOPE_BYTES
                    cut = True
            left -= len(got.messages)
            after = got.messages[-1].seq
            if after >= bound - 1:
                break
        return part, size, reads, cut


SEARCH_TRIES = 2
"""Searches for the start of the newest `n` tried before a room written faster than they run is read
instead (a try costs a search and a probe; the fallback a page of seqs)."""
COUNT_TRIES = 5
"""Bracketed counts tried before a range is counted by reading (a try costs 2 probes; the fallback a
read of the whole range, up to `max_replay` messages)."""

READ_BATCH = 256
"""Messages per forward read of a page (the direct get's batch)."""
