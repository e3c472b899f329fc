"""The rules every jetsock client follows, defined once (PROTOCOL.md sections 4 and 7, 9.11).

Both clients are generated from this module (`python -m schemas.clientgen --write`):
the JS client gets a `RULES` object inside `clients/js/jetsock.js` and union types
inside `clients/js/jetsock.d.ts`; the Python client gets `clients/python/jetsock/rules.py`.
A test fails when a generated copy is out of date, and the parity tests run the same
scripted scenarios against both clients, so the two cannot drift apart again.

Times are whole milliseconds here (the JS client's unit); the Python copy divides by 1000.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from schemas.codes import CloseCode, ErrorCode

SUBPROTOCOL = "jetsock.v1"
BEARER_PREFIX = "bearer."

# --- room names (PROTOCOL.md section 4) --------------------------------------

MAX_ROOM_LENGTH = 128
MAX_SEGMENTS = 16
ROOM_SEGMENT = "[A-Za-z0-9_-]+"
"""One segment of a room name, as a regular expression both Python and JavaScript read alike."""
ROOM_PATTERN = rf"^{ROOM_SEGMENT}(\.{ROOM_SEGMENT}){{0,{MAX_SEGMENTS - 1}}}$"
"""A whole room name (with the length limit checked beside it). `$` is safe here: the
clients test it with full-match semantics (JS `test` has no trailing-newline case;
Python uses `fullmatch`)."""


# --- close codes (PROTOCOL.md section 7) -------------------------------------


class CloseAction(enum.StrEnum):
    """What a client does when a connection ends with some close code."""

    STOP = "stop"
    """Stay closed: the client's state becomes `closed` for good."""
    BACKOFF = "backoff"
    """Reconnect after a full-jitter backoff delay (at least the rule's `min_delay_ms`)."""
    AT_ONCE = "at_once"
    """Reconnect after a 0 to AT_ONCE_JITTER_MS jitter; a drain is not a failure, so the
    backoff attempt count does not grow."""
    IF_NEW_TOKEN = "if_new_token"
    """Ask the token source again; reconnect (with backoff) only if it gives a different token."""


@dataclass(frozen=True, slots=True)
class CloseRule:
    action: CloseAction
    fresh_token: bool = False
    """Ask the token source for a new token before the next attempt."""
    min_delay_ms: int = 0
    """Least wait before the next attempt, whatever the backoff draw."""


STOP = CloseRule(CloseAction.STOP)
BACKOFF = CloseRule(CloseAction.BACKOFF)
AT_ONCE = CloseRule(CloseAction.AT_ONCE)

CLOSE_RULES: dict[int, CloseRule] = {
    CloseCode.NORMAL: STOP,
    CloseCode.GOING_AWAY: AT_ONCE,
    CloseCode.MESSAGE_TOO_BIG: STOP,
    CloseCode.SERVICE_RESTART: AT_ONCE,
    CloseCode.TOKEN_EXPIRED: CloseRule(CloseAction.BACKOFF, fresh_token=True),
    CloseCode.RATE_LIMITED: CloseRule(CloseAction.BACKOFF, min_delay_ms=5000),
    CloseCode.UNAUTHENTICATED: CloseRule(CloseAction.IF_NEW_TOKEN, fresh_token=True),
}
"""The codes with a rule of their own; the rest follow TERMINAL_RANGE or back off."""

TERMINAL_RANGE = (4500, 4999)
"""Close codes in this range (other than those in CLOSE_RULES) stop the client."""

ABNORMAL = int(CloseCode.ABNORMAL)
"""The code a client reports when there was no close frame: a failed connect, a lost
connection, a connection its own ping found dead, a missing `welcome`."""


def close_rule(code: int | None) -> CloseRule:
    """The rule for close `code` (None: no close frame, as 1006).

    Codes outside section 7's table (1002, 1008, 1014 from a proxy, 3000-3999, ...)
    back off: they come from intermediaries or newer servers, backoff bounds what a
    wrong guess costs, and giving up would strand the application.
    """
    if code is None:
        return BACKOFF
    rule = CLOSE_RULES.get(code)
    if rule is not None:
        return rule
    low, high = TERMINAL_RANGE
    return STOP if low <= code <= high else BACKOFF


# --- delays -------------------------------------------------------------------

BACKOFF_BASE_MS = 1000
BACKOFF_FACTOR = 2
BACKOFF_CAP_MS = 30000
STABLE_AFTER_MS = 10000
"""A connection up this long resets the backoff attempt count."""
AT_ONCE_JITTER_MS = 1000
"""The spread of reconnects after 1001/1012: a draining node sends its clients away at
once, and a second of jitter keeps them from landing on the next node together."""

# Two jitter formulas, on purpose:
# - reconnects use full jitter, uniform in [0, min(cap, base * factor ** attempt)): it
#   spreads a crowd that lost the same node at the same instant best;
# - a refused request (RETRYABLE_ERRORS) is retried after equal jitter, half that
#   ceiling plus a uniform draw over the other half: never 0, so a `rate_limited`
#   retry does not fire at once, and a crowd still spreads.

# --- request errors -----------------------------------------------------------

RETRYABLE_ERRORS = (ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE)
"""Error codes after which a client sends the same request again by itself (equal jitter):
- a publish goes again with the same `id`: after `unavailable` it may have been stored, and
  only the same id makes the retry store it once; after `rate_limited` it was not stored,
  and waiting is what the server asks for. It still ends at its timeout or abort.
- a join goes again (the first join and rejoins after a reconnect alike).
Every other code fails the request: retrying cannot change the answer."""


class ClientErrorCode(enum.StrEnum):
    """Errors a client raises on its own, beside the server's ErrorCode values."""

    CLOSED = "closed"
    """The client is closed (by `close()`, a terminal close code or a logged-out token source)."""
    QUEUE_FULL = "queue_full"
    """`max_queued` publishes already wait for their ack."""
    FRAME_TOO_LARGE = "too_large"
    """The frame would exceed max_frame_bytes (the server would close with 1009, which is terminal)."""
    ALREADY_JOINED = "already_joined"
    """The room is already joined on this client: leave it first."""
    BAD_TOKEN = "bad_token"
    """The token source gave something that is not a non-empty string (nor the logged-out signal)."""
    LOGGED_OUT = "logged_out"
    """The token source said the user is logged out: the client closed."""
    TIMEOUT = "timeout"
    """A request (publish, ready) did not settle within its timeout."""
    ABORTED = "aborted"
    """A request was cancelled by the application (AbortSignal, task cancellation)."""
    LEFT = "left"
    """The room was left (by the application, or by the server without a reason)."""
    BAD_FRAME = "bad_frame"
    """The server sent a frame that is not a JSON object."""


# --- client defaults ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientDefaults:
    connect_timeout_ms: int = 10000
    """Handshake plus `welcome`; past it the attempt counts as failed (as 1006)."""
    dead_after_ms: int = 10000
    """Silence allowed after the client's own `ping` (section 6) before the link is dead."""
    request_timeout_ms: int = 10000
    """How long `leave` and `refresh` wait for their reply."""
    max_queued: int = 1000
    """Publishes not yet acked (queued while disconnected, or in flight); more are refused
    with `queue_full`. Bounds what a long outage holds in memory."""
    max_frame_bytes: int = 65536
    """The server's default max_frame_bytes, checked before sending."""
    publish_timeout_ms: int = 0
    """0: a publish waits (queued, resent with its id) until acked, refused, aborted or the
    client closes. A timeout is per publish, opt-in."""


CLIENT_DEFAULTS = ClientDefaults()

CLOSE_CODES: tuple[int, ...] = tuple(int(c) for c in CloseCode)
"""The close codes of section 7's table, for the clients' `KnownCloseCode` types."""
