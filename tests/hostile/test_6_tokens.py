"""Class 7: tokens that must not authenticate, through every door.

Algorithm confusion, unsigned and tampered tokens, expired and not-yet-valid
ones, missing and mistyped claims, huge claims and huge tokens; each through
the bearer subprotocol, the `auth` frame, `refresh` and the HTTP publish. A
connection never gets `welcome`: it is closed with 4501 (1009 when the `auth`
frame itself is over `max_frame_bytes`); a header too large for the HTTP
parser is refused before the upgrade (recorded). `refresh` answers `error`
`bad_request`; HTTP answers 401. No token appears in the edge's output.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.conftest import SECRET, token
from tests.hostile.conftest import Cases
from tests.hostile.rawws import OP_CLOSE, OP_TEXT, RawWS, frame
from tests.hostile.support import MAX_FRAME, FrameProbe, Hostile, judge

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.hostile("hostile tokens")]

MAX_TOKEN = 8192
HEADER_LIMIT = 8190
"""aiohttp's default limit on one request header; a longer bearer subprotocol is refused with HTTP 400."""


def b64(data: bytes | str | Any) -> str:
    if not isinstance(data, bytes | str):
        data = json.dumps(data, separators=(",", ":"))
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**override: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "mallory",
        "iat": now,
        "exp": now + 3600,
        "rooms": {"join": [">"], "publish": [">"]},
    }
    for key, value in override.items():
        if value is _DROP:
            base.pop(key, None)
        else:
            base[key] = value
    return base


_DROP = object()


def hs256(header: Any, payload: Any, secret: bytes | str = SECRET, digest: Any = hashlib.sha256) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    signing_input = f"{b64(header)}.{b64(payload)}"
    return signing_input + "." + b64(hmac.new(key, signing_input.encode(), digest).digest())


def signed(**override: Any) -> str:
    """Correctly signed with the server's secret; only the claims are wrong."""
    return hs256({"alg": "HS256", "typ": "JWT"}, claims(**override))


def padded(total: int) -> str:
    """A correctly signed token of exactly `total` characters."""
    pad = 0
    while True:
        tok = signed(pad="p" * pad)
        if len(tok) >= total:
            break
        pad += max(1, (total - len(tok)) * 3 // 4)
    while len(tok) > total:
        pad -= 1
        tok = signed(pad="p" * pad)
    assert total - 2 <= len(tok) <= total, (len(tok), total)
    return tok


def hostile_tokens() -> list[tuple[str, str]]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    good = token("mallory")
    head, body, sig = good.split(".")
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    tokens = [
        ("alg none, no signature", f"{b64({'alg': 'none', 'typ': 'JWT'})}.{body}."),
        ("alg None", f"{b64({'alg': 'None'})}.{body}."),
        ("alg NONE", f"{b64({'alg': 'NONE'})}.{body}."),
        ("alg none with the real signature", f"{b64({'alg': 'none'})}.{body}.{sig}"),
        ("alg ''", f"{b64({'alg': ''})}.{body}.{sig}"),
        ("no alg", f"{b64({'typ': 'JWT'})}.{body}.{sig}"),
        ("alg ['HS256']", hs256({"alg": ["HS256"]}, claims())),
        ("alg null", hs256({"alg": None}, claims())),
        ("alg {'HS256': 1}", hs256({"alg": {"HS256": 1}}, claims())),
        ("HS512 with the server's secret", hs256({"alg": "HS512"}, claims(), SECRET, hashlib.sha512)),
        ("HS384 with the server's secret", hs256({"alg": "HS384"}, claims(), SECRET, hashlib.sha384)),
        ("RS256 with a random RSA key", jwt.encode(claims(), rsa_key, algorithm="RS256")),
        ("PS256 with a random RSA key", jwt.encode(claims(), rsa_key, algorithm="PS256")),
        ("RS256 header, HMAC-signed with the RSA public key", hs256({"alg": "RS256"}, claims(), rsa_pem)),
        ("HS256 signed with an RSA public key PEM", hs256({"alg": "HS256"}, claims(), rsa_pem)),
        ("ES256 with a random EC key", jwt.encode(claims(), ec_key, algorithm="ES256")),
        ("EdDSA with a random Ed25519 key", jwt.encode(claims(), ed_key, algorithm="EdDSA")),
        ("HS256 with another secret", jwt.encode(claims(), "another-secret-that-is-long-enough-too", "HS256")),
        ("HS256 with an empty secret", hs256({"alg": "HS256"}, claims(), b"")),
        ("unsigned: HS256 header, empty signature", f"{head}.{body}."),
        ("unsigned: two segments", f"{head}.{body}"),
        ("payload changed after signing", f"{head}.{b64(claims(sub='alice', exp=2**40))}.{sig}"),
        ("signature with one bit flipped", f"{head}.{body}.{sig[:-2]}{'A' if sig[-2] != 'A' else 'B'}{sig[-1]}"),
        ("signature of another token", f"{head}.{b64(claims(sub='admin'))}.{token('other').split('.')[2]}"),
        ("embedded jwk with the attacker's key", jwt.encode(claims(), rsa_key, "RS256", headers={"jwk": jwk})),
        ("jku to an attacker's JWKS", jwt.encode(claims(), rsa_key, "RS256", headers={"jku": "http://127.0.0.1:9/j"})),
        ("kid path traversal, empty key", hs256({"alg": "HS256", "kid": "../../../../dev/null"}, claims(), b"")),
        ("kid SQL injection", hs256({"alg": "HS256", "kid": "' OR 1=1 --"}, claims(), b"x")),
        ("expired a minute ago", signed(exp=int(time.time()) - 60)),
        ("expired in 1970", signed(exp=1)),
        ("nbf a minute ahead", signed(nbf=int(time.time()) + 60)),
        ("nbf 30 years ahead", signed(nbf=int(time.time()) + 10**9)),
        ("no exp", signed(exp=_DROP)),
        ("exp null", signed(exp=None)),
        ("exp as a string", signed(exp=str(int(time.time()) + 3600))),
        ("exp true", signed(exp=True)),
        (
            "exp 1e400 (infinity)",
            hs256({"alg": "HS256"}, json.dumps(claims()).replace('"exp": ', '"exp": 1e400, "x": ')),
        ),
        (
            "iat 1e400 (infinity)",
            hs256({"alg": "HS256"}, json.dumps(claims()).replace('"iat": ', '"iat": 1e400, "x": ')),
        ),
        ("exp NaN", hs256({"alg": "HS256"}, json.dumps(claims()).replace('"exp": ', '"exp": NaN, "x": '))),
        ("no sub", signed(sub=_DROP)),
        ("sub ''", signed(sub="")),
        ("sub 42", signed(sub=42)),
        ("sub null", signed(sub=None)),
        ("sub an object", signed(sub={"id": 1})),
        ("rooms '>'", signed(rooms=">")),
        ("rooms ['>']", signed(rooms=[">"])),
        ("rooms []", signed(rooms=[])),
        ("rooms ''", signed(rooms="")),
        ("rooms 0", signed(rooms=0)),
        ("rooms false", signed(rooms=False)),
        ("rooms.join '>'", signed(rooms={"join": ">"})),
        ("rooms.join [1]", signed(rooms={"join": [1]})),
        ("rooms.join [null]", signed(rooms={"join": [None]})),
        ("rooms.join null", signed(rooms={"join": None})),
        ("rooms.join ['a..b']", signed(rooms={"join": ["a..b"]})),
        ("rooms.join ['$JS.API.>']", signed(rooms={"join": ["$JS.API.>"]})),
        ("rooms.join ['>.a']", signed(rooms={"join": [">.a"]})),
        ("rooms.join ['a.>.b']", signed(rooms={"join": ["a.>.b"]})),
        ("rooms.join ['a b']", signed(rooms={"join": ["a b"]})),
        ("rooms.publish an object", signed(rooms={"publish": {"a": 1}})),
        ("header a JSON array", f"{b64(['HS256'])}.{body}.{sig}"),
        ("payload a JSON array (signed)", hs256({"alg": "HS256"}, ["sub", "mallory"])),
        ("payload not JSON (signed)", hs256({"alg": "HS256"}, b"\xff\xfe not json")),
        ("header not base64", f"!!!.{body}.{sig}"),
        ("empty token", ""),
        ("one dot", "."),
        ("two dots", ".."),
        ("a.b.c", "a.b.c"),
        ("eyJ", "eyJ"),
        ("four segments", f"{good}.x"),
        ("5,000 room patterns (signed)", signed(rooms={"join": ["*"] * 5000, "publish": []})),
        ("20,000 room patterns (signed)", signed(rooms={"join": [f"hostile.p{i}" for i in range(20_000)]})),
        ("max_token_bytes + 1 (signed)", padded(MAX_TOKEN + 1)),
        ("just under max_frame_bytes in an auth frame (signed)", padded(MAX_FRAME - 64)),
        ("100 KB of junk", "eyJ" + "A" * 100_000),
    ]
    return tokens


def _auth_frame(tok: str) -> bytes:
    return json.dumps({"type": "auth", "token": tok, "ref": 1}).encode()


async def _close_after(ws: RawWS) -> tuple[int | str | None, list[str]]:
    """The close code (None: dropped without one) and the frames' types before it; stops at a welcome."""
    kinds: list[str] = []
    try:
        while True:
            got = await ws.read_frame(15)
            if got is None:
                return None, kinds
            if got.opcode == OP_CLOSE:
                return got.close_code, kinds
            if got.opcode == OP_TEXT:
                kinds.append(json.loads(got.payload).get("type", "?"))
                if kinds[-1] == "welcome":
                    return "open", kinds
    except TimeoutError:
        return "no close within 15 s", kinds


async def via_bearer(hostile: Hostile, tok: str) -> str:
    """What the bearer subprotocol got: 'close <code>' or 'http <status>'; 'welcome' if it got in."""
    ws = await RawWS.open(hostile.port, ("jetsock.v1", "bearer." + tok))
    try:
        if not ws.upgraded:
            return f"http {ws.status}"
        code, kinds = await _close_after(ws)
    finally:
        ws.abort()
    return "welcome" if "welcome" in kinds else f"close {code}"


async def via_auth_frame(hostile: Hostile, tok: str) -> str:
    ws = await RawWS.open(hostile.port)
    try:
        assert ws.upgraded, ws.response_head
        data = frame(OP_TEXT, _auth_frame(tok))
        # Past the limit the server decides on the header: do not make it read what it refuses.
        ws.write(data if len(data) < MAX_FRAME else data[:16_384])
        await ws.writer.drain()
        code, kinds = await _close_after(ws)
    finally:
        ws.abort()
    return "welcome" if "welcome" in kinds else f"close {code}"


async def test_hostile_tokens_never_get_a_welcome(hostile: Hostile, cases: Cases) -> None:
    tokens = await asyncio.to_thread(hostile_tokens)
    gate = asyncio.Semaphore(16)
    results: dict[str, dict[str, str]] = {}

    async def both(name: str, tok: str) -> None:
        async with gate:
            bearer = await via_bearer(hostile, tok)
            frame_result = await via_auth_frame(hostile, tok)
        results[name] = {"bearer": bearer, "auth frame": frame_result}

    await asyncio.gather(*(both(name, tok) for name, tok in tokens))
    failures = []
    refused_before_upgrade = []
    for name, tok in tokens:
        got = results[name]
        cases.add(2)
        if got["bearer"].startswith("http "):
            refused_before_upgrade.append(f"{name} ({len(tok)} bytes): {got['bearer']}")
            if len(tok) < HEADER_LIMIT - 32 or got["bearer"] not in ("http 400", "http 431"):
                failures.append(f"{name} via bearer: {got['bearer']}")
        elif got["bearer"] != "close 4501":
            failures.append(f"{name} via bearer: {got['bearer']}")
        oversized = len(frame(OP_TEXT, _auth_frame(tok), mask=False)) - 4 > MAX_FRAME
        expected = "close 1009" if oversized else "close 4501"
        if got["auth frame"] != expected:
            failures.append(f"{name} via auth frame: {got['auth frame']}, expected {expected}")
    cases.note("refused before the upgrade (header too large)", refused_before_upgrade)

    # The same tokens in `refresh` on an authenticated connection, and in HTTP publish.
    probe = FrameProbe(hostile)
    try:
        for name, tok in tokens:
            refresh = json.dumps({"type": "refresh", "token": tok, "ref": "r"}).encode()
            if len(refresh) >= MAX_FRAME - 64:
                continue
            problem = judge(await probe.exchange(refresh), {"error:bad_request"}, "r")
            cases.add()
            if problem is not None:
                failures.append(f"{name} via refresh: {problem}")
    finally:
        probe.close()
    async with aiohttp.ClientSession() as http:
        for name, tok in tokens:
            headers = {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}
            async with http.post(f"{hostile.http}/v1/rooms/hostile.tokens/messages", data=b"1", headers=headers) as r:
                cases.add()
                if r.status == 401 or (r.status in (400, 431) and len(tok) > HEADER_LIMIT - 32):
                    continue
                failures.append(f"{name} via HTTP: {r.status} {(await r.text())[:120]}")

    await asyncio.sleep(0.5)
    output = hostile.output()
    leaked = [name for name, tok in tokens if len(tok) >= 16 and tok in output]
    leaked += [
        f"{name} (signature)" for name, tok in tokens if len(tok.split(".")[-1]) >= 16 and tok.split(".")[-1] in output
    ]
    cases.note("check", await hostile.check("hostile tokens"))
    assert not leaked, f"tokens in the edge's output: {leaked}"
    assert not failures, f"{len(failures)} cases:\n" + "\n".join(failures)


async def test_first_frames_that_do_not_parse_close_4501(hostile: Hostile, cases: Cases) -> None:
    """Before authentication anything but a valid `auth` frame closes with 4501 (PROTOCOL.md 9.1)."""
    first_frames = [
        ("auth token with invalid UTF-8", b'{"type":"auth","token":"\xff"}'),
        ("auth ref with invalid UTF-8", b'{"type":"auth","token":"a.b.c","ref":"\xc0\xaf"}'),
        ("auth nested 10,000 deep", b'{"type":"auth","token":"a.b.c","x":' + b"[" * 10_000 + b"]" * 10_000 + b"}"),
        ("auth ref nested 10,000 deep", b'{"type":"auth","ref":' + b"[" * 10_000 + b"]" * 10_000 + b"}"),
        ("auth token lone surrogate", b'{"type":"auth","token":"\\ud800"}'),
        ("auth token not a string", b'{"type":"auth","token":["a.b.c"]}'),
        ("random bytes", bytes(range(256))),
        ("empty frame", b""),
    ]
    failures = []

    async def one(name: str, data: bytes) -> None:
        ws = await RawWS.open(hostile.port)
        try:
            await ws.send(OP_TEXT, data)
            code, kinds = await _close_after(ws)
        finally:
            ws.abort()
        cases.add()
        if code != 4501 or "welcome" in kinds:
            failures.append(f"{name}: closed with {code} (frames {kinds})")

    await asyncio.gather(*(one(name, data) for name, data in first_frames))
    cases.note("check_first_frames", await hostile.check("unparsable first frames"))
    assert not failures, "\n".join(failures)


async def test_a_sub_with_wildcards_widens_no_sub_pattern(hostile: Hostile, cases: Cases) -> None:
    """`{sub}` in a pattern takes the token's sub; a sub like `x.>` must not turn into a wildcard."""
    failures = []
    for sub in ("x.>", "*", ">", "x.*", "x y", "x\u2024y"):
        client = await hostile.client(sub, join=["user.{sub}"], publish=["user.{sub}"])
        try:
            for room in ("user.x.y", "user.x", "user.a", "user.x.y.z"):
                reply = await client.request(type="join", room=room)
                cases.add()
                if reply.get("type") != "error" or reply.get("code") != "forbidden":
                    failures.append(f"sub {sub!r} joining {room!r}: {reply}")
        finally:
            await client.close()
    cases.note("check_sub_patterns", await hostile.check("{sub} patterns"))
    assert not failures, "\n".join(failures)
