"""Section 3 in full: key sources, algorithm rules, claims, {sub} rights, limits, and secrecy of tokens."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from core.embedded import free_port
from tests.conftest import SECRET, Edge, connect, open_ws, token


def _keypair(kind: str) -> tuple[Any, str]:
    """A private key and its public key as PEM."""
    private: Any
    if kind == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, pem


def signed(key: Any, algorithm: str, headers: dict[str, Any] | None = None, **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"sub": "alice", "exp": now + 600, "rooms": {"join": [">"], "publish": [">"]}}
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm=algorithm, headers=headers)


async def outcome(edge: Edge, tok: str, via: str = "bearer") -> tuple[str, Any]:
    """("welcome", frame) or ("close", code) for a connection authenticating with `tok`."""
    if via == "bearer":
        client = await open_ws(edge.url, ("jetsock.v1", "bearer." + tok))
    else:
        client = await open_ws(edge.url)
        await client.send(type="auth", token=tok)
    try:
        msg = await client.ws.receive(timeout=10)
        if msg.type is aiohttp.WSMsgType.TEXT:
            return "welcome", json.loads(msg.data)
        return "close", int(msg.data) if msg.type is aiohttp.WSMsgType.CLOSE else client.ws.close_code
    finally:
        await client.close()


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
async def test_pem_public_key_verifies_its_algorithm_only(make_edge: Any, algorithm: str) -> None:
    private, pem = _keypair(algorithm)
    edge = await make_edge(jwt_secret="", jwt_public_key=pem)
    kind, frame = await outcome(edge, signed(private, algorithm))
    assert kind == "welcome" and frame["type"] == "welcome"
    # HS256 has no key here, whatever the token says.
    assert await outcome(edge, token()) == ("close", 4501)
    # The classic confusion: an HS256 token whose HMAC key is the public key text.
    forged = jwt.api_jws.PyJWS(algorithms=["HS256"])
    forged._algorithms["HS256"].prepare_key = lambda key: key  # type: ignore[method-assign]
    payload = json.dumps({"sub": "mallory", "exp": int(time.time()) + 600, "rooms": {"join": [">"]}}).encode()
    confused = forged.encode(payload, pem.encode(), algorithm="HS256")
    assert await outcome(edge, confused) == ("close", 4501)
    # Another key of the same type does not verify.
    other, _ = _keypair(algorithm)
    assert await outcome(edge, signed(other, algorithm)) == ("close", 4501)


@pytest.mark.parametrize("via", ["bearer", "auth"])
async def test_rejected_tokens(make_edge: Any, via: str) -> None:
    # Below aiohttp's 8 KiB header limit, so the bearer case reaches our own check.
    edge = await make_edge(max_token_bytes=4096)
    now = int(time.time())
    unsigned = jwt.encode({"sub": "a", "exp": now + 60}, None, algorithm="none")
    rsa_key, _ = _keypair("RS256")
    cases = {
        "alg none": unsigned,
        "alg none, signature stripped from a good token": ".".join(token().split(".")[:2]) + ".",
        "HS512": jwt.encode({"sub": "a", "exp": now + 60}, SECRET, algorithm="HS512"),
        "RS256 without a public key configured": signed(rsa_key, "RS256"),
        "other secret": jwt.encode({"sub": "a", "exp": now + 60}, "x" * 40, algorithm="HS256"),
        "expired": signed(SECRET, "HS256", exp=now - 60),
        "not yet valid": signed(SECRET, "HS256", nbf=now + 600),
        "no exp": signed(SECRET, "HS256", exp=None),
        "no sub": signed(SECRET, "HS256", sub=None),
        "rooms not an object": signed(SECRET, "HS256", rooms=["x"]),
        "room pattern invalid": signed(SECRET, "HS256", rooms={"join": ["a..b"]}),
        "over max_token_bytes": signed(SECRET, "HS256", pad="x" * 4000),
        "garbage": "not.a.jwt",
    }
    for name, tok in cases.items():
        assert await outcome(edge, tok, via) == ("close", 4501), name


async def test_leeway_nbf_audience_and_issuer(make_edge: Any) -> None:
    edge = await make_edge(jwt_audience="jetsock", jwt_issuer="https://auth.example", jwt_leeway=5)
    now = int(time.time())
    good = {"aud": "jetsock", "iss": "https://auth.example"}
    assert (await outcome(edge, signed(SECRET, "HS256", **good)))[0] == "welcome"
    assert (await outcome(edge, signed(SECRET, "HS256", exp=now - 2, **good)))[0] == "welcome"  # within leeway
    assert (await outcome(edge, signed(SECRET, "HS256", nbf=now + 2, **good)))[0] == "welcome"  # within leeway
    assert await outcome(edge, signed(SECRET, "HS256", aud="other", iss=good["iss"])) == ("close", 4501)
    assert await outcome(edge, signed(SECRET, "HS256", aud="jetsock", iss="https://evil")) == ("close", 4501)
    assert await outcome(edge, signed(SECRET, "HS256")) == ("close", 4501)  # aud and iss required


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 whose keys and delay the test controls."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.delay = 0.0
        self.hits = 0
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        await asyncio.sleep(self.delay)
        return web.json_response({"keys": self.keys})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/jwks.json", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return f"http://127.0.0.1:{self.port}/jwks.json"

    def publish(self, kid: str, private: Any) -> None:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
        self.keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})


async def test_jwks_keys_rotation_refetch_limit_and_timeout(make_edge: Any) -> None:
    server = JwksServer()
    url = await server.start()
    try:
        k1, _ = _keypair("RS256")
        server.publish("k1", k1)
        edge = await make_edge(jwt_secret="", jwks_url=url, jwks_min_refresh=1.0, jwks_timeout=0.5)
        assert (await outcome(edge, signed(k1, "RS256", {"kid": "k1"})))[0] == "welcome"
        assert server.hits == 1
        # A flood of made-up kids costs at most one fetch per min_refresh interval.
        for i in range(20):
            assert await outcome(edge, signed(k1, "RS256", {"kid": f"made-up-{i}"})) == ("close", 4501)
        assert server.hits <= 2
        # Rotation: k2 appears, k1 goes; after the interval a k2 token triggers one refetch.
        k2, _ = _keypair("RS256")
        server.keys.clear()
        server.publish("k2", k2)
        await asyncio.sleep(1.1)
        assert (await outcome(edge, signed(k2, "RS256", {"kid": "k2"})))[0] == "welcome"
        # k1 left the JWKS: once the set is fetched again, k1 tokens no longer verify.
        assert await outcome(edge, signed(k1, "RS256", {"kid": "k1"})) == ("close", 4501)
        # A JWKS that hangs past jwks_timeout refuses unknown kids quickly, and known ones still work.
        server.delay = 5.0
        await asyncio.sleep(1.1)
        started = time.monotonic()
        assert await outcome(edge, signed(k2, "RS256", {"kid": "k3"})) == ("close", 4501)
        assert time.monotonic() - started < 3
        assert (await outcome(edge, signed(k2, "RS256", {"kid": "k2"})))[0] == "welcome"
        # An HS256 token is refused: no secret is configured, and JWKS keys are never HMAC keys.
        assert await outcome(edge, token()) == ("close", 4501)
    finally:
        assert server.runner is not None
        await server.runner.cleanup()


async def test_sub_placeholder_in_patterns_cannot_widen_a_right(edge: Edge) -> None:
    rights = {"join": ["user.{sub}.>", "lobby"], "publish": ["user.{sub}.inbox"]}
    plain = await connect(edge.url, tok=signed(SECRET, "HS256", sub="42", rooms=rights))
    assert (await plain.request(type="join", room="user.42.inbox"))["type"] == "joined"
    assert (await plain.request(type="join", room="user.43.inbox"))["code"] == "forbidden"
    assert (await plain.request(type="publish", room="user.42.inbox", data=1))["type"] in ("ack", "msg")
    await plain.close()
    for sneaky in ("*", ">", "a.b", "42.>", "", "x y"):
        if not sneaky:
            continue
        client = await connect(edge.url, tok=signed(SECRET, "HS256", sub=sneaky, rooms=rights))
        for room in ("user.42.inbox", "user.a.b.inbox", "user.x.inbox"):
            assert (await client.request(type="join", room=room))["code"] == "forbidden", (sneaky, room)
        assert (await client.request(type="join", room="lobby"))["type"] == "joined"  # other rights stand
        await client.close()


async def test_invalid_refresh_changes_nothing(edge: Edge, backend: Any) -> None:
    client = await connect(edge.url, tok=token(ttl=600, join=["a"]))
    exp = client.welcome["exp"]  # type: ignore[index]
    await client.request(type="join", room="a")
    for bad in ("garbage", token(sub="mallory"), token(ttl=-100)):
        reply = await client.request(type="refresh", token=bad)
        assert reply["type"] == "error"
    ack = await backend.jetstream().publish("rooms.a", b"1")
    assert (await client.expect("msg"))["seq"] == ack.seq  # still a member
    refreshed = await client.request(type="refresh", token=token(ttl=600, join=["a"]))
    assert refreshed["type"] == "refreshed" and refreshed["exp"] >= exp
    await client.close()


async def test_connections_per_sub(make_edge: Any) -> None:
    edge = await make_edge(max_connections_per_sub=2)
    first, second = await connect(edge.url, "same"), await connect(edge.url, "same")
    assert await outcome(edge, token("same")) == ("close", 4029)
    other = await connect(edge.url, "other")  # another subject is not affected
    await second.close()
    async with asyncio.timeout(5):
        while (await outcome(edge, token("same")))[0] != "welcome":
            await asyncio.sleep(0.05)
    for client in (first, other):
        await client.close()


async def test_data_size_and_utf8(make_edge: Any) -> None:
    edge = await make_edge(max_data_bytes=1000)
    client = await connect(edge.url)
    reply = await client.request(type="publish", room="r", data="x" * 1000, ref=1)
    assert reply["code"] == "too_large" and reply["ref"] == 1
    await client.ws._writer.send_frame(b'{"type":"publish","room":"r","data":"\xff","ref":2}', aiohttp.WSMsgType.TEXT)
    reply = await client.recv()
    # Not UTF-8 text, so not read at all: no ref to echo.
    assert reply["type"] == "error" and reply["code"] == "bad_request" and "UTF-8" in reply["message"]
    assert (await client.request(type="publish", room="r", data="x" * 900))["type"] == "ack"
    auth = {"Authorization": f"Bearer {token()}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{edge.http}/v1/rooms/r/messages", data=b'"' + b"x" * 1000 + b'"', headers=auth) as r:
            assert r.status == 413
        async with http.post(f"{edge.http}/v1/rooms/r/messages", data=b'"\xff"', headers=auth) as r:
            assert r.status == 400
    await client.close()


async def test_replay_storm_is_capped_and_live_traffic_flows(make_edge: Any, backend: Any) -> None:
    edge = await make_edge(max_concurrent_replays=2)
    js = backend.jetstream()
    seqs = [(await js.publish("rooms.storm", b'{"n":1}')).seq for _ in range(600)]
    control = await connect(edge.url, "control")
    await control.request(type="join", room="live")
    stormers = [await connect(edge.url, f"s{i}") for i in range(30)]
    for client in stormers:
        await client.send(type="join", room="storm", since=seqs[0])
    live = [(await js.publish("rooms.live", b"1")).seq for _ in range(5)]
    assert [(await control.expect("msg"))["seq"] for _ in live] == live
    for client in stormers:
        frames = [await client.recv(timeout=30) for _ in range(1 + 599)]
        assert frames[0]["type"] == "joined" and frames[0]["recovered"] is True
        assert [f["seq"] for f in frames[1:]] == seqs[1:]
        await client.close()
    slots = edge.node.broker.replay_slots
    assert 1 <= slots.peak <= 2
    await control.close()


async def test_tokens_never_reach_the_logs(edge: Edge, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = [token("in-url"), token("bearer"), token("auth-frame"), token("http"), "forged." + token("x")[7:]]
    in_url = await open_ws(f"{edge.url}?token={secrets[0]}")
    assert (await in_url.closed())[0] == 4500
    await in_url.close()
    bearer = await connect(edge.url, tok=secrets[1])
    await bearer.request(type="refresh", token=secrets[4])
    await bearer.close()
    frame = await open_ws(edge.url)
    await frame.send(type="auth", token=secrets[2])
    await frame.expect("welcome")
    await frame.close()
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {secrets[3]}"}
        async with http.post(f"{edge.http}/v1/rooms/r/messages?token={secrets[3]}", data=b"1", headers=headers) as r:
            assert r.status == 201
    await asyncio.sleep(0.2)
    logged = caplog.text
    assert "GET /ws" in logged  # the access log was captured
    for secret in secrets:
        for part in secret.split("."):
            if len(part) > 16:
                assert part not in logged
