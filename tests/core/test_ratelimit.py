"""The per-connection publish token bucket."""

from __future__ import annotations

import pytest

from core.ratelimit import TokenBucket


def test_burst_then_refusal() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [True, True, True]
    assert bucket.take(100.0) is False
    assert bucket.strikes == 1
    assert bucket.take(100.0) is False
    assert bucket.strikes == 2


def test_refill_at_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    for _ in range(3):
        assert bucket.take(0.0)
    assert not bucket.take(0.0)
    # Half a second at 2/s is one token.
    assert bucket.take(0.5)
    assert not bucket.take(0.5)
    # A quarter of a second is half a token: not enough yet; another quarter is.
    assert not bucket.take(0.75)
    assert bucket.take(1.0)


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=2, now=0.0)
    assert bucket.take(0.0)
    assert bucket.take(0.0)
    assert bucket.take(1000.0)
    assert bucket.tokens == pytest.approx(1.0)
    assert bucket.take(1000.0)
    assert not bucket.take(1000.0)


def test_strikes_count_refusals_in_a_row_and_reset_on_success() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=0.0)
    assert bucket.take(0.0)
    for expected in range(1, 6):
        assert not bucket.take(0.0)
        assert bucket.strikes == expected
    assert bucket.take(1.0)
    assert bucket.strikes == 0
    assert not bucket.take(1.0)
    assert bucket.strikes == 1


def test_steady_rate_is_sustained() -> None:
    bucket = TokenBucket(rate=20.0, burst=40, now=0.0)
    accepted = sum(bucket.take(i / 100) for i in range(1000))  # 100/s for 10 s
    # 40 at once, then 20/s over 9.99 s.
    assert 40 + 199 <= accepted <= 40 + 200
