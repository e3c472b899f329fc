"""The operator page in real Chromium: refused without the admin claim, live with it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from playwright.async_api import BrowserContext, expect

from tests.conftest import SECRET, open_ws, token

DOCS = Path(__file__).parents[2] / "docs"


async def test_admin_page_refuses_a_plain_token_and_shows_the_node_with_an_admin_one(
    context: BrowserContext, edge_process: Any
) -> None:
    # A node name of our own: the screenshot must not show this machine's host name.
    edge = await edge_process(admin="true", jwt_secret=SECRET, node="edge-1")
    ws_url = edge.http.replace("http", "ws") + "/ws"
    # Some traffic worth looking at: clients in rooms, a few closes of different kinds.
    clients = []
    for i in range(12):
        client = await open_ws(ws_url, ("jetsock.v1", f"bearer.{token(f'user-{i}')}"))
        await client.expect("welcome")
        for room in ("lobby", f"team.{i % 3}"):
            await client.request(type="join", room=room)
        clients.append(client)
    refused = await open_ws(ws_url, ("jetsock.v1", "bearer.not-a-token"))
    await refused.closed()
    for client in clients[:2]:
        await client.close()
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {token('svc', publish=['>'])}"}
        for n in range(5):
            async with http.post(f"{edge.http}/v1/rooms/lobby/messages", json={"n": n}, headers=headers) as r:
                assert r.status == 201

    page = await context.new_page()
    await page.goto(f"{edge.http}/admin")
    await page.fill("#token", token("someone"))
    await page.click("button[type=submit]")
    await expect(page.locator("#signin-error")).to_contain_text("admin")
    assert await page.locator("#dashboard").is_hidden()

    await page.fill("#token", token("ops", admin=True))
    await page.click("button[type=submit]")
    await expect(page.locator("#status")).to_have_text("live")
    await expect(page.locator("#t-connections")).to_have_text("10")
    await expect(page.locator("#rooms tr").first).to_contain_text("lobby")
    await expect(page.locator("#closes")).to_contain_text("4501")
    await expect(page.locator("#t-nats")).to_have_text("connected")
    # Traffic across two refreshes gives the per-second rates something to show.
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {token('svc', publish=['>'])}"}
        for n in range(70):
            async with http.post(f"{edge.http}/v1/rooms/lobby/messages", json={"n": n}, headers=headers) as r:
                assert r.status == 201
            await asyncio.sleep(0.05)
    await expect(page.locator("#t-in")).not_to_have_text("0")
    await page.set_viewport_size({"width": 1100, "height": 760})
    await page.screenshot(path=str(DOCS / "admin.png"), full_page=True)
    for client in clients[2:]:
        await client.close()
