"""A page on another origin than its edge, in real Chromium: the HTTP stream works there only
because the edge answers CORS (edge/cors.py), and not at all for an origin it does not allow.

The app's page comes from a server of its own (http://localhost:<port>, with its own copy of
the client, as an app bundles it); the edge is http://127.0.0.1:<other port>, a different origin.
The client is pinned to the stream transport, so every request it makes is a cross-origin
fetch() with `Authorization` (preflighted by the browser).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import BrowserContext, Page

from core.embedded import free_port
from tests.conftest import token

CLIENT = Path(__file__).parents[2] / "clients" / "js"
PAGE = """<!doctype html><meta charset="utf-8"><title>app</title>
<script type="module">
import { Jetsock } from "./jetsock.js";
window.received = [];
window.states = [];
window.start = (url, tok, room) => {
  const client = new Jetsock(url, { token: () => tok, transports: ["stream"] });
  client.on("state", (state, info) => window.states.push({ state, transport: info?.transport ?? null }));
  window.room = client.join(room, { onMessage: (m) => window.received.push(m.data) });
  window.client = client;
};
window.ready = true;
</script>"""


class AppServer:
    """The app's own origin: its page and its copy of the client."""

    def __init__(self) -> None:
        self.port = free_port()
        self.origin = f"http://localhost:{self.port}"
        self._runner: web.AppRunner | None = None

    async def start(self) -> AppServer:
        app = web.Application()

        async def page(_: web.Request) -> web.Response:
            return web.Response(text=PAGE, content_type="text/html")

        async def client(request: web.Request) -> web.FileResponse:
            return web.FileResponse(CLIENT / request.match_info["name"])

        app.router.add_get("/", page)
        app.router.add_get("/{name:jetsock(-stream)?\\.js}", client)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def app_server() -> AsyncIterator[AppServer]:
    server = await AppServer().start()
    yield server
    await server.stop()


async def open_app(context: BrowserContext, app: AppServer) -> Page:
    page = await context.new_page()
    page.on("console", lambda m: print(f"[app console] {m.text}"))
    await page.goto(app.origin + "/")
    await page.wait_for_function("() => window.ready === true")
    return page


async def test_an_allowed_page_on_another_origin_talks_to_the_edge_over_the_stream(
    context: BrowserContext, edge_process: Any, app_server: AppServer
) -> None:
    edge = await edge_process(allowed_origins=app_server.origin)
    page = await open_app(context, app_server)
    url = f"ws://127.0.0.1:{edge.port}/ws"
    await page.evaluate("([url, tok]) => window.start(url, tok, 'chat.cross')", [url, token("alice")])
    await page.wait_for_function("() => window.states.some(s => s.state === 'connected')", timeout=15000)
    assert await page.evaluate("() => window.client.transport") == "stream"
    await page.evaluate("() => window.room.ready()")
    # A publish is a cross-origin POST into the session; its ack comes back on the stream.
    ack = await page.evaluate("() => window.room.publish({text: 'from another origin'})")
    assert ack["seq"] > 0
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{edge.http}/v1/rooms/chat.cross/messages",
            json={"text": "from the backend"},
            headers={"Authorization": f"Bearer {token('backend', publish=['chat.*'])}"},
        ) as response,
    ):
        assert response.status in (200, 201, 202), await response.text()
    await page.wait_for_function("() => window.received.length >= 2", timeout=10000)
    assert await page.evaluate("() => window.received.map(d => d.text)") == ["from another origin", "from the backend"]
    # The page may read the edge's answers itself: a history page over HTTP, cross-origin.
    history = await page.evaluate(
        """async ([base, tok]) => {
          const r = await fetch(base + "/v1/rooms/chat.cross/messages?limit=10", {headers: {Authorization: "Bearer " + tok}});
          return {status: r.status, body: await r.json()};
        }""",
        [edge.http, token("alice")],
    )
    assert history["status"] == 200 and [m["data"]["text"] for m in history["body"]["messages"]] == [
        "from another origin",
        "from the backend",
    ]
    assert not any(s["state"] == "reconnecting" for s in await page.evaluate("() => window.states"))


async def test_a_page_on_an_origin_the_edge_does_not_allow_cannot_use_the_stream(
    context: BrowserContext, edge_process: Any, app_server: AppServer
) -> None:
    edge = await edge_process(allowed_origins="https://someone-else.example")
    page = await open_app(context, app_server)
    # The browser refuses the answer itself: fetch() rejects (a TypeError), whatever the token.
    outcome = await page.evaluate(
        """async ([base, tok]) => {
          try {
            await fetch(base + "/v1/stream", {method: "POST", body: "[]",
              headers: {Authorization: "Bearer " + tok, "Content-Type": "application/json"}});
            return "read";
          } catch (e) { return e.name; }
        }""",
        [edge.http, token("alice")],
    )
    assert outcome == "TypeError"
    url = f"ws://127.0.0.1:{edge.port}/ws"
    await page.evaluate("([url, tok]) => window.start(url, tok, 'chat.cross')", [url, token("alice")])
    await page.wait_for_function("() => window.states.some(s => s.state === 'reconnecting')", timeout=15000)
    assert not any(s["state"] == "connected" for s in await page.evaluate("() => window.states"))
