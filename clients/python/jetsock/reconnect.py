"""The reconnect loop: connect, and when the connection ends do what its close code says.

The rules are in `jetsock.policy`; this loop only carries them out, with the
two pieces of state they need across connections: the backoff attempt count
and the token. It knows nothing of rooms or frames: one connection is the
`connect_once` callable, which returns how that connection ended.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

from jetsock.errors import ClosedError
from jetsock.link import Outcome
from jetsock.policy import ABNORMAL, Backoff, Reconnect, decide, reconnect_delay
from jetsock.state import StateInfo

TokenSource = str | Callable[[], str | Awaitable[str]]
"""A token, or a function (plain or async) the client calls whenever it needs one."""


class Tokens:
    """The token source, and the token last handed to the server."""

    def __init__(self, source: TokenSource) -> None:
        self.source = source
        self.current: str | None = None

    async def fetch(self) -> str:
        """Ask the source for a token (a fixed string is its own source)."""
        source = self.source
        if isinstance(source, str):
            return source
        value = source()
        if inspect.isawaitable(value):
            value = await value
        if not isinstance(value, str) or not value:
            raise TypeError(f"the token source returned {type(value).__name__}, not a non-empty str")
        return value


async def reconnect_forever(
    connect_once: Callable[[str], Awaitable[Outcome]],
    tokens: Tokens,
    backoff: Backoff,
    draw: Callable[[], float],
    on_retry: Callable[[StateInfo], None],
) -> ClosedError:
    """Connect until a close code says stop; returns why it stopped.

    The token is fetched before the first attempt and again only when the
    server refused it (4001 expired: fetch, then reconnect; 4501 invalid:
    reconnect only if the source gives a different one). A source that
    raises is retried with backoff, like a refused connect.
    """
    attempt = 0
    fresh = True  # Fetch a token before the next attempt.
    while True:
        code: int | None = None
        reason = ""
        lasted: float | None = None
        if fresh or tokens.current is None:
            try:
                tokens.current = await tokens.fetch()
                fresh = False
            except Exception as exc:
                reason = f"token source failed: {exc!r}"
        if not fresh and tokens.current is not None:
            code, reason, lasted = await connect_once(tokens.current)
        decision = decide(code)
        attempt = backoff.attempt_after(attempt, lasted)
        if decision.reconnect is Reconnect.NEVER:
            return ClosedError(code, reason)
        if decision.reconnect is Reconnect.IF_NEW_TOKEN:
            # The same token would be refused again; only a different one is worth a try.
            try:
                token = await tokens.fetch()
            except Exception as exc:
                return ClosedError(code, f"{reason}; token source failed: {exc!r}")
            if token == tokens.current:
                return ClosedError(code, reason)
            tokens.current = token
        elif decision.fresh_token:
            fresh = True
        delay = reconnect_delay(decision, backoff, attempt, draw())
        if decision.counts_as_failure:
            attempt += 1
        on_retry(
            {
                "code": ABNORMAL if code is None else code,
                "reason": reason,
                "delayMs": round(delay * 1000),
                "attempt": attempt,
            }
        )
        await asyncio.sleep(delay)
