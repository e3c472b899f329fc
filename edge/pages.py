"""What a browser loads from an edge: the JS client, the demo chat, and dev tokens.

`/jetsock.js` is always served (apps load the client from the node they talk
to). The demo at `/` is on with the `demo` setting (and in `make run`).
`/dev/token` exists only in development mode: it signs tokens with the dev
secret so the demo works without an identity provider.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from core.auth import make_token
from core.rooms import is_valid_room
from edge.session import NODE_KEY

STATIC = Path(__file__).parent / "static"
CLIENT_JS = Path(__file__).parents[1] / "clients" / "js"
"""The browser client's source; the edge serves it as is (no build step)."""

DEV_TOKEN_MAX_TTL = 7 * 86400


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


async def client_types(request: web.Request) -> web.Response:
    return static_file(CLIENT_JS / "jetsock.d.ts", "text/plain")


async def demo_page(request: web.Request) -> web.Response:
    return static_file(STATIC / "index.html", "text/html")


async def demo_js(request: web.Request) -> web.Response:
    return static_file(STATIC / "demo.js", "text/javascript")


async def demo_css(request: web.Request) -> web.Response:
    return static_file(STATIC / "demo.css", "text/css")


async def dev_token(request: web.Request) -> web.Response:
    """GET /dev/token?sub=alice[&ttl=seconds]: a token that may join and publish everywhere."""
    settings = request.app[NODE_KEY].settings
    sub = request.query.get("sub", "")
    if not is_valid_room(sub) or "." in sub:
        raise web.HTTPBadRequest(text="sub must be a name of [A-Za-z0-9_-]\n")
    try:
        ttl = min(float(request.query.get("ttl", 3600)), DEV_TOKEN_MAX_TTL)
    except ValueError:
        raise web.HTTPBadRequest(text="ttl must be a number of seconds\n") from None
    token = make_token(settings.jwt_secret, sub, join=[">"], publish=[">"], ttl=ttl)
    return web.json_response({"token": token}, headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    settings = app[NODE_KEY].settings
    app.router.add_get("/jetsock.js", client_js)
    app.router.add_get("/jetsock.d.ts", client_types)
    if settings.demo or settings.dev:
        app.router.add_get("/", demo_page)
        app.router.add_get("/demo.js", demo_js)
        app.router.add_get("/demo.css", demo_css)
    if settings.dev:
        app.router.add_get("/dev/token", dev_token)
