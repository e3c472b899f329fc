"""What a browser loads from an edge: the JS client, the demo chat, and dev tokens.

`/jetsock.js` is always served (apps load the client from the node they talk
to), with `/jetsock-stream.js`, the transport it imports when it falls back to
the HTTP stream. The demo at `/` is on with the `demo` setting (and in `make run`).
`/dev/token` exists only in development mode: it signs tokens with the dev
secret (random for each run unless JETSOCK_JWT_SECRET is set) so the demo
works without an identity provider. It answers only requests whose Host is
`localhost` or an IP address: a page on a DNS name that rebinds to 127.0.0.1
could otherwise fetch tokens from it as its own origin.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from core.auth import make_token
from core.rooms import is_valid_room
from edge.session import NODE_KEY

STATIC = Path(__file__).parent / "static"
CLIENT_JS = Path(__file__).parents[1] / "clients" / "js"
"""The browser client's source; the edge serves it as is (no build step). The repository's
clients/js, or in an installed wheel jetsock_server/clients/js beside jetsock_server/edge."""

DEV_TOKEN_MAX_TTL = 7 * 86400
DEV_TOKEN_TTL = 3600


def static_file(path: Path, content_type: str) -> web.Response:
    if not path.is_file():
        raise web.HTTPNotFound(text=f"{path.name} is not installed with this edge\n")
    response = web.Response(body=path.read_bytes(), content_type=content_type)
    response.headers["Cache-Control"] = "no-cache"
    return response


def file_handler(path: Path, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A GET handler serving one static file."""

    async def handler(request: web.Request) -> web.Response:
        return static_file(path, content_type)

    return handler


async def client_js(request: web.Request) -> web.Response:
    return static_file(CLIENT_JS / "jetsock.js", "text/javascript")


async def client_stream_js(request: web.Request) -> web.Response:
    """The client's HTTP stream transport, which /jetsock.js imports only when it falls back to it."""
    return static_file(CLIENT_JS / "jetsock-stream.js", "text/javascript")


async def client_types(request: web.Request) -> web.Response:
    return static_file(CLIENT_JS / "jetsock.d.ts", "text/plain")


async def demo_page(request: web.Request) -> web.Response:
    return static_file(STATIC / "index.html", "text/html")


async def demo_js(request: web.Request) -> web.Response:
    return static_file(STATIC / "demo.js", "text/javascript")


async def demo_css(request: web.Request) -> web.Response:
    return static_file(STATIC / "demo.css", "text/css")


async def dev_token(request: web.Request) -> web.Response:
    """GET /dev/token?sub=alice[&ttl=seconds]: a token that may join, publish and see presence
    everywhere, with `info` {"name": sub} (the demo lists who is online by that name)."""
    settings = request.app[NODE_KEY].settings
    if not rebinding_safe_host(request.host):
        raise web.HTTPForbidden(
            text="/dev/token answers only on localhost or an IP address (open the demo at http://localhost:<port>/)\n"
        )
    sub = request.query.get("sub", "")
    if not is_valid_room(sub) or "." in sub:
        raise web.HTTPBadRequest(text="sub must be a name of [A-Za-z0-9_-]\n")
    ttl = dev_token_ttl(request.query.get("ttl"))
    if ttl is None:
        raise web.HTTPBadRequest(text=f"ttl must be a number of seconds from 1 to {DEV_TOKEN_MAX_TTL}\n")
    token = make_token(settings.jwt_secret, sub, join=[">"], publish=[">"], ttl=ttl, presence=[">"], info={"name": sub})
    return web.json_response({"token": token}, headers={"Cache-Control": "no-store"})


def dev_token_ttl(text: str | None) -> float | None:
    """The ttl query parameter in seconds, or None when it is not a number from 1 to DEV_TOKEN_MAX_TTL.

    float() reads "nan", "inf" and "1e400" too: each of them, like 0, a negative
    or a ttl past the maximum, is refused rather than clamped or signed.
    """
    if text is None:
        return DEV_TOKEN_TTL
    try:
        ttl = float(text)
    except ValueError:
        return None
    if not math.isfinite(ttl) or not 1 <= ttl <= DEV_TOKEN_MAX_TTL:
        return None
    return ttl


def rebinding_safe_host(host: str) -> bool:
    """True for a Host header naming localhost or an IP address, which DNS rebinding cannot take over."""
    try:
        name = urlsplit("//" + host).hostname
    except ValueError:
        return False
    if not name:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def add_routes(app: web.Application) -> None:
    settings = app[NODE_KEY].settings
    app.router.add_get("/jetsock.js", client_js)
    app.router.add_get("/jetsock-stream.js", client_stream_js)
    app.router.add_get("/jetsock.d.ts", client_types)
    if settings.demo or settings.dev:
        app.router.add_get("/", demo_page)
        app.router.add_get("/demo.js", demo_js)
        app.router.add_get("/demo.css", demo_css)
    if settings.dev:
        app.router.add_get("/dev/token", dev_token)
