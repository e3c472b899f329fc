"""Requests of one connection that wait on the broker, running beside its read loop.

The read loop never awaits a request: a `ping`, a `leave` or a publish to
another room must not wait for a publish stuck on a hung NATS or for a long
join. What must stay ordered is ordered by a lane key instead: requests with
the same key run one after the other, in the order they were read
(publishes to one room, so they are stored in the order sent; joins and
leaves of one room). Requests with different keys run at once.

At most `limit` requests are in flight (running or queued in a lane); past
that the read loop waits in `slot()` before reading the next frame, so a
client that pipelines faster than NATS answers is slowed down by TCP
backpressure, and nothing is dropped.

Made when a connection has such a request, and let go (`on_idle`) as soon as
nothing runs any more: most connections only listen, and an idle node must not
hold one of these per connection because it once joined its rooms.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Hashable
from typing import Any

log = logging.getLogger(__name__)

Work = Coroutine[Any, Any, None]
Request = Callable[[], Work]
"""Makes a request's coroutine when its turn comes (so a cancelled lane leaves none unawaited)."""


class InFlight:
    __slots__ = ("_count", "_lanes", "_limit", "_on_crash", "_on_idle", "_slot", "_tasks")

    def __init__(
        self,
        limit: int,
        on_crash: Callable[[BaseException], None],
        on_idle: Callable[[InFlight], None] | None = None,
    ) -> None:
        self._limit = max(1, limit)
        self._on_crash = on_crash
        self._on_idle = on_idle
        """Called when nothing is running or queued any more (the owner may drop this object)."""
        """Called with what a request raised (a bug): the connection answers `internal`."""
        self._lanes: dict[Hashable, deque[Request]] = {}
        self._count = 0
        self._slot: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def count(self) -> int:
        """Requests submitted and not finished."""
        return self._count

    @property
    def full(self) -> bool:
        return self._count >= self._limit

    def busy(self, key: Hashable) -> bool:
        """True while requests with `key` are running or queued."""
        return key in self._lanes

    def submit(self, key: Hashable, request: Request) -> None:
        """Run `request()` after the requests already queued under `key`."""
        self._count += 1
        lane = self._lanes.get(key)
        if lane is not None:
            lane.append(request)
            return
        lane = self._lanes[key] = deque((request,))
        self.spawn(self._drain(key, lane))

    def spawn(self, work: Work) -> None:
        """Run `work` beside the read loop (not a request: it takes no slot); cancelled with the rest."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks and not self._count and self._on_idle is not None:
            self._on_idle(self)

    async def _drain(self, key: Hashable, lane: deque[Request]) -> None:
        try:
            while lane:
                try:
                    await lane[0]()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._on_crash(exc)
                finally:
                    lane.popleft()
                    self._finished()
        finally:
            if self._lanes.get(key) is lane:
                del self._lanes[key]

    def _finished(self) -> None:
        self._count -= 1
        slot = self._slot
        if slot is not None and not self.full:
            self._slot = None
            if not slot.done():
                slot.set_result(None)

    async def slot(self) -> None:
        """Wait until a request may be submitted, or `release()` (returns at once when one may)."""
        if self.full:
            slot = self._slot = asyncio.get_running_loop().create_future()
            await slot

    def release(self) -> None:
        """Wake a read loop waiting in `slot()` (the connection is closing)."""
        slot, self._slot = self._slot, None
        if slot is not None and not slot.done():
            slot.set_result(None)

    def cancel(self) -> None:
        """Cancel every request and spawned task (the connection is closing)."""
        for task in list(self._tasks):
            task.cancel()
        self._lanes.clear()
        self.release()
