"""CORS on the browser-facing HTTP endpoints (edge/cors.py, schemas/PROTOCOL.md 9.14), against a
real edge: preflights answered or refused as the allow-list says, the answers' headers, and what
never gets them. A real browser's side is tests/browser/test_cross_origin.py."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.conftest import Edge, token
from tests.edge.sse import open_stream

APP = "https://app.example"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}


async def preflight(edge: Edge, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as http, http.options(f"{edge.http}{path}", headers=headers) as response:
        return response.status, dict(response.headers), await response.text()


async def test_a_preflight_from_an_allowed_origin_is_answered_for_each_browser_endpoint(make_edge: Any) -> None:
    edge = await make_edge(allowed_origins=f"{APP},http://localhost:*")
    for path, method in [
        ("/v1/stream", "POST"),
        ("/v1/stream/r1.abc", "POST"),
        ("/v1/rooms/chat.a/messages", "GET"),
        ("/v1/rooms/chat.a/messages", "POST"),
        ("/v1/rooms/chat.a/presence", "GET"),
    ]:
        asked = {**PREFLIGHT, "Access-Control-Request-Method": method, "Origin": APP}
        status, headers, _ = await preflight(edge, path, asked)
        assert status == 204, (path, method)
        assert headers["Access-Control-Allow-Origin"] == APP
        assert headers["Access-Control-Allow-Credentials"] == "true"
        assert method in headers["Access-Control-Allow-Methods"].split(", ")
        assert headers["Access-Control-Allow-Headers"] == "authorization, content-type"
        assert headers["Access-Control-Max-Age"] == "600"
        assert "Origin" in headers["Vary"]
    # Any port of localhost, as the WebSocket upgrade allows it.
    status, headers, _ = await preflight(edge, "/v1/stream", {**PREFLIGHT, "Origin": "http://localhost:5173"})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "http://localhost:5173"


async def test_preflights_are_refused_with_a_reason(make_edge: Any) -> None:
    edge = await make_edge(allowed_origins=APP)
    cases = [
        ({**PREFLIGHT, "Origin": "https://evil.example"}, 403, "not allowed"),
        ({**PREFLIGHT, "Origin": "http://localhost:*"}, 403, "not allowed"),
        ({**PREFLIGHT, "Origin": APP + ".evil.example"}, 403, "not allowed"),
        ({**PREFLIGHT, "Origin": APP, "Access-Control-Request-Method": "DELETE"}, 405, "POST"),
        ({**PREFLIGHT, "Origin": APP, "Access-Control-Request-Headers": "authorization, x-evil"}, 403, "x-evil"),
        ({"Origin": APP}, 400, "preflight"),
        ({"Access-Control-Request-Method": "POST"}, 400, "preflight"),
        ({}, 400, "preflight"),
    ]
    for headers, status, reason in cases:
        got, answer, body = await preflight(edge, "/v1/stream", headers)
        assert got == status and reason in body, (headers, got, body)
        assert "Access-Control-Allow-Origin" not in answer, headers  # the browser fails the fetch
    # The backend's disconnect endpoint has no preflight at all: no page may call it.
    got, answer, _ = await preflight(edge, "/v1/subjects/alice/disconnect", {**PREFLIGHT, "Origin": APP})
    assert got == 405 and "Access-Control-Allow-Origin" not in answer


async def test_answers_carry_the_origin_for_allowed_pages_only(make_edge: Any) -> None:
    edge = await make_edge(allowed_origins=APP)
    auth = {"Authorization": f"Bearer {token('alice')}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{edge.http}/v1/rooms/chat.a/messages", headers={**auth, "Origin": APP}) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == APP
            assert response.headers["Access-Control-Allow-Credentials"] == "true"
            assert response.headers["Access-Control-Expose-Headers"] == "Retry-After"
        # An error answer is readable too: the page sees why.
        async with http.get(f"{edge.http}/v1/rooms/chat.a/messages?limit=0", headers={**auth, "Origin": APP}) as bad:
            assert bad.status == 400 and bad.headers["Access-Control-Allow-Origin"] == APP
        async with http.get(
            f"{edge.http}/v1/rooms/chat.a/messages", headers={**auth, "Origin": "https://evil.example"}
        ) as foreign:
            assert "Access-Control-Allow-Origin" not in foreign.headers and "Origin" in foreign.headers["Vary"]
        async with http.get(f"{edge.http}/v1/rooms/chat.a/messages", headers=auth) as plain:
            assert "Access-Control-Allow-Origin" not in plain.headers and "Origin" in plain.headers["Vary"]
        async with http.get(f"{edge.http}/healthz", headers={"Origin": APP}) as health:
            assert "Access-Control-Allow-Origin" not in health.headers and "Vary" not in health.headers
    stream = await open_stream(edge.http, sub="alice", headers={"Origin": APP})
    try:
        assert stream.status == 200 and stream.response.headers["Access-Control-Allow-Origin"] == APP
        assert stream.welcome is not None
    finally:
        await stream.close()


async def test_a_wildcard_lets_any_page_in_without_credentials(make_edge: Any) -> None:
    """`*` allows a bearer token from any page; the cookie goes only to origins the operator named."""
    edge = await make_edge(allowed_origins=f"*,{APP}")
    status, headers, _ = await preflight(edge, "/v1/stream", {**PREFLIGHT, "Origin": "https://anyone.example"})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in headers
    status, headers, _ = await preflight(edge, "/v1/stream", {**PREFLIGHT, "Origin": APP})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == APP
    assert headers["Access-Control-Allow-Credentials"] == "true"
