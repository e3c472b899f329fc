"""Which rooms the node follows on NATS, and for how long after their last member leaves.

The hub is local; NATS interest (a `live.rooms.<room>` subscription and its
cursor) is driven from here, through the broker. A room is followed from its
first local member's join until `grace` seconds after its last member left:
a user who reloads a page leaves and rejoins within a second, and must not
cost an unsubscribe, a subscribe and a head lookup each time. While a room
lingers its feed keeps its cursor current, so a rejoin starts at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from core.broker import Broker
from core.position import Position


class RoomInterest:
    __slots__ = ("_broker", "_grace", "_has_members", "_lingering")

    def __init__(self, broker: Broker, grace: float, has_members: Callable[[str], bool]) -> None:
        self._broker = broker
        self._grace = grace
        self._has_members = has_members
        self._lingering: dict[str, asyncio.TimerHandle] = {}

    async def watch(self, room: str) -> Position:
        """Follow `room` (a member is joining); its feed's position once live. Raises Unavailable."""
        handle = self._lingering.pop(room, None)
        if handle is not None:
            handle.cancel()
        return await self._broker.watch(room)

    def release(self, room: str) -> None:
        """`room` has no local member any more: stop following it after the grace period."""
        if self._grace <= 0:
            self._broker.unwatch(room)
            return
        previous = self._lingering.pop(room, None)
        if previous is not None:
            previous.cancel()
        loop = asyncio.get_running_loop()
        self._lingering[room] = loop.call_later(self._grace, self._expire, room)

    def _expire(self, room: str) -> None:
        self._lingering.pop(room, None)
        if not self._has_members(room):
            self._broker.unwatch(room)

    def stop(self) -> None:
        for handle in self._lingering.values():
            handle.cancel()
        self._lingering.clear()
