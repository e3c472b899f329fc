"""Class 9f: requests that look for a page without its security headers.

Every method on every path the edge serves (and paths it does not: traversal,
double slashes, a script in the query, 2,000-character paths), refused
upgrades, and, on an edge of this class's own with the demo, /admin and dev
mode on, the HTML pages asked for with hostile Host headers that try to write
directives into the Content-Security-Policy. Every answer carries
`X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`,
`Referrer-Policy: no-referrer` and a CSP with `frame-ancestors 'none'`; an
HTML answer carries the page policy, whose directives are the fixed set and
whose `connect-src` names nothing but the page's own host (or 'self' alone).
Requests aiohttp refuses before routing (a broken request line) are recorded,
not required: no application code sees them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.conftest import SECRET, wait_ready
from tests.edge.devserver import ServeProcess
from tests.edge.rawhttp import raw_request
from tests.hostile.conftest import Cases
from tests.hostile.support import Hostile

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.hostile("pages without security headers")]

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"]
PATHS = [
    "/",
    "/jetsock.js",
    "/jetsock.d.ts",
    "/demo.js",
    "/demo.css",
    "/admin",
    "/admin/admin.js",
    "/admin/base.css",
    "/admin/api/state",
    "/dev/token?sub=mallory",
    "/healthz",
    "/readyz",
    "/metrics",
    "/ws",
    "/v1/rooms/hostile.x/messages",
    "/v1/subjects/x/disconnect",
    "/%2e%2e/%2e%2e/etc/passwd",
    "//jetsock.js",
    "/static/../jetsock.js",
    "/jetsock.js?<script>alert(1)</script>",
    "/%3Cscript%3E",
    "/" + "a" * 2000,
]
HOSTILE_HOSTS = [
    "evil.example; script-src *",
    "evil.example 'unsafe-inline'",
    "a;b",
    "x, y",
    "127.0.0.1:99999",
    "[::1]:8080",
    "localhost:8080",
    "h" * 300,
    "evil.example:1; frame-ancestors *",
    "",
]
PAGE_DIRECTIVES = {"default-src", "connect-src", "object-src", "frame-ancestors", "base-uri", "form-action"}
SAFE_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def head(method: str, path: str, host: str, extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n".encode()


def problems(where: str, status: int, headers: dict[str, list[str]]) -> list[str]:
    """What is missing or wrong in one answer's headers."""
    found = []
    for name, value in (
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ):
        if headers.get(name) != [value]:
            found.append(f"{where} ({status}): {name} is {headers.get(name)}")
    policies = headers.get("content-security-policy", [])
    if len(policies) != 1:
        return [*found, f"{where} ({status}): {len(policies)} Content-Security-Policy headers"]
    directives = {}
    for part in policies[0].split(";"):
        words = part.split()
        if words:
            directives[words[0]] = words[1:]
    if directives.get("frame-ancestors") != ["'none'"] or directives.get("base-uri") != ["'none'"]:
        found.append(f"{where} ({status}): {policies[0]}")
    if "text/html" in " ".join(headers.get("content-type", [])):
        if set(directives) != PAGE_DIRECTIVES or directives["default-src"] != ["'self'"]:
            found.append(f"{where} ({status}): page policy {policies[0]!r}")
        sockets = directives.get("connect-src", [])
        hosts = [s.split("://", 1)[1] for s in sockets[1:]]
        if sockets[:1] != ["'self'"] or len(hosts) not in (0, 2) or not all(SAFE_HOST.fullmatch(h) for h in hosts):
            found.append(f"{where} ({status}): connect-src {sockets}")
        if "'unsafe-inline'" in policies[0] or "*" in policies[0]:
            found.append(f"{where} ({status}): {policies[0]!r}")
    elif directives.get("default-src") != ["'none'"]:
        found.append(f"{where} ({status}): not a page, yet {policies[0]!r}")
    return found


async def sweep(port: int, hosts: list[str], cases: Cases) -> tuple[list[str], dict[str, int]]:
    failures: list[str] = []
    statuses: dict[str, int] = {}
    for host in hosts:
        for method in METHODS:
            for path in PATHS:
                body_headers = "Content-Length: 2\r\n" if method in ("POST", "PUT", "PATCH") else ""
                status, headers, _ = await raw_request(
                    port, head(method, path, host, body_headers), b"{}" if body_headers else b""
                )
                cases.add()
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if status == 0:
                    failures.append(f"{method} {path[:60]} Host {host[:40]!r}: no answer")
                    continue
                failures += problems(f"{method} {path[:60]} Host {host[:40]!r}", status, headers)
    return failures, statuses


@pytest_asyncio.fixture(loop_scope="session")
async def pages_edge(hostile: Hostile, tmp_path: Path) -> AsyncIterator[ServeProcess]:
    edge = ServeProcess(
        tmp_path / "pages-edge",
        args=["--dev"],
        env={
            "JETSOCK_NATS_URL": hostile.nats.url,
            "JETSOCK_JWT_SECRET": SECRET,
            "JETSOCK_ADMIN": "true",
            "JETSOCK_LOG_LEVEL": "warning",
        },
    )
    await edge.start(banner=False)
    try:
        await wait_ready(edge.http, edge.process, 30, edge.output)
        yield edge
    finally:
        await edge.stop()


async def test_every_answer_of_the_shared_edge_has_the_headers(hostile: Hostile, cases: Cases) -> None:
    failures, statuses = await sweep(hostile.port, [f"127.0.0.1:{hostile.port}", "evil.example; script-src *"], cases)
    for origin in ("https://evil.example", "null"):
        upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        upgrade += f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n"
        status, headers, _ = await raw_request(
            hostile.port, head("GET", "/ws", "x", upgrade).replace(b"Connection: close\r\n", b"")
        )
        cases.add()
        failures += [f"refused upgrade from {origin}: HTTP {status}"] if status != 403 else []
        failures += problems(f"upgrade from {origin}", status, headers)
    broken = {}
    for name, request in (
        ("no HTTP version", b"GET /\r\n\r\n"),
        ("header without a colon", b"GET / HTTP/1.1\r\nHost: x\r\nnonsense\r\n\r\n"),
        ("NUL in the path", b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n"),
    ):
        status, headers, _ = await raw_request(hostile.port, request)
        cases.add()
        broken[name] = {"status": status, "nosniff": headers.get("x-content-type-options") == ["nosniff"]}
    cases.note("statuses (shared edge)", statuses)
    cases.note("refused before routing (recorded, not required)", broken)
    cases.note("check", await hostile.check("pages without security headers"))
    assert not failures, f"{len(failures)} answers without their headers:\n" + "\n".join(failures[:40])


async def test_pages_with_hostile_host_headers_keep_a_strict_policy(pages_edge: ServeProcess, cases: Cases) -> None:
    failures, statuses = await sweep(pages_edge.port, HOSTILE_HOSTS, cases)
    cases.note("statuses (pages edge)", statuses)
    assert statuses.get("200", 0) > len(HOSTILE_HOSTS) * 10, statuses  # the pages were served, not only refused
    assert not failures, f"{len(failures)} answers without their headers:\n" + "\n".join(failures[:40])
