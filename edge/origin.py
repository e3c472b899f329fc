"""The Origin check on WebSocket upgrades (PROTOCOL.md section 3)."""

from __future__ import annotations

from aiohttp import web


def own_origin(request: web.Request) -> str:
    """The origin a browser shows for pages this server served itself."""
    return f"{request.scheme}://{request.host}"


def origin_allowed(origin: str, request: web.Request, allowed: list[str]) -> bool:
    """An Origin header is allowed when listed, or, with no list, when it is our own."""
    origin = origin.rstrip("/")
    if allowed:
        return "*" in allowed or origin in allowed
    return origin == own_origin(request)
