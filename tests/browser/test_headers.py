"""The security headers in real Chromium: the demo and /admin run under their policy without a single
violation, and no other page can frame /admin (edge/headers.py)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from playwright.async_api import BrowserContext, Page, expect

from core.embedded import free_port
from tests.browser.conftest import open_demo
from tests.conftest import SECRET, token

RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


async def violations(page: Page) -> list[str]:
    found: list[str] = await page.evaluate("() => window.__violations")
    return found


async def test_demo_and_admin_work_under_their_policy(context: BrowserContext, edge_process: Any) -> None:
    edge = await edge_process(admin="true", jwt_secret=SECRET)
    await context.add_init_script(RECORD_VIOLATIONS)
    alice = await open_demo(context, edge, "alice")
    await alice.fill("#text", "under a strict policy")
    await alice.press("#text", "Enter")
    await alice.wait_for_selector("#messages li:has-text('under a strict policy')")
    assert await violations(alice) == []

    admin = await context.new_page()
    await admin.goto(f"{edge.http}/admin")
    await admin.fill("#token", token("ops", admin=True))
    await admin.click("button[type=submit]")
    await expect(admin.locator("#status")).to_have_text("live")
    assert await violations(admin) == []


async def test_admin_cannot_be_framed(context: BrowserContext, edge_process: Any) -> None:
    edge = await edge_process(admin="true", jwt_secret=SECRET)
    # Another site, with no policy of its own, frames the operator page.
    framing = web.Application()

    async def framing_page(request: web.Request) -> web.Response:
        return web.Response(text=f'<iframe id="f" src="{edge.http}/admin"></iframe>', content_type="text/html")

    framing.router.add_get("/", framing_page)
    runner = web.AppRunner(framing)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        page = await context.new_page()
        messages: list[str] = []
        page.on("console", lambda m: messages.append(m.text))
        await page.goto(f"http://localhost:{port}/")
        await page.wait_for_timeout(1500)
        assert await page.frame_locator("#f").locator("#token").count() == 0, "/admin rendered inside a frame"
        assert any("frame-ancestors" in m or "X-Frame-Options" in m for m in messages), messages
    finally:
        await runner.cleanup()
