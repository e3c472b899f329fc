"""The seam between a session and the connection it runs on.

A session (edge/connection.py: state, identity, rooms, limits, requests,
heartbeats, expiry, drain) never touches a socket. It queues frames in its
outbox, whose bytes go to `socket` in one write per loop pass, and for
everything else it asks its `Transport`:

- `framing` turns a frame's JSON into this transport's bytes (a WebSocket
  text frame; an SSE event for the HTTP stream adapter);
- `send_close` writes the one close frame (or close event) after the session
  has sealed its outbox, and ends the connection: at once, or after the
  peer's answer or a deadline (`close_timeout`);
- `drained` waits, as an event and with a deadline, until the bytes the peer
  has not taken are at most `level` (a replay paced by the client's reading).

The adapter owns the socket and its framing, reads the peer's frames and hands
them to the session (`receive_text`, `receive_ping`, `peer_closed`, `lost`).
Only the outbox (until sealed) and the adapter's close write to the socket.

`edge/ws.py` is the WebSocket adapter. An HTTP stream adapter plugs in the
same way: its `socket` is the streaming response's transport, `framing` makes
SSE events, `send_close` writes the `close` event and ends the response, and
the frames of `POST /v1/stream/<session>` reach the session's `receive_text`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from edge.admission import source_of
from edge.framing import Framing
from schemas import Disconnect


class Transport(Protocol):
    @property
    def framing(self) -> Framing: ...

    @property
    def socket(self) -> asyncio.Transport:
        """Where the outbox writes (bytes already framed)."""
        ...

    @property
    def source(self) -> str:
        """The peer's address, for per-source limits and logs."""
        ...

    def send_close(self, disconnect: Disconnect, timeout: float) -> None:
        """Write the close frame (the outbox is sealed by now) and end the connection, at the
        latest `timeout` seconds later."""
        ...

    async def drained(self, level: int, timeout: float) -> bool:
        """Wait until at most `level` bytes are unread by the peer; False at the deadline or when lost."""
        ...


async def socket_drained(socket: asyncio.Transport, level: int, timeout: float) -> bool:
    """Until at most `level` bytes wait in `socket`'s write buffer; False at the deadline or when lost.

    An event, not a poll: the transport pauses its protocol above `high` and resumes it at
    `high // 4`, and the resume is the sign that the peer read enough (aiohttp's protocol
    exposes it as `_drain_helper()`). Both adapters' sockets are aiohttp's.
    """
    if socket.get_write_buffer_size() <= level:
        return not socket.is_closing()
    protocol: Any = socket.get_protocol()
    socket.set_write_buffer_limits(high=max(level, 1))
    try:
        async with asyncio.timeout(timeout):
            while socket.get_write_buffer_size() > level and not socket.is_closing():
                await protocol._drain_helper()
    except (TimeoutError, ConnectionError):
        return False
    return not socket.is_closing()


class SocketTransport:
    """What both adapters' transports share: the socket, its peer's address, the deadline armed
    by the one close write, and the drain wait."""

    __slots__ = ("_deadline", "socket")

    def __init__(self, socket: asyncio.Transport) -> None:
        self.socket = socket
        self._deadline: asyncio.TimerHandle | None = None
        """Set once the close is written: drops the socket when the peer is late to end it."""

    @property
    def source(self) -> str:
        """Read from the socket when asked (rarely): not a field every idle connection pays for."""
        return source_of(self.socket)

    def _write_last(self, data: bytes, timeout: float) -> bool:
        """Write the closing bytes once and arm the deadline; False when already closed or closing."""
        if self._deadline is not None or self.socket.is_closing():
            return False
        self.socket.write(data)
        self._deadline = asyncio.get_running_loop().call_later(timeout, self.socket.abort)
        return True

    def gone(self) -> None:
        """The socket is gone: the deadline has nothing left to do."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    async def drained(self, level: int, timeout: float) -> bool:
        return await socket_drained(self.socket, level, timeout)
