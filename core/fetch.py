"""Reading a room's stored messages: batched direct get over one shared inbox.

`$JS.API.DIRECT.GET.<stream>` with `next_by_subj` and `batch` answers with up
to `batch` messages on the room's subject, then an end-of-batch status (204
"EOB"). Every fetch of a node shares one wildcard inbox subscription; each
fetch waits on its own token under it, so a replay costs no subscription and
no task of its own.

Replies are parsed defensively: a message whose sequence header does not
parse is dropped and counted (`malformed`), never raised inside nats-py's
reader. A batch can be bounded in bytes as well as in messages (`max_bytes`),
so what a slow client makes the edge hold for it stays bounded.
"""

from __future__ import annotations

import asyncio
import json

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import Header, StatusCode
from nats.nuid import NUID

from core.health import BrokerHealth
from core.inbox import subscribe_direct
from core.rooms import room_of_subject, room_subject
from core.stored import SEQUENCE_HEADER, SUBJECT_HEADER, StoredMessage, parse_sequence, stored_message

NUM_PENDING_HEADER = "Nats-Num-Pending"
STATUS_HEADER: str = Header.STATUS.value
DESCRIPTION_HEADER: str = Header.DESCRIPTION.value
END_OF_BATCH = "204"
"""The status closing a batched direct get (nats-py names no constant for it)."""
NOTHING_MATCHES: str = StatusCode.NO_MESSAGES.value


class FetchError(Exception):
    """The stream could not be read (NATS down, timeout, stream missing)."""


class Batch:
    """One batch of a room's messages and how many more match after it."""

    __slots__ = ("messages", "pending")

    def __init__(self, messages: list[StoredMessage], pending: int) -> None:
        self.messages = messages
        self.pending = pending


class _PendingFetch:
    __slots__ = ("done", "messages", "pending", "room")

    def __init__(self, room: str, done: asyncio.Future[None]) -> None:
        self.room = room
        self.messages: list[StoredMessage] = []
        self.done = done
        self.pending = 0


class RoomFetcher:
    """Batched direct gets of one stream, multiplexed over a single inbox."""

    def __init__(self, nc: NATS, stream: str, timeout: float = 5.0, health: BrokerHealth | None = None) -> None:
        self._nc = nc
        self._health = health
        self.malformed = 0
        """Reply messages dropped because a header did not parse."""
        self._api = f"$JS.API.DIRECT.GET.{stream}"
        self._timeout = timeout
        self._prefix = f"_INBOX.{NUID().next().decode()}."
        self._nuid = NUID()
        self._waiting: dict[str, _PendingFetch] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await subscribe_direct(self._nc, self._prefix + "*", self._on_reply)

    def _on_reply(self, msg: Msg) -> None:
        token = msg.subject[len(self._prefix) :]
        fetch = self._waiting.get(token)
        if fetch is None or fetch.done.done():
            return
        if self._health is not None:
            self._health.answered()
        headers = msg.headers or {}
        status = headers.get(STATUS_HEADER)
        if status is None:
            seq = parse_sequence(headers.get(SEQUENCE_HEADER))
            if seq is None:
                self.malformed += 1
                return
            # A request over several rooms (heads) names each message's room by its subject.
            room = fetch.room or room_of_subject(headers.get(SUBJECT_HEADER, "")) or ""
            fetch.messages.append(stored_message(room, seq, headers, msg.data))
            fetch.pending = parse_sequence(headers.get(NUM_PENDING_HEADER)) or 0
        elif status == END_OF_BATCH:
            fetch.pending = parse_sequence(headers.get(NUM_PENDING_HEADER)) or 0
            fetch.done.set_result(None)
        elif status == NOTHING_MATCHES:
            fetch.pending = 0
            fetch.done.set_result(None)
        else:
            description = headers.get(DESCRIPTION_HEADER, "")[:200]
            fetch.done.set_exception(FetchError(f"direct get failed: {status[:8]} {description}"))

    async def _request(self, room: str, request: dict[str, object]) -> _PendingFetch:
        token = self._nuid.next().decode()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fetch = _PendingFetch(room, done)
        self._waiting[token] = fetch
        sent_at = self._health.now() if self._health is not None else 0.0
        try:
            await self._nc.publish(self._api, json.dumps(request).encode(), reply=self._prefix + token)
            await asyncio.wait_for(done, self._timeout)
        except TimeoutError:
            if self._health is not None:
                self._health.missed(sent_at)
            raise FetchError(f"direct get of room {room!r} timed out") from None
        except FetchError:
            raise
        except Exception as exc:  # nats-py raises several unrelated types when disconnected
            raise FetchError(f"direct get of room {room!r} failed: {exc}") from exc
        finally:
            del self._waiting[token]
        return fetch

    async def request(self, request: dict[str, object]) -> Batch:
        """Any batched direct get (`batch` set, so that its end is marked): what the bench's cost
        table measures beside the kinds the edge sends."""
        got = await self._request("", request)
        return Batch(got.messages, got.pending)

    async def fetch(self, room: str, after: int, batch: int, up_to: int | None = None, max_bytes: int = 0) -> Batch:
        """Up to `batch` messages of `room` with seq > `after` (and <= `up_to` when given),
        and, when `max_bytes` is set, about that many bytes at most (always at least one message).

        `pending` counts the matching messages after the batch; the server
        ignores `up_to_seq` with `next_by_subj`, so messages past `up_to` are
        dropped here, and counted in `pending` (an over-estimate).
        """
        if up_to is not None and up_to <= after:
            return Batch([], 0)
        request: dict[str, object] = {"seq": after + 1, "next_by_subj": room_subject(room), "batch": batch}
        if max_bytes > 0:
            request["max_bytes"] = max_bytes
        got = await self._request(room, request)
        messages = got.messages
        if up_to is not None and messages and messages[-1].seq > up_to:
            kept = [m for m in messages if m.seq <= up_to]
            return Batch(kept, got.pending + len(messages) - len(kept))
        return Batch(messages, got.pending)

    async def head(self, room: str) -> int:
        """The sequence of the room's newest stored message; 0 when it has none."""
        got = await self._request(room, {"multi_last": [room_subject(room)], "batch": 1})
        return got.messages[-1].seq if got.messages else 0

    async def heads(self, rooms: list[str]) -> dict[str, int]:
        """The newest stored seq of each room that has messages, in one request."""
        if not rooms:
            return {}
        got = await self._request("", {"multi_last": [room_subject(r) for r in rooms], "batch": len(rooms)})
        return {m.room: m.seq for m in got.messages if m.room}

    async def fetch_all(self, room: str, after: int, up_to: int | None = None, batch: int = 256) -> list[StoredMessage]:
        """Every message of `room` with seq in (`after`, `up_to`], in order."""
        out: list[StoredMessage] = []
        while True:
            got = await self.fetch(room, after, batch, up_to)
            out.extend(got.messages)
            if not got.messages or got.pending == 0 or (up_to is not None and got.messages[-1].seq >= up_to):
                return out
            after = got.messages[-1].seq
