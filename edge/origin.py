"""The Origin check on WebSocket upgrades (PROTOCOL.md section 3 and 9.2).

Entries of `JETSOCK_ALLOWED_ORIGINS`, compared without a trailing `/`:

- `https://chat.example.com` (or with a port): that origin exactly;
- `http://localhost:*`: that scheme and host with any port, or none (the
  scheme's default port); the port an Origin names must be a number 1-65535,
  so `http://localhost:*` never matches `http://localhost.evil.example` or
  `http://localhost:1@evil.example`;
- `self`: the server's own origin, `<scheme>://<Host header>`, the page the
  edge served itself (the meaning of an empty list);
- `*`: every origin.
"""

from __future__ import annotations

import re
from functools import lru_cache

from aiohttp import web

SELF = "self"
ANY = "*"
ANY_PORT = ":*"
_SCHEME_HOST = re.compile(r"[a-z][a-z0-9+.-]*://(\[[0-9a-f:.]+\]|[^/:@\s*\[\]]+)", re.IGNORECASE)
"""scheme://host, the host a name, an IPv4 address or a bracketed IPv6 address."""
_PORT = re.compile(r"[1-9][0-9]{0,4}")


def own_origin(request: web.Request) -> str:
    """The origin a browser shows for pages this server served itself."""
    return f"{request.scheme}://{request.host}"


def check_entries(entries: list[str]) -> None:
    """Raise ValueError naming the first entry that is none of the forms above."""
    for entry in entries:
        if entry in (SELF, ANY):
            continue
        base = entry[: -len(ANY_PORT)] if entry.endswith(ANY_PORT) else entry
        if _SCHEME_HOST.fullmatch(base):
            continue
        scheme_host, _, port = base.rpartition(":")
        if not entry.endswith(ANY_PORT) and _SCHEME_HOST.fullmatch(scheme_host) and _valid_port(port):
            continue
        raise ValueError(
            f"JETSOCK_ALLOWED_ORIGINS entry {entry!r} is not an origin: use scheme://host[:port],"
            " scheme://host:* (any port), self (this server's own origin) or *"
        )


def _valid_port(port: str) -> bool:
    return bool(_PORT.fullmatch(port)) and int(port) <= 65535


@lru_cache(maxsize=64)
def _split(allowed: tuple[str, ...]) -> tuple[bool, bool, frozenset[str], tuple[str, ...]]:
    """(any, self, exact origins, scheme://host prefixes with any port) of an allow-list."""
    exact = frozenset(entry for entry in allowed if entry not in (ANY, SELF) and not entry.endswith(ANY_PORT))
    any_port = tuple(entry[: -len(ANY_PORT)] for entry in allowed if entry.endswith(ANY_PORT))
    return ANY in allowed, SELF in allowed or not allowed, exact, any_port


def origin_allowed(origin: str, request: web.Request, allowed: list[str]) -> bool:
    """An Origin header is allowed when an entry matches it; an empty list means `self`."""
    origin = origin.rstrip("/")
    anything, itself, exact, any_port = _split(tuple(allowed))
    if anything or origin in exact or (itself and origin == own_origin(request)):
        return True
    for base in any_port:
        if origin == base:
            return True
        if origin.startswith(base + ":") and _valid_port(origin[len(base) + 1 :]):
            return True
    return False
