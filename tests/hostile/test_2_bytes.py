"""Classes 2 and 3: random bytes and invalid UTF-8 in text frames; binary frames.

A text frame that is not valid UTF-8 JSON is invalid JSON: `error`
`bad_request`, and the connection stays open (PROTOCOL.md 9.1). A binary frame
after authentication closes with 4500; before it, with 4501.
"""

from __future__ import annotations

import asyncio
import json
import os
import random

import aiohttp
import pytest

from tests.conftest import token
from tests.hostile.conftest import Cases
from tests.hostile.rawws import OP_BINARY, OP_CONT, OP_TEXT
from tests.hostile.support import ROOM, FrameProbe, Hostile, judge

pytestmark = pytest.mark.asyncio(loop_scope="session")

BAD = {"error:bad_request"}

INVALID_UTF8 = {
    "0xff": b"\xff",
    "lone continuation byte": b"\x80",
    "overlong '/'": b"\xc0\xaf",
    "overlong NUL": b"\xc0\x80",
    "UTF-8-encoded surrogate (CESU)": b"\xed\xa0\x80",
    "truncated 3-byte sequence": b"\xe2\x82",
    "5-byte sequence": b"\xf8\x88\x80\x80\x80",
    "above U+10FFFF": b"\xf4\x90\x80\x80",
}


def invalid_utf8_frames() -> list[tuple[str, bytes]]:
    frames = []
    for name, bad in INVALID_UTF8.items():
        frames += [
            (f"ref with {name}", b'{"type":"ping","ref":"a' + bad + b'"}'),
            (f"room with {name}", b'{"type":"join","room":"hostile.' + bad + b'"}'),
            (f"unknown field with {name}", b'{"type":"ping","x":"' + bad + b'"}'),
            (f"key with {name}", b'{"type":"ping","' + bad + b'":1}'),
            (f"refresh token with {name}", b'{"type":"refresh","token":"' + bad + b'"}'),
            (f"publish data with {name}", b'{"type":"publish","room":"hostile.utf8","data":"' + bad + b'"}'),
            (f"{name} between tokens", b'{"type":"ping",' + bad + b'"ref":1}'),
        ]
    return frames


@pytest.mark.hostile("random bytes and invalid UTF-8 in text frames")
async def test_random_bytes_get_bad_request_on_an_open_connection(hostile: Hostile, cases: Cases) -> None:
    rng = random.Random(6455)
    probe = FrameProbe(hostile)
    failures = []
    try:
        for i in range(300):
            payload = rng.randbytes(rng.choice([1, 2, 7, 64, 300, 4096, 30_000]))
            problem = judge(await probe.exchange(payload), BAD)
            cases.add()
            if problem is not None:
                failures.append(f"random frame {i} ({len(payload)} bytes, {payload[:24]!r}...): {problem}")
        for name, payload in invalid_utf8_frames():
            problem = judge(await probe.exchange(payload), BAD)
            cases.add()
            if problem is not None:
                failures.append(f"{name}: {problem}")
    finally:
        probe.close()
    cases.note("check", await hostile.check("random bytes"))
    assert not failures, f"{len(failures)} text frames not answered with bad_request:\n" + "\n".join(failures)


@pytest.mark.hostile("random bytes and invalid UTF-8 in text frames")
async def test_invalid_utf8_never_reaches_room_members(hostile: Hostile, cases: Cases) -> None:
    """Whatever a client or a backend sends, members only get valid UTF-8 JSON text frames."""
    room = "hostile.utf8"
    observer = await hostile.client("hostile-utf8-observer")
    raw = await hostile.raw()
    got: list[str] = []
    failures = []
    try:
        assert (await observer.request(type="join", room=room))["type"] == "joined"
        for n, (name, bad) in enumerate(INVALID_UTF8.items()):
            await raw.send_text(b'{"type":"publish","room":"' + room.encode() + b'","ref":1,"data":"x' + bad + b'"}')
            reply = await raw.read_frame()
            cases.add()
            if reply is None or json.loads(reply.payload).get("code") != "bad_request":
                failures.append(f"client publish of data with {name}: {reply}")
            await hostile.js.publish("rooms." + room, b'{"a":"' + bad + b'","n":' + str(n).encode() + b"}")
            cases.add()
        async with aiohttp.ClientSession() as http:
            for name, bad in INVALID_UTF8.items():
                headers = {"Authorization": "Bearer " + token("hostile-http")}
                async with http.post(
                    f"{hostile.http}/v1/rooms/{room}/messages", data=b'"' + bad + b'"', headers=headers
                ) as r:
                    cases.add()
                    if r.status != 400:
                        failures.append(f"HTTP publish of a body with {name}: {r.status} {await r.text()}")
        await hostile.js.publish("rooms." + room, b'"end"')
        # aiohttp fails the connection (1007) on a text frame that is not UTF-8, as a browser does.
        async with asyncio.timeout(10):
            while True:
                msg = await observer.ws.receive()
                assert msg.type is aiohttp.WSMsgType.TEXT, f"observer got {msg.type} {msg.data!r} {msg.extra!r}"
                got.append(msg.data)
                frame = json.loads(msg.data)
                if frame.get("data") == "end":
                    break
    finally:
        await observer.close()
        raw.abort()
    base64 = sum(1 for text in got if json.loads(text).get("encoding") == "base64")
    cases.note("backend payloads delivered as base64", base64)
    cases.note("check_after_utf8", await hostile.check("invalid UTF-8"))
    assert not failures, "\n".join(failures)


# --- class 3 ---------------------------------------------------------------------------


@pytest.mark.hostile("binary frames")
async def test_binary_frames_close_4500_after_auth_and_4501_before(hostile: Hostile, cases: Cases) -> None:
    after_auth = [
        ("empty binary frame", [(OP_BINARY, b"", True)]),
        ("random binary frame", [(OP_BINARY, os.urandom(100), True)]),
        ("JSON ping as binary", [(OP_BINARY, b'{"type":"ping","ref":1}', True)]),
        ("60 KB binary frame", [(OP_BINARY, os.urandom(60_000), True)]),
        ("fragmented binary", [(OP_BINARY, b'{"type":', False), (OP_CONT, b'"ping"}', True)]),
        ("binary publish", [(OP_BINARY, json.dumps({"type": "publish", "room": ROOM, "data": 1}).encode(), True)]),
        ("ping, then binary", [(OP_TEXT, b'{"type":"ping","ref":"before"}', True), (OP_BINARY, b"\x00", True)]),
    ]
    failures = []

    async def one(name: str, frames: list[tuple[int, bytes, bool]], authenticate: bool, expect: int) -> None:
        ws = await hostile.raw(authenticate=authenticate)
        try:
            for opcode, payload, fin in frames:
                await ws.send(opcode, payload, fin=fin)
            code, before = await ws.until_close()
        finally:
            ws.abort()
        texts = [json.loads(f.payload) for f in before if f.opcode == OP_TEXT]
        cases.add()
        if code != expect:
            failures.append(f"{name}: closed with {code}, expected {expect} (frames before: {texts})")
        elif any(t.get("type") not in ("pong", "msg") for t in texts):
            failures.append(f"{name}: unexpected frames before the close: {texts}")

    await asyncio.gather(*(one(name, frames, True, 4500) for name, frames in after_auth))
    token_frame = json.dumps({"type": "auth", "token": token("hostile-binary")}).encode()
    before_auth = [
        ("binary first frame", [(OP_BINARY, b"\x01\x02", True)]),
        ("valid auth frame sent as binary", [(OP_BINARY, token_frame, True)]),
    ]
    await asyncio.gather(*(one(name, frames, False, 4501) for name, frames in before_auth))
    cases.note("check", await hostile.check("binary frames"))
    assert not failures, "\n".join(failures)
