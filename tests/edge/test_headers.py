"""Security headers on every page, file and answer of a real edge (edge/headers.py, PROTOCOL.md 9.10)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.conftest import connect, token

PAGES = ["/", "/admin"]
FILES = [
    "/demo.js",
    "/demo.css",
    "/jetsock.js",
    "/jetsock.d.ts",
    "/admin/admin.js",
    "/admin/admin.css",
    "/admin/base.css",
]
ANSWERS = [
    ("GET", "/dev/token?sub=alice", 200),
    ("GET", "/dev/token?sub=a.b", 400),
    ("GET", "/healthz", 200),
    ("GET", "/readyz", 200),
    ("GET", "/metrics", 200),
    ("GET", "/admin/api/state", 401),
    ("POST", "/v1/rooms/x/messages", 401),
    ("GET", "/v1/rooms/x/messages", 401),
    ("GET", "/v1/rooms/x/presence", 401),
    ("PUT", "/v1/rooms/x/messages", 405),
    ("POST", "/v1/stream", 401),
    ("POST", "/v1/stream/a.b", 401),
    ("GET", "/v1/stream", 405),
    ("GET", "/no/such/page", 404),
    ("GET", "/ws", 400),  # not an upgrade request
]


def check_common(path: str, headers: Any) -> str:
    """The headers every response has; its CSP."""
    assert headers.get("X-Content-Type-Options") == "nosniff", path
    assert headers.get("X-Frame-Options") == "DENY", path
    assert headers.get("Referrer-Policy") == "no-referrer", path
    policy: str = headers.get("Content-Security-Policy", "")
    assert "frame-ancestors 'none'" in policy, (path, policy)
    assert "base-uri 'none'" in policy, (path, policy)
    return policy


def directives(policy: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            assert words[0] not in parsed, f"{words[0]} twice in {policy}"
            parsed[words[0]] = words[1:]
    return parsed


async def test_every_page_file_and_answer_has_the_headers(make_edge: Any) -> None:
    edge = await make_edge(dev=True, admin=True)
    host = f"127.0.0.1:{edge.settings.port}"
    async with aiohttp.ClientSession() as http:
        for path in PAGES:
            async with http.get(edge.http + path) as r:
                assert r.status == 200 and r.content_type == "text/html", path
                policy = directives(check_common(path, r.headers))
                assert policy["default-src"] == ["'self'"]
                assert policy["connect-src"] == ["'self'", f"ws://{host}", f"wss://{host}"]
                assert policy["form-action"] == ["'self'"] and policy["object-src"] == ["'none'"]
                assert "'unsafe-inline'" not in str(policy) and "'unsafe-eval'" not in str(policy)
        for path in FILES:
            async with http.get(edge.http + path) as r:
                assert r.status == 200, path
                assert directives(check_common(path, r.headers))["default-src"] == ["'none'"], path
        for method, path, status in ANSWERS:
            async with http.request(method, edge.http + path) as r:
                assert r.status == status, (method, path, r.status)
                assert directives(check_common(path, r.headers))["default-src"] == ["'none'"], path
        # An upgrade refused for its Origin is an answer like the others.
        foreign = {"Origin": "https://evil.example", "Upgrade": "websocket", "Connection": "Upgrade"}
        async with http.get(edge.http + "/ws", headers=foreign) as r:
            assert r.status == 403
            check_common("/ws (403)", r.headers)


async def test_websocket_upgrade_still_works_and_carries_no_page_policy(make_edge: Any) -> None:
    edge = await make_edge(dev=True)
    client = await connect(edge.url)
    try:
        assert (await client.request(type="ping"))["type"] == "pong"
    finally:
        await client.close()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(edge.url, protocols=("jetsock.v1", "bearer." + token("bob")))
        assert ws._response is not None
        assert "Content-Security-Policy" not in ws._response.headers
        assert (await ws.receive_json())["type"] == "welcome"
        await ws.close()


async def test_a_host_header_cannot_write_into_the_policy(make_edge: Any) -> None:
    edge = await make_edge(demo=True)
    for host in ("evil.example; script-src *", "x 'unsafe-inline'", "a,b"):
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.settings.port)
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = (await reader.read()).partition(b"\r\n\r\n")[0].decode()
        writer.close()
        assert head.startswith("HTTP/1.1 200"), head
        (policy,) = [line for line in head.split("\r\n") if line.lower().startswith("content-security-policy:")]
        parsed = directives(policy.split(":", 1)[1])
        assert parsed["connect-src"] == ["'self'"], (host, policy)
        assert "script-src" not in parsed and "'unsafe-inline'" not in policy, (host, policy)
