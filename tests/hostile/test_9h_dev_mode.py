"""Class 9h: a web page (or a local process) going after `make run`'s development edge.

A `jetsock serve --dev` of this class's own, on its embedded NATS, as `make
run` starts it. Foreign and look-alike Origins are refused with 403 before
the upgrade (only the edge's own origin, http://localhost:* and
http://127.0.0.1:* pass); /dev/token refuses nonsense ttls and subjects with
400, refuses Host names a DNS rebinding could bring (403), and never mints an
admin token whatever the query says; tokens signed with the secret dev mode
used to ship in its source (admin ones included) open nothing. Afterwards the
edge still serves its own pages' clients.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import jwt
import pytest
import pytest_asyncio

from core.auth import make_token
from tests.conftest import connect
from tests.edge.devserver import ServeProcess
from tests.hostile.conftest import Cases
from tests.hostile.rawws import RawWS

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.hostile("dev mode from a foreign page")]

OLD_WELL_KNOWN_SECRET = "jetsock-development-secret-not-for-production"

FOREIGN_ORIGINS = [
    "https://evil.example",
    "http://evil.example",
    "null",
    "file://",
    "http://localhost.evil.example",
    "http://localhost.evil.example:8080",
    "http://127.0.0.1.evil.example",
    "http://127.0.0.1.nip.io:8080",
    "http://localhost:8080@evil.example",
    "http://localhost:8080.evil.example",
    "http://localhost:",
    "http://localhost:0",
    "http://localhost:65536",
    "http://localhost:99999999999999999999",
    "http://localhost:-1",
    "http://localhost:08080",
    "http://localhost:80 80",
    "http://localhost:8080/path",
    "https://localhost:8080",
    "ws://localhost:8080",
    "http://LOCALHOST:8080",
    "http://127.0.0.2:8080",
    "http://0.0.0.0:8080",
    "http://[::1]:8080",
    "http://evil.localhost:8080",
    "http://127.1:8080",
    "http://2130706433:8080",
    "http://localhost%2eevil.example",
    "*",
    "self",
    "",
    "http://localhost:8080, https://evil.example",
]
BAD_TTLS = ["nan", "NaN", "+nan", "inf", "Infinity", "-inf", "1e309", "-0", "0", "0.0", "-1", "0.9", "604801", "1e6"]
BAD_TTLS += ["9" * 400, "", " ", "0x10", "1/0", "1,5", "one"]
GOOD_TTLS = ["1", "60", "1e3", "604800"]
BAD_SUBS = ["", "a.b", "a*", ">", "a b", "x" * 200, "\u00e9", "../x", "a\x00b", "{sub}", "a%2eb"]
REBINDING_HOSTS = ["evil.example", "evil.example:{port}", "127.0.0.1.nip.io:{port}", "localhost.evil.example:{port}"]
REBINDING_HOSTS += ["2130706433:{port}", "0x7f000001:{port}", "attacker.localhost.evil:{port}", "ex\u00e4mple:{port}"]
LOCAL_HOSTS = ["localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "app.localhost:{port}", "10.1.2.3:{port}"]


@pytest_asyncio.fixture(loop_scope="session")
async def dev_edge(tmp_path: Path) -> AsyncIterator[ServeProcess]:
    edge = ServeProcess(tmp_path / "dev-edge", env={"JETSOCK_LOG_LEVEL": "warning"})
    await edge.start()
    try:
        yield edge
    finally:
        await edge.stop()


async def upgrade(edge: ServeProcess, origin: str | None) -> int:
    headers = (("Origin", origin),) if origin is not None else ()
    ws = await RawWS.open(edge.port, ("jetsock.v1", "bearer." + edge.token), headers=headers)
    try:
        if ws.upgraded:
            welcome = await ws.read_frame()
            assert welcome is not None and json.loads(welcome.payload)["type"] == "welcome", welcome
        return ws.status
    finally:
        ws.abort()


async def test_foreign_origins_are_refused_before_the_upgrade(dev_edge: ServeProcess, cases: Cases) -> None:
    failures = []
    for origin in FOREIGN_ORIGINS:
        status = await upgrade(dev_edge, origin)
        cases.add()
        if status != 403:
            failures.append(f"Origin {origin!r}: HTTP {status}")
    own = [f"http://127.0.0.1:{dev_edge.port}", f"http://localhost:{dev_edge.port}", "http://localhost:3000"]
    for allowed in [*own, "http://127.0.0.1:5173", None]:
        status = await upgrade(dev_edge, allowed)
        cases.add()
        if status != 101:
            failures.append(f"Origin {allowed!r} (allowed): HTTP {status}")
    assert not failures, "\n".join(failures)


async def test_dev_token_refuses_nonsense_and_never_mints_admin(dev_edge: ServeProcess, cases: Cases) -> None:
    failures = []
    async with aiohttp.ClientSession() as http:

        async def get(query: str, host: str | None = None) -> tuple[int, str]:
            headers = {"Host": host.format(port=dev_edge.port)} if host is not None else {}
            async with http.get(f"{dev_edge.http}/dev/token?{query}", headers=headers) as r:
                cases.add()
                return r.status, await r.text()

        for ttl in BAD_TTLS:
            status, text = await get(f"sub=alice&ttl={quote(ttl)}")
            if status != 400 or "ttl" not in text:
                failures.append(f"ttl={ttl[:30]!r}: HTTP {status} {text[:100]}")
        for ttl in GOOD_TTLS:
            status, text = await get(f"sub=alice&ttl={ttl}")
            if status != 200:
                failures.append(f"ttl={ttl!r}: HTTP {status} {text[:100]}")
        for sub in BAD_SUBS:
            status, text = await get(f"sub={quote(sub)}")
            if status != 400:
                failures.append(f"sub={sub[:30]!r}: HTTP {status} {text[:100]}")
        for host in REBINDING_HOSTS:
            status, text = await get("sub=alice", host)
            if status != 403:
                failures.append(f"Host {host!r}: HTTP {status} {text[:100]}")
        for host in LOCAL_HOSTS:
            status, text = await get("sub=alice", host)
            if status != 200:
                failures.append(f"Host {host!r} (local): HTTP {status} {text[:100]}")
        # Claims asked for in the query are not claims.
        status, text = await get("sub=admin&admin=true&rooms=%3E&exp=99999999999&ttl=60")
        token = json.loads(text)["token"]
        claims = jwt.decode(token, dev_edge.secret, algorithms=["HS256"])
        if "admin" in claims or claims["exp"] - claims["iat"] != 60:
            failures.append(f"minted claims {claims}")
        disconnect = f"{dev_edge.http}/v1/subjects/dev-user/disconnect"
        for tok, expected in ((token, 403), (dev_edge.token, 403)):
            async with http.post(disconnect, headers={"Authorization": f"Bearer {tok}"}) as r:
                cases.add()
                if r.status != expected:
                    failures.append(f"operator endpoint with a dev token: HTTP {r.status}")
    assert not failures, "\n".join(failures)


async def test_the_old_well_known_secret_opens_nothing(dev_edge: ServeProcess, cases: Cases) -> None:
    forged = make_token(OLD_WELL_KNOWN_SECRET, "mallory", join=[">"], publish=[">"], admin=True)
    ws = await RawWS.open(dev_edge.port, ("jetsock.v1", "bearer." + forged))
    try:
        code, _ = await ws.until_close(10)
    finally:
        ws.abort()
    cases.add()
    assert code == 4501
    async with aiohttp.ClientSession() as http:
        auth = {"Authorization": f"Bearer {forged}"}
        async with http.post(f"{dev_edge.http}/v1/rooms/chat.lobby/messages", json={"x": 1}, headers=auth) as r:
            assert r.status == 401
        async with http.post(f"{dev_edge.http}/v1/subjects/dev-user/disconnect", headers=auth) as r:
            assert r.status == 401
        cases.add(2)
    # And the edge still serves its own: the banner's token joins and gets what is published.
    client = await connect(dev_edge.url, tok=dev_edge.token)
    try:
        assert (await client.request(type="join", room="chat.lobby"))["type"] == "joined"
        ack = await client.request(type="publish", room="chat.lobby", data={"still": "works"})
        assert ack["type"] in ("ack", "msg"), ack
        await asyncio.sleep(0)
    finally:
        await client.close()
