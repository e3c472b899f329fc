"""Connection states as the application sees them, and the listeners told of each change.

Four states, as in the browser client: `connecting` (the first attempt),
`connected` (a `welcome` arrived), `reconnecting` (waiting `delayMs` before
the next attempt; reported once per scheduled attempt), `closed` (for good).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Literal, TypedDict

log = logging.getLogger(__name__)

State = Literal["connecting", "connected", "reconnecting", "closed"]


class StateInfo(TypedDict, total=False):
    """Details of a state change; keys are named as in the browser client.

    - `connected`: `session`, `node`;
    - `reconnecting`: `code` (1006 when there was no close frame), `reason`,
      `delayMs` (the wait before the next attempt), `attempt` (failures in a row);
    - `closed`: `code` (None when the application closed), `reason`.
    """

    code: int | None
    reason: str
    delayMs: int
    attempt: int
    session: str
    node: str


StateListener = Callable[[State, StateInfo], object]


class States:
    """The current state, its listeners, and a way to wait for the next change."""

    def __init__(self) -> None:
        self.current: State = "connecting"
        self.info: StateInfo = {}
        self._listeners: list[StateListener] = []
        self._changed = asyncio.Event()

    def listen(self, listener: StateListener) -> Callable[[], None]:
        """Add `listener`; returns a function that removes it."""
        self._listeners.append(listener)

        def remove() -> None:
            with suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    def set(self, state: State, info: StateInfo) -> None:
        """Enter `state` and tell every listener; a failing listener does not stop the others."""
        self.current = state
        self.info = info
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        for listener in list(self._listeners):
            try:
                listener(state, info)
            except Exception:
                log.exception("state listener failed")

    async def changed(self) -> None:
        """Wait for the next change."""
        await self._changed.wait()
