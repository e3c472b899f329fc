"""Exceptions raised by the client.

They are few on purpose: an application needs to tell apart "the server said
no" (`ServerError`, with the protocol's error code), "this client is finished"
(`ClosedError`, with the close code that finished it) and "this room ended
without being asked to" (`RoomLeft`). Everything transient (lost connections,
refused connects, drains) is handled inside the client and only shows in the
state callback.
"""

from __future__ import annotations


class JetsockError(Exception):
    """Base of every error the client raises."""


class ServerError(JetsockError):
    """The server answered a request with `error` (PROTOCOL.md section 2).

    `code` is the protocol's error code (`forbidden`, `rate_limited`,
    `unavailable`, ...). A publish is never failed with `unavailable` or
    `rate_limited`: it may have been stored, so the client sends it again by
    itself with the same `id`, which stores it once.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ClosedError(JetsockError):
    """The client is closed, by `close()` or by a close code it does not recover from.

    `code` is the WebSocket close code that ended it (None when `close()` was
    called or the token source could not give a usable token).
    """

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed ({code}): {reason}" if code is not None else f"closed: {reason}")
        self.code = code
        self.reason = reason


class RoomLeft(JetsockError):
    """The server ended a membership the application did not leave.

    Raised from the room's iterator. `reason` is the `left` frame's reason
    (`forbidden` after a token refresh that no longer allows the room), or the
    error code of a rejoin the server refused after a reconnect.
    """

    def __init__(self, room: str, reason: str) -> None:
        super().__init__(f"left {room!r}: {reason}")
        self.room = room
        self.reason = reason


class PublishQueueFull(JetsockError):
    """Too many publishes are waiting for their `ack`.

    Publishes made while disconnected are kept to be resent; the bound keeps a
    long outage from growing memory without limit.
    """


class FrameTooLarge(JetsockError, ValueError):
    """A request would exceed `max_frame_bytes`.

    Checked before sending because the server answers an oversize frame with
    close 1009, which is terminal: the whole client would stop, not one publish.
    """
