"""What browsers load from an edge, dev tokens, and the operator's disconnect endpoint."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import jwt

from tests.conftest import SECRET, Edge, connect, token


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


async def test_client_js_always_served_demo_and_dev_token_only_when_enabled(make_edge: Any) -> None:
    plain = await make_edge()
    status, kind, body = await get(plain.http + "/jetsock.js")
    assert status == 200 and kind == "text/javascript" and "export" in body
    assert 'import("./jetsock-stream.js")' in body  # the fallback, beside it
    status, kind, body = await get(plain.http + "/jetsock-stream.js")
    assert status == 200 and kind == "text/javascript" and "export default class StreamSocket" in body
    assert (await get(plain.http + "/"))[0] == 404
    assert (await get(plain.http + "/dev/token?sub=a"))[0] == 404
    demo = await make_edge(demo=True)
    status, kind, body = await get(demo.http + "/")
    assert status == 200 and kind == "text/html" and 'src="/demo.js"' in body
    assert (await get(demo.http + "/demo.js"))[0] == 200 and (await get(demo.http + "/demo.css"))[0] == 200
    assert (await get(demo.http + "/dev/token?sub=a"))[0] == 404  # demo without dev: paste a token
    dev = await make_edge(dev=True)
    status, _, body = await get(dev.http + "/dev/token?sub=carol&ttl=60")
    assert status == 200
    claims = jwt.decode(json.loads(body)["token"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == "carol" and claims["exp"] - claims["iat"] == 60
    assert (await get(dev.http + "/dev/token?sub=a.b"))[0] == 400
    assert (await get(dev.http + "/dev/token?sub=a&ttl=soon"))[0] == 400


async def test_operator_disconnects_a_subject(edge: Edge) -> None:
    victim, other = await connect(edge.url, "victim"), await connect(edge.url, "other")
    url = f"{edge.http}/v1/subjects/victim/disconnect"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, headers={"Authorization": f"Bearer {token('ops')}"}) as r:
            assert r.status == 403  # no admin claim
        async with http.post(url) as r:
            assert r.status == 401
        admin = {"Authorization": f"Bearer {token('ops', admin=True)}"}
        async with http.post(url, headers=admin, json={"code": 1000}) as r:
            assert r.status == 400
        async with http.post(url, headers=admin) as r:
            assert r.status == 200 and await r.json() == {"closed": 1}
    code, reason = await victim.closed()
    assert code == 4503 and "operator" in reason
    assert (await other.request(type="ping"))["type"] == "pong"
    await victim.close()
    await other.close()
