"""The `/ws` endpoint: handshake, authentication, the read loop and request dispatch."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from aiohttp import WSMsgType, web

from core.auth import AuthError, Principal
from core.broker import Replay, Unavailable
from core.rooms import ROOM_RULE, is_valid_room
from edge.connection import Connection
from edge.decode import BadFrame, decode_client_frame
from edge.node import Node
from edge.origin import origin_allowed
from edge.registry import Member, encode_msg
from edge.wsframe import pong_frame
from schemas import (
    Ack,
    Auth,
    CloseCode,
    ErrorCode,
    Expiring,
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
BEARER_PREFIX = "bearer."
NODE_KEY: web.AppKey[Node] = web.AppKey("node", Node)

_QUERY_TOKEN_KEYS = {"token", "access_token", "jwt", "auth", "bearer", "authorization", "id_token"}
_QUERY_TOKEN_REASON = "token in URL refused: use the bearer.<JWT> subprotocol, a cookie, or an auth frame"


def _looks_like_jwt(value: str) -> bool:
    return value.startswith("eyJ") and value.count(".") == 2


def _token_in_query(request: web.Request) -> bool:
    return any(k.lower() in _QUERY_TOKEN_KEYS or _looks_like_jwt(v) for k, v in request.query.items())


def _offered_bearer(request: web.Request) -> str | None:
    for header in request.headers.getall("Sec-WebSocket-Protocol", []):
        for proto in header.split(","):
            proto = proto.strip()
            if proto.startswith(BEARER_PREFIX):
                return proto[len(BEARER_PREFIX) :]
    return None


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    settings = node.settings
    if node.draining:
        return web.Response(status=503, text="node is draining: connect to another node\n")
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(origin, request, settings.origins):
        return web.Response(status=403, text=f"origin {origin!r} is not allowed\n")

    ws = web.WebSocketResponse(
        protocols=(SUBPROTOCOL,),
        compress=False,
        autoping=False,
        # aiohttp refuses a message of max_msg_size bytes or more; the limit is inclusive.
        max_msg_size=settings.max_frame_bytes + 1,
        decode_text=False,
        timeout=settings.close_timeout,
    )
    await ws.prepare(request)
    transport = request.transport
    assert transport is not None
    conn = Connection(node, secrets.token_urlsafe(12), ws, transport)  # type: ignore[arg-type]
    node.connections.add(conn)
    started = time.monotonic()
    try:
        if _token_in_query(request):
            conn.close(CloseCode.BAD_REQUEST, _QUERY_TOKEN_REASON)
        elif len(node.connections) > settings.max_connections:
            conn.close(CloseCode.TRY_AGAIN_LATER, "node full: try again later")
        else:
            cookie = request.cookies.get(settings.cookie_name) if origin is not None else None
            await _serve(node, conn, _offered_bearer(request) or cookie)
        while not ws.closed:
            if (await ws.receive()).type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                break
    finally:
        node.connections.discard(conn)
        node.release(conn)
        conn.cancel_timers()
        conn.leave_all()
        await conn.wait_closed()
        code = conn.close_code if conn.close_code is not None else ws.close_code
        node.metrics.closes.add(1, {"code": str(code)})
        log.debug("connection %s closed with %s after %.1f s", conn.session, code, time.monotonic() - started)
    return ws


async def _serve(node: Node, conn: Connection, handshake_token: str | None) -> None:
    ws = conn.ws
    settings = node.settings
    ref = None
    token = handshake_token
    if token is None:
        try:
            first = await ws.receive(timeout=settings.auth_timeout)
        except TimeoutError:
            conn.close(CloseCode.UNAUTHENTICATED, "no auth frame within auth_timeout")
            return
        frame = None
        if first.type is WSMsgType.TEXT:
            try:
                frame = decode_client_frame(first.data)
            except BadFrame:
                frame = None
        elif first.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return
        if not isinstance(frame, Auth):
            conn.close(CloseCode.UNAUTHENTICATED, "the first frame must be auth (or authenticate in the handshake)")
            return
        token, ref = frame.token, frame.ref
    try:
        principal = await node.verifier.verify(token)
    except AuthError as exc:
        conn.close(CloseCode.UNAUTHENTICATED, str(exc))
        return
    if not node.admit(conn, principal.sub):
        conn.close(CloseCode.RATE_LIMITED, "too many connections for this subject on this node")
        return
    _authenticate(node, conn, principal)
    conn.send(Welcome(session=conn.session, node=node.name, heartbeat=settings.heartbeat, exp=principal.exp, ref=ref))
    await _read_loop(node, conn)


def _authenticate(node: Node, conn: Connection, principal: Principal) -> None:
    """Adopt `principal` and schedule `expiring` and the 4001 close from its exp."""
    conn.principal = principal
    conn.cancel_timers()
    loop = asyncio.get_running_loop()
    left = principal.exp - time.time()
    conn.call_at(
        loop.time() + max(0.0, left - node.settings.refresh_before),
        lambda: conn.send(Expiring(exp=principal.exp)),
    )
    conn.call_at(loop.time() + max(0.0, left), lambda: conn.close(CloseCode.TOKEN_EXPIRED, "token expired"))


async def _read_loop(node: Node, conn: Connection) -> None:
    ws = conn.ws
    while True:
        message = await ws.receive()
        conn.last_seen = time.monotonic()
        kind = message.type
        if kind is WSMsgType.TEXT:
            if conn.closing:
                continue
            await _dispatch(node, conn, message.data)
        elif kind is WSMsgType.PING:
            conn.outbox.push(pong_frame(message.data))
        elif kind is WSMsgType.PONG:
            pass
        elif kind is WSMsgType.BINARY:
            conn.close(CloseCode.BAD_REQUEST, "binary frames are not part of jetsock.v1: send JSON text frames")
        else:  # CLOSE, CLOSING, CLOSED, ERROR (1009 is sent by aiohttp)
            return


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
    room, ref = frame.room, frame.ref
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
        conn.rooms.add(room)
        try:
            result = await node.registry.join(conn, room, frame.since, frame.epoch)
        except Unavailable as exc:
            conn.rooms.discard(room)
            conn.error(ErrorCode.UNAVAILABLE, f"cannot join now, retry: {exc}", ref)
            return
        if result is None or conn.closing:
            return
        result.joined.ref = ref
        conn.send(result.joined)
        node.metrics.joins.add(1)
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
                    conn.outbox.push(encode_msg(message))
                node.metrics.replayed.add(len(batch))
        while held := registry.take_held(member):
            for _seq, frame in held:
                await conn.writable()
                if not registry.is_current(member, room):
                    return
                conn.outbox.push(frame)
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
    conn.rooms.discard(frame.room)
    node.registry.leave(conn, frame.room)
    conn.send(Left(room=frame.room, ref=frame.ref))


async def _publish(node: Node, conn: Connection, frame: Publish) -> None:
    room, ref = frame.room, frame.ref
    principal = conn.principal
    assert principal is not None
    if not conn.bucket.take(time.monotonic()):
        if conn.bucket.strikes >= node.settings.rate_limit_strikes:
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
        result = await node.broker.publish(room, data, sender=principal.sub, key=frame.id)
    except Unavailable as exc:
        conn.error(ErrorCode.UNAVAILABLE, f"not stored, retry: {exc}", ref)
        return
    node.metrics.messages_in.add(1, {"source": "client"})
    conn.send(Ack(seq=result.seq, duplicate=True if result.duplicate else None, ref=ref))


async def _refresh(node: Node, conn: Connection, frame: Refresh) -> None:
    current = conn.principal
    assert current is not None
    try:
        principal = await node.verifier.verify(frame.token)
    except AuthError as exc:
        conn.error(ErrorCode.BAD_REQUEST, f"refresh refused: {exc}", frame.ref)
        return
    if principal.sub != current.sub:
        conn.error(ErrorCode.FORBIDDEN, "refresh refused: the token is for another subject", frame.ref)
        return
    _authenticate(node, conn, principal)
    for room in sorted(conn.rooms):
        if not principal.can_join(room):
            conn.rooms.discard(room)
            node.registry.leave(conn, room)
            conn.send(Left(room=room, reason="forbidden"))
    conn.send(Refreshed(exp=principal.exp, ref=frame.ref))
