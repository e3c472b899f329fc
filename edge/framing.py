"""How a server frame's JSON becomes bytes on one kind of transport.

Fan-out encodes each room message's JSON once per node; each transport kind
then frames it once (a WebSocket text frame today; an SSE event for the HTTP
stream adapter), and the same bytes go to every member using that kind. The
hub groups a room's members by their `Framing`, so a new transport adds a
`Framing` and nothing in the hub changes.
"""

from __future__ import annotations

from collections.abc import Callable

from edge.wsframe import text_frame


class Framing:
    __slots__ = ("frame", "name")

    def __init__(self, name: str, frame: Callable[[bytes], bytes]) -> None:
        self.name = name
        """For logs and tests."""
        self.frame = frame
        """JSON payload -> the bytes written to the socket."""

    def __repr__(self) -> str:
        return f"Framing({self.name!r})"


WEBSOCKET_TEXT = Framing("websocket", text_frame)
"""Unmasked, uncompressed, final text frames (RFC 6455 5.2)."""
