"""Broker health as plain arithmetic over a clock."""

from __future__ import annotations

from core.health import PROBE_INTERVAL, BrokerHealth


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_answering_until_silent_for_longer_than_unready_after() -> None:
    clock = Clock()
    health = BrokerHealth(3.0, clock)
    assert health.answering and not health.probe_due()
    clock.now += PROBE_INTERVAL
    assert health.probe_due() and health.answering
    clock.now += 2.5
    assert not health.answering, "3.5 s of silence"
    health.answered()
    assert health.answering and health.silence == 0


def test_a_timed_out_request_is_not_answering_until_the_next_answer() -> None:
    clock = Clock()
    health = BrokerHealth(3.0, clock)
    sent_at = health.now()
    clock.now += 1.0
    health.missed(sent_at)
    assert not health.answering and health.probe_due() and health.misses == 1
    clock.now += 0.1
    health.answered()
    assert health.answering


def test_a_request_from_before_the_last_answer_that_times_out_changes_nothing() -> None:
    """Its answer went to a connection replaced since (a reconnect): NATS answers, the request was lost."""
    clock = Clock()
    health = BrokerHealth(3.0, clock)
    sent_at = health.now()
    clock.now += 0.5
    health.answered()  # e.g. the reconnect, or a probe's PONG
    clock.now += 4.5
    health.missed(sent_at)
    assert health.misses == 0 and health.silence == 4.5
