"""Development mode (`make run`) is convenient and safe: a secret of its own per run, local origins only,
/dev/token refusing nonsense (PROTOCOL.md 9.10, SECURITY.md)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from core.auth import make_token
from tests.conftest import connect
from tests.edge.devserver import JETSOCK, ServeProcess

OLD_WELL_KNOWN_SECRET = "jetsock-development-secret-not-for-production"
"""What dev mode signed with before: in the source, so anyone could mint tokens (admin ones too)."""

Start = Callable[..., Coroutine[Any, Any, ServeProcess]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Start]:
    started: list[ServeProcess] = []

    async def start(**kw: Any) -> ServeProcess:
        process = ServeProcess(tmp_path / f"run-{len(started)}", **kw)
        started.append(process)
        return await process.start()

    yield start
    for process in started:
        await process.stop()


async def upgrade_status(url: str, origin: str, token: str) -> int:
    """The HTTP status of a WebSocket upgrade sent with this Origin (101 when it is accepted)."""
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(url, protocols=("jetsock.v1", "bearer." + token), origin=origin)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        welcome = await ws.receive_json()
        assert welcome["type"] == "welcome", welcome
        await ws.close()
        return 101


async def test_foreign_origins_are_refused_local_ones_pass(serve: Start) -> None:
    edge = await serve()
    for origin in ("https://evil.example", "http://localhost.evil.example", "http://localhost:80@evil.example", "null"):
        assert await upgrade_status(edge.url, origin, edge.token) == 403, origin
    for origin in (f"http://localhost:{edge.port}", f"http://127.0.0.1:{edge.port}", "http://localhost:5173"):
        assert await upgrade_status(edge.url, origin, edge.token) == 101, origin
    # The banner's browser-console example runs on the demo page, the edge's own origin.
    assert f'new WebSocket("ws://127.0.0.1:{edge.port}/ws"' in edge.output()


async def test_two_runs_print_different_secrets_and_each_token_verifies_with_its_own(serve: Start) -> None:
    first, second = await asyncio.gather(serve(), serve())
    assert first.secret != second.secret and len(first.secret) >= 32
    for run, other in ((first, second), (second, first)):
        claims = jwt.decode(run.token, run.secret, algorithms=["HS256"])
        assert claims["sub"] == "dev-user" and "admin" not in claims
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(run.token, other.secret, algorithms=["HS256"])
        client = await connect(run.url, tok=run.token)
        await client.close()
    # The secret that used to be in the source opens nothing now, an admin token least of all.
    forged = make_token(OLD_WELL_KNOWN_SECRET, "mallory", join=[">"], publish=[">"], admin=True)
    async with aiohttp.ClientSession() as http:
        async with http.get(first.http + "/admin/api/state", headers={"Authorization": f"Bearer {forged}"}) as r:
            assert r.status == 404  # /admin is off in dev mode ...
        disconnect = first.http + "/v1/subjects/dev-user/disconnect"
        async with http.post(disconnect, headers={"Authorization": f"Bearer {forged}"}) as r:
            assert r.status == 401  # ... and the operator endpoint does not take the old key


@pytest.mark.parametrize("ttl", ["nan", "NaN", "inf", "-inf", "-1", "0", "0.5", "1e400", "604801", "9" * 400, ""])
def test_dev_token_ttl_must_be_a_number_of_seconds_in_range(ttl: str) -> None:
    from edge.pages import dev_token_ttl

    assert dev_token_ttl(ttl) is None


async def test_dev_token_answers_400_for_nonsense_ttls_and_only_on_local_hosts(serve: Start) -> None:
    edge = await serve()
    async with aiohttp.ClientSession() as http:
        for ttl in ("nan", "inf", "-1", "0", "1e400", "99999999"):
            async with http.get(f"{edge.http}/dev/token?sub=alice&ttl={ttl}") as r:
                assert r.status == 400, (ttl, r.status)
                assert "ttl must be a number of seconds" in await r.text()
        async with http.get(f"{edge.http}/dev/token?sub=alice&ttl=60") as r:
            assert r.status == 200
            claims = jwt.decode((await r.json())["token"], edge.secret, algorithms=["HS256"])
            assert claims["exp"] - claims["iat"] == 60
        # A page on a DNS name rebound to 127.0.0.1 is the edge's "own" origin: it gets no token.
        for host, status in (("evil.example:80", 403), (f"localhost:{edge.port}", 200), ("[::1]:1", 200)):
            async with http.get(f"{edge.http}/dev/token?sub=alice", headers={"Host": host}) as r:
                assert r.status == status, (host, r.status)


async def test_a_secret_of_the_developers_own_is_not_printed(serve: Start) -> None:
    mine = "a-secret-of-my-own-" + "x" * 24
    edge = await serve(env={"JETSOCK_JWT_SECRET": mine})
    assert mine not in edge.output() and edge.secret == ""
    assert "the JETSOCK_JWT_SECRET you set (not printed)" in edge.output()
    assert jwt.decode(edge.token, mine, algorithms=["HS256"])["sub"] == "dev-user"


def test_a_malformed_allowed_origins_entry_stops_serve_with_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [JETSOCK, "serve", "--dev", "--allowed-origins", "https://chat.example.com/app"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "JETSOCK_DATA_DIR": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "'https://chat.example.com/app' is not an origin" in result.stderr
