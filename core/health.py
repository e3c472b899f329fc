"""Whether the broker answers: what readiness reports beside "connected".

A NATS server that hangs (stopped, its TCP connections open) keeps nats-py
"connected" until two of its pings go unanswered, which with nats-py's
defaults takes about four minutes; meanwhile a load balancer would keep
sending users to a node that can serve nothing. So every answer from NATS
(a probe's PONG, a direct-get reply, a PubAck) is noted here, and so is every
request that timed out. The node is ready while the last answer is recent
and no request has timed out since.

Pure arithmetic over a clock: the broker feeds it, tests drive it with
plain values.
"""

from __future__ import annotations

import time
from collections.abc import Callable

PROBE_INTERVAL = 1.0
"""Seconds between the broker's probes (a NATS PING) when nothing else answered meanwhile."""


class BrokerHealth:
    __slots__ = ("_clock", "_last_answer", "_missed", "misses", "unready_after")

    def __init__(self, unready_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.unready_after = unready_after
        """Seconds without an answer after which the broker counts as not answering."""
        self._clock = clock
        self._last_answer = clock()
        self._missed = False
        self.misses = 0
        """Requests that timed out (a counter for metrics and tests)."""

    def answered(self) -> None:
        """NATS answered something: it is alive now."""
        self._last_answer = self._clock()
        self._missed = False

    def now(self) -> float:
        """The clock's time: what a request notes when it is sent, to pass to `missed`."""
        return self._clock()

    def missed(self, sent_at: float) -> None:
        """A request sent at `sent_at` timed out: not answering until the next answer.

        Unless NATS answered something after that request was sent: then the
        request was lost, not unanswered (its answer went to a connection that
        has been replaced since, by a reconnect), and NATS is fine."""
        if sent_at < self._last_answer:
            return
        self._missed = True
        self.misses += 1

    @property
    def silence(self) -> float:
        """Seconds since NATS last answered."""
        return self._clock() - self._last_answer

    @property
    def answering(self) -> bool:
        return not self._missed and self.silence <= self.unready_after

    def probe_due(self) -> bool:
        """True when nothing has answered for a probe interval: time to ask."""
        return self.silence >= PROBE_INTERVAL or self._missed
