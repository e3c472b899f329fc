"""Task-free NATS subscriptions.

nats-py starts one asyncio task per callback subscription. An edge with
10,000 active rooms would hold 10,000 tasks, each with its own queue. Here a
subscription is made without a callback (nats-py then starts no task) and its
pending queue is replaced by a `CallbackQueue` whose `put_nowait` calls the
handler at once, inside nats-py's reader. Handlers must not block: they do
arithmetic and hand bytes to buffers, and start a task only for real I/O
(a gap repair).

Because handlers run inside nats-py's read loop, an exception escaping one
would stop that loop, and with it every reply and every room of the node
(an audit stopped it for 340 s with one malformed header). `put_nowait`
therefore catches everything a handler raises, counts it and logs it at most
once per `LOG_EVERY` seconds per subscription.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)

MsgHandler = Callable[[Msg], None]

LOG_EVERY = 10.0
"""Seconds between two log lines about failing handlers of one subscription."""


class CallbackQueue(asyncio.Queue):  # type: ignore[type-arg]
    """A queue that is never filled: each message goes straight to the handler."""

    def __init__(self, handler: MsgHandler) -> None:
        super().__init__()
        self._handler = handler
        self.sub: Subscription | None = None
        self.failures = 0
        """Messages whose handler raised (they are dropped)."""
        self._logged = 0.0

    def put_nowait(self, item: Any) -> None:
        if self.sub is not None:
            # nats-py counts bytes in, expecting a consumer to count them out.
            self.sub._pending_size = 0
        try:
            self._handler(item)
        except Exception:
            self.failures += 1
            now = time.monotonic()
            if now - self._logged >= LOG_EVERY:
                self._logged = now
                subject = getattr(item, "subject", "?")
                log.exception("a message on %s was dropped: its handler failed (%d so far)", subject, self.failures)


async def subscribe_direct(nc: NATS, subject: str, handler: MsgHandler) -> Subscription:
    """Subscribe so that messages reach `handler` synchronously, with no task of their own."""
    sub = await nc.subscribe(subject, pending_bytes_limit=0)
    # Relies on nats-py delivering through `sub._pending_queue.put_nowait`
    # (nats-py 2.x, pinned in pyproject.toml); tests/core/test_feed.py fails if
    # that ever changes, and `make test` runs it against the newest nats-py too.
    queue = CallbackQueue(handler)
    queue.sub = sub
    sub._pending_queue = queue
    if sub._message_iterator is not None:
        sub._message_iterator._queue = queue
    return sub
