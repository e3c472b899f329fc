"""Connection states as the application sees them, and the listeners told of each change.

Six states, as in the browser client: `idle` (made with `auto_connect=False`,
before `connect()`), `connecting` (the first attempt after `connect()`),
`connected` (a `welcome` arrived), `reconnecting` (waiting `delayMs` before
the next attempt; reported once per scheduled attempt), `disconnected`
(`disconnect()`: rooms and unacked publishes kept until the next
`connect()`), `closed` (for good).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Generic, Literal, ParamSpec, TypedDict

log = logging.getLogger(__name__)

P = ParamSpec("P")

State = Literal["idle", "connecting", "connected", "reconnecting", "disconnected", "closed"]


class StateInfo(TypedDict, total=False):
    """Details of a state change; keys are named as in the browser client.

    - `connected`: `session`, `node`, `transport` ("websocket", or "stream" after a fallback);
    - `reconnecting`: `code` (1006 when there was no close frame), `reason`,
      `delayMs` (the wait before the next attempt), `attempt` (failures in a row);
    - `disconnected`: `code` 1000, `reason`;
    - `closed`: `code` (the close code that ended the client: 1000 when the
      application closed it, 4501 when logged out; None after an internal
      error), `reason`, `loggedOut`.
    """

    code: int | None
    reason: str
    delayMs: int
    attempt: int
    session: str
    node: str
    transport: str
    loggedOut: bool


StateListener = Callable[[State, StateInfo], object]


class Listeners(Generic[P]):
    """Callbacks told of one kind of event; a failing callback is logged and does not stop the others.

    A callback may be a coroutine function: its coroutine runs as a task of its
    own (nothing waits for it), kept here until it ends.
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._callbacks: list[Callable[P, object]] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def __bool__(self) -> bool:
        return bool(self._callbacks)

    def add(self, callback: Callable[P, object]) -> Callable[[], None]:
        """Add `callback`; returns a function that removes it."""
        self._callbacks.append(callback)

        def remove() -> None:
            with suppress(ValueError):
                self._callbacks.remove(callback)

        return remove

    def call(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for callback in list(self._callbacks):
            try:
                result = callback(*args, **kwargs)
            except Exception:
                log.exception("%s failed", self._what)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", self._what, exc_info=task.exception())


class States:
    """The current state, its listeners, and a way to wait for the next change."""

    def __init__(self) -> None:
        self.current: State = "idle"
        self.info: StateInfo = {}
        self._listeners: Listeners[[State, StateInfo]] = Listeners("state listener")
        self._changed: asyncio.Event | None = None

    def listen(self, listener: StateListener) -> Callable[[], None]:
        """Add `listener`; returns a function that removes it."""
        return self._listeners.add(listener)

    def set(self, state: State, info: StateInfo) -> None:
        """Enter `state` and tell every listener; a failing listener does not stop the others."""
        self.current = state
        self.info = info
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()
        self._listeners.call(state, info)

    async def changed(self) -> None:
        """Wait for the next change."""
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()
