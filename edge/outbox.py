"""Per-connection outbound buffers, flushed once per event-loop pass.

Frames for a connection are appended to its outbox; the node's `Flusher`
writes every dirty outbox in one `transport.write` per connection at the end
of the pass (on a node busy writing, a little later: see `Flusher`), so a
burst of fan-out costs one syscall per socket, not one per frame. Nothing here
awaits: when the bytes a client has left unread (our buffer plus the
transport's) pass the limit, the outbox stops accepting and calls
`overflowed`, and the connection is closed with 4008.

Fan-out shares work between the members of a room: within one pass, every
member that had nothing else queued when the room's first frame came holds the
same `Batch`, so each further frame is appended once for the room (not once
per member), and the batch is joined once and the same bytes are written to
every member's socket. A member that gets any other frame meanwhile takes a
private copy of the batch first, so each connection's frames keep their order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def _joined(frames: list[bytes]) -> bytes:
    return frames[0] if len(frames) == 1 else b"".join(frames)


SAMPLE_EVERY = 64
"""One write in this many reports its size to the outbox-size histogram."""
BUSY_FLUSH = 0.001
"""Seconds a flush pass must take to count as busy (hundreds of sockets written)."""


class Batch:
    """Frames shared by the outboxes of a room's members during one pass."""

    __slots__ = ("_data", "frames", "generation", "open", "size")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        """The flusher's pass this batch belongs to; it takes no frames after it."""
        self.frames: list[bytes] = []
        self.size = 0
        self.open = True
        """Frames may still be added: no outbox has written it yet."""
        self._data: bytes | None = None

    def data(self) -> bytes:
        """The frames as one bytes object, joined once for all its outboxes; closes the batch."""
        if self._data is None:
            self._data = _joined(self.frames)
            self.open = False
        return self._data


class Flusher:
    """Writes all outboxes that received frames during a loop pass.

    When idle, frames go out at the end of the pass they were queued in. A
    flush pass that took `t` seconds (at least `BUSY_FLUSH`) was mostly write
    syscalls, each costing the same whatever it carries; the next pass then
    waits until `min(t, max_delay)` after it ended, so frames arriving
    meanwhile (a busy room's next messages) share writes. This bounds the time
    spent in writes to about half of a busy node's time, at the price of at
    most `max_delay` more latency, paid only under load.
    """

    __slots__ = (
        "_dirty",
        "_generation",
        "_loop",
        "_max_delay",
        "_next",
        "_scheduled",
        "bytes_out",
        "on_sample",
        "writes",
    )

    def __init__(self, max_delay: float = 0.0) -> None:
        self._dirty: list[Outbox] = []
        self._generation = 0
        """Counts flush passes: a batch serves only the pass it was made in."""
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._max_delay = max_delay
        self._next = 0.0
        """Loop time before which no flush starts (after a busy one)."""
        self.bytes_out = 0
        self.writes = 0
        self.on_sample: Callable[[int], None] | None = None
        """Given one write's size every SAMPLE_EVERY writes (the outbox-size metric)."""

    def mark(self, outbox: Outbox) -> None:
        self._dirty.append(outbox)
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        self._scheduled = True
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if self._next > self._loop.time():
            self._loop.call_at(self._next, self.flush_all)
        else:
            self._loop.call_soon(self.flush_all)

    def flush_all(self) -> None:
        self._scheduled = False
        self._generation += 1
        dirty, self._dirty = self._dirty, []
        loop = self._loop
        assert loop is not None
        started = loop.time()
        for outbox in dirty:
            outbox.flush()
        ended = loop.time()
        took = ended - started
        self._next = ended + min(took, self._max_delay) if took >= BUSY_FLUSH else 0.0

    def fanout(self, outboxes: tuple[Outbox, ...], frame: bytes, batch: Batch | None) -> Batch:
        """Queue `frame` on every outbox, in their order with anything queued before.

        `batch` is what the previous call for the same room returned (or None);
        the returned batch is to be passed with the room's next frame.
        """
        if batch is None or not batch.open or batch.generation != self._generation:
            batch = Batch(self._generation)
        # Only the room's first frame in a batch may be shared by an idle outbox:
        # one that becomes idle later (it joined, or flushed early) must not get
        # the frames before this one.
        fresh = not batch.frames
        batch.frames.append(frame)
        size = batch.size = batch.size + len(frame)
        dirty = self._dirty
        for outbox in outboxes:
            chunks = outbox._chunks
            if chunks is batch:
                pass
            elif chunks is None and fresh and not outbox.closed:
                outbox._chunks = batch
                dirty.append(outbox)
            else:
                outbox.push(frame)
                continue
            if size > outbox._limit:
                outbox.overflow()
        if dirty and not self._scheduled:
            self._schedule()
        return batch


class Outbox:
    """One connection's outbound buffer. `Connection` extends it, so each socket
    costs one object, not two; on its own it serves tests."""

    __slots__ = ("_chunks", "_flusher", "_limit", "_on_overflow", "_size", "closed", "sent", "transport")

    def __init__(
        self,
        transport: asyncio.Transport,
        limit: int,
        flusher: Flusher,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        self.transport = transport
        # None while nothing is queued (most of an idle connection's life): no
        # empty list per connection. A Batch while it holds only a shared batch.
        self._chunks: list[bytes] | Batch | None = None
        self._size = 0
        """Bytes in a private list of chunks (a batch keeps its own size)."""
        self._limit = limit
        self._flusher = flusher
        self._on_overflow = on_overflow
        self.closed = False
        """No more frames are accepted (sealed for a close, or overflowed)."""
        self.sent = 0
        """Frames written, for the close log line."""

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def pending(self) -> int:
        """Bytes written but not yet taken by the client."""
        chunks = self._chunks
        queued = chunks.size if isinstance(chunks, Batch) else self._size
        return queued + self.transport.get_write_buffer_size()

    def push(self, frame: bytes) -> None:
        if self.closed:
            return
        chunks = self._chunks
        if chunks is None:
            self._chunks = [frame]
            self._flusher.mark(self)
        elif isinstance(chunks, Batch):
            # Copy on write: the batch's other outboxes must not get this frame.
            self._chunks = [*chunks.frames, frame]
            self._size = chunks.size
        else:
            chunks.append(frame)
        self._size += len(frame)
        if self._size > self._limit:
            self.overflow()

    def flush(self) -> None:
        """Write what is queued; called by the flusher, and before a close."""
        chunks = self._chunks
        if chunks is None or self.closed:
            return
        self._chunks = None
        self._size = 0
        if isinstance(chunks, Batch):
            data = chunks.data()
            self.sent += len(chunks.frames)
        else:
            data = _joined(chunks)
            self.sent += len(chunks)
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(data)
        flusher = self._flusher
        flusher.bytes_out += len(data)
        flusher.writes += 1
        if flusher.on_sample is not None and not flusher.writes % SAMPLE_EVERY:
            flusher.on_sample(len(data))
        if transport.get_write_buffer_size() > self._limit:
            self.overflow()

    def seal(self) -> None:
        """Write what is queued and accept nothing more (the connection is closing)."""
        self.flush()
        self.closed = True

    def overflow(self) -> None:
        """The limit is passed: accept nothing more, drop what is queued, and say so once."""
        if self.closed:
            return
        self.closed = True
        self._chunks = None
        self._size = 0
        self.overflowed()

    def overflowed(self) -> None:
        """Called once the limit is passed (the outbox is closed by then); a subclass overrides it."""
        if self._on_overflow is not None:
            self._on_overflow()
