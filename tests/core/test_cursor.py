"""RoomCursor.judge, and a model of a node's gap logic over a lossy live path."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from core.cursor import RoomCursor, Verdict


def test_at_or_before_the_cursor_is_stale() -> None:
    cursor = RoomCursor(10)
    assert cursor.judge(10, 9) is Verdict.STALE
    assert cursor.judge(10, 0) is Verdict.STALE
    assert cursor.judge(3, 1) is Verdict.STALE
    assert cursor.judge(10, 10) is Verdict.STALE


def test_next_in_order_is_delivered() -> None:
    cursor = RoomCursor(10)
    assert cursor.judge(11, 10) is Verdict.DELIVER
    # Sequences are not dense: other rooms' messages sit in between.
    assert cursor.judge(57, 10) is Verdict.DELIVER
    # The predecessor is older than the cursor (the cursor passed it another way).
    assert cursor.judge(57, 4) is Verdict.DELIVER
    assert cursor.judge(57, 0) is Verdict.DELIVER


def test_a_predecessor_after_the_cursor_is_a_gap() -> None:
    cursor = RoomCursor(10)
    assert cursor.judge(20, 11) is Verdict.GAP
    assert cursor.judge(20, 19) is Verdict.GAP
    assert RoomCursor(0).judge(5, 3) is Verdict.GAP


def test_an_empty_room_delivers_its_first_message() -> None:
    assert RoomCursor(0).judge(1, 0) is Verdict.DELIVER
    assert RoomCursor(0).judge(99, 0) is Verdict.DELIVER


def test_judge_does_not_move_the_cursor() -> None:
    cursor = RoomCursor(10)
    for seq, last in ((11, 10), (20, 15), (5, 4)):
        cursor.judge(seq, last)
    assert cursor.seq == 10


# ---------------------------------------------------------------- state model


@dataclass
class Scenario:
    stored: list[int]
    """The room's stored sequences, increasing, with other rooms' sequences in between."""
    start: int
    """The node's cursor when its feed went live (the head it read, or anything after a rebase)."""
    live: list[tuple[int, int]]
    """(seq, last_seq) as they reach the node over core NATS: lossy, duplicated, never reordered."""
    horizons: list[int]
    """For each repair, how many extra stored messages the stream already holds past the seen one."""


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    steps = draw(st.lists(st.integers(1, 4), min_size=1, max_size=60))
    stored: list[int] = []
    seq = draw(st.integers(0, 5))
    for step in steps:
        seq += step  # step > 1: other rooms' messages in between
        stored.append(seq)
    # The feed subscribes before reading the head, so live messages may begin
    # before the cursor: those are already covered and must be dropped.
    start = draw(st.integers(0, stored[-1]))
    first_live = draw(st.integers(0, len(stored) - 1))
    last_seq = dict(zip(stored, [0, *stored[:-1]], strict=True))
    live: list[tuple[int, int]] = []
    candidates = stored[first_live:]
    for i, s in enumerate(candidates):
        final = i == len(candidates) - 1
        # The last message always arrives: a loss at the very end is only
        # noticed when a later message comes, so the model stops there.
        lost = not final and draw(st.booleans())
        if not lost:
            live.append((s, last_seq[s]))
            if draw(st.integers(0, 4)) == 0:
                live.append((s, last_seq[s]))  # the same message twice
        if live and draw(st.integers(0, 6)) == 0:
            live.append(draw(st.sampled_from(live)))  # an old message seen again
    if live[-1][0] != stored[-1]:
        live.append((stored[-1], last_seq[stored[-1]]))
    horizons = draw(st.lists(st.integers(0, 3), min_size=len(live), max_size=len(live)))
    return Scenario(stored, start, live, horizons)


def run_node(scenario: Scenario) -> list[int]:
    """A node as core/feed.py runs one room: judge each live message, repair on a gap."""
    cursor = RoomCursor(scenario.start)
    delivered: list[int] = []
    stored = scenario.stored
    for i, (seq, last) in enumerate(scenario.live):
        verdict = cursor.judge(seq, last)
        if verdict is Verdict.DELIVER:
            delivered.append(seq)
            cursor.seq = seq
        elif verdict is Verdict.GAP:
            # fetch_all(room, cursor): everything stored after the cursor, which
            # includes the seen message and maybe some stored after it.
            position = stored.index(seq)
            available = stored[: position + 1 + scenario.horizons[i]]
            fresh = [s for s in available if s > cursor.seq]
            assert fresh and fresh[-1] >= seq
            delivered.extend(fresh)
            cursor.seq = fresh[-1]
    return delivered


@settings(max_examples=500, deadline=None)
@given(scenarios())
def test_lossy_live_path_with_repairs_delivers_every_stored_message_once_in_order(scenario: Scenario) -> None:
    delivered = run_node(scenario)
    assert delivered == [s for s in scenario.stored if s > scenario.start]


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_without_loss_no_repair_is_needed(scenario: Scenario) -> None:
    # Deliver every stored message from the first after the cursor, each twice.
    last_seq = dict(zip(scenario.stored, [0, *scenario.stored[:-1]], strict=True))
    cursor = RoomCursor(scenario.start)
    delivered = []
    for s in scenario.stored:
        for _ in range(2):
            verdict = cursor.judge(s, last_seq[s])
            assert verdict is not Verdict.GAP
            if verdict is Verdict.DELIVER:
                delivered.append(s)
                cursor.seq = s
    assert delivered == [s for s in scenario.stored if s > scenario.start]


def test_duplicates_on_the_live_path_are_dropped() -> None:
    cursor = RoomCursor(0)
    out = []
    for seq, last in ((3, 0), (3, 0), (7, 3), (7, 3), (7, 3), (3, 0), (9, 7)):
        if cursor.judge(seq, last) is Verdict.DELIVER:
            out.append(seq)
            cursor.seq = seq
    assert out == [3, 7, 9]
