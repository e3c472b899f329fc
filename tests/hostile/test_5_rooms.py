"""Class 6: room names that try to reach other NATS subjects.

Wildcards, `$JS.API` subjects, empty and dot-only segments, whitespace and
control characters, unicode look-alike dots, fullwidth letters, names one
past each limit, and values that are not strings, in `join` (with and without
`since` or `last`), `leave`, `publish`, `history` and the HTTP paths (publish
and history page): each is refused (`invalid_room`; `not_joined` for a leave;
`bad_request` when the room is not a string; HTTP 400) and
reaches no subject. A NATS connection listening on `>` meanwhile sees no
publish on any subject a valid room cannot name, and the stream is intact.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import Any

import aiohttp
import pytest
from yarl import URL

from core.rooms import is_valid_room
from tests.conftest import token
from tests.hostile.conftest import Cases
from tests.hostile.support import STREAM, FrameProbe, Hostile, judge

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.hostile("hostile room names")]

HOSTILE_NAMES = [
    "a.*",
    "a.>",
    ">",
    "*",
    "*.*",
    "hostile.*",
    "hostile.control.>",
    "$JS.API.STREAM.DELETE.ROOMS",
    "$JS.API.STREAM.PURGE.ROOMS",
    "$JS.API.>",
    "$SYS.REQ.SERVER.PING",
    "$KV.x.y",
    "..",
    ".",
    "a..b",
    ".a",
    "a.",
    "a.b.",
    " a",
    "a ",
    "a b",
    "a\tb",
    "a\nb",
    "a\n",
    "a\rb",
    "a\x00b",
    "a\x7fb",
    "a\u2024b",  # ONE DOT LEADER
    "a\uff0eb",  # FULLWIDTH FULL STOP
    "a\u3002b",  # IDEOGRAPHIC FULL STOP
    "a\ufe52b",  # SMALL FULL STOP
    "a\u00b7b",  # MIDDLE DOT
    "a\u2219b",  # BULLET OPERATOR
    "\uff41\uff42\uff43",  # fullwidth abc
    "\uff1e",  # FULLWIDTH GREATER-THAN SIGN
    "\uff0a",  # FULLWIDTH ASTERISK
    "a\u200bb",  # ZERO WIDTH SPACE
    "a\ufeffb",
    "a\u0301",
    "\u00e4",
    "\u0430",  # Cyrillic a
    "a/b",
    "a\\b",
    "a%2Eb",
    "a" * 129,
    ".".join(["a"] * 17),
    ".".join(["a" * 7] * 15 + ["a" * 9]),  # 16 segments, 129 characters
    "",
]
NOT_STRINGS: list[Any] = [None, 0, 1.5, True, [], {}, ["hostile.control"], {"room": "a"}]
VALID_EDGES = ["a" * 128, ".".join(["a"] * 16), "A-z_0.9-_"]
"""Names just inside the limits: they must work, so the refusals above are about the names."""


def _expect_join(name: Any) -> set[str]:
    return {"error:invalid_room"} if isinstance(name, str) else {"error:bad_request"}


def _expect_leave(name: Any) -> set[str]:
    return {"error:not_joined"} if isinstance(name, str) else {"error:bad_request"}


async def test_hostile_room_names_are_refused_everywhere(hostile: Hostile, cases: Cases) -> None:
    assert not any(is_valid_room(n) for n in HOSTILE_NAMES)
    info_before = await hostile.js.stream_info(STREAM)
    subjects: list[str] = []

    async def sniff(msg: Any) -> None:
        subjects.append(msg.subject)

    sniffer = await hostile.nc.subscribe(">", cb=sniff)
    probe = FrameProbe(hostile)
    failures = []
    try:
        for name in HOSTILE_NAMES + NOT_STRINGS:
            for kind, fields, expect in (
                ("join", {"room": name}, _expect_join(name)),
                ("join with since", {"room": name, "since": 0}, _expect_join(name)),
                ("join with last", {"room": name, "last": 5}, _expect_join(name)),
                ("history", {"room": name}, _expect_join(name)),
                ("history with before", {"room": name, "before": 10, "limit": 3}, _expect_join(name)),
                ("leave", {"room": name}, _expect_leave(name)),
                ("publish", {"room": name, "data": {"x": 1}}, _expect_join(name)),
                ("publish with id", {"room": name, "data": 1, "id": "k"}, _expect_join(name)),
            ):
                ref = f"{kind}:{name!r}"
                frame = {"type": kind.split()[0], **fields, "ref": ref}
                problem = judge(await probe.exchange(json.dumps(frame).encode()), expect, ref)
                cases.add()
                if problem is not None:
                    failures.append(f"{kind} {name!r}: {problem}")
        for name in VALID_EDGES:
            frame = {"type": "join", "room": name, "ref": 1}
            problem = judge(await probe.exchange(json.dumps(frame).encode()), {"joined"}, 1)
            cases.add()
            if problem is not None:
                failures.append(f"join of the valid {name!r}: {problem}")
            frame = {"type": "history", "room": name, "ref": 2}
            problem = judge(await probe.exchange(json.dumps(frame).encode()), {"history"}, 2)
            cases.add()
            if problem is not None:
                failures.append(f"history of the valid {name!r}: {problem}")
        failures += await _http(hostile, cases)
        await hostile.nc.flush()
        await asyncio.sleep(0.5)
    finally:
        probe.close()
        await sniffer.unsubscribe()
    info = await hostile.js.stream_info(STREAM)
    assert info.config.subjects == info_before.config.subjects == ["rooms.>"]
    assert info.state.first_seq == info_before.state.first_seq
    assert info.state.messages >= info_before.state.messages
    assert info.state.last_seq >= info_before.state.last_seq
    stray = sorted(
        {
            s
            for s in subjects
            if "DELETE" in s
            or "PURGE" in s
            or (s.startswith(("rooms.", "live.rooms.")) and not is_valid_room(s.split("rooms.", 1)[1]))
        }
    )
    cases.note("NATS subjects seen while attacking", sorted({s.split(".", 3)[0] + "..." for s in subjects}))
    cases.note("stream messages before/after", [info_before.state.messages, info.state.messages])
    assert not stray, f"subjects reached: {stray}"
    cases.note("check", await hostile.check("hostile room names"))
    assert not failures, f"{len(failures)} cases:\n" + "\n".join(failures)


async def _http(hostile: Hostile, cases: Cases) -> list[str]:
    """POST and GET /v1/rooms/<name>/messages (publish, history page) with the name
    percent-encoded: 400 invalid_room, or 404 if unroutable."""
    failures = []
    headers = {"Authorization": "Bearer " + token("hostile-http"), "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        for name in HOSTILE_NAMES:
            quoted = urllib.parse.quote(name, safe="")
            url = URL(f"{hostile.http}/v1/rooms/{quoted}/messages", encoded=True)
            for method in ("POST", "GET"):
                data = b'{"x":1}' if method == "POST" else None
                async with http.request(method, url, data=data, headers=headers) as response:
                    body = await response.text()
                cases.add()
                # An empty segment, `.`, `..` or an encoded `/` cannot name the route at all.
                unroutable = name in ("", ".", "..") or "/" in name
                if response.status == 400 and json.loads(body).get("code") == "invalid_room":
                    continue
                if response.status == 404 and unroutable:
                    continue
                failures.append(f"HTTP {method} {name!r}: {response.status} {body[:200]}")
    return failures
