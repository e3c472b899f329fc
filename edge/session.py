"""A session's protocol, whatever its transport: authentication, then requests.

The transport adapter hands the session its handshake token (or nothing),
then every text frame; this module turns them into replies. Checks that need
no I/O (frame shape, room names, rights, rate limits) run at once, in the
order frames are read, so their errors come in request order. Requests that
wait on the broker (publish, join, refresh) run beside the read loop
(edge/inflight.py), ordered per room; `ping` and `leave` are answered at
once. Every reply carries its request's `ref`.
"""

from __future__ import annotations

import logging
import sys
import time

from aiohttp import web

from core.auth import AuthError, Principal
from core.broker import PublishUncertain, Unavailable
from core.rooms import ROOM_RULE, is_valid_room
from edge.connection import Connection
from edge.decode import BadFrame, decode_client_frame
from edge.history import history
from edge.joining import join
from edge.node import Node
from edge.publishing import publish_traced
from schemas import (
    Ack,
    Auth,
    Disconnects,
    ErrorCode,
    History,
    Join,
    Leave,
    Left,
    Ping,
    Pong,
    Publish,
    Refresh,
    Refreshed,
    Welcome,
    Who,
)
from schemas.frames import Ref

log = logging.getLogger(__name__)

NODE_KEY: web.AppKey[Node] = web.AppKey("node", Node)


# --- authentication -------------------------------------------------------------


async def authenticate(node: Node, conn: Connection, token: str, ref: Ref = None) -> bool:
    """Verify `token`, admit the subject and send `welcome`; False when the session is being closed.
    The token is not kept."""
    try:
        principal = await node.verifier.verify(token)
    except AuthError as exc:
        node.metrics.auth_failures.add(1, {"jetsock.reason": exc.reason})
        conn.close(Disconnects.INVALID_TOKEN.with_detail(str(exc)))
        return False
    if conn.closing:  # closed meanwhile (auth_timeout, drain)
        return False
    refusal = node.admit(conn, principal.sub)
    if refusal is not None:
        conn.close(refusal)
        return False
    conn.opened_as(principal)
    conn.send(
        Welcome(
            session=conn.session,
            node=node.name,
            heartbeat=node.settings.heartbeat,
            exp=principal.exp,
            features=features(node),
            ref=ref,
        )
    )
    return True


async def authenticate_frame(node: Node, conn: Connection, data: bytes) -> bool:
    """The first frame of a session that did not authenticate in its handshake: it must be `auth`."""
    try:
        frame = decode_client_frame(data)
    except BadFrame:
        frame = None
    if not isinstance(frame, Auth):
        node.metrics.auth_failures.add(1, {"jetsock.reason": "missing"})
        conn.close(Disconnects.AUTH_FIRST)
        return False
    return await authenticate(node, conn, frame.token, frame.ref)


def auth_timed_out(node: Node, conn: Connection) -> None:
    """`auth_timeout` passed: a session still authenticating is closed with 4501."""
    if conn.principal is None and not conn.closing:
        node.metrics.auth_failures.add(1, {"jetsock.reason": "timeout"})
        conn.close(Disconnects.AUTH_TIMEOUT)


# --- requests -------------------------------------------------------------------


def features(node: Node) -> list[str]:
    """What `welcome.features` lists (version 1.1): what this node has switched on."""
    switched_on = ["history", "stream"]
    if node.presence.enabled:
        switched_on.append("presence")
    if node.settings.compression:
        switched_on.append("deflate")
    return switched_on


def receive_text(node: Node, conn: Connection, data: bytes) -> None:
    """One text frame of an open session."""
    try:
        frame = decode_client_frame(data)
    except BadFrame as exc:
        conn.error(ErrorCode.BAD_REQUEST, str(exc), exc.ref)
        return
    match frame:
        case Publish():
            _publish(node, conn, frame)
        case Join():
            _join(node, conn, frame)
        case Leave():
            _leave(node, conn, frame)
        case Ping():
            conn.send(Pong(ref=frame.ref))
        case Refresh():
            conn.submit(("refresh",), lambda: _refresh(node, conn, frame))
        case History():
            history(node, conn, frame)
        case Who():
            _who(node, conn, frame)
        case Auth():
            conn.error(ErrorCode.BAD_REQUEST, "already authenticated: use refresh to change the token", frame.ref)


def _membership_allowed(node: Node, conn: Connection, ref: Ref) -> bool:
    """The join/leave rate limit: excess gets `rate_limited`, persistent excess closes with 4029."""
    bucket = conn.join_bucket()
    if bucket.take(time.monotonic()):
        return True
    node.metrics.rate_limit_hits.add(1, {"jetsock.limit": "join"})
    if bucket.strikes >= node.settings.rate_limit_strikes:
        conn.close(Disconnects.JOIN_RATE)
    else:
        conn.error(ErrorCode.RATE_LIMITED, f"at most {node.settings.join_rate:g} joins and leaves per second", ref)
    return False


def _join(node: Node, conn: Connection, frame: Join) -> None:
    # Interned: every member's `rooms` then holds the same string, not a copy per join frame.
    room, ref = sys.intern(frame.room), frame.ref
    principal = conn.principal
    assert principal is not None
    settings = node.settings
    if not _membership_allowed(node, conn, ref):
        return
    if not is_valid_room(room):
        conn.error(ErrorCode.INVALID_ROOM, ROOM_RULE, ref)
    elif not principal.can_join(room):
        conn.error(ErrorCode.FORBIDDEN, f"the token does not allow joining {room!r}", ref)
    elif room in conn.rooms:
        conn.error(ErrorCode.BAD_REQUEST, f"already a member of {room!r}", ref)
    elif frame.last is not None and frame.last > settings.max_history_page:
        conn.error(ErrorCode.BAD_REQUEST, f"last is 1 to {settings.max_history_page}", ref)
    elif len(conn.rooms) >= settings.max_rooms_per_connection:
        conn.error(ErrorCode.TOO_MANY_ROOMS, f"at most {settings.max_rooms_per_connection} rooms", ref)
    else:
        # Reserved now, so a second join or a leave read meanwhile sees it; joined in its lane.
        conn.add_room(room)
        conn.submit(("room", room), lambda: join(node, conn, room, frame.since, frame.epoch, frame.last, ref))


def _leave(node: Node, conn: Connection, frame: Leave) -> None:
    room, ref = frame.room, frame.ref
    if not _membership_allowed(node, conn, ref):
        return
    if room not in conn.rooms:
        conn.error(ErrorCode.NOT_JOINED, f"not a member of {room!r}", ref)
    elif conn.lane_busy(("room", room)):
        # A join of this room is still running: leave after it, in its lane.
        conn.submit(("room", room), lambda: _leave_after_join(node, conn, room, ref))
    else:
        _leave_now(node, conn, room, ref)


async def _leave_after_join(node: Node, conn: Connection, room: str, ref: Ref) -> None:
    """A leave queued in the room's lane behind its join (the lane runs coroutines)."""
    _leave_now(node, conn, room, ref)


def _leave_now(node: Node, conn: Connection, room: str, ref: Ref) -> None:
    if not conn.drop_room(room):
        conn.error(ErrorCode.NOT_JOINED, f"not a member of {room!r}", ref)
        return
    node.leave_room(conn, room)
    node.metrics.leaves.add(1)
    conn.send(Left(room=room, ref=ref))


def _who(node: Node, conn: Connection, frame: Who) -> None:
    """Who is present in a room: a read of this node's copy of the cluster's presence."""
    room, ref = frame.room, frame.ref
    principal = conn.principal
    assert principal is not None
    if not conn.who_bucket().take(time.monotonic()):
        # A `who` costs a sort and up to max_presence_list members encoded: not unbounded.
        node.metrics.rate_limit_hits.add(1, {"jetsock.limit": "who"})
        conn.error(ErrorCode.RATE_LIMITED, f"at most {node.settings.who_rate:g} who requests per second", ref)
    elif not is_valid_room(room):
        conn.error(ErrorCode.INVALID_ROOM, ROOM_RULE, ref)
    elif not principal.can_see_presence(room):
        conn.error(ErrorCode.FORBIDDEN, f"the token does not allow reading the presence of {room!r}", ref)
    elif not node.presence.kept_for(room):
        conn.error(ErrorCode.BAD_REQUEST, f"presence is not kept for {room!r} (JETSOCK_PRESENCE_ROOMS)", ref)
    else:
        conn.send(node.presence.who(room, ref))


def _publish(node: Node, conn: Connection, frame: Publish) -> None:
    room, ref = frame.room, frame.ref
    principal = conn.principal
    assert principal is not None
    settings = node.settings
    bucket = conn.publish_bucket()
    if not bucket.take(time.monotonic()):
        node.metrics.rate_limit_hits.add(1, {"jetsock.limit": "publish"})
        if bucket.strikes >= settings.rate_limit_strikes:
            conn.close(Disconnects.PUBLISH_RATE)
        else:
            conn.error(ErrorCode.RATE_LIMITED, f"at most {settings.publish_rate:g} publishes per second", ref)
        return
    if not is_valid_room(room):
        conn.error(ErrorCode.INVALID_ROOM, ROOM_RULE, ref)
        return
    if not principal.can_publish(room):
        conn.error(ErrorCode.FORBIDDEN, f"the token does not allow publishing to {room!r}", ref)
        return
    data = bytes(frame.data)
    if len(data) > settings.max_data_bytes:
        conn.error(ErrorCode.TOO_LARGE, f"data is at most {settings.max_data_bytes} bytes", ref)
        return
    # In the room's lane: publishes of one connection to one room are stored in the order sent.
    conn.submit(("publish", room), lambda: _store(node, conn, room, data, principal.sub, frame.id, ref))


async def _store(node: Node, conn: Connection, room: str, data: bytes, sub: str, key: str | None, ref: Ref) -> None:
    try:
        result = await publish_traced(node, room, data, sub, key, "client")
    except PublishUncertain as exc:
        conn.error(ErrorCode.UNAVAILABLE, f"may have been stored; retry with the same id: {exc}", ref)
        return
    except Unavailable as exc:
        conn.error(ErrorCode.UNAVAILABLE, f"not stored, retry: {exc}", ref)
        return
    conn.send(Ack(seq=result.seq, duplicate=True if result.duplicate else None, ref=ref))


async def _refresh(node: Node, conn: Connection, frame: Refresh) -> None:
    current = conn.principal
    assert current is not None
    try:
        principal = await node.verifier.verify(frame.token)
    except AuthError as exc:
        node.metrics.auth_failures.add(1, {"jetsock.reason": exc.reason})
        conn.error(ErrorCode.BAD_REQUEST, f"refresh refused: {exc}", frame.ref)
        return
    if principal.sub != current.sub:
        conn.error(ErrorCode.FORBIDDEN, "refresh refused: the token is for another subject", frame.ref)
        return
    conn.adopt(principal)
    drop_forbidden_rooms(node, conn, principal)
    conn.send(Refreshed(exp=principal.exp, ref=frame.ref))


def drop_forbidden_rooms(node: Node, conn: Connection, principal: Principal) -> None:
    """Leave, with `left` reason `forbidden`, the rooms `principal` no longer permits (in name order).
    A join of such a room still running finds the right gone when it ends."""
    for room in sorted(conn.rooms):
        if not principal.can_join(room) and not conn.lane_busy(("room", room)):
            conn.drop_room(room)
            node.leave_room(conn, room)
            node.metrics.leaves.add(1)
            conn.send(Left(room=room, reason="forbidden"))
