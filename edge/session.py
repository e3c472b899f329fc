"""The `/ws` endpoint: handshake, authentication, the read loop and request dispatch."""

from __future__ import annotations

import logging
import secrets
import sys
import time

from aiohttp import WSMsgType, web

from core.auth import AuthError, Principal
from core.broker import Replay, Unavailable
from core.rooms import ROOM_RULE, is_valid_room
from edge.connection import Connection
from edge.decode import BadFrame, decode_client_frame
from edge.node import Node
from edge.origin import origin_allowed
from edge.publishing import publish_traced
from edge.registry import Member, encode_msg
from edge.wsframe import pong_frame
from schemas import (
    Ack,
    Auth,
    CloseCode,
    ErrorCode,
    Join,
    Leave,
    Left,
    Ping,
    Pong,
    Publish,
    Refresh,
    Refreshed,
    Welcome,
)

log = logging.getLogger(__name__)

SUBPROTOCOL = "jetsock.v1"
_PROTOCOLS = (SUBPROTOCOL,)
BEARER_PREFIX = "bearer."
NODE_KEY: web.AppKey[Node] = web.AppKey("node", Node)

_QUERY_TOKEN_KEYS = {"token", "access_token", "jwt", "auth", "bearer", "authorization", "id_token"}
_QUERY_TOKEN_REASON = "token in URL refused: use the bearer.<JWT> subprotocol, a cookie, or an auth frame"
_BINARY_REASON = "binary frames are not part of jetsock.v1: send JSON text frames"
RECOVERED = {"jetsock.recovered": "true"}
NOT_RECOVERED = {"jetsock.recovered": "false"}
_CLOSED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


def _looks_like_jwt(value: str) -> bool:
    return value.startswith("eyJ") and value.count(".") == 2


def _token_in_query(request: web.Request) -> bool:
    # query_string first: parsing an empty query would still cache a MultiDict on the request.
    return bool(request.query_string) and any(
        k.lower() in _QUERY_TOKEN_KEYS or _looks_like_jwt(v) for k, v in request.query.items()
    )


def _offered_bearer(request: web.Request) -> str | None:
    for header in request.headers.getall("Sec-WebSocket-Protocol", []):
        for proto in header.split(","):
            proto = proto.strip()
            if proto.startswith(BEARER_PREFIX):
                return proto[len(BEARER_PREFIX) :]
    return None


def _upgrade(node: Node, request: web.Request) -> web.StreamResponse:
    """The WebSocket response to prepare, or the HTTP refusal to send instead."""
    settings = node.settings
    if node.draining:
        return web.Response(status=503, text="node is draining: connect to another node\n")
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(origin, request, settings.origins):
        return web.Response(status=403, text=f"origin {origin!r} is not allowed\n")
    return web.WebSocketResponse(
        protocols=_PROTOCOLS,
        compress=False,
        autoping=False,
        max_msg_size=node.max_msg_size,
        decode_text=False,
        timeout=settings.close_timeout,
    )


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    # This coroutine lives as long as the connection and the read loop runs in
    # it, not in coroutines of its own: an idle connection waits here, so every
    # frame (and every local and stack slot of this one) held for its lifetime
    # is paid once per connection. One-off steps are in helpers that return.
    node = request.app[NODE_KEY]
    ws = _upgrade(node, request)
    if not isinstance(ws, web.WebSocketResponse):
        return ws
    await ws.prepare(request)
    assert request.transport is not None
    conn = Connection(node, secrets.token_urlsafe(12), ws, request.transport)  # type: ignore[arg-type]
    node.connections[conn] = None
    try:
        if await _open(node, conn, request):
            while True:
                message = await ws.receive()
                conn.last_seen = time.monotonic()
                if message.type is WSMsgType.TEXT:
                    if not conn.closing:
                        await _dispatch(node, conn, message.data)
                elif message.type is WSMsgType.PING:
                    conn.push(pong_frame(message.data))
                elif message.type is WSMsgType.BINARY:
                    conn.close(CloseCode.BAD_REQUEST, _BINARY_REASON)
                elif message.type is not WSMsgType.PONG:  # CLOSE, CLOSING, CLOSED, ERROR (1009 is sent by aiohttp)
                    break
                # Not kept while waiting for the next frame.
                del message
        while not ws.closed:
            if (await ws.receive()).type in _CLOSED:
                break
    finally:
        await _finish(node, conn)
    return ws


async def _open(node: Node, conn: Connection, request: web.Request) -> bool:
    """Refuse, or authenticate and welcome; True when the read loop should run."""
    if _token_in_query(request):
        node.metrics.auth_failures.add(1, {"jetsock.reason": "token_in_url"})
        conn.close(CloseCode.BAD_REQUEST, _QUERY_TOKEN_REASON)
        return False
    if len(node.connections) > node.settings.max_connections:
        conn.close(CloseCode.TRY_AGAIN_LATER, "node full: try again later")
        return False
    cookie = request.cookies.get(node.settings.cookie_name) if request.headers.get("Origin") is not None else None
    return await _authenticate_first(node, conn, _offered_bearer(request) or cookie)


async def _finish(node: Node, conn: Connection) -> None:
    node.connections.pop(conn, None)
    node.collector.connection_closed()
    node.release(conn)
    conn.cancel_timers()
    rooms = len(conn.rooms)
    conn.leave_all()
    await conn.wait_closed()
    code = conn.close_code if conn.close_code is not None else conn.ws.close_code
    node.metrics.closes.add(1, {"websocket.close.code": str(code)})
    node.recent_closes.record(code)
    duration = time.monotonic() - conn.opened
    principal = conn.principal
    fields = {
        "event": "close",
        "session": conn.session,
        "node": node.name,
        "sub": principal.sub if principal is not None else None,
        "code": code,
        "duration_s": round(duration, 3),
        "rooms": rooms,
        "messages_out": conn.sent,
    }
    log.info("connection %s closed with %s after %.1f s", conn.session, code, duration, extra={"fields": fields})


async def _authenticate_first(node: Node, conn: Connection, handshake_token: str | None) -> bool:
    """Authenticate with the handshake's token or the first frame and send `welcome`;
    False when the connection is being closed instead. The token is not kept."""
    ws = conn.ws
    settings = node.settings
    ref = None
    token = handshake_token
    if token is None:
        try:
            first = await ws.receive(timeout=settings.auth_timeout)
        except TimeoutError:
            node.metrics.auth_failures.add(1, {"jetsock.reason": "timeout"})
            conn.close(CloseCode.UNAUTHENTICATED, "no auth frame within auth_timeout")
            return False
        frame = None
        if first.type is WSMsgType.TEXT:
            try:
                frame = decode_client_frame(first.data)
            except BadFrame:
                frame = None
        elif first.type in _CLOSED:
            return False
        if not isinstance(frame, Auth):
            node.metrics.auth_failures.add(1, {"jetsock.reason": "missing"})
            conn.close(CloseCode.UNAUTHENTICATED, "the first frame must be auth (or authenticate in the handshake)")
            return False
        token, ref = frame.token, frame.ref
    try:
        principal = await node.verifier.verify(token)
    except AuthError as exc:
        node.metrics.auth_failures.add(1, {"jetsock.reason": exc.reason})
        conn.close(CloseCode.UNAUTHENTICATED, str(exc))
        return False
    if not node.admit(conn, principal.sub):
        conn.close(CloseCode.RATE_LIMITED, "too many connections for this subject on this node")
        return False
    _authenticate(conn, principal)
    conn.send(Welcome(session=conn.session, node=node.name, heartbeat=settings.heartbeat, exp=principal.exp, ref=ref))
    return True


def _authenticate(conn: Connection, principal: Principal) -> None:
    """Adopt `principal` and schedule `expiring` and the 4001 close from its exp."""
    conn.principal = principal
    conn.schedule_expiry()


async def _dispatch(node: Node, conn: Connection, data: bytes) -> None:
    try:
        frame = decode_client_frame(data)
    except BadFrame as exc:
        conn.error(ErrorCode.BAD_REQUEST, str(exc), exc.ref)
        return
    match frame:
        case Publish():
            await _publish(node, conn, frame)
        case Join():
            await _join(node, conn, frame)
        case Leave():
            await _leave(node, conn, frame)
        case Ping():
            conn.send(Pong(ref=frame.ref))
        case Refresh():
            await _refresh(node, conn, frame)
        case Auth():
            conn.error(ErrorCode.BAD_REQUEST, "already authenticated: use refresh to change the token", frame.ref)


async def _join(node: Node, conn: Connection, frame: Join) -> None:
    # Interned: every member's `rooms` then holds the same string, not a copy per join frame.
    room, ref = sys.intern(frame.room), frame.ref
    principal = conn.principal
    assert principal is not None
    if not is_valid_room(room):
        conn.error(ErrorCode.INVALID_ROOM, ROOM_RULE, ref)
    elif not principal.can_join(room):
        conn.error(ErrorCode.FORBIDDEN, f"the token does not allow joining {room!r}", ref)
    elif room in conn.rooms:
        conn.error(ErrorCode.BAD_REQUEST, f"already a member of {room!r}", ref)
    elif len(conn.rooms) >= node.settings.max_rooms_per_connection:
        conn.error(ErrorCode.TOO_MANY_ROOMS, f"at most {node.settings.max_rooms_per_connection} rooms", ref)
    else:
        conn.add_room(room)
        try:
            result = await node.registry.join(conn, room, frame.since, frame.epoch)
        except Unavailable as exc:
            conn.drop_room(room)
            conn.error(ErrorCode.UNAVAILABLE, f"cannot join now, retry: {exc}", ref)
            return
        if result is None or conn.closing:
            return
        result.joined.ref = ref
        conn.send(result.joined)
        node.metrics.joins.add(1)
        if frame.since is not None:
            node.metrics.replays.add(1, RECOVERED if result.joined.recovered else NOT_RECOVERED)
        member = result.member
        if result.replay is None and not member.held:
            node.registry.go_live(member)
        else:
            # The backlog is paced by the client's reading; the read loop goes on
            # meanwhile, so pings, pongs and other requests are not held up.
            conn.spawn(_send_backlog(node, conn, room, member, result.replay))


async def _send_backlog(node: Node, conn: Connection, room: str, member: Member, replay: Replay | None) -> None:
    """Replayed, then held messages, then live; stops if the member leaves meanwhile."""
    registry = node.registry
    try:
        if replay is not None:
            async for batch in replay.batches():
                for message in batch:
                    await conn.writable()
                    if not registry.is_current(member, room):
                        return
                    conn.push(encode_msg(message))
                node.metrics.replayed.add(len(batch))
        while held := registry.take_held(member):
            for _seq, frame in held:
                await conn.writable()
                if not registry.is_current(member, room):
                    return
                conn.push(frame)
    except Unavailable as exc:
        # Continuity cannot be kept: the client reconnects and rejoins with its last seq.
        conn.close(CloseCode.TRY_AGAIN_LATER, f"replay interrupted: {exc}")
        return
    if registry.is_current(member, room):
        registry.go_live(member)


async def _leave(node: Node, conn: Connection, frame: Leave) -> None:
    if frame.room not in conn.rooms:
        conn.error(ErrorCode.NOT_JOINED, f"not a member of {frame.room!r}", frame.ref)
        return
    conn.drop_room(frame.room)
    node.registry.leave(conn, frame.room)
    node.metrics.leaves.add(1)
    conn.send(Left(room=frame.room, ref=frame.ref))


async def _publish(node: Node, conn: Connection, frame: Publish) -> None:
    room, ref = frame.room, frame.ref
    principal = conn.principal
    assert principal is not None
    bucket = conn.publish_bucket()
    if not bucket.take(time.monotonic()):
        node.metrics.rate_limit_hits.add(1)
        if bucket.strikes >= node.settings.rate_limit_strikes:
            conn.close(CloseCode.RATE_LIMITED, "publish rate limit exceeded persistently")
        else:
            conn.error(ErrorCode.RATE_LIMITED, f"at most {node.settings.publish_rate:g} publishes per second", ref)
        return
    if not is_valid_room(room):
        conn.error(ErrorCode.INVALID_ROOM, ROOM_RULE, ref)
        return
    if not principal.can_publish(room):
        conn.error(ErrorCode.FORBIDDEN, f"the token does not allow publishing to {room!r}", ref)
        return
    data = bytes(frame.data)
    if len(data) > node.settings.max_data_bytes:
        conn.error(ErrorCode.TOO_LARGE, f"data is at most {node.settings.max_data_bytes} bytes", ref)
        return
    try:
        result = await publish_traced(node, room, data, principal.sub, frame.id, "client")
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
    _authenticate(conn, principal)
    for room in sorted(conn.rooms):
        if not principal.can_join(room):
            conn.drop_room(room)
            node.registry.leave(conn, room)
            node.metrics.leaves.add(1)
            conn.send(Left(room=room, reason="forbidden"))
    conn.send(Refreshed(exp=principal.exp, ref=frame.ref))
