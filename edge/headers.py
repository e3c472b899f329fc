"""Security headers on every HTTP response of the edge (PROTOCOL.md 9.10).

Every response gets `X-Content-Type-Options: nosniff` (a browser never runs a
JSON body or the .d.ts file as a script or page), `Referrer-Policy:
no-referrer` and `X-Frame-Options: DENY`. HTML pages (the demo and /admin,
where an admin token is pasted) get a strict Content-Security-Policy: their
own scripts, styles and fetches only, WebSockets only to their own host, and
no framing; every other response gets `default-src 'none'` (it is no page).
The pages load nothing but their own files (no inline script or style), so
the policy costs them nothing.

The headers are set in aiohttp's `on_response_prepare` signal, just before a
response's headers are written, rather than in a middleware: a middleware
would keep a coroutine of its own alive for as long as each WebSocket is open
(its handler runs for the connection's lifetime), and memory per connection
is what this edge counts; the signal also sees the 404s, 405s and 500s that
aiohttp makes itself. The WebSocket upgrade (101) is left as it is.
"""

from __future__ import annotations

import re

from aiohttp import web

FIXED = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
PAGE_POLICY = (
    "default-src 'self'; connect-src 'self'{sockets}; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
OTHER_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_SAFE_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
"""A Host header that can be written into the policy as is: a name or address and a port, nothing else."""


def page_policy(host: str) -> str:
    """The CSP of an HTML page served for `host` (the request's Host).

    `'self'` in connect-src covers ws: and wss: to the page's own host in CSP
    level 3 browsers; the explicit ws:// and wss:// sources say the same to
    older ones. A Host that is not a plain host[:port] (it would inject
    directives) gets 'self' alone.
    """
    sockets = f" ws://{host} wss://{host}" if _SAFE_HOST.fullmatch(host) else ""
    return PAGE_POLICY.format(sockets=sockets)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: add the headers to a response about to be sent."""
    if response.status == 101:
        return
    for name, value in FIXED.items():
        response.headers.setdefault(name, value)
    policy = page_policy(request.host) if response.content_type == "text/html" else OTHER_POLICY
    response.headers.setdefault("Content-Security-Policy", policy)
