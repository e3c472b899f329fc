"""The operator page at /admin: live counts, top rooms, fullest outboxes, recent closes, NATS state.

Off unless the `admin` setting is on. The page itself holds no data; its
script reads /admin/api/state with a JWT carrying `admin: true`, which the
operator pastes once per tab (kept in sessionStorage, never in a URL).
"""

from __future__ import annotations

import heapq
import time

from aiohttp import web

from edge.http_api import admin_principal
from edge.node import Node
from edge.pages import STATIC, file_handler
from edge.session import NODE_KEY

TOP = 10


def state(node: Node) -> dict[str, object]:
    """What the page shows, read from the node's own structures (no metrics scrape)."""
    now = time.monotonic()
    authenticated, pending = node.connection_counts()
    rooms = heapq.nlargest(TOP, node.hub.rooms.items(), key=lambda item: len(item[1]))
    fullest = heapq.nlargest(TOP, (c for c in node.connections if c.principal is not None), key=lambda c: c.pending)
    return {
        "node": node.name,
        "time": time.time(),
        "connections": {"authenticated": authenticated, "pending": pending},
        "rooms": len(node.hub.rooms),
        "messages_in": node.published,
        "messages_out": node.hub.deliveries,
        "nats": {
            "connected": node.broker.connected,
            "answering": node.broker.health.answering,
            "reconnects": node.broker.reconnects,
        },
        "top_rooms": [{"room": name, "members": len(room)} for name, room in rooms],
        "presence": [
            {"room": room, "users": users, "connections": connections}
            for room, users, connections in node.presence.top_rooms(TOP)
        ],
        "fullest_outboxes": [
            {
                "session": conn.session,
                "sub": conn.principal.sub if conn.principal is not None else "",
                "pending_bytes": conn.pending,
                "rooms": len(conn.rooms),
                "age_s": round(now - conn.opened, 1),
            }
            for conn in fullest
            if conn.pending > 0
        ],
        "closes": node.recent_closes.summary(now),
    }


async def api_state(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    principal = await admin_principal(request, node)
    if isinstance(principal, web.Response):
        return principal
    return web.json_response(state(node), headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    if not app[NODE_KEY].settings.admin:
        return
    app.router.add_get("/admin", file_handler(STATIC / "admin.html", "text/html"))
    app.router.add_get("/admin/admin.js", file_handler(STATIC / "admin.js", "text/javascript"))
    app.router.add_get("/admin/admin.css", file_handler(STATIC / "admin.css", "text/css"))
    # The demo's stylesheet holds the shared look; served here too, for the demo may be off.
    app.router.add_get("/admin/base.css", file_handler(STATIC / "demo.css", "text/css"))
    app.router.add_get("/admin/api/state", api_state)
