"""Close codes and error codes, holding their wire values.

Each close code's docstring line says what a client does on receiving it
(PROTOCOL.md section 7); `CloseCode.recoverable` gives the policy.
"""

from __future__ import annotations

import enum


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
