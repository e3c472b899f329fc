"""The browser client and the demo in real Chromium: chat, crash and resume, tokens, terminal
closes, network loss, a page coming back to the foreground, and the fallback to the HTTP stream
behind a proxy that refuses WebSocket."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import nats
from playwright.async_api import BrowserContext

from core.embedded import EmbeddedNats
from tests.browser.conftest import open_demo, record_states, seqs_on, states
from tests.clients.noupgrade_proxy import NoUpgradeProxy
from tests.conftest import token
from tests.edge.checker import stored_seqs

DOCS = Path(__file__).parents[2] / "docs"


async def wait_for(condition: Any, timeout: float = 20.0, every: float = 0.1) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(every)


async def test_two_pages_chat_through_the_demo(context: BrowserContext, edge_process: Any) -> None:
    edge = await edge_process()
    alice = await open_demo(context, edge, "alice")
    bob = await open_demo(context, edge, "bob")
    await alice.fill("#text", "hello bob")
    await alice.press("#text", "Enter")
    await bob.wait_for_selector("#messages li:has-text('hello bob')")
    await bob.fill("#text", "hi alice")
    await bob.click("#send button")
    await alice.wait_for_selector("#messages li:has-text('hi alice')")
    for page in (alice, bob):
        texts = await page.eval_on_selector_all("#messages li .text", "els => els.map(e => e.textContent)")
        assert texts == ["hello bob", "hi alice"]
    assert await seqs_on(alice) == await seqs_on(bob)
    assert await alice.text_content("#messages li:has-text('hi alice') .from") == "bob"


async def test_edge_killed_and_restarted_while_a_backend_publishes_200(
    context: BrowserContext, edge_process: Any, nats_for_browser: EmbeddedNats
) -> None:
    edge = await edge_process()
    page = await open_demo(context, edge, "watcher", room="crash.room")
    await record_states(page)
    nc = await nats.connect(nats_for_browser.url)
    js = nc.jetstream()
    acked: list[int] = []

    async def backend() -> None:
        for i in range(200):
            acked.append((await js.publish("rooms.crash.room", b'{"text": "m%d"}' % i)).seq)
            await asyncio.sleep(0.01)

    publishing = asyncio.create_task(backend())
    await wait_for(lambda: asyncio.sleep(0, len(acked) >= 40))
    edge.kill(signal.SIGKILL)
    # While the edge is down the client cycles "Reconnecting in N s…" and "Connecting…";
    # catch the former (what users see most of the time) for the screenshot.
    await page.wait_for_function(
        "() => document.getElementById('state').textContent.startsWith('Reconnecting')", timeout=15000
    )
    DOCS.mkdir(exist_ok=True)
    await page.screenshot(path=str(DOCS / "demo.png"))
    await asyncio.sleep(1.0)  # messages stored while no edge runs
    await edge.start()
    await publishing
    await nc.close()
    stored = await stored_seqs(nats_for_browser.url, "crash.room")
    assert set(acked) == set(stored)
    await wait_for(lambda: seqs_on(page), timeout=30)

    async def all_there() -> bool:
        return len(await seqs_on(page)) >= 200

    await wait_for(all_there, timeout=40)
    assert await seqs_on(page) == stored  # all 200, in order, none twice
    assert any(s["state"] == "reconnecting" for s in await states(page))


async def test_token_about_to_expire_is_refreshed_without_a_reconnect(
    context: BrowserContext, edge_process: Any
) -> None:
    # refresh_before 30 s and a 33 s token: `expiring` comes 3 s after connecting.
    edge = await edge_process()
    page = await open_demo(context, edge, "refresher", query="&ttl=33")
    await record_states(page)
    await page.evaluate(
        """() => {
          window.__frames = [];
          const ws = window.jetsockDemo.client;
          const original = WebSocket.prototype.send;
          WebSocket.prototype.send = function (data) { window.__frames.push(JSON.parse(data).type); return original.call(this, data); };
        }"""
    )
    await wait_for(lambda: page.evaluate("() => window.__frames.includes('refresh')"), timeout=15)
    await asyncio.sleep(2)
    assert await states(page) == []  # no reconnect: the session went on
    await page.fill("#text", "still here")
    await page.press("#text", "Enter")
    await page.wait_for_selector("#messages li:has-text('still here')")


async def test_an_expired_token_leads_to_a_fresh_token_and_a_resume(
    context: BrowserContext, edge_process: Any, nats_for_browser: EmbeddedNats
) -> None:
    # With refresh_before 0 the server closes with 4001 right at exp, before a refresh can land.
    edge = await edge_process(refresh_before="0")
    page = await open_demo(context, edge, "expiring", room="exp.room", query="&ttl=4")
    await record_states(page)
    nc = await nats.connect(nats_for_browser.url)
    js = nc.jetstream()
    first = (await js.publish("rooms.exp.room", b'{"text": "before"}')).seq
    await page.wait_for_selector(f'#messages li[data-seq="{first}"]')

    async def saw_4001() -> bool:
        return any(s["state"] == "reconnecting" and s["info"].get("code") == 4001 for s in await states(page))

    await wait_for(saw_4001, timeout=15)
    during = (await js.publish("rooms.exp.room", b'{"text": "while away"}')).seq
    await page.wait_for_selector('#state[data-state="connected"]', timeout=15000)
    await page.wait_for_selector(f'#messages li[data-seq="{during}"]', timeout=15000)
    assert await seqs_on(page) == [first, during]
    await nc.close()


async def test_a_terminal_close_does_not_reconnect(context: BrowserContext, edge_process: Any) -> None:
    edge = await edge_process()
    page = await open_demo(context, edge, "banned")
    await record_states(page)
    assert (await edge.admin("/v1/subjects/banned/disconnect"))["closed"] == 1
    await page.wait_for_selector('#state[data-state="closed"]', timeout=10000)
    assert "4503" in (await page.text_content("#state") or "")
    await asyncio.sleep(3)
    assert [s["state"] for s in await states(page)] == ["closed"]


async def test_offline_then_online_reconnects_at_once(context: BrowserContext, edge_process: Any) -> None:
    edge = await edge_process()
    page = await open_demo(context, edge, "traveller")
    await record_states(page)
    await context.set_offline(True)
    # The network is gone and so is the socket (the server drops it, as a dead link would).
    await edge.admin("/v1/subjects/traveller/disconnect", code=4000, reason="link lost")

    async def offline_shown() -> bool:
        return any(s["state"] == "reconnecting" and s["info"].get("offline") for s in await states(page))

    await wait_for(offline_shown, timeout=10)
    await asyncio.sleep(3)  # no attempts are spent while offline
    assert not any(s["state"] == "connecting" for s in await states(page))
    await context.set_offline(False)
    await page.wait_for_selector('#state[data-state="connected"]', timeout=5000)


async def test_a_page_coming_back_to_the_foreground_reconnects_at_once(
    context: BrowserContext, edge_process: Any
) -> None:
    edge = await edge_process()
    page = await open_demo(context, edge, "mobile")
    await record_states(page)
    await page.evaluate(
        """() => {
          window.__visibility = "visible";
          Object.defineProperty(document, "visibilityState", { get: () => window.__visibility, configurable: true });
          Object.defineProperty(document, "hidden", { get: () => window.__visibility === "hidden", configurable: true });
        }"""
    )
    # The app goes to the background and the edge goes away for a while: attempts back off.
    await page.evaluate(
        '() => { window.__visibility = "hidden"; document.dispatchEvent(new Event("visibilitychange")); }'
    )
    edge.kill(signal.SIGKILL)

    async def long_wait_scheduled() -> bool:
        return any(s["state"] == "reconnecting" and (s["info"].get("delayMs") or 0) > 2500 for s in await states(page))

    await wait_for(long_wait_scheduled, timeout=60)
    await edge.start()
    before = len(await states(page))
    await page.evaluate(
        '() => { window.__visibility = "visible"; document.dispatchEvent(new Event("visibilitychange")); }'
    )
    await page.wait_for_selector('#state[data-state="connected"]', timeout=2500)
    after = await states(page)
    assert [s["state"] for s in after[before:]][:2] == ["connecting", "connected"]


async def test_the_demo_shows_the_room_lifecycle_joining_joined_recovered_and_forbidden(
    context: BrowserContext, edge_process: Any
) -> None:
    edge = await edge_process()
    page = await open_demo(context, edge, "carol", room="life.room")
    await page.wait_for_selector('#room-state[data-state="joined"]', timeout=15000)
    assert await page.text_content("#room-state") == "joined"
    await page.evaluate(
        """() => {
          window.__roomStates = [];
          window.jetsockDemo.room.on("state", (state, info) => window.__roomStates.push(state));
        }"""
    )
    await page.fill("#text", "before the crash")
    await page.press("#text", "Enter")
    await page.wait_for_selector("#messages li:has-text('before the crash')")
    edge.kill(signal.SIGKILL)
    await page.wait_for_selector('#room-state[data-state="joining"]', timeout=15000)
    assert await page.text_content("#room-state") == "joining…"
    await edge.start()
    await page.wait_for_selector('#room-state[data-state="joined"]', timeout=30000)
    assert await page.text_content("#room-state") == "joined (recovered)"
    assert await page.evaluate("() => window.__roomStates") == ["joining", "joined"]

    # A token whose rights do not cover the room: the join is refused and the page says why.
    other = await context.new_page()
    await other.goto(edge.http + "/")
    restricted = token("dave", join=["chat.*"], publish=["chat.*"])
    await other.fill("#name", "dave")
    await other.fill("#room", "secret.room")
    await other.evaluate("(t) => { document.getElementById('token').value = t; }", restricted)
    await other.click("#join button")
    await other.wait_for_selector('#room-state[data-state="left"]', timeout=15000)
    assert await other.text_content("#room-state") == "left: forbidden"
    await other.wait_for_selector("#messages li.notice:has-text('cannot join secret.room: forbidden')")


async def test_the_demo_opens_with_the_newest_50_pages_back_to_the_beginning_and_survives_a_crash(
    context: BrowserContext, edge_process: Any, nats_for_browser: EmbeddedNats
) -> None:
    edge = await edge_process()  # it made the stream: publish to it straight through NATS
    nc = await nats.connect(nats_for_browser.url)
    js = nc.jetstream()
    try:
        first = [(await js.publish("rooms.hist.room", b'{"text": "m%d"}' % i)).seq for i in range(160)]
        page = await open_demo(context, edge, "reader", room="hist.room")

        async def shown(n: int) -> bool:
            return len(await seqs_on(page)) >= n

        await wait_for(lambda: shown(50))
        await asyncio.sleep(0.3)  # and no more than those
        assert await seqs_on(page) == first[-50:]
        older = page.locator("#older")
        assert (await older.text_content(), await older.is_enabled()) == ("Load older", True)
        for want in (100, 150):
            await older.click()
            await wait_for(lambda want=want: shown(want))
            assert await seqs_on(page) == first[-want:]
            assert await older.text_content() == "Load older"
        await older.click()
        await wait_for(lambda: shown(160))
        await page.wait_for_selector('#older[data-state="beginning"]', timeout=5000)
        assert await seqs_on(page) == first
        assert (await older.text_content(), await older.is_disabled()) == ("Beginning of the room", True)

        # A crash, messages while no edge runs, a restart, more messages: every stored one, once, in order.
        edge.kill(signal.SIGKILL)
        await page.wait_for_selector('#room-state[data-state="joining"]', timeout=15000)
        during = [(await js.publish("rooms.hist.room", b'{"text": "d%d"}' % i)).seq for i in range(10)]
        await edge.start()
        await page.wait_for_selector('#room-state[data-state="joined"]', timeout=30000)
        after = [(await js.publish("rooms.hist.room", b'{"text": "a%d"}' % i)).seq for i in range(10)]
        stored = await stored_seqs(nats_for_browser.url, "hist.room")
        assert stored == first + during + after
        await wait_for(lambda: shown(len(stored)), timeout=30)
        await asyncio.sleep(0.3)
        assert await seqs_on(page) == stored
        assert await page.text_content("#room-state") == "joined (recovered)"
    finally:
        await nc.close()


async def test_a_resume_that_fails_starts_the_demo_over_with_the_newest_50(
    context: BrowserContext, edge_process: Any, nats_for_browser: EmbeddedNats
) -> None:
    edge = await edge_process(max_replay="20")  # more missed than that is not recovered
    nc = await nats.connect(nats_for_browser.url)
    js = nc.jetstream()
    try:
        first = [(await js.publish("rooms.gap.room", b'{"text": "m%d"}' % i)).seq for i in range(60)]
        page = await open_demo(context, edge, "gapped", room="gap.room")

        async def shown(seqs: list[int]) -> bool:
            return await seqs_on(page) == seqs

        await wait_for(lambda: shown(first[-50:]))
        edge.kill(signal.SIGKILL)
        await page.wait_for_selector('#room-state[data-state="joining"]', timeout=15000)
        missed = [(await js.publish("rooms.gap.room", b'{"text": "d%d"}' % i)).seq for i in range(30)]
        await edge.start()
        stored = first + missed
        # The list starts over: the reset's notice, then the room's newest 50.
        await wait_for(lambda: shown(stored[-50:]), timeout=30)
        notices = await page.eval_on_selector_all("#messages li.notice", "els => els.map(e => e.textContent)")
        assert notices == [f"History reset (not_recovered); showing the newest messages from #{stored[-1]} on"]
        assert await page.text_content("#room-state") == "joined"
        await page.click("#older")
        await wait_for(lambda: shown(stored))
        await page.wait_for_selector('#older[data-state="beginning"]', timeout=5000)
    finally:
        await nc.close()


async def test_the_demo_lists_who_is_online_with_their_tabs_and_updates_when_tabs_close(
    context: BrowserContext, edge_process: Any
) -> None:
    # Dev mode keeps presence for every room and /dev/token grants rooms.presence with
    # info {"name": sub}: nothing to set for the demo's "Online" list.
    edge = await edge_process()
    first = await open_demo(context, edge, "alice", room="chat.online")
    second = await open_demo(context, edge, "alice", room="chat.online")
    bob = await open_demo(context, edge, "bob", room="chat.online")

    async def listed(page: Any) -> dict[str, str]:
        rows: list[list[str]] = await page.eval_on_selector_all(
            "#members li", "els => els.map(e => [e.dataset.sub, e.querySelector('.tabs').textContent])"
        )
        return dict(rows)

    both = {"alice": "2 tabs", "bob": "1 tab"}
    for page in (first, second, bob):
        await page.wait_for_selector('#members li[data-sub="alice"][data-tabs="2"]', timeout=15000)
        await page.wait_for_selector('#members li[data-sub="bob"][data-tabs="1"]', timeout=15000)
        assert await listed(page) == both
        assert await page.text_content("#online-count") == "(2)"
        names = await page.eval_on_selector_all("#members li .name", "els => els.map(e => e.textContent)")
        assert names == ["alice", "bob"]  # info.name from the dev token
    assert await bob.get_attribute('#members li[data-sub="bob"]', "class") == "me"

    # One of alice's tabs closes: she is still online, with one tab.
    await second.close()
    await bob.wait_for_selector('#members li[data-sub="alice"][data-tabs="1"]', timeout=15000)
    await first.wait_for_selector('#members li[data-sub="alice"][data-tabs="1"]', timeout=15000)
    assert await listed(bob) == {"alice": "1 tab", "bob": "1 tab"}
    # The other one: she is gone from bob's list.
    await first.close()
    await bob.wait_for_selector('#members li[data-sub="alice"]', state="detached", timeout=15000)
    assert await listed(bob) == {"bob": "1 tab"}
    assert await bob.text_content("#online-count") == "(1)"


async def test_a_4kb_message_through_the_demo_arrives_intact_compressed(
    context: BrowserContext, edge_process: Any
) -> None:
    """Chromium offers permessage-deflate by itself: the edge takes it (the handshake's answer, read
    over CDP), compresses the 4 KB room message once for both pages (its metrics), and the page
    that did not send it gets the payload intact (inflated by the browser)."""
    edge = await edge_process()
    answers: dict[str, list[str | None]] = {}

    async def page_of(name: str) -> Any:
        page = await context.new_page()
        cdp = await context.new_cdp_session(page)
        await cdp.send("Network.enable")
        seen = answers.setdefault(name, [])
        cdp.on(
            "Network.webSocketHandshakeResponseReceived",
            lambda event: seen.append(
                {k.lower(): v for k, v in event["response"]["headers"].items()}.get("sec-websocket-extensions")
            ),
        )
        await page.goto(f"{edge.http}/?name={name}&room=deflate.room")
        await page.wait_for_selector('#state[data-state="connected"]', timeout=15000)
        return page

    async def deflate_counters() -> dict[str, float]:
        async with aiohttp.ClientSession() as http, http.get(edge.http + "/metrics") as response:
            text = await response.text()
        found = {}
        for line in text.splitlines():
            for name in ("jetsock_deflate_messages_total", "jetsock_deflate_raw_bytes_total"):
                if line.startswith(name):
                    found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return found

    alice = await page_of("alice")
    bob = await page_of("bob")
    accepted = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    assert answers == {"alice": [accepted], "bob": [accepted]}
    await bob.evaluate(
        """() => {
          window.__got = [];
          window.jetsockDemo.room.on("message", (msg) => window.__got.push(msg.data));
        }"""
    )
    before = await deflate_counters()
    words = "the quick brown fox jumps over the lazy dog, then naps in the sun: é ü 日本 🦊. "
    data = {
        "text": (words * 60)[:4000],
        "meta": {"thread": "deflate.room/42", "tags": [f"tag-{i}" for i in range(20)], "n": 4096},
    }
    await alice.evaluate("(data) => window.jetsockDemo.room.publish(data)", data)
    await bob.wait_for_function("() => window.__got.length === 1", timeout=15000)
    assert await bob.evaluate("() => window.__got[0]") == data
    await bob.wait_for_selector("#messages li .text:has-text('then naps in the sun')")
    assert await bob.text_content("#messages li .text") == data["text"]
    after = await deflate_counters()
    # Once for the node, though two pages got it; 4,000 characters and more (UTF-8, JSON) compressed.
    assert after["jetsock_deflate_messages_total"] - before["jetsock_deflate_messages_total"] == 1
    assert after["jetsock_deflate_raw_bytes_total"] - before["jetsock_deflate_raw_bytes_total"] > 4000


async def test_behind_a_proxy_that_refuses_websocket_the_demo_falls_back_to_the_stream_and_loses_nothing(
    context: BrowserContext, edge_process: Any, nats_for_browser: EmbeddedNats
) -> None:
    """Two edges behind a proxy that refuses every `Upgrade: websocket` and sends each other request to
    the next edge (tests/clients/noupgrade_proxy.py): the page falls back to the HTTP stream by itself
    and says so, gets 200 backend messages in order, publishes, and goes through a SIGKILL and a
    restart of the edge holding its session with nothing lost or doubled. Without the proxy the same
    page stays on WebSocket."""
    edges = {name: await edge_process(node=name) for name in ("edge-a", "edge-b")}
    direct = await open_demo(context, edges["edge-a"], "direct", room="wall.direct")
    assert await direct.get_attribute("#state", "data-transport") == "websocket"
    assert await direct.text_content("#state") == "Connected"
    assert await direct.evaluate("() => window.jetsockDemo.client.transport") == "websocket"
    await direct.close()

    proxy = await NoUpgradeProxy([edge.http for edge in edges.values()]).start()
    nc = await nats.connect(nats_for_browser.url)
    try:
        page = await open_demo(context, proxy, "walled", room="wall.room")
        assert await page.get_attribute("#state", "data-transport") == "stream"
        assert await page.text_content("#state") == "Connected via HTTP stream"
        assert proxy.refused == 2  # two refused upgrades, then the stream
        await page.wait_for_selector('#room-state[data-state="joined"]', timeout=15000)
        await record_states(page)
        js = nc.jetstream()
        acked: list[int] = []

        async def backend() -> None:
            for i in range(200):
                acked.append((await js.publish("rooms.wall.room", b'{"text": "m%d"}' % i)).seq)
                await asyncio.sleep(0.01)

        publishing = asyncio.create_task(backend())
        await wait_for(lambda: asyncio.sleep(0, len(acked) >= 40))
        holder = edges[await page.evaluate("() => window.jetsockDemo.client.node")]
        holder.kill(signal.SIGKILL)
        # The stream through the proxy broke with it: a new one, on the edge still up, resumes.
        await page.wait_for_function(
            "(node) => window.__states.some(s => s.state === 'connected' && s.info.node !== node)",
            arg=holder.settings["node"],
            timeout=20000,
        )
        await page.fill("#text", "from behind the wall")
        await page.press("#text", "Enter")
        await page.wait_for_selector("#messages li:has-text('from behind the wall')", timeout=15000)
        await holder.start()
        await publishing
        stored = await stored_seqs(nats_for_browser.url, "wall.room")
        assert set(acked) <= set(stored) and len(stored) == 201

        async def all_there() -> bool:
            return len(await seqs_on(page)) >= len(stored)

        await wait_for(all_there, timeout=40)
        await asyncio.sleep(0.3)
        assert await seqs_on(page) == stored  # every one, in order, none twice
        seen = await states(page)
        assert any(s["state"] == "reconnecting" for s in seen)
        assert {s["info"]["transport"] for s in seen if s["state"] == "connected"} == {"stream"}
        assert await page.text_content("#state") == "Connected via HTTP stream"
        assert proxy.refused == 2, "no WebSocket again within 5 minutes"
        assert len(proxy.forwarded) == 2, "the page's requests went to both edges"
    finally:
        await nc.close()
        await proxy.stop()
