"""The memory policies: trims after waves of closes, and how full collections are kept short."""

from __future__ import annotations

import gc
import weakref

from edge.memory import CollectorPolicy, TrimPolicy


def test_a_closing_wave_trims_at_every_step_and_at_the_end() -> None:
    policy = TrimPolicy(step=1000)
    assert not any(policy.observe(n) for n in range(0, 5001, 250))  # growing: never
    trims = [n for n in range(5000, -1, -100) if policy.observe(n)]
    assert trims == [4000, 3000, 2000, 1000, 0]


def test_ripples_never_trim() -> None:
    policy = TrimPolicy(step=1000)
    assert not any(policy.observe(n) for n in [900, 100, 950, 10, 999, 0] * 10)


def test_the_tail_of_a_wave_is_trimmed_too() -> None:
    policy = TrimPolicy(step=1000)
    policy.observe(5000)
    trims = [n for n in (4400, 3700, 2900, 2150, 1300, 550, 200, 0, 0, 0) if policy.observe(n)]
    assert trims == [3700, 2150, 550, 0]


def test_collector_freezes_after_an_automatic_full_collection_and_unfreezes_for_churn() -> None:
    policy = CollectorPolicy(min_closed=10)
    try:
        gc.collect()  # stands for an automatic full collection the policy has not seen yet
        assert policy.tick(open_connections=100) == "freeze"
        assert gc.get_freeze_count() > 0
        assert policy.tick(open_connections=100) is None

        # A closed connection's cycle, frozen while it was alive: plain collections cannot free it.
        probe = weakref.ref(Cycle())
        gc.freeze()
        gc.collect()
        assert probe() is not None
        assert policy.tick(open_connections=100) == "freeze"  # that collection was seen too

        for _ in range(24):
            policy.connection_closed()
        assert policy.tick(open_connections=100) is None  # 24 closed < max(10, 100 // 4)
        policy.connection_closed()
        assert policy.tick(open_connections=100) == "full"
        assert probe() is None
        assert policy.closed == 0
    finally:
        gc.unfreeze()


class Cycle:
    def __init__(self) -> None:
        self.me = self
