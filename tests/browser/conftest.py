"""Real Chromium (Debian's, driven by Playwright) against a real edge process and nats-server.

The edge runs as `jetsock serve --dev` in its own process so a test can kill it
with SIGKILL and start it again on the same port, as a crash and a restart would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from core.embedded import EmbeddedNats, free_port
from tests.conftest import SECRET, wait_ready

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Timers of background pages must keep running: the tests hide pages on purpose.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
]


class EdgeProcess:
    """`jetsock serve --dev` on a fixed port, killable and restartable."""

    def __init__(self, nats_url: str, log_path: Path, **settings: str) -> None:
        self.port = free_port()
        self.nats_url = nats_url
        self.log_path = log_path
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> EdgeProcess:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("JETSOCK_")},
            "JETSOCK_NATS_URL": self.nats_url,
            "JETSOCK_JWT_SECRET": SECRET,
            "JETSOCK_PORT": str(self.port),
            "JETSOCK_DRAIN_SECONDS": "0.5",
            "JETSOCK_LOG_LEVEL": "info",
            **{f"JETSOCK_{k.upper()}": v for k, v in self.settings.items()},
        }
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "jetsock"), "serve", "--dev"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        await wait_ready(self.http, self.process, 20, lambda: self.log_path.read_text()[-2000:])
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=20)

    async def admin(self, path: str, **body: Any) -> dict[str, Any]:
        from tests.conftest import token

        headers = {"Authorization": f"Bearer {token('ops', admin=True)}"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(self.http + path, json=body or None, headers=headers) as r,
        ):
            assert r.status == 200, await r.text()
            result: dict[str, Any] = await r.json()
            return result


@pytest.fixture
def nats_for_browser(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture
async def edge_process(nats_for_browser: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Any]:
    started: list[EdgeProcess] = []

    async def factory(**settings: str) -> EdgeProcess:
        edge = await EdgeProcess(nats_for_browser.url, tmp_path / f"edge{len(started)}.log", **settings).start()
        started.append(edge)
        return edge

    yield factory
    for edge in started:
        edge.kill(signal.SIGTERM)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        await instance.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(viewport={"width": 900, "height": 760})
    yield ctx
    await ctx.close()


class Served(Protocol):
    """Where a page is loaded from: an edge, or a proxy in front of edges."""

    @property
    def http(self) -> str: ...


async def open_demo(ctx: BrowserContext, edge: Served, name: str, room: str = "chat.lobby", query: str = "") -> Page:
    """A page of the demo, joined as `name`, waiting until it is connected."""
    page = await ctx.new_page()
    page.on("console", lambda m: print(f"[{name} console] {m.text}"))
    page.on("pageerror", lambda e: print(f"[{name} page error] {e}"))
    await page.goto(f"{edge.http}/?name={name}&room={room}{query}")
    await page.wait_for_selector('#state[data-state="connected"]', timeout=15000)
    return page


async def seqs_on(page: Page) -> list[int]:
    values: list[str] = await page.eval_on_selector_all("#messages li[data-seq]", "els => els.map(e => e.dataset.seq)")
    return [int(v) for v in values]


async def record_states(page: Page) -> None:
    """Collect every state the client goes through into window.__states (for assertions)."""
    await page.evaluate(
        """() => {
          window.__states = [];
          window.jetsockDemo.client.on("state", (state, info) => window.__states.push({state, info, at: Date.now()}));
        }"""
    )


async def states(page: Page) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = await page.evaluate("() => window.__states")
    return result
