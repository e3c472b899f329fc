"""Reconnect policy without I/O: what a close code means and how long to wait.

Everything here is plain arithmetic on plain values (a close code, an attempt
number, a random draw in [0, 1)), so the tests drive it directly and the
connection loop in `jetsock.client` only asks it questions. The rules are
PROTOCOL.md section 7; where that table is silent the choice is written next to
the code that makes it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

AT_ONCE_JITTER = 1.0
"""Seconds of jitter for 1001/1012: a draining node sends every client away at
once, and spreading them over a second keeps them from landing together."""

RATE_LIMITED_FLOOR = 5.0
"""Least seconds before reconnecting after 4029 (rate limited)."""

RETRYABLE_PUBLISH_ERRORS = frozenset({"unavailable", "rate_limited"})
"""Errors after which the client sends the same publish again, with the same `id`, by itself:
an `unavailable` publish may have been stored, and only the same id makes a retry store it once."""

ABNORMAL = 1006
"""The code used when there was no close frame at all: a failed connect, a lost
TCP connection, a dead connection found by the client's own ping."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Full-jitter exponential backoff: wait a uniform draw in [0, ceiling).

    Full jitter (not "ceiling plus a little") is what spreads a crowd of clients
    that lost the same node at the same instant; the ceiling grows by `factor`
    per failed attempt up to `cap`. A connection that stayed up `reset_after`
    seconds counts as a success, and the next failure starts over at attempt 0.
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 30.0
    reset_after: float = 10.0

    def ceiling(self, attempt: int) -> float:
        """The largest wait for the `attempt`-th consecutive failure (0-based)."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        ceiling = self.base
        # Multiply step by step and stop at the cap: base * factor**attempt
        # overflows a float long before a client gives up.
        for _ in range(attempt):
            if ceiling >= self.cap:
                break
            ceiling *= self.factor
        return min(ceiling, self.cap)

    def delay(self, attempt: int, draw: float) -> float:
        """The wait for `attempt`, given a random `draw` in [0, 1)."""
        return _unit(draw) * self.ceiling(attempt)

    def retry_delay(self, tries: int, draw: float) -> float:
        """The wait before a request's `tries`-th retry (1-based): "equal jitter", half the
        ceiling plus a uniform draw over the other half, so it is never 0 (a rate-limited
        retry must not fire at once) and a crowd still spreads."""
        ceiling = self.ceiling(max(0, tries - 1))
        return ceiling / 2 + _unit(draw) * ceiling / 2

    def attempt_after(self, attempt: int, connected_for: float | None) -> int:
        """The attempt number to use after a connection that lasted `connected_for` s.

        None means the connection never came up (the handshake or the
        authentication failed), which keeps the count growing.
        """
        if connected_for is not None and connected_for >= self.reset_after:
            return 0
        return attempt


class Reconnect(enum.Enum):
    """How the client goes on after a connection ended."""

    NEVER = "never"
    """Stop: the state becomes `closed`."""
    BACKOFF = "backoff"
    """Wait a full-jitter backoff delay (at least `min_delay`), then reconnect."""
    AT_ONCE = "at_once"
    """Reconnect after a 0-1 s jitter; a planned close is not a failure."""
    IF_NEW_TOKEN = "if_new_token"
    """Ask the token source again; reconnect (with backoff) only if it gives a different token."""


@dataclass(frozen=True, slots=True)
class CloseDecision:
    """What to do about one close code."""

    reconnect: Reconnect
    fresh_token: bool = False
    """Fetch a token from the token source before the next attempt."""
    min_delay: float = 0.0
    """Least seconds to wait, whatever the backoff draw."""

    @property
    def counts_as_failure(self) -> bool:
        """Whether the backoff attempt number grows: a drain is not a failure."""
        return self.reconnect is not Reconnect.AT_ONCE


_STOP = CloseDecision(Reconnect.NEVER)
_BACKOFF = CloseDecision(Reconnect.BACKOFF)
_AT_ONCE = CloseDecision(Reconnect.AT_ONCE)

_BY_CODE: dict[int, CloseDecision] = {
    1000: _STOP,
    1001: _AT_ONCE,
    1009: _STOP,
    1012: _AT_ONCE,
    4001: CloseDecision(Reconnect.BACKOFF, fresh_token=True),
    4029: CloseDecision(Reconnect.BACKOFF, min_delay=RATE_LIMITED_FLOOR),
    4501: CloseDecision(Reconnect.IF_NEW_TOKEN, fresh_token=True),
}


def decide(code: int | None) -> CloseDecision:
    """The decision for close `code` (None: no close frame, as 1006).

    Section 7 names 1000, 1001, 1006, 1009, 1011, 1012, 1013 and the ranges
    4000-4499 (recoverable) and 4500-4999 (terminal). Every other code (1002,
    1008, 1014 from a proxy, 3000-3999, ...) reconnects with backoff: those
    come from intermediaries or future servers, and backoff bounds what a
    wrong guess costs, while giving up would strand the application.
    """
    if code is None:
        return _BACKOFF
    known = _BY_CODE.get(code)
    if known is not None:
        return known
    if 4500 <= code <= 4999:
        return _STOP
    return _BACKOFF


def reconnect_delay(decision: CloseDecision, backoff: Backoff, attempt: int, draw: float) -> float:
    """Seconds to wait before the next attempt, given a random `draw` in [0, 1)."""
    if decision.reconnect is Reconnect.NEVER:
        raise ValueError("no delay: this decision does not reconnect")
    if decision.reconnect is Reconnect.AT_ONCE:
        return _unit(draw) * AT_ONCE_JITTER
    return max(decision.min_delay, backoff.delay(attempt, draw))


def _unit(draw: float) -> float:
    if not 0.0 <= draw <= 1.0:
        raise ValueError(f"a random draw is in [0, 1], not {draw!r}")
    return draw
