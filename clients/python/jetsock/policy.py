"""Reconnect policy without I/O: what a close code means, how long to wait, which room names are valid.

Everything here is plain arithmetic on plain values (a close code, an attempt
number, a random draw in [0, 1)), so the tests drive it directly and the
connection loop in `jetsock.reconnect` only asks it questions. The rules
themselves are not written here: they come from `jetsock.rules`, generated
from `schemas/clientrules.py` like the JS client's (PROTOCOL.md sections 7
and 9.11), so the two clients cannot drift apart.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from jetsock import rules

AT_ONCE_JITTER = rules.AT_ONCE_JITTER
"""Seconds of jitter for 1001/1012: a draining node sends every client away at
once, and spreading them over a second keeps them from landing together."""

RATE_LIMITED_FLOOR = rules.CLOSE_RULES[4029][2]
"""Least seconds before reconnecting after 4029 (rate limited)."""

RETRYABLE_ERRORS: frozenset[str] = rules.RETRYABLE_ERRORS
"""Error codes after which the client sends the same request again by itself (equal jitter):
a publish with the same `id` (an `unavailable` publish may have been stored, and only the
same id makes a retry store it once), a join (the first one and rejoins alike)."""

ABNORMAL = rules.ABNORMAL
"""The code used when there was no close frame at all: a failed connect, a lost
TCP connection, a dead connection found by the client's own ping, no `welcome`."""

_ROOM = re.compile(rules.ROOM_PATTERN)


def room_name_error(name: object) -> str | None:
    """Why `name` is not a valid room name (PROTOCOL.md section 4), or None when it is."""
    if not isinstance(name, str):
        return f"a room name is a str, not {type(name).__name__}"
    if not 1 <= len(name) <= rules.MAX_ROOM_LENGTH:
        return f"a room name is 1 to {rules.MAX_ROOM_LENGTH} characters, not {len(name)}"
    if _ROOM.fullmatch(name) is None:
        return f"{name!r} is not segments of [A-Za-z0-9_-] joined by '.' (at most 16)"
    return None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Full-jitter exponential backoff: wait a uniform draw in [0, ceiling).

    Full jitter (not "ceiling plus a little") is what spreads a crowd of clients
    that lost the same node at the same instant; the ceiling grows by `factor`
    per failed attempt up to `cap`. A connection that stayed up `reset_after`
    seconds counts as a success, and the next failure starts over at attempt 0.
    The defaults are the rules' (base 1 s, factor 2, cap 30 s, reset after 10 s).
    """

    base: float = rules.BACKOFF_BASE
    factor: float = rules.BACKOFF_FACTOR
    cap: float = rules.BACKOFF_CAP
    reset_after: float = rules.STABLE_AFTER

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
    """How the client goes on after a connection ended; the values are the rules' actions."""

    NEVER = "stop"
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
    """Ask the token source for a token before the next attempt."""
    min_delay: float = 0.0
    """Least seconds to wait, whatever the backoff draw."""

    @property
    def counts_as_failure(self) -> bool:
        """Whether the backoff attempt number grows: a drain is not a failure."""
        return self.reconnect is not Reconnect.AT_ONCE


_BY_CODE: dict[int, CloseDecision] = {
    code: CloseDecision(Reconnect(action), fresh_token, min_delay)
    for code, (action, fresh_token, min_delay) in rules.CLOSE_RULES.items()
}
_STOP = CloseDecision(Reconnect.NEVER)
_BACKOFF = CloseDecision(Reconnect.BACKOFF)


def decide(code: int | None) -> CloseDecision:
    """The decision for close `code` (None: no close frame, as 1006).

    The codes of `rules.CLOSE_RULES` have a rule of their own; the rest of
    `rules.TERMINAL_RANGE` (4500-4999) stops; every other code (1002, 1006,
    1011, 1013, 1014 from a proxy, 3000-3999, 4000-4499, ...) reconnects with
    backoff: those come from intermediaries, failures or newer servers, and
    backoff bounds what a wrong guess costs, while giving up would strand the
    application.
    """
    if code is None:
        return _BACKOFF
    known = _BY_CODE.get(code)
    if known is not None:
        return known
    low, high = rules.TERMINAL_RANGE
    return _STOP if low <= code <= high else _BACKOFF


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
