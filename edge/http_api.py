"""HTTP endpoints: health, readiness, metrics and publishing for backends."""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web

from core.auth import AuthError, Principal
from core.broker import Unavailable
from core.rooms import ROOM_RULE, is_valid_room
from edge.decode import is_utf8
from edge.history import check_request, int_param, page_body, read_page
from edge.node import Node
from edge.publishing import publish_traced
from edge.session import NODE_KEY
from edge.telemetry import CONTENT_TYPE
from schemas import Disconnect, Disconnects, ErrorCode

IDEMPOTENCY_HEADER = "Idempotency-Key"
DISCONNECT_BODY_LIMIT = 4096
"""Largest body of POST /v1/subjects/<sub>/disconnect: {"code": ..., "reason": ...} needs far less."""


class BodyError(Exception):
    """The body could not be read: the status to answer and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def problem(status: int, code: ErrorCode, message: str) -> web.Response:
    return web.json_response({"code": str(code), "message": message}, status=status)


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes | None:
    """The whole request body, or None when it is longer than `limit` bytes.

    `timeout` is the `body_timeout` setting: a client that stops sending, or a
    chunked body aiohttp cannot parse (it then waits for more that never
    comes), must not hold the handler forever.

    `request.content.read(n)` returns what has arrived so far, which for a body
    sent in several TCP segments (or chunks) is only its beginning: read until
    the end of the body, and stop as soon as it is over the limit so that a
    chunked body (which declares no length) cannot make the edge buffer more.
    """
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                # read(n) answers b"" only at the end of the body; it never waits for all n bytes.
                chunk = await request.content.read(limit + 1 - size)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
    except TimeoutError:
        raise BodyError(408, f"the body did not arrive whole within {timeout:g} s") from None
    except ConnectionError:
        # The client went away mid-body: nobody reads the answer, but nothing is logged as a crash.
        raise BodyError(400, "the connection ended before the body did") from None


async def bearer_principal(request: web.Request, node: Node, wanted: str) -> Principal | web.Response:
    """The principal of the request's `Authorization: Bearer` token, or the 401 to answer."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return problem(401, ErrorCode.FORBIDDEN, f"send Authorization: Bearer <{wanted}>")
    try:
        return await node.verifier.verify(token.strip())
    except AuthError as exc:
        node.metrics.auth_failures.add(1, {"jetsock.reason": exc.reason})
        return problem(401, ErrorCode.FORBIDDEN, str(exc))


async def admin_principal(request: web.Request, node: Node) -> Principal | web.Response:
    """The principal of an admin token, or the 401/403 to answer."""
    principal = await bearer_principal(request, node, "an admin JWT")
    if isinstance(principal, web.Response):
        return principal
    if not principal.admin:
        return problem(403, ErrorCode.FORBIDDEN, "the token has no admin claim")
    return principal


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    node: Node = request.app[NODE_KEY]
    broker = node.broker
    # "nats": connected and answering; a hung server stays connected for a while but answers nothing.
    checks = {"nats": broker.ready, "connected": broker.connected, "draining": node.draining}
    ready = node.ready
    return web.json_response({"ready": ready, **checks}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    node: Node = request.app[NODE_KEY]
    body = node.metrics.exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def publish(request: web.Request) -> web.Response:
    """POST /v1/rooms/<room>/messages: the body is the JSON `data`; answers 201 {"seq": N}."""
    node: Node = request.app[NODE_KEY]
    room = request.match_info["room"]
    if not is_valid_room(room):
        return problem(400, ErrorCode.INVALID_ROOM, f"invalid room name {room!r}: {ROOM_RULE}")
    principal = await bearer_principal(request, node, "a JWT with publish rights")
    if isinstance(principal, web.Response):
        return principal
    if not principal.can_publish(room):
        return problem(403, ErrorCode.FORBIDDEN, f"the token does not allow publishing to {room!r}")
    limit = node.settings.max_data_bytes
    try:
        body = await read_body(request, limit, node.settings.body_timeout)
    except BodyError as exc:
        return problem(exc.status, ErrorCode.BAD_REQUEST, str(exc))
    if body is None:
        return problem(413, ErrorCode.TOO_LARGE, f"the body is over max_data_bytes: at most {limit} bytes")
    if not is_utf8(body):
        return problem(400, ErrorCode.BAD_REQUEST, "the body must be UTF-8 JSON")
    try:
        msgspec.json.decode(body, type=msgspec.Raw)
    except RecursionError:
        return problem(400, ErrorCode.BAD_REQUEST, "the body is nested too deeply")
    except msgspec.DecodeError as exc:
        return problem(400, ErrorCode.BAD_REQUEST, f"the body must be JSON: {exc}")
    key = request.headers.get(IDEMPOTENCY_HEADER) or None
    if key is not None and len(key) > 256:
        return problem(400, ErrorCode.BAD_REQUEST, "Idempotency-Key is at most 256 characters")
    try:
        result = await publish_traced(node, room, body, principal.sub, key, "http")
    except Unavailable as exc:
        # A timeout or a lost connection says nothing about the store: the message may be in the stream.
        return problem(503, ErrorCode.UNAVAILABLE, f"may have been stored; retry with the same Idempotency-Key: {exc}")
    answer: dict[str, object] = {"seq": result.seq}
    if result.duplicate:
        answer["duplicate"] = True
    return web.json_response(answer, status=201)


async def disconnect(request: web.Request) -> web.Response:
    """POST /v1/subjects/<sub>/disconnect (admin token): close that subject's connections on this node.

    Body (optional JSON): {"code": 4503, "reason": "..."}; the code must be a
    4000-4999 application code. Answers 200 {"closed": N}. Each node acts on
    its own connections: call every node (or let the client's own token expiry
    do it) to reach them all.
    """
    node: Node = request.app[NODE_KEY]
    principal = await admin_principal(request, node)
    if isinstance(principal, web.Response):
        return principal
    options: dict[str, object] = {}
    if request.can_read_body:
        try:
            body = await read_body(request, DISCONNECT_BODY_LIMIT, node.settings.body_timeout)
        except BodyError as exc:
            return problem(exc.status, ErrorCode.BAD_REQUEST, str(exc))
        if body is None:
            return problem(413, ErrorCode.TOO_LARGE, f"the body is at most {DISCONNECT_BODY_LIMIT} bytes")
        try:
            options = msgspec.json.decode(body, type=dict[str, object])
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return problem(400, ErrorCode.BAD_REQUEST, 'the body must be {"code": 4xxx, "reason": "..."}')
    code = options.get("code", int(Disconnects.OPERATOR.code))
    reason = options.get("reason", Disconnects.OPERATOR.reason)
    if not isinstance(code, int) or isinstance(code, bool) or not 4000 <= code <= 4999 or not isinstance(reason, str):
        return problem(400, ErrorCode.BAD_REQUEST, "code must be an integer in 4000-4999, reason a string")
    sub = request.match_info["sub"]
    victims = [c for c in node.connections if c.principal is not None and c.principal.sub == sub]
    for conn in victims:
        conn.close(Disconnect(code, reason))
    return web.json_response({"closed": len(victims)})


async def get_messages(request: web.Request) -> web.Response:
    """GET /v1/rooms/<room>/messages?before=<seq>&limit=<n> with a bearer token holding join rights:
    the `history` page (PROTOCOL.md section 9), as JSON."""
    node: Node = request.app[NODE_KEY]
    room = request.match_info["room"]
    try:
        before = int_param(request.query_string, "before")
        limit = int_param(request.query_string, "limit")
    except ValueError as exc:
        return problem(400, ErrorCode.BAD_REQUEST, str(exc))
    reason = check_request(node, room, before, limit)
    if reason is not None:
        return problem(400, ErrorCode.BAD_REQUEST if is_valid_room(room) else ErrorCode.INVALID_ROOM, reason)
    principal = await bearer_principal(request, node, "a JWT with join rights")
    if isinstance(principal, web.Response):
        return principal
    if not principal.can_join(room):
        return problem(403, ErrorCode.FORBIDDEN, f"the token does not allow reading {room!r}")
    try:
        page = await read_page(node, room, before, limit, "http")
    except Unavailable as exc:
        return problem(503, ErrorCode.UNAVAILABLE, f"cannot read the room now, retry: {exc}")
    return web.Response(body=page_body(node, room, page), content_type="application/json")


async def get_presence(request: web.Request) -> web.Response:
    """GET /v1/rooms/<room>/presence with a bearer token holding `rooms.presence` for the room:
    the `members` object (PROTOCOL.md section 10)."""
    node: Node = request.app[NODE_KEY]
    room = request.match_info["room"]
    if not is_valid_room(room):
        return problem(400, ErrorCode.INVALID_ROOM, f"invalid room name {room!r}: {ROOM_RULE}")
    principal = await bearer_principal(request, node, "a JWT with rooms.presence rights")
    if isinstance(principal, web.Response):
        return principal
    if not principal.can_see_presence(room):
        return problem(403, ErrorCode.FORBIDDEN, f"the token does not allow reading the presence of {room!r}")
    if not node.presence.kept_for(room):
        return problem(404, ErrorCode.BAD_REQUEST, f"presence is not kept for {room!r} (JETSOCK_PRESENCE_ROOMS)")
    members = node.presence.who(room)
    body = msgspec.json.encode(members)
    # The `members` object without the frame's `type`.
    return web.Response(body=b"{" + body[len(b'{"type":"members",') :], content_type="application/json")
