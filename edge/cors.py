"""CORS for the browser-facing HTTP endpoints (schemas/PROTOCOL.md 9.14).

A page served from another origin (an app at https://app.example.com, its edges at
https://rt.example.com) reaches the HTTP stream with fetch(), and a browser lets it do so only
when the edge says so: the client's `Authorization` and `Content-Type: application/json`
make every such request "non-simple", so the browser first sends a preflight `OPTIONS`, and
reads an answer only when it names the page's origin. The WebSocket upgrade has no such rule
(only the edge's Origin check), which is why the stream needs this and the socket did not.

The origins are `JETSOCK_ALLOWED_ORIGINS`, the same list and the same matching as the
upgrade's Origin check (edge/origin.py), so an app allowed to open a WebSocket may also fall
back to the stream, and no other page may read either:

- the endpoints: `POST /v1/stream`, `POST /v1/stream/<session>`, and the room endpoints a page
  may call with a client token (`GET`/`POST /v1/rooms/<room>/messages`,
  `GET /v1/rooms/<room>/presence`); not `/v1/subjects/<sub>/disconnect`, a backend's call;
- a preflight from an allowed origin, for one of the resource's methods and headers among
  `ALLOWED_HEADERS`, is answered 204 with the methods, the headers asked for and
  `Access-Control-Max-Age` (600 s: a page's posts do not each pay a round trip); anything else
  is refused with a status and a plain message (400 not a preflight, 403 origin or header,
  405 method), which the browser turns into a failed fetch;
- every answer of those endpoints to an allowed origin carries `Access-Control-Allow-Origin`
  with that origin, `Access-Control-Allow-Credentials: true` (the session cookie may be sent
  with `credentials: "include"`) and `Access-Control-Expose-Headers: Retry-After` (a busy post's
  delay); an origin allowed only by `*` gets `Access-Control-Allow-Origin: *` and no
  credentials: a bearer token works from any page, the cookie never goes to a page the operator
  did not name;
- `Vary: Origin` on all of them, allowed or not, so a cache never hands one origin's answer to
  another.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from edge.http_api import problem
from edge.origin import ANY, origin_allowed
from edge.session import NODE_KEY
from schemas import ErrorCode

PREFIXES = ("/v1/stream", "/v1/rooms/")
"""The paths whose answers a page on an allowed origin may read."""
ALLOWED_HEADERS = frozenset({"authorization", "content-type", "idempotency-key"})
"""Request headers a page may send (besides the CORS-safelisted ones): the bearer token, the
JSON body's type, and the HTTP publish's idempotency key."""
MAX_AGE = "600"
EXPOSED = "Retry-After"


def add_preflights(app: web.Application) -> None:
    """An OPTIONS route on every resource under PREFIXES (call once all routes are added)."""
    for resource in list(app.router.resources()):
        if isinstance(resource, web.Resource) and resource.canonical.startswith(PREFIXES):
            methods = sorted({route.method for route in resource if route.method not in ("HEAD", "OPTIONS")})
            resource.add_route("OPTIONS", _preflight_for(methods))


def _preflight_for(methods: list[str]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    allowed = ", ".join(methods)

    async def preflight(request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        method = request.headers.get("Access-Control-Request-Method")
        if origin is None or method is None:
            return problem(
                400,
                ErrorCode.BAD_REQUEST,
                "OPTIONS here is a CORS preflight: send Origin and Access-Control-Request-Method",
            )
        if not origin_allowed(origin, request, request.app[NODE_KEY].settings.origins):
            return problem(
                403, ErrorCode.FORBIDDEN, f"origin {origin[:200]!r} is not allowed (JETSOCK_ALLOWED_ORIGINS)"
            )
        if method not in methods:
            refused = problem(405, ErrorCode.BAD_REQUEST, f"{method[:20]!r} is not allowed here: {allowed}")
            refused.headers["Allow"] = allowed
            return refused
        asked = [name.strip().lower() for name in request.headers.get("Access-Control-Request-Headers", "").split(",")]
        asked = [name for name in asked if name]
        others = sorted(set(asked) - ALLOWED_HEADERS)
        if others:
            listed = ", ".join(others)[:200]
            return problem(403, ErrorCode.FORBIDDEN, f"request headers not allowed: {listed}")
        response = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = allowed
        if asked:
            response.headers["Access-Control-Allow-Headers"] = ", ".join(sorted(set(asked)))
        response.headers["Access-Control-Max-Age"] = MAX_AGE
        return response

    return preflight


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the CORS headers of an answer under PREFIXES (module docstring)."""
    if not request.path.startswith(PREFIXES):
        return
    response.headers.add("Vary", "Origin")
    origin = request.headers.get("Origin")
    if origin is None or (request.method == "OPTIONS" and response.status != 204):
        return  # a refused preflight names no origin: nothing in it reads as a permission
    origins = request.app[NODE_KEY].settings.origins
    if not origin_allowed(origin, request, origins):
        return
    named = [entry for entry in origins if entry != ANY]
    # Named (an empty list of them meaning `self`, as everywhere): credentials; `*` only: none.
    if ANY in origins and not origin_allowed(origin, request, named):
        response.headers["Access-Control-Allow-Origin"] = "*"
    else:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
    if request.method != "OPTIONS":
        response.headers["Access-Control-Expose-Headers"] = EXPOSED
