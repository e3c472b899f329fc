"""Frames posted to an HTTP stream session, from whichever node the POST reached to the node that holds it.

A stream session (PROTOCOL.md section 11) lives on the node that answered its
`POST /v1/stream`; the client's later `POST /v1/stream/<session>` may reach any node
(no sticky sessions). Session ids start with their node's route (`<route>.<random>`),
and each node subscribes once to `jetsock.stream.<route>.*`. The node that got the POST
makes a NATS request to `jetsock.stream.<session>` carrying the poster's `sub` and the
frames; the owner hands them to the session in order and replies:

- `ok`: accepted (the POST answers 204 only then, so the client knows the owner has them);
- `gone`: no such session any more (404: the client reconnects and resumes);
- `forbidden`: the poster is not the session's `sub` (403);
- `busy`: the session still had `max_requests_in_flight` requests waiting when the
  owner's deadline came, and took none of the frames (503: send them again).

A POST waits while its session's requests are at their limit, as a WebSocket's frames
wait in TCP: the owner answers within `timeout` (a quarter of it is left for the way
back). No responder (the owning node is gone) and no reply within `timeout` are `gone`.
One subscription per node, handled inside nats-py's reader (core/inbox.py), a task per
request only for its wait and its reply: no subscription and no task per session.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.nuid import NUID

from core.inbox import subscribe_direct

PREFIX = "jetsock.stream."
ACCEPTED = "ok"
GONE = "gone"
FORBIDDEN = "forbidden"
BUSY = "busy"
ANSWERS = (ACCEPTED, GONE, FORBIDDEN, BUSY)
OWNER_SHARE = 0.75
"""The part of `timeout` the owner may spend waiting for the session; the rest is the way back."""
SESSION_ID = re.compile(r"[A-Za-z0-9]{1,32}\.[A-Za-z0-9_-]{1,64}")
"""What `session_id` makes (a NUID prefix, a dot, URL-safe base64). Anything else is no session, and
never becomes a NATS subject: a `*`, `>`, space or line break in a posted id must not reach NATS."""

log = logging.getLogger(__name__)


class Posted(msgspec.Struct):
    sub: str
    frames: list[msgspec.Raw]


Deliver = Callable[[str, str, list[bytes], float], Awaitable[str]]
"""deliver(session, sub, frames, timeout) -> ACCEPTED, GONE, FORBIDDEN or BUSY, on the owning node,
within `timeout` seconds."""

_decode = msgspec.json.Decoder(Posted).decode
_encode = msgspec.json.Encoder().encode


class StreamRouter:
    def __init__(self, deliver: Deliver, timeout: float = 2.0) -> None:
        self.route = NUID().next().decode()[:10]
        """This node's part of its sessions' ids."""
        self._deliver = deliver
        self._timeout = timeout
        self._nc: NATS | None = None
        self._sub: Subscription | None = None
        self._replies: set[asyncio.Task[None]] = set()
        """Requests from other nodes being delivered and answered."""

    def session_id(self, secret: str) -> str:
        return f"{self.route}.{secret}"

    def owns(self, session: str) -> bool:
        return session.startswith(self.route + ".")

    async def start(self, nc: NATS) -> None:
        self._nc = nc
        self._sub = await subscribe_direct(nc, f"{PREFIX}{self.route}.*", self._on_request)

    async def post(self, session: str, sub: str, frames: list[bytes]) -> str:
        """Hand `frames` to `session` wherever it lives; ACCEPTED, GONE, FORBIDDEN or BUSY."""
        if not SESSION_ID.fullmatch(session):
            return GONE
        if self.owns(session):
            return await self._deliver(session, sub, frames, self._timeout)
        nc = self._nc
        if nc is None:
            return GONE
        payload = _encode(Posted(sub=sub, frames=[msgspec.Raw(f) for f in frames]))
        try:
            reply = await nc.request(PREFIX + session, payload, timeout=self._timeout)
        except (NoRespondersError, NatsTimeout, TimeoutError):
            return GONE
        except Exception as exc:  # NATS down: the owner cannot be reached either.
            log.debug("stream post to %s failed: %s", session, exc)
            return GONE
        answer = reply.data.decode(errors="replace")
        return answer if answer in ANSWERS else GONE

    def _on_request(self, msg: Msg) -> None:
        # Handlers run inside nats-py's reader and cannot await: the delivery (which may wait
        # for the session) and the reply go from a task.
        task = asyncio.get_running_loop().create_task(self._answer(msg))
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    async def _answer(self, msg: Msg) -> None:
        session = msg.subject[len(PREFIX) :]
        try:
            posted = _decode(msg.data)
        except msgspec.DecodeError:
            answer = GONE
        else:
            answer = await self._deliver(
                session, posted.sub, [bytes(f) for f in posted.frames], self._timeout * OWNER_SHARE
            )
        if msg.reply and self._nc is not None:
            try:
                await self._nc.publish(msg.reply, answer.encode())
            except Exception as exc:  # NATS went meanwhile: the poster times out and answers 404
                log.debug("stream post answer for %s not sent: %s", session, exc)
