"""Reading a room backwards (core/history.py): the search on plain values, then on a real nats-server."""

from __future__ import annotations

import bisect
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.fetch import Batch
from core.history import MAX_PROBES, HistoryReader, Probe, find_window
from core.stored import StoredMessage
from tests.conftest import BOTH_HISTORY_SOURCES, Edge
from tests.edge.checker import stored_seqs


def probe_over(seqs: list[int]) -> Probe:
    """count(x) over a sorted list of a room's seqs: what one direct get tells."""

    async def probe(x: int) -> tuple[int | None, int]:
        i = bisect.bisect_left(seqs, x)
        return (seqs[i] if i < len(seqs) else None, len(seqs) - i)

    return probe


async def page_of(seqs: list[int], n: int, before: int) -> tuple[list[int], bool, int]:
    """A page as the reader makes it: the window, then a forward read of its span."""
    window = await find_window(probe_over(seqs), n, before)
    i = bisect.bisect_left(seqs, window.start)
    span = seqs[i : i + window.span] if window.span else []
    assert all(s < before for s in span), "the forward read stops before `before`"
    return (span[-window.keep :] if window.keep else []), window.more, window.probes


room_seqs = st.lists(st.integers(1, 5000), unique=True, max_size=400).map(sorted)


@settings(max_examples=300, deadline=None)
@given(seqs=room_seqs, n=st.integers(1, 120), before=st.integers(1, 5200))
async def test_a_window_is_exactly_the_newest_n_before(seqs: list[int], n: int, before: int) -> None:
    page, more, probes = await page_of(seqs, n, before)
    older = [s for s in seqs if s < before]
    assert page == older[-n:]
    assert more == (len(older) > n)
    assert probes <= MAX_PROBES


@settings(max_examples=200, deadline=None)
@given(seqs=room_seqs, n=st.integers(1, 60))
async def test_pages_from_the_head_down_concatenate_to_the_room(seqs: list[int], n: int) -> None:
    pages: list[list[int]] = []
    before = (seqs[-1] + 1) if seqs else 1
    while True:
        page, more, _ = await page_of(seqs, n, before)
        if page:
            pages.append(page)
        if not more:
            break
        before = page[0]
    assert [s for p in reversed(pages) for s in p] == seqs


@pytest.mark.parametrize(
    "label",
    ["spread evenly", "in bursts", "dense"],
)
async def test_probes_per_page_stay_few_whatever_the_stream_holds(label: str) -> None:
    """The cost figure of the module docstring: direct gets per page of 50, on rooms of
    10,000 messages in a stream of 1,000,000 (spread evenly), written in bursts, or alone."""
    rnd = random.Random(7)
    if label == "spread evenly":
        seqs = sorted(rnd.sample(range(1, 1_000_000), 10_000))
    elif label == "in bursts":
        starts = rnd.sample(range(1, 1_000_000), 40)
        seqs = sorted({start + j for start in starts for j in range(rnd.randint(1, 500))})
    else:
        seqs = list(range(1, 10_001))
    before, counts = seqs[-1] + 1, []
    while True:
        page, more, probes = await page_of(seqs, 50, before)
        counts.append(probes)
        if not more:
            break
        before = page[0]
    mean = sum(counts) / len(counts)
    print(f"{label}: {len(counts)} pages, probes per page mean {mean:.2f}, max {max(counts)}")
    assert mean < {"spread evenly": 5, "in bursts": 8, "dense": 4}[label]


# --- a room written while it is read ------------------------------------------------------


class GrowingRoom:
    """A room's stored seqs that grow while they are read: before answering each direct get,
    `appends[i]` new messages (the i-th get's) are stored after the last one, as a backend
    publishing meanwhile does. `fetch` answers as RoomFetcher.fetch does (next_by_subj, batch,
    `up_to` cut here and counted in `pending`, `max_bytes` with at least one message)."""

    def __init__(self, seqs: list[int], appends: list[int], size: int = 10) -> None:
        self.seqs = list(seqs)
        self.appends = appends
        self.size = size
        self.gets = 0

    async def fetch(self, room: str, after: int, batch: int, up_to: int | None, max_bytes: int) -> Batch:
        grow = self.appends[self.gets % len(self.appends)] if self.appends else 0
        self.gets += 1
        last = self.seqs[-1] if self.seqs else 0
        self.seqs += [last + 2 * (i + 1) for i in range(grow)]
        i = bisect.bisect_right(self.seqs, after)
        got = self.seqs[i : i + batch]
        if max_bytes > 0:
            got = got[: max(1, max_bytes // self.size)]
        pending = len(self.seqs) - i - len(got)
        if up_to is not None:
            kept = [s for s in got if s <= up_to]
            pending += len(got) - len(kept)
            got = kept
        return Batch([StoredMessage(room, s, 0, b"x" * self.size) for s in got], pending)


growth = st.lists(st.integers(0, 4), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(seqs=room_seqs, appends=growth, n=st.integers(1, 120), cut=st.integers(-3, 0))
async def test_a_page_is_exact_while_the_room_grows(seqs: list[int], appends: list[int], n: int, cut: int) -> None:
    """A page of the newest `n` before `before` (the head + 1 as the page starts, as the broker
    bounds it, or a little below) holds exactly those messages and `more` says whether older
    ones exist, however many messages are stored between its direct gets: all after `before`."""
    room = GrowingRoom(seqs, appends)
    before = max(1, (seqs[-1] if seqs else 0) + 1 + cut)
    older = [s for s in seqs if s < before]
    page = await HistoryReader(room.fetch).page("r", before, n, 0)
    assert [m.seq for m in page.messages] == older[-n:]
    assert page.more == (len(older) > n)


@settings(max_examples=300, deadline=None)
@given(seqs=room_seqs.filter(bool), appends=growth, n=st.integers(1, 120), back=st.integers(0, 30))
async def test_the_start_of_the_newest_n_is_exact_while_the_room_grows(
    seqs: list[int], appends: list[int], n: int, back: int
) -> None:
    """A join with `last`: the window of the newest `n` up to the head starts on the oldest of
    them and counts them exactly (what `joined.replayed` says), whatever is stored meanwhile."""
    room = GrowingRoom(seqs, appends)
    up_to = seqs[max(0, len(seqs) - 1 - back)]
    wanted = [s for s in seqs if s <= up_to][-n:]
    window = await HistoryReader(room.fetch).start_of_last("r", n, up_to, read_bytes=100)
    assert (window.start, window.keep) == (wanted[0], len(wanted))


@settings(max_examples=300, deadline=None)
@given(seqs=room_seqs.filter(bool), appends=growth, data=st.data())
async def test_a_range_is_counted_exactly_while_the_room_grows(
    seqs: list[int], appends: list[int], data: st.DataObject
) -> None:
    """The size of a `since` replay's rest: the room's messages in [start, up_to], exactly."""
    room = GrowingRoom(seqs, appends)
    up_to = data.draw(st.sampled_from(seqs))
    start = data.draw(st.integers(1, up_to + 1))
    count = await HistoryReader(room.fetch).count_in("r", start, up_to, read_bytes=100)
    assert count == len([s for s in seqs if start <= s <= up_to])


async def test_a_quiet_room_costs_one_direct_get_more_for_last_and_none_for_a_page() -> None:
    """The confirmation is one probe per join with `last`; a page spends no extra round."""
    seqs = list(range(1, 20_001, 3))
    quiet = GrowingRoom(seqs, [0])
    reader = HistoryReader(quiet.fetch)
    window = await reader.start_of_last("r", 50, seqs[-1])
    search = await find_window(probe_over(seqs), 50, seqs[-1] + 1, slack=0)
    assert window.start == seqs[-50] and window.probes == search.probes + 1
    quiet.gets = 0
    page = await reader.page("r", seqs[-1] + 1, 50, 0)
    assert [m.seq for m in page.messages] == seqs[-50:] and page.reads == 1 and quiet.gets == page.probes + 1


# --- against a real nats-server -------------------------------------------------------


@BOTH_HISTORY_SOURCES
async def test_history_pages_walk_back_over_interleaved_rooms(edge: Edge, backend: Any) -> None:
    js = backend.jetstream()
    rooms = ["hist.a", "hist.b", "hist.c"]
    rnd = random.Random(3)
    for i in range(900):
        room = rnd.choice(rooms) if i % 7 else "hist.a"
        await js.publish(f"rooms.{room}", json.dumps({"i": i}).encode())
    broker = edge.node.broker
    for room in rooms:
        stored = await stored_seqs(edge.servers[0], room)
        pages: list[list[int]] = []
        before: int | None = None
        while True:
            page = await broker.history_page(room, before, 37)
            seqs = [m.seq for m in page.messages]
            assert seqs == sorted(seqs) and len(seqs) <= 37
            if seqs:
                pages.append(seqs)
            if not page.more:
                break
            before = seqs[0]
        assert [s for p in reversed(pages) for s in p] == stored, room


@BOTH_HISTORY_SOURCES
async def test_a_page_is_bounded_in_bytes_and_says_more(make_edge: Any, backend: Any) -> None:
    edge = await make_edge(history_page_bytes=20_000)
    js = backend.jetstream()
    for i in range(30):
        await js.publish("rooms.big.page", json.dumps({"i": i, "pad": "x" * 4000}).encode())
    page = await edge.node.broker.history_page("big.page", None, 30)
    assert 1 <= len(page.messages) <= 5 and page.more
    stored = await stored_seqs(edge.servers[0], "big.page")
    assert [m.seq for m in page.messages] == stored[-len(page.messages) :], "cut to the newest"


@BOTH_HISTORY_SOURCES
async def test_an_empty_or_unknown_room_has_an_empty_page(edge: Edge) -> None:
    page = await edge.node.broker.history_page("nobody.here", None, 10)
    assert (page.messages, page.more) == ([], False)
