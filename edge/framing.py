"""How a server frame's JSON becomes bytes on one kind of transport.

Fan-out encodes each room message's JSON once per node; each transport kind
then frames it once (a WebSocket text frame today; an SSE event for the HTTP
stream adapter), and the same bytes go to every member using that kind. The
hub groups a room's members by their `Framing`, so a new transport adds a
`Framing` and nothing in the hub changes.
"""

from __future__ import annotations

from collections.abc import Callable

from edge.wsframe import PING_FRAME, text_frame


class Framing:
    __slots__ = ("frame", "keepalive", "message", "name")

    def __init__(
        self,
        name: str,
        frame: Callable[[bytes], bytes],
        keepalive: bytes,
        message: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.name = name
        """For logs and tests."""
        self.frame = frame
        """JSON payload -> the bytes written to the socket (replies, resets: never compressed)."""
        self.message = message or frame
        """A room message's JSON -> its bytes (compressed where the framing compresses, edge/deflate.py)."""
        self.keepalive = keepalive
        """What the heartbeat writes every `heartbeat` seconds (a ping frame; an SSE comment)."""

    def __repr__(self) -> str:
        return f"Framing({self.name!r})"


WEBSOCKET_TEXT = Framing("websocket", text_frame, PING_FRAME)
"""Unmasked, uncompressed, final text frames (RFC 6455 5.2)."""


def http_chunk(data: bytes) -> bytes:
    """One chunk of an HTTP/1.1 chunked body (RFC 9112 7.1)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse_event(payload: bytes) -> bytes:
    """A server frame as one SSE event, in its own chunk. The JSON holds no raw newline
    (control characters are escaped), so one `data:` line carries it whole."""
    return http_chunk(b"data: " + payload + b"\n\n")


STREAM_EVENTS = Framing("stream", sse_event, http_chunk(b": keepalive\n\n"))
"""SSE events in HTTP chunks (PROTOCOL.md section 11): what `POST /v1/stream` answers."""
END_OF_BODY = b"0\r\n\r\n"
"""The last chunk of a chunked body."""
