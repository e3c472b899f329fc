"""Reading a room backwards (core/history.py): the search on plain values, then on a real nats-server."""

from __future__ import annotations

import bisect
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.history import MAX_PROBES, Probe, find_window
from tests.conftest import Edge
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


# --- against a real nats-server -------------------------------------------------------


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


async def test_a_page_is_bounded_in_bytes_and_says_more(make_edge: Any, backend: Any) -> None:
    edge = await make_edge(history_page_bytes=20_000)
    js = backend.jetstream()
    for i in range(30):
        await js.publish("rooms.big.page", json.dumps({"i": i, "pad": "x" * 4000}).encode())
    page = await edge.node.broker.history_page("big.page", None, 30)
    assert 1 <= len(page.messages) <= 5 and page.more
    stored = await stored_seqs(edge.servers[0], "big.page")
    assert [m.seq for m in page.messages] == stored[-len(page.messages) :], "cut to the newest"


async def test_an_empty_or_unknown_room_has_an_empty_page(edge: Edge) -> None:
    page = await edge.node.broker.history_page("nobody.here", None, 10)
    assert (page.messages, page.more) == ([], False)
