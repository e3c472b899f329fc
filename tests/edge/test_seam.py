"""The join seam with plain values: any interleaving of replayed and live messages gives each once, in order."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.seam import JoinSeam, Phase, merge


def test_merge_sends_what_is_past_the_last_and_advances() -> None:
    assert merge(5, [(3, "a"), (5, "b"), (6, "c"), (9, "d")]) == ([(6, "c"), (9, "d")], 9)
    assert merge(10, [(3, "a")]) == ([], 10)
    assert merge(0, []) == ([], 0)


@given(last=st.integers(0, 50), seqs=st.lists(st.integers(1, 100), unique=True).map(sorted))
def test_merge_is_exactly_the_tail_after_last(last: int, seqs: list[int]) -> None:
    out, new_last = merge(last, [(s, s) for s in seqs])
    assert [s for s, _ in out] == [s for s in seqs if s > last]
    assert new_last == max([last, *seqs])


@dataclass
class Join:
    """One join, as the edge runs it: the stored sequence, where the join starts, what the feed delivers."""

    stored: list[int]
    """The room's stored seqs, increasing (not dense: other rooms share the sequence)."""
    head: int
    """The feed's cursor when the join read it."""
    since: int | None
    """A recoverable `since`, or None (start at the head)."""
    added_at: int
    """The feed's cursor when the member entered the seam (at or before the head)."""
    feed_cursor_at_finish: int
    """Where the node's feed is when the backlog ends (an `ahead` member starts past it)."""


@st.composite
def joins(draw: st.DrawFn) -> Join:
    stored = sorted(draw(st.lists(st.integers(1, 400), min_size=0, max_size=40, unique=True)))
    points = [0, *stored]
    head_index = draw(st.integers(0, len(points) - 1))
    head = points[head_index]
    added_at = points[draw(st.integers(0, head_index))]
    since: int | None = None
    if draw(st.booleans()):
        # A `since` this node's feed has reached, or one from a node further on (ahead).
        since = points[draw(st.integers(0, len(points) - 1))]
    return Join(stored, head, since, added_at, head)


def expected(join: Join) -> list[int]:
    start = join.since if join.since is not None else join.head
    return [s for s in join.stored if s > start]


@settings(max_examples=400, deadline=None)
@given(join=joins(), data=st.data())
def test_any_interleaving_of_replay_and_live_gives_every_message_once_in_order(join: Join, data: st.DrawFn) -> None:
    """Events in any order the edge allows: live offers (the feed, in order, from `added_at`),
    replay batches (in order), takes of the held frames; then finish, then live until the end."""
    seam = JoinSeam()
    sent: list[int] = []
    live_queue = [s for s in join.stored if s > join.added_at]
    start = join.since if join.since is not None else join.head
    replay = [s for s in join.stored if join.since is not None and join.since < s <= join.head]
    # The member entered the seam when the feed was at `added_at`, and read the head later:
    # what the feed delivered in between (up to the head) was offered before `start`.
    offered = 0
    for seq in [s for s in live_queue if s <= join.head]:
        seam.offer(seq, b"%d" % seq)
        offered += 1
    seam.start(start)
    # The feed only goes past the head once the member is in; draw an interleaving of
    # the rest of the live messages, the replay's messages and takes.
    replay_left = list(replay)
    while replay_left or data.draw(st.booleans()):
        choice = data.draw(st.sampled_from(["live", "replay", "take"]))
        if choice == "live" and offered < len(live_queue):
            seq = live_queue[offered]
            seam.offer(seq, b"%d" % seq)
            offered += 1
        elif choice == "replay" and replay_left:
            seq = replay_left.pop(0)
            if seam.replayed(seq):
                sent.append(seq)
        elif choice == "take" and not replay_left:
            sent.extend(s for s, _ in seam.take())
        elif not replay_left and offered >= len(live_queue):
            break
    sent.extend(s for s, _ in seam.take())
    feed_cursor = live_queue[offered - 1] if offered else join.added_at
    live_now = seam.finish(max(feed_cursor, join.head))
    assert seam.phase is Phase.CATCHING_UP
    # The rest of the feed: while catching up, the seam says when a frame is the member's next.
    for seq in live_queue[offered:]:
        if live_now:
            sent.append(seq)
        elif seam.offer(seq, b"%d" % seq):
            live_now = True
            sent.append(seq)
    assert sent == expected(join), (sent, join)


def test_held_bytes_are_counted_and_released() -> None:
    seam = JoinSeam()
    seam.start(0)
    seam.offer(1, b"x" * 10)
    seam.offer(2, b"y" * 5)
    assert seam.held_bytes == 15
    assert [s for s, _ in seam.take()] == [1, 2]
    assert seam.held_bytes == 0 and not seam.held
