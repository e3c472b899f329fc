"""HTTP endpoints: health, readiness, metrics and publishing for backends."""

from __future__ import annotations

import msgspec
from aiohttp import web

from core.auth import AuthError, Principal
from core.broker import Unavailable
from core.rooms import ROOM_RULE, is_valid_room
from edge.decode import is_utf8
from edge.node import Node
from edge.publishing import publish_traced
from edge.session import NODE_KEY
from edge.telemetry import CONTENT_TYPE
from schemas import CloseCode, ErrorCode

IDEMPOTENCY_HEADER = "Idempotency-Key"


def problem(status: int, code: ErrorCode, message: str) -> web.Response:
    return web.json_response({"code": str(code), "message": message}, status=status)


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
    checks = {"nats": node.broker.connected, "draining": node.draining}
    status = 200 if node.ready else 503
    return web.json_response({"ready": node.ready, **checks}, status=status)


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
    if request.content_length is not None and request.content_length > limit:
        return problem(413, ErrorCode.TOO_LARGE, f"at most {limit} bytes")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        return problem(413, ErrorCode.TOO_LARGE, f"at most {limit} bytes")
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
        return problem(503, ErrorCode.UNAVAILABLE, f"not stored, retry: {exc}")
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
            options = msgspec.json.decode(await request.content.read(4096), type=dict[str, object])
        except (msgspec.DecodeError, msgspec.ValidationError):
            return problem(400, ErrorCode.BAD_REQUEST, 'the body must be {"code": 4xxx, "reason": "..."}')
    code = options.get("code", int(CloseCode.FORBIDDEN))
    reason = options.get("reason", "disconnected by an operator")
    if not isinstance(code, int) or isinstance(code, bool) or not 4000 <= code <= 4999 or not isinstance(reason, str):
        return problem(400, ErrorCode.BAD_REQUEST, "code must be an integer in 4000-4999, reason a string")
    sub = request.match_info["sub"]
    victims = [c for c in node.connections if c.principal is not None and c.principal.sub == sub]
    for conn in victims:
        conn.close(code, reason)
    return web.json_response({"closed": len(victims)})
