"""One room membership: its state, its position in the room (epoch, last seq), and its consumers.

The position is what makes resuming exact: after a reconnect the client
rejoins with `since` = the last seq this room delivered and the epoch it got
it under, and drops any `msg` at or below that seq, so every consumer sees each
stored message once, in order, across any number of reconnects.

A join with `last` asks for the room's newest `last` stored messages when there is no
position to resume from, or the resume fails: they come first (after the reset of a
failed resume), then live ones, and `joined.replayed` says how many.

In a presence room (PROTOCOL.md section 10) a room also keeps `members`: filled by a
`who` the client sends after each `joined` (when the node's `welcome.features` has
"presence"), kept up to date by `presence` events, and resynced by the `who` after every
rejoin (events are at most once).

A room is `joining` (asked, or waiting for a connection or a rejoin), `joined`
(with the last `joined` frame's epoch, seq, recovered and replayed) or `left` (for good:
by `leave()`, a refusal, the server's `left`, or the client closing; `error`
says why when it was not `leave()`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import msgspec

from jetsock.errors import JetsockError, RequestTimeout, RoomLeft, ServerError
from jetsock.state import Listeners
from jetsock.wire import Joined, Members, Msg, Reset
from jetsock.wire import Presence as PresenceFrame
from jetsock.wire import PresenceMember as MemberEntry

if TYPE_CHECKING:
    from jetsock.client import Client
    from jetsock.link import Link

RoomState = Literal["joining", "joined", "left"]


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


def message_of(frame: Msg) -> Message:
    """The application's Message for a `msg` frame (or a history page's entry)."""
    return Message(
        room=frame.room,
        seq=frame.seq,
        ts=frame.ts,
        data=msgspec.json.decode(frame.data),
        id=frame.id,
        from_=frame.from_,
        encoding=frame.encoding,
    )


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A page of a room's stored messages (the `history` reply).

    `messages` are in increasing seq: the newest `limit` with seq < `before`.
    `more` is true when older stored messages exist: ask again with `before` =
    `messages[0].seq`. `epoch` is the stream epoch the seqs belong to.
    """

    room: str
    epoch: str
    messages: list[Message]
    more: bool


@dataclass(frozen=True, slots=True)
class PresenceMember:
    """A present user: its token's `sub`, its `info` claim (a JSON object, None without one),
    and its joined `connections` (tabs, devices), cluster-wide, as of the last `who`.

    Events carry no counts: a user added by an event counts 1 until the next `who`, and
    another tab of a user already present changes nothing until then.
    """

    sub: str
    info: dict[str, Any] | None = None
    connections: int = 1


def member_of(entry: MemberEntry, connections: int = 1) -> PresenceMember:
    count = entry.connections if entry.connections is not None else connections
    return PresenceMember(entry.sub, entry.info, count)


@dataclass(frozen=True, slots=True)
class Presence:
    """Who is present in a room: the `who` answer (`members` frame).

    `count` present users, `connections` their joined connections, `members` sorted by
    `sub` (at most the server's `max_presence_list`, 1000 by default; `truncated` when cut).
    """

    room: str
    count: int
    connections: int
    members: list[PresenceMember]
    truncated: bool


def presence_of(frame: Members) -> Presence:
    members = [member_of(m) for m in frame.members]
    return Presence(frame.room, frame.count, frame.connections, members, frame.truncated)


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """Users whose first connection joined (`joined`, as now in `room.members`) or whose
    last one left (`left`, their subs): after each `presence` frame (the server batches
    them, at most one per `presence_interval`), and after each `who` answer that replaced
    `room.members` (then the difference; both empty when only connection counts changed)."""

    room: str
    joined: tuple[PresenceMember, ...]
    left: tuple[str, ...]


class Ack(NamedTuple):
    """A publish stored durably: its `seq`, and whether its `id` had been stored before."""

    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class JoinedInfo:
    """The last `joined` of a room: the stream `epoch`, the room's head `seq` at the join,
    whether the replay asked for with `since` is complete (`recovered`), and how many
    stored messages follow before live ones (`replayed`: that replay, or the room's newest
    `last`; 0 from a server before 1.1)."""

    epoch: str
    seq: int
    recovered: bool
    replayed: int = 0


@dataclass(frozen=True, slots=True)
class ResetInfo:
    """Why continuity was lost, and where delivery goes on.

    `reason` is "reset" for a `reset` frame (the stream was recreated) and
    "not_recovered" for a join with `since` that answered `recovered: false`
    (messages expired, another epoch, or too many to replay). Either way the
    application reloads its state from its own backend (or `room.history()`);
    delivery goes on with messages after `seq`, except that a join with `last`
    delivers first the room's newest stored messages (`room.replayed` of them,
    seq <= `seq`).
    """

    room: str
    epoch: str
    seq: int
    reason: Literal["reset", "not_recovered"]


@dataclass(frozen=True, slots=True)
class LeftInfo:
    """Why a room is `left`, as the JS client's LeftInfo says it.

    `reason`: "left" for the application's own `leave()`, a `left` frame's reason
    ("forbidden" after a refresh that lost the right), the code of a refused join,
    or the client's own code when it closed ("closed", "logged_out"). `error` is the
    error behind it (None for `leave()`).
    """

    reason: str
    error: JetsockError | None


def left_info(error: JetsockError | None) -> LeftInfo:
    if error is None:
        return LeftInfo("left", None)
    if isinstance(error, RoomLeft):
        return LeftInfo(error.reason, error)
    return LeftInfo(str(error.code), error)


RoomInfo = JoinedInfo | LeftInfo | None
"""What a room state listener gets: the JoinedInfo for `joined`, None for `joining`,
and the LeftInfo for `left`."""

RoomStateListener = Callable[[RoomState, RoomInfo], object]
MessageListener = Callable[[Message], object]
PresenceListener = Callable[[PresenceEvent], object]
ResetCallback = Callable[["Room", ResetInfo], Awaitable[None] | None]


class _End:
    """Queued after the last message: the iterator stops, or raises `error`."""

    __slots__ = ("error",)

    def __init__(self, error: JetsockError | None) -> None:
        self.error = error


class Messages:
    """One consumer of a room's messages (`async for`, or `room.messages()`).

    It gets every message the room delivers from the moment it was made, in
    its own unbounded queue, then ends after the room leaves: it stops, or
    raises `RoomLeft` (the server ended the membership or refused a join) or
    `ClosedError` (the client stopped on its own). `aclose()`, or dropping
    it (a `break` out of `async for`), detaches it from the room.
    """

    def __init__(self, room: Room, queue: asyncio.Queue[Message | _End]) -> None:
        self._queue = queue
        self._done = False
        self._detach = weakref.finalize(self, room._detach, queue)
        self._detach.atexit = False

    def __aiter__(self) -> Messages:
        return self

    async def __anext__(self) -> Message:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, _End):
            self._done = True
            self._detach()
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        """Stop receiving; what is still queued here is kept for the room's next consumer."""
        self._done = True
        self._detach()


class PresenceEvents:
    """One consumer of a room's presence events (`room.presence_events()`), from its start.

    Each has its own unbounded queue; it stops when the room leaves. `aclose()`, or
    dropping it, detaches it from the room.
    """

    def __init__(self, room: Room, queue: asyncio.Queue[PresenceEvent | None]) -> None:
        self._queue = queue
        self._done = False
        self._detach = weakref.finalize(self, room._presence_feeds.discard, queue)
        self._detach.atexit = False

    def __aiter__(self) -> PresenceEvents:
        return self

    async def __anext__(self) -> PresenceEvent:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            self._done = True
            self._detach()
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        self._done = True
        self._detach()


class Room:
    """A room of a client: its state, `publish`, `leave`, its messages.

    Made by `Client.join`, which returns at once (state `joining`); `await
    room` (or `await room.ready()`) waits for `joined`. Messages reach every
    `on_message` listener and every open iterator (`async for message in
    room`, each one its own queue from its start). Messages that arrive while
    the room has neither keep waiting, without bound, for its next iterator,
    so `room = await client.join(...)` followed by `async for` misses nothing
    (a replay may arrive right behind `joined`). Iterate promptly: a slow
    iterator never stalls the connection, it only grows its queue.
    """

    def __init__(
        self,
        client: Client,
        name: str,
        since: int | None,
        epoch: str | None,
        on_reset: ResetCallback | None,
        last: int | None = None,
    ) -> None:
        self._client = client
        self.name = name
        self.last = last
        """The `last` sent with every join of this room (None: none)."""
        self.state: RoomState = "joining"
        self.seq: int | None = since
        """The last seq delivered (or the `since` asked for, or the head at a live join): where a rejoin resumes."""
        self.epoch: str | None = epoch
        """The stream epoch `seq` belongs to."""
        self.recovered: bool | None = None
        """The last `joined.recovered`."""
        self.replayed: int | None = None
        """The last `joined.replayed`: how many stored messages came before live ones."""
        self.joined: JoinedInfo | None = None
        """The last `joined`."""
        self.error: JetsockError | None = None
        """Why the room is `left`, when it was not `leave()`: a `ServerError` (a join refused), a
        `RoomLeft` (the server's `left`), a `ClosedError` (the client closed)."""
        self._states: Listeners[[RoomState, RoomInfo]] = Listeners(f"state listener of room {name}")
        self._messages: Listeners[[Message]] = Listeners(f"message listener of room {name}")
        self._resets: Listeners[[Room, ResetInfo]] = Listeners(f"reset listener of room {name}")
        if on_reset is not None:
            self._resets.add(on_reset)
        self._presence: Listeners[[PresenceEvent]] = Listeners(f"presence listener of room {name}")
        self._presence_feeds: set[asyncio.Queue[PresenceEvent | None]] = set()
        self._members: dict[str, PresenceMember] = {}
        self.members: Mapping[str, PresenceMember] = MappingProxyType(self._members)
        """Who is present, by sub (a read-only live view): see the module's docstring. Empty
        when the token lacks `rooms.presence` for the room or the room keeps no presence
        (the client then stops asking, quietly), and after the room left."""
        self.who_wanted = True
        """The client may ask `who` after the next `joined` (False after `forbidden` / `bad_request`)."""
        self.who_asking = False
        self._feeds: list[asyncio.Queue[Message | _End]] = []
        self._backlog: deque[Message] = deque()
        self._end: _End | None = None
        self._changed: asyncio.Event | None = None
        # The client's bookkeeping.
        self.link: Link | None = None
        """The connection this room's join was last sent on (None: not sent, refused, or that connection ended)."""
        self.tries = 0
        """Joins refused with a retryable code since the last `joined`."""

    def __repr__(self) -> str:
        return f"<Room {self.name!r} {self.state} seq={self.seq} epoch={self.epoch!r}>"

    # --- the application's side --------------------------------------------

    @property
    def active(self) -> bool:
        """False once the room has been left (for any reason)."""
        return self.state != "left"

    async def ready(self, timeout: float | None = None) -> JoinedInfo:
        """Wait until the room is `joined`; its JoinedInfo.

        Raises what ended the room: `ServerError` (the join was refused:
        `forbidden`, `too_many_rooms`, ...), `RoomLeft` (the server's `left`,
        or reason "left" after `leave()`), `ClosedError`; or `RequestTimeout`
        (code "timeout") after `timeout` seconds. After a reconnect a joined
        room is `joining` again until its rejoin is answered.
        """
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                while True:
                    if self.state == "joined" and self.joined is not None:
                        return self.joined
                    if self.state == "left":
                        raise self.error or RoomLeft(self.name, "left")
                    if self._changed is None:
                        self._changed = asyncio.Event()
                    await self._changed.wait()
        except TimeoutError:
            if deadline.expired():
                raise RequestTimeout(f"room {self.name!r} not joined within {timeout:g} s", room=self.name) from None
            raise

    def __await__(self) -> Generator[Any, None, Room]:
        """`await room`: wait for `joined` (see `ready`), then the room itself."""
        return self._ready_room().__await__()

    async def _ready_room(self) -> Room:
        await self.ready()
        return self

    async def publish(self, data: Any, id: str | None = None, timeout: float | None = None) -> Ack:
        """Publish `data` to this room; see `Client.publish`."""
        return await self._client.publish(self.name, data, id=id, timeout=timeout)

    async def history(
        self, before: int | None = None, limit: int | None = None, timeout: float | None = None
    ) -> HistoryPage:
        """A page of this room's stored messages (joining is not required); see `Client.history`."""
        return await self._client.history(self.name, before=before, limit=limit, timeout=timeout)

    def leave(self) -> Awaitable[None]:
        """Leave the room: it is `left` at once (a join of the name may follow at once), and
        its iterators end after what they hold.

        Await the result to wait for the server's `left` (or the end of the
        connection); a join of the same name made meanwhile is sent only then.
        """
        return self._client._leave(self)

    def on_state(self, listener: RoomStateListener) -> Callable[[], None]:
        """Call `listener(state, info)` on every state change (see `RoomInfo`); returns a remover."""
        return self._states.add(listener)

    def on_message(self, listener: MessageListener) -> Callable[[], None]:
        """Call `listener(message)` for every message from now on; returns a remover.

        A coroutine function is run as a task per message (not awaited: order
        is only kept by plain functions and iterators).
        """
        return self._messages.add(listener)

    def on_reset(self, listener: ResetCallback) -> Callable[[], None]:
        """Call `listener(room, info)` when continuity is lost, before any message after `info.seq`."""
        return self._resets.add(listener)

    async def presence(self, timeout: float | None = None) -> Presence:
        """Who is present now (a `who`); `members` is replaced with the answer. See `Client.presence`."""
        return await self._client.presence(self.name, timeout=timeout)

    def on_presence(self, listener: PresenceListener) -> Callable[[], None]:
        """Call `listener(event)` for every `PresenceEvent` from now on; returns a remover."""
        return self._presence.add(listener)

    def presence_events(self) -> PresenceEvents:
        """A new iterator of this room's presence events, from now on; it stops when the room leaves."""
        queue: asyncio.Queue[PresenceEvent | None] = asyncio.Queue()
        if self.state == "left":
            queue.put_nowait(None)
        else:
            self._presence_feeds.add(queue)
        return PresenceEvents(self, queue)

    def messages(self) -> Messages:
        """A new iterator of this room's messages, from now on (plus what waits for the next iterator)."""
        queue: asyncio.Queue[Message | _End] = asyncio.Queue()
        iterator = Messages(self, queue)
        while self._backlog:
            queue.put_nowait(self._backlog.popleft())
        if self._end is not None:
            queue.put_nowait(self._end)
        else:
            self._feeds.append(queue)
        return iterator

    def __aiter__(self) -> Messages:
        return self.messages()

    # --- the client's side -------------------------------------------------

    def since_for_join(self) -> tuple[int | None, str | None]:
        """`since` and `epoch` for the next join: resume where this room left off."""
        if self.seq is None:
            return None, None
        return self.seq, self.epoch

    def handle_joined(self, frame: Joined, sent_since: int | None) -> None:
        """Adopt a `joined`: the new position, and a reset when the replay was refused."""
        self.epoch = frame.epoch
        self.recovered = frame.recovered
        replayed = self.replayed = frame.replayed or 0
        self.tries = 0
        reset = None
        if sent_since is None or not frame.recovered:
            # Joined from the head: everything up to it counts as seen, unless the newest
            # `replayed` stored messages (seq <= frame.seq, asked for with `last`) follow:
            # then there is no position until the first of them.
            self.seq = None if replayed else frame.seq
            if sent_since is not None:
                reset = ResetInfo(self.name, frame.epoch, frame.seq, "not_recovered")
        # recovered: the replay of (since, frame.seq] follows; `seq` stays.
        self.joined = JoinedInfo(frame.epoch, frame.seq, frame.recovered, replayed)
        self._set("joined", self.joined)
        if reset is not None:
            self._resets.call(self, reset)

    def handle_msg(self, frame: Msg) -> None:
        """Deliver a message, unless it was already delivered (a replay overlapping a resend)."""
        if self.seq is not None and frame.seq <= self.seq:
            return
        self.seq = frame.seq
        message = message_of(frame)
        self._messages.call(message)
        for queue in self._feeds:
            queue.put_nowait(message)
        if not self._feeds and not self._messages:
            self._backlog.append(message)

    def handle_reset(self, frame: Reset) -> None:
        self.epoch = frame.epoch
        self.seq = frame.seq
        # Called before the messages after `seq` are delivered, so a plain
        # callback runs strictly between the old messages and the new ones.
        self._resets.call(self, ResetInfo(self.name, frame.epoch, frame.seq, "reset"))

    def handle_presence(self, frame: PresenceFrame) -> None:
        """A `presence` event: applied to `members`, then told."""
        members = self._members
        joined = []
        for user in frame.joined:
            before = members.get(user.sub)
            member = members[user.sub] = member_of(user, before.connections if before is not None else 1)
            joined.append(member)
        for gone in frame.left:
            members.pop(gone.sub, None)
        self._tell(PresenceEvent(self.name, tuple(joined), tuple(gone.sub for gone in frame.left)))

    def sync_members(self, frame: Members) -> None:
        """A `who` answer: `members` replaced; the difference told as an event."""
        old = dict(self._members)
        self._members.clear()
        for user in frame.members:
            self._members[user.sub] = member_of(user)
        joined = tuple(m for sub, m in self._members.items() if sub not in old)
        left = tuple(sub for sub in old if sub not in self._members)
        self._tell(PresenceEvent(self.name, joined, left))

    def _tell(self, event: PresenceEvent) -> None:
        self._presence.call(event)
        for queue in self._presence_feeds:
            queue.put_nowait(event)

    def to_joining(self) -> None:
        """The connection ended: a joined room waits for its rejoin."""
        if self.state == "joined":
            self._set("joining", None)

    def end(self, error: JetsockError | None, *, quiet: bool = False) -> None:
        """The room is `left` for good, because of `error` (None: `leave()`).

        Iterators stop after what they hold; with an error they raise it
        (a refused join as `RoomLeft` with the refusal), unless `quiet` (the
        application closed the client).
        """
        if self.state == "left":
            return
        self.error = error
        self.link = None
        raised = None if quiet else error
        if isinstance(raised, ServerError):
            raised = RoomLeft(self.name, raised.code, raised)
        self._end = _End(raised)
        feeds, self._feeds = self._feeds, []
        for queue in feeds:
            queue.put_nowait(self._end)
        self._members.clear()
        presence_feeds, self._presence_feeds = self._presence_feeds, set()
        for presence_queue in presence_feeds:
            presence_queue.put_nowait(None)
        self._set("left", left_info(error))

    def _set(self, state: RoomState, info: RoomInfo) -> None:
        self.state = state
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()
        self._states.call(state, info)

    def _detach(self, queue: asyncio.Queue[Message | _End]) -> None:
        """An iterator is done: what it had not read waits for the next one, if it was the last."""
        if queue not in self._feeds:
            return
        self._feeds.remove(queue)
        if self._feeds or self._messages:
            return
        unread: list[Message] = []
        while not queue.empty():
            item = queue.get_nowait()
            if isinstance(item, Message):
                unread.append(item)
        self._backlog.extendleft(reversed(unread))
