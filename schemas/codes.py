"""Close codes, error codes and named disconnects, holding their wire values.

Each close code's docstring line says what a client does on receiving it
(PROTOCOL.md section 7); `CloseCode.recoverable` gives the policy. Every way
the server ends a connection is a `Disconnect` below: its code and reason
together, defined once (as centrifuge's disconnect.go does), so the close
frame, the log line and the metric all say the same thing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    """Normal close: do not reconnect."""
    GOING_AWAY = 1001
    """Node going away: reconnect at once with 0-1 s jitter, resume."""
    ABNORMAL = 1006
    """No close frame (network loss): reconnect with backoff, resume."""
    MESSAGE_TOO_BIG = 1009
    """A frame exceeded max_frame_bytes: do not reconnect."""
    INTERNAL_ERROR = 1011
    """Server bug: reconnect with backoff, resume."""
    SERVICE_RESTART = 1012
    """Drain on deploy: reconnect at once with 0-1 s jitter, resume."""
    TRY_AGAIN_LATER = 1013
    """Node full or NATS unavailable: reconnect with backoff, resume."""
    TOKEN_EXPIRED = 4001
    """Token expired without a refresh: get a new token, then reconnect."""
    SLOW_CONSUMER = 4008
    """Outbound buffer overflowed: reconnect with backoff, resume."""
    HEARTBEAT_TIMEOUT = 4009
    """Nothing heard for two heartbeats: reconnect with backoff, resume."""
    RATE_LIMITED = 4029
    """Persistent publish excess: back off at least 5 s, then resume."""
    BAD_REQUEST = 4500
    """Protocol violation (binary frame, token in URL): terminal."""
    UNAUTHENTICATED = 4501
    """Missing or invalid token: reconnect only with a new token."""
    FORBIDDEN = 4503
    """Forbidden: terminal."""

    @property
    def recoverable(self) -> bool:
        """True when a client reconnects on its own (PROTOCOL.md section 7)."""
        return self not in _TERMINAL and not 4500 <= self.value <= 4999


_TERMINAL = {CloseCode.NORMAL, CloseCode.MESSAGE_TOO_BIG}


class FramingCloseCode(enum.IntEnum):
    """RFC 6455 codes outside PROTOCOL.md's table that the server also uses: its frame reader
    fails a connection that breaks the framing with them. Clients treat them as any code not in
    the table (reconnect with backoff)."""

    PROTOCOL_ERROR = 1002
    """The client broke RFC 6455 framing (a reserved bit, an unknown opcode, a bad fragment)."""
    NO_STATUS = 1005
    """A close frame without a code: seen in a client's close, never sent."""
    INVALID_PAYLOAD = 1007
    """A text frame (or close reason) that is not UTF-8."""


def close_code_label(code: int | None) -> str:
    """A close code as a metric label or a table row: the protocol's codes by number,
    anything else (a client may close with any code up to 65535) as `other`, so the
    number of series stays bounded whatever clients send."""
    if code is None:
        return str(int(CloseCode.ABNORMAL))
    return str(code) if code in _KNOWN_CODES else "other"


_KNOWN_CODES: frozenset[int] = frozenset(c.value for c in (*CloseCode, *FramingCloseCode))


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "bad_request"
    INVALID_ROOM = "invalid_room"
    FORBIDDEN = "forbidden"
    NOT_JOINED = "not_joined"
    TOO_MANY_ROOMS = "too_many_rooms"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Why the server ends a connection: the close code and the reason sent with it.

    The reason is for people (logs, browser consoles); clients act on the code
    only. `with_detail` adds what happened this time ("invalid token: ...").
    """

    code: int
    """A CloseCode, or (for an operator's disconnect) any application code 4000-4999."""
    reason: str

    def with_detail(self, detail: str) -> Disconnect:
        return Disconnect(self.code, f"{self.reason}: {detail}" if detail else self.reason)


class Disconnects:
    """Every disconnect the server initiates, with the client action its code implies."""

    NODE_STOPPING = Disconnect(CloseCode.GOING_AWAY, "node stopping")
    """The process stops without a drain (a second signal): reconnect at once, resume."""
    NODE_RESTARTING = Disconnect(CloseCode.SERVICE_RESTART, "node restarting: reconnect and resume")
    """Drain on SIGTERM: reconnect at once with jitter, resume."""
    PROTOCOL_ERROR = Disconnect(FramingCloseCode.PROTOCOL_ERROR, "protocol error")
    """The frame reader refused the client's framing (RFC 6455): reconnect with backoff."""
    INVALID_TEXT = Disconnect(FramingCloseCode.INVALID_PAYLOAD, "invalid UTF-8 in a text frame")
    """A text frame that is not UTF-8 (RFC 6455 8.1)."""
    FRAME_TOO_BIG = Disconnect(CloseCode.MESSAGE_TOO_BIG, "frame too big")
    """A frame over max_frame_bytes: terminal."""
    INTERNAL = Disconnect(CloseCode.INTERNAL_ERROR, "internal error")
    """A bug in the edge: reconnect with backoff, resume."""
    NODE_FULL = Disconnect(CloseCode.TRY_AGAIN_LATER, "node full: try again later")
    """Past max_connections or the budget for unauthenticated sockets: reconnect with backoff."""
    REPLAY_INTERRUPTED = Disconnect(CloseCode.TRY_AGAIN_LATER, "replay interrupted")
    """The stream could not be read in the middle of a replay: rejoin with the last seq."""
    TOKEN_EXPIRED = Disconnect(CloseCode.TOKEN_EXPIRED, "token expired")
    """No refresh before exp: get a new token, reconnect, resume."""
    SLOW_CONSUMER = Disconnect(CloseCode.SLOW_CONSUMER, "slow consumer: outbound buffer full; reconnect and resume")
    """The client left more than max_pending_bytes unread."""
    STALLED = Disconnect(
        CloseCode.SLOW_CONSUMER, "slow consumer: nothing read within write_timeout; reconnect and resume"
    )
    """A replay waited write_timeout for the client to read."""
    HEARTBEAT_TIMEOUT = Disconnect(
        CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout: nothing received for two heartbeats"
    )
    """Silence for two heartbeats: reconnect with backoff, resume."""
    PUBLISH_RATE = Disconnect(CloseCode.RATE_LIMITED, "publish rate limit exceeded persistently")
    """rate_limit_strikes refused publishes in a row: back off at least 5 s."""
    JOIN_RATE = Disconnect(CloseCode.RATE_LIMITED, "join/leave rate limit exceeded persistently")
    """rate_limit_strikes refused joins or leaves in a row: back off at least 5 s."""
    HISTORY_RATE = Disconnect(CloseCode.RATE_LIMITED, "history rate limit exceeded persistently")
    """rate_limit_strikes refused history requests in a row: back off at least 5 s."""
    TOO_MANY_FOR_SUB = Disconnect(CloseCode.RATE_LIMITED, "too many connections for this subject on this node")
    """max_connections_per_sub reached: back off."""
    TOKEN_IN_URL = Disconnect(
        CloseCode.BAD_REQUEST,
        "token in URL refused: use the bearer.<JWT> subprotocol, a cookie, or an auth frame",
    )
    """A token in the query string: terminal."""
    BINARY_FRAME = Disconnect(CloseCode.BAD_REQUEST, "binary frames are not part of jetsock.v1: send JSON text frames")
    """A binary frame after authentication: terminal."""
    AUTH_TIMEOUT = Disconnect(CloseCode.UNAUTHENTICATED, "no auth frame within auth_timeout")
    """Not authenticated within auth_timeout."""
    AUTH_FIRST = Disconnect(
        CloseCode.UNAUTHENTICATED, "the first frame must be auth (or authenticate in the handshake)"
    )
    """The first frame was not a valid `auth`."""
    INVALID_TOKEN = Disconnect(CloseCode.UNAUTHENTICATED, "invalid token")
    """The token did not verify (the detail says why): reconnect only with a new token."""
    OPERATOR = Disconnect(CloseCode.FORBIDDEN, "disconnected by an operator")
    """POST /v1/subjects/<sub>/disconnect (its body may choose another 4xxx code and reason)."""
