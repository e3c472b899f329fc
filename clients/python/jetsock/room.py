"""One room membership: its position in the room (epoch, last seq) and its messages.

The position is what makes resuming exact: after a reconnect the client
rejoins with `since` = the last seq this room received and the epoch it got it
under, and drops any `msg` at or below that seq, so the iterator sees each
stored message once, in order, across any number of reconnects.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import msgspec

from jetsock.errors import RoomLeft
from schemas import Joined, Msg, Reset

if TYPE_CHECKING:
    from jetsock.client import Client

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    """A room message: the `msg` frame with `data` decoded from JSON.

    `from_` is the wire's `from` (a Python keyword). With `encoding ==
    "base64"`, `data` is a string holding the base64 of a backend's non-JSON,
    non-UTF-8 payload.
    """

    room: str
    seq: int
    ts: int
    data: Any
    id: str | None = None
    from_: str | None = None
    encoding: str | None = None


class Ack(NamedTuple):
    """A publish stored durably: its `seq`, and whether its `id` had been stored before."""

    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class ResetInfo:
    """Why continuity was lost, and where delivery goes on.

    `reason` is "reset" for a `reset` frame (the stream was recreated) and
    "not_recovered" for a join with `since` that answered `recovered: false`
    (messages expired, another epoch, or too many to replay). Either way the
    application reloads its state from its own backend; the iterator goes on
    with messages after `seq`.
    """

    room: str
    epoch: str
    seq: int
    reason: Literal["reset", "not_recovered"]


ResetCallback = Callable[["Room", ResetInfo], Awaitable[None] | None]


class _End:
    """Queued after the last message: the iterator stops, or raises `error`."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class Room:
    """A joined room: `async for message in room`, `publish`, `leave`.

    Messages are queued without bound as they arrive, so a slow iterator never
    stalls the connection (its pings, other rooms, acks); iterate promptly.
    One iterator per room: two would split the messages between them.
    """

    def __init__(
        self,
        client: Client,
        name: str,
        since: int | None,
        epoch: str | None,
        on_reset: ResetCallback | None,
    ) -> None:
        self._client = client
        self.name = name
        self.seq: int | None = since
        """The last seq received (or the `since` asked for): where a rejoin resumes."""
        self.epoch: str | None = epoch
        """The stream epoch `seq` belongs to."""
        self.recovered: bool | None = None
        """The last `joined.recovered`."""
        self._on_reset = on_reset
        self._queue: asyncio.Queue[Message | _End] = asyncio.Queue()
        self._joined: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ended: _End | None = None
        self._closing = False
        self.has_joined = False
        """True once a `joined` arrived: later refusals are rejoins, not the application's join."""
        self._tasks: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        return f"<Room {self.name!r} seq={self.seq} epoch={self.epoch!r}>"

    # --- the application's side --------------------------------------------

    async def publish(self, data: Any, id: str | None = None) -> Ack:
        """Publish `data` to this room; see `Client.publish`."""
        return await self._client.publish(self.name, data, id=id)

    async def leave(self) -> None:
        """Leave the room; its iterator ends after the messages already received."""
        await self._client._leave(self)

    def __aiter__(self) -> Room:
        return self

    async def __anext__(self) -> Message:
        if self._ended is not None and self._queue.empty():
            return self._stop(self._ended)
        item = await self._queue.get()
        if isinstance(item, _End):
            self._ended = item
            return self._stop(item)
        return item

    @property
    def active(self) -> bool:
        """False once the room has been left or its client closed."""
        return self._ended is None and not self._closing

    # --- the client's side -------------------------------------------------

    def since_for_join(self) -> tuple[int | None, str | None]:
        """`since` and `epoch` for the next join: resume where this room left off."""
        if self.seq is None:
            return None, None
        return self.seq, self.epoch

    def on_joined(self, frame: Joined, sent_since: int | None) -> None:
        """Adopt a `joined`: the new position, and a reset when the replay was refused."""
        self.epoch = frame.epoch
        self.recovered = frame.recovered
        if sent_since is None:
            # Joined live, from the head: everything up to it counts as seen.
            self.seq = frame.seq
        elif not frame.recovered:
            self.seq = frame.seq
            self._reset(ResetInfo(self.name, frame.epoch, frame.seq, "not_recovered"))
        # recovered: the replay of (since, frame.seq] follows; `seq` stays.
        self.has_joined = True
        if not self._joined.done():
            self._joined.set_result(None)

    def on_msg(self, frame: Msg) -> None:
        """Queue a message, unless it was already received (a replay overlapping a resend)."""
        if self.seq is not None and frame.seq <= self.seq:
            return
        self.seq = frame.seq
        self._queue.put_nowait(
            Message(
                room=frame.room,
                seq=frame.seq,
                ts=frame.ts,
                data=msgspec.json.decode(frame.data),
                id=frame.id,
                from_=frame.from_,
                encoding=frame.encoding,
            )
        )

    def on_reset(self, frame: Reset) -> None:
        self.epoch = frame.epoch
        self.seq = frame.seq
        self._reset(ResetInfo(self.name, frame.epoch, frame.seq, "reset"))

    def fail_join(self, error: BaseException) -> None:
        """The first join was refused: `join()` raises `error`."""
        if not self._joined.done():
            self._joined.set_exception(error)

    def end(self, error: BaseException | None) -> None:
        """No more messages: the iterator stops after what is queued (or raises `error`)."""
        if self._closing:
            return
        self._closing = True
        if not self._joined.done():
            self._joined.set_exception(error or RoomLeft(self.name, "left"))
            # Nobody may be awaiting it any more; do not warn about it.
            self._joined.exception()
        self._queue.put_nowait(_End(error))

    async def wait_joined(self) -> None:
        await asyncio.shield(self._joined)

    def _reset(self, info: ResetInfo) -> None:
        # Called before the messages after `seq` are queued, so a synchronous
        # callback runs strictly between the old messages and the new ones.
        if self._on_reset is None:
            return
        try:
            result = self._on_reset(self, info)
        except Exception:
            log.exception("on_reset callback of room %s failed", self.name)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _stop(end: _End) -> Message:
        if end.error is not None:
            raise end.error
        raise StopAsyncIteration
