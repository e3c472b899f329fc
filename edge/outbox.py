"""Per-connection outbound buffers, flushed once per event-loop pass.

Frames for a connection are appended to its outbox; the node's `Flusher`
writes every dirty outbox in one `transport.write` per connection at the end
of the pass, so a burst of fan-out costs one syscall per socket, not one per
frame. Nothing here awaits: when the bytes a client has left unread (our
buffer plus the transport's) pass the limit, the outbox stops accepting and
calls `on_overflow`, and the connection is closed with 4008.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Flusher:
    """Writes all outboxes that received frames during this loop pass."""

    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self) -> None:
        self._dirty: list[Outbox] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def mark(self, outbox: Outbox) -> None:
        self._dirty.append(outbox)
        if not self._scheduled:
            self._scheduled = True
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self.flush_all)

    def flush_all(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for outbox in dirty:
            outbox.flush()


class Outbox:
    __slots__ = ("_chunks", "_flusher", "_limit", "_on_overflow", "_size", "_transport", "bytes_out", "closed")

    def __init__(
        self,
        transport: asyncio.Transport,
        limit: int,
        flusher: Flusher,
        on_overflow: Callable[[], None],
    ) -> None:
        self._transport = transport
        self._chunks: list[bytes] = []
        self._size = 0
        self._limit = limit
        self._flusher = flusher
        self._on_overflow = on_overflow
        self.closed = False
        self.bytes_out = 0

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def pending(self) -> int:
        """Bytes written but not yet taken by the client."""
        return self._size + self._transport.get_write_buffer_size()

    def push(self, frame: bytes) -> None:
        if self.closed:
            return
        if not self._chunks:
            self._flusher.mark(self)
        self._chunks.append(frame)
        self._size += len(frame)
        if self._size > self._limit:
            self._overflow()

    def flush(self) -> None:
        """Write what is queued; called by the flusher, and before a close."""
        if not self._chunks or self.closed:
            return
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks = []
        self._size = 0
        if self._transport.is_closing():
            return
        self._transport.write(data)
        self.bytes_out += len(data)
        if self._transport.get_write_buffer_size() > self._limit:
            self._overflow()

    def seal(self) -> None:
        """Write what is queued and accept nothing more (the connection is closing)."""
        self.flush()
        self.closed = True

    def _overflow(self) -> None:
        self.closed = True
        self._chunks = []
        self._size = 0
        self._on_overflow()
