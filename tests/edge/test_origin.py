"""JETSOCK_ALLOWED_ORIGINS: exact origins, `scheme://host:*`, `self` and `*`, on real upgrades (edge/origin.py)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from edge.origin import check_entries
from tests.conftest import Edge, token


async def upgrade_status(edge: Edge, origin: str) -> int:
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(edge.url, protocols=("jetsock.v1", "bearer." + token()), origin=origin)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101


async def test_self_and_any_port_patterns(make_edge: Any) -> None:
    edge = await make_edge(allowed_origins="self,http://localhost:*,https://chat.example.com")
    own = f"http://127.0.0.1:{edge.settings.port}"
    allowed = [
        own,
        own + "/",
        "http://localhost",
        "http://localhost:1",
        "http://localhost:65535",
        "https://chat.example.com",
    ]
    refused = [
        "http://127.0.0.1:1",  # `self` is this server's origin only, not its host on any port
        "https://localhost:3000",  # another scheme
        "http://localhost:0",
        "http://localhost:65536",
        "http://localhost:03000",
        "http://localhost:",
        "http://localhost:3000.evil.example",
        "http://localhost.evil.example",
        "http://localhost:3000@evil.example",
        "http://evil.localhost:3000",
        "https://chat.example.com:8443",
        "https://evil.example",
        "null",
        "self",
        "*",
    ]
    for origin in allowed:
        assert await upgrade_status(edge, origin) == 101, origin
    for origin in refused:
        assert await upgrade_status(edge, origin) == 403, origin


async def test_empty_list_means_self_and_star_means_everything(make_edge: Any) -> None:
    plain = await make_edge()
    assert await upgrade_status(plain, f"http://127.0.0.1:{plain.settings.port}") == 101
    assert await upgrade_status(plain, "http://localhost:5173") == 403
    anything = await make_edge(allowed_origins="*")
    assert await upgrade_status(anything, "https://evil.example") == 101


def test_entries_are_checked() -> None:
    check_entries(["self", "*", "http://localhost:*", "https://a.example:8443", "http://[::1]:*", "http://10.0.0.1"])
    for bad in ("https://a.example/app", "localhost:3000", "http://a:0", "http://a:99999", "http://*.example.com", "x"):
        with pytest.raises(ValueError, match="is not an origin"):
            check_entries([bad])
