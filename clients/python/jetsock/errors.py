"""Exceptions raised by the client: errors as data.

Every error has a `code`, one of the generated `jetsock.rules.ErrorCode`
values (PROTOCOL.md section 9.11): the server's error codes, and the client's
own (`closed`, `logged_out`, `queue_full`, `too_large`, `timeout`, `left`,
`already_joined`, `invalid_room` for a name refused before sending). An error
about one publish also carries its `room` and `id`.

They are few on purpose: an application needs to tell apart "the server said
no" (`ServerError`), "this client is finished" (`ClosedError`, with the close
code that finished it), "this room ended without being asked to" (`RoomLeft`)
and "it took too long" (`RequestTimeout`). Everything transient (lost
connections, refused connects, drains, retryable refusals) is handled inside
the client and only shows in the state listeners.
"""

from __future__ import annotations

from typing import Literal, Self

from jetsock.rules import ErrorCode, ServerErrorCode


class JetsockError(Exception):
    """Base of every error the client raises.

    `code` says what happened; `room` and `id` name the room and the publish
    the error is about, when it is about one.
    """

    code: ErrorCode = "internal"

    def __init__(self, message: str, *, room: str | None = None, id: str | None = None) -> None:
        super().__init__(message)
        self.room = room
        self.id = id

    def about(self, *, room: str | None = None, id: str | None = None) -> Self:
        """A copy of this error naming `room` and `id` (each publish gets its own)."""
        other = type(self).__new__(type(self), *self.args)
        other.__dict__.update(self.__dict__)
        other.room = room
        other.id = id
        return other


class ServerError(JetsockError):
    """The server answered a request with `error` (PROTOCOL.md section 2).

    `code` is the protocol's error code (`forbidden`, `too_many_rooms`, ...).
    A request is never failed with `unavailable` or `rate_limited`: the client
    sends it again by itself (a publish with the same `id`, which stores it once).
    """

    code: ServerErrorCode

    def __init__(self, code: ServerErrorCode, message: str, *, room: str | None = None, id: str | None = None) -> None:
        super().__init__(f"{code}: {message}", room=room, id=id)
        self.code = code
        self.message = message


class ClosedError(JetsockError):
    """The client is closed: by `close()`, by a close code it does not recover from, or logged out.

    `code` is "logged_out" when the token source said so (`logged_out` is then
    true), else "closed". `close_code` is the WebSocket close code that ended
    the client: 1000 when the application closed it, 4501 when logged out,
    None when it stopped on an internal error.
    """

    code: Literal["closed", "logged_out"]

    def __init__(
        self,
        reason: str,
        *,
        close_code: int | None,
        logged_out: bool = False,
        room: str | None = None,
        id: str | None = None,
    ) -> None:
        prefix = "logged out" if logged_out else f"closed ({close_code})" if close_code is not None else "closed"
        super().__init__(f"{prefix}: {reason}", room=room, id=id)
        self.code = "logged_out" if logged_out else "closed"
        self.reason = reason
        self.close_code = close_code
        self.logged_out = logged_out


class RoomLeft(JetsockError):
    """A membership ended: the room's iterators raise it when it was not the application's `leave()`.

    `reason` is the `left` frame's reason (`forbidden` after a token refresh
    that no longer allows the room), the error code of a join the server
    refused (then `error` is that `ServerError`), or "left" for the
    application's own leave (raised by `ready()` only).
    """

    code: Literal["left"] = "left"

    def __init__(self, room: str, reason: str, error: ServerError | None = None) -> None:
        super().__init__(f"left {room!r}: {reason}", room=room)
        self.reason = reason
        self.error = error


class PublishQueueFull(JetsockError):
    """`max_queued` publishes already wait for their `ack` (queued while disconnected, or in flight).

    Publishes made while disconnected are kept to be resent; the bound keeps a
    long outage from growing memory without limit.
    """

    code: Literal["queue_full"] = "queue_full"


class FrameTooLarge(JetsockError, ValueError):
    """A request would exceed `max_frame_bytes`.

    Checked before sending because the server answers an oversize frame with
    close 1009, which is terminal: the whole client would stop, not one publish.
    """

    code: Literal["too_large"] = "too_large"


class InvalidRoom(JetsockError, ValueError):
    """A room name the server would refuse (PROTOCOL.md section 4), refused before sending."""

    code: Literal["invalid_room"] = "invalid_room"


class AlreadyJoined(JetsockError, ValueError):
    """The room is already joined (or joining) on this client: leave it first."""

    code: Literal["already_joined"] = "already_joined"


class RequestTimeout(JetsockError, TimeoutError):
    """A wait did not end within its timeout (`ready()`, a leave, a refresh)."""

    code: Literal["timeout"] = "timeout"


class PublishTimeout(RequestTimeout):
    """A publish was not acked within its timeout; it is not sent again (a copy already sent may be stored)."""
