"""The token source, and the reconnect loop: connect, and when the connection ends do what its close code says.

The rules are in `jetsock.policy`; this loop only carries them out, with the
three pieces of state they need across connections: the backoff attempt
count, the token, and the token the server last rejected. It knows nothing of
rooms or frames: one connection is the `connect_once` callable, which returns
how that connection ended.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Literal, cast

from jetsock.errors import ClosedError, JetsockError
from jetsock.link import Outcome
from jetsock.policy import ABNORMAL, Backoff, CloseDecision, Reconnect, decide, reconnect_delay
from jetsock.state import StateInfo

TokenReason = Literal["connect", "expired", "rejected", "refresh"]
"""Why the client asks for a token: "connect" before the first connection of a `connect()`,
"expired" after close 4001, "rejected" after close 4501 (only a different token leads to a
reconnect), "refresh" when the server sent `expiring`."""

TokenResult = str | None | Awaitable[str | None]
TokenSource = str | Callable[[], TokenResult] | Callable[[TokenReason], TokenResult]
"""A token, or a function (plain or async) the client calls whenever it needs one: with the
reason (a `TokenReason`) when it takes an argument, else with none. Returning None means
"logged out": the client closes at once (`ClosedError` code "logged_out")."""

LOGGED_OUT = 4501
"""The close code a logged-out client reports (the server's "unauthenticated")."""


class BadToken(JetsockError):
    """The token source returned something that is neither None nor a non-empty str."""

    code: Literal["bad_token"] = "bad_token"


def logged_out() -> ClosedError:
    return ClosedError("logged out", close_code=LOGGED_OUT, logged_out=True)


class Tokens:
    """The token source, and the token last handed to the server."""

    def __init__(self, source: TokenSource) -> None:
        self.source = source
        self.current: str | None = None
        self._call: Callable[[TokenReason], TokenResult] | None = None
        if not isinstance(source, str):
            if _takes_an_argument(source):
                self._call = cast(Callable[[TokenReason], TokenResult], source)
            else:
                plain = cast(Callable[[], TokenResult], source)
                self._call = lambda _reason: plain()

    async def fetch(self, reason: TokenReason) -> str | None:
        """Ask the source for a token (a fixed string is its own source); None: logged out.

        Raises what the source raised, or `BadToken`.
        """
        if self._call is None:
            assert isinstance(self.source, str)
            value: object = self.source
        else:
            value = self._call(reason)
            if inspect.isawaitable(value):
                value = await value
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise BadToken(f"the token source returned {value!r}, not a non-empty str or None")
        return value


def _takes_an_argument(function: Callable[..., object]) -> bool:
    try:
        inspect.signature(function).bind("connect")
    except TypeError:
        return False
    except ValueError:  # No signature to read (some builtins): call it without arguments.
        return False
    return True


class _Stop(Exception):
    """Raised inside the loop to return `error`."""

    def __init__(self, error: ClosedError) -> None:
        self.error = error


async def reconnect_forever(
    connect_once: Callable[[str], Awaitable[Outcome]],
    tokens: Tokens,
    backoff: Backoff,
    draw: Callable[[], float],
    on_retry: Callable[[StateInfo], None],
    on_attempt: Callable[[], None] = lambda: None,
) -> ClosedError:
    """Connect until a close code (or the token source) says stop; returns why it stopped.

    Every attempt starts with `on_attempt()` (the state `connecting`) and a token from
    the source (PROTOCOL.md 9.11): "connect", or "expired" for the attempt after 4001.
    After 4501 the source is asked at once ("rejected"): the same token again stops
    the client, a different one is used by the next attempt without asking again. A
    source that raises (or gives a bad value) counts as a failed attempt, with backoff.
    A source that answers None stops the loop at once, logged out.
    """
    attempt = 0
    reason_for_next: TokenReason = "connect"
    prefetched: str | None = None
    """A token fetched after a 4501 for the next attempt."""
    rejected: str | None = None
    """The token a 4501 refused, until a connection is welcomed: getting it again stops."""
    refusal = ""
    """The reason of that 4501."""

    async def fetch(reason: TokenReason) -> str | None:
        """Fetch a token into tokens.current; a failure's description, or None when it worked."""
        try:
            token = await tokens.fetch(reason)
        except Exception as exc:
            return f"{exc.code}: {exc}" if isinstance(exc, BadToken) else f"token source failed: {exc!r}"
        if token is None:
            raise _Stop(logged_out())
        if rejected is not None and token == rejected:
            raise _Stop(ClosedError(f"{refusal} (and the token source has no other token)", close_code=LOGGED_OUT))
        tokens.current = token
        return None

    try:
        while True:
            on_attempt()
            code: int | None = None
            reason = ""
            decision: CloseDecision
            if prefetched is not None:
                tokens.current, prefetched, failed = prefetched, None, None
            else:
                failed = await fetch(reason_for_next)
            reason_for_next = "connect"
            if failed is not None:
                reason = failed
                decision = decide(None)
            else:
                assert tokens.current is not None
                code, reason, lasted = await connect_once(tokens.current)
                decision = decide(code)
                attempt = backoff.attempt_after(attempt, lasted)
                if lasted is not None:
                    rejected = None  # That token worked; a later 4501 is about another one.
                if decision.reconnect is Reconnect.NEVER:
                    return ClosedError(
                        reason or f"closed by the server ({code})", close_code=ABNORMAL if code is None else code
                    )
                if decision.reconnect is Reconnect.IF_NEW_TOKEN:
                    # The same token would be refused again; only a different one is worth a try.
                    rejected, refusal = tokens.current, reason or "token rejected"
                    if (failed := await fetch("rejected")) is not None:
                        reason = f"{reason}; {failed}"
                    else:
                        prefetched = tokens.current
                elif decision.fresh_token:
                    reason_for_next = "expired"
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
    except _Stop as stop:
        return stop.error
