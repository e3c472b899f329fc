"""The trim policy: every thousand connections gone, down to the last ones."""

from __future__ import annotations

from edge.memory import TrimPolicy


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
