"""Class 1: valid JSON of wrong shapes, deep nesting, huge numbers, long strings, unicode, control characters.

Every frame gets exactly one valid server frame as its reply (an `error` with
a known code, or the frame's normal reply), and the connection stays open.
Hypothesis generates frames over one authenticated connection (replaced when
the server closes it, so one failure does not hide the next); a fixed list
adds the extremes Hypothesis would rarely reach.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import pytest
import yarl
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from tests.conftest import token
from tests.hostile.conftest import Cases
from tests.hostile.support import MAX_FRAME, ROOM, FrameProbe, Hostile, judge

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.hostile("JSON frames of wrong shapes")]

FRAME_TYPES = ["auth", "join", "leave", "publish", "ping", "refresh", "history"]
FIELDS = ["room", "since", "epoch", "ref", "data", "id", "token", "last", "before", "limit"]
REPLIES = {
    "auth": {"error:bad_request"},
    "join": {"joined", "error"},
    "leave": {"left", "error"},
    "publish": {"ack", "error"},
    "ping": {"pong", "error:bad_request"},
    "refresh": {"error"},
    "history": {"history", "error"},
}


class Lit:
    """A JSON token written as is: numbers Python never writes, and tokens that are not JSON."""

    def __init__(self, text: str, valid: bool) -> None:
        self.text = text
        self.valid = valid

    def __repr__(self) -> str:
        return f"Lit({self.text[:40]!r})"


LITERALS = [
    Lit("1e400", True),
    Lit("-1e400", True),
    Lit("1E+999999999", True),
    Lit("4.9e-400", True),
    Lit("-0", True),
    Lit("-0.0", True),
    Lit("0e0", True),
    Lit("1" * 400, True),
    Lit("-" + "9" * 400, True),
    Lit("123456789012345678901234567890", True),
    Lit("NaN", False),
    Lit("Infinity", False),
    Lit("-Infinity", False),
    Lit("+1", False),
    Lit("01", False),
    Lit(".5", False),
    Lit("1.", False),
    Lit("0x10", False),
    Lit("undefined", False),
    Lit("'x'", False),
]

_LONE_SURROGATE = re.compile("[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]")


def dump(value: Any, ascii_only: bool) -> str:
    if isinstance(value, Lit):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(dump(str(k), ascii_only) + ":" + dump(v, ascii_only) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def readable(value: Any) -> bool:
    """True when the whole frame is valid JSON that msgspec reads: no invalid token, no lone surrogate."""
    if isinstance(value, Lit):
        return value.valid
    if isinstance(value, str):
        return _LONE_SURROGATE.search(value) is None
    if isinstance(value, dict):
        return all(readable(k) and readable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(readable(v) for v in value)
    return True


def encode(value: Any, ascii_only: bool) -> bytes:
    try:
        return dump(value, ascii_only).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form: send it as a \u escape
        return dump(value, True).encode("utf-8")


# --- strategies ------------------------------------------------------------------

texts = st.text(st.characters(exclude_categories=()), max_size=24)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
    | st.sampled_from(LITERALS)
)
values = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(texts, kids, max_size=4), max_leaves=10
)
rooms = (
    st.sampled_from([ROOM, "hostile.fuzz", "hostile.fuzz.a-b_c", "a.*", "a.>", ">", "", "..", "$JS.API.>"])
    | texts
    | values
)
FIELD_VALUES = {
    "room": rooms,
    "since": st.integers() | values,
    "epoch": texts | values,
    "ref": st.integers() | texts | values,
    "data": values,
    "id": texts | values,
    "token": texts | values,
    "last": st.integers() | values,
    "before": st.integers() | values,
    "limit": st.integers() | values,
}


@st.composite
def long_string(draw: st.DrawFn) -> str:
    char = draw(st.characters(exclude_categories=()))
    cost = len(json.dumps(char))  # the worst case: \\u escapes
    return char * draw(st.integers(1, (MAX_FRAME - 200) // cost))


@st.composite
def known_frame(draw: st.DrawFn) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": draw(st.sampled_from(FRAME_TYPES))}
    for name in draw(st.lists(st.sampled_from(FIELDS), unique=True)):
        frame[name] = draw(FIELD_VALUES[name])
    frame.update(draw(st.dictionaries(texts.filter(lambda k: k not in FIELDS and k != "type"), values, max_size=2)))
    return frame


@st.composite
def long_field_frame(draw: st.DrawFn) -> dict[str, Any]:
    frame = draw(known_frame())
    frame[draw(st.sampled_from(["room", "ref", "data", "id", "token", "epoch", "extra"]))] = draw(long_string())
    return frame


weird_type_frame = st.builds(lambda t, rest: {"type": t, **rest}, values, st.dictionaries(texts, values, max_size=3))
frames = st.one_of(known_frame(), known_frame(), known_frame(), long_field_frame(), weird_type_frame, values)


def expectation(value: Any) -> tuple[set[str], Any]:
    """The replies allowed for `value`, and the ref the reply must echo (None: not checked)."""
    if not readable(value):
        return {"error:bad_request"}, None
    if not isinstance(value, dict) or value.get("type") not in FRAME_TYPES:
        expect = {"error:bad_request"}
    else:
        expect = REPLIES[value["type"]]
    ref = value.get("ref") if isinstance(value, dict) else None
    if isinstance(ref, bool) or not isinstance(ref, int | str):
        ref = None
    return expect, ref


async def test_hypothesis_frames_get_one_valid_reply_on_an_open_connection(hostile: Hostile, cases: Cases) -> None:
    probe = FrameProbe(hostile)
    loop = asyncio.get_running_loop()
    tried = 0

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(value=frames, ascii_only=st.booleans())
    def one_frame(value: Any, ascii_only: bool) -> None:
        nonlocal tried
        payload = encode(value, ascii_only)
        if len(payload) >= MAX_FRAME - 100:
            reject()
        tried += 1
        outcome = asyncio.run_coroutine_threadsafe(probe.exchange(payload), loop).result(60)
        expect, ref = expectation(value)
        problem = judge(outcome, expect, ref)
        assert problem is None, f"{problem}\nframe ({len(payload)} bytes): {payload[:300]!r}"

    try:
        await asyncio.to_thread(one_frame)
    finally:
        probe.close()
        cases.add(tried)
    cases.note("hypothesis_examples", tried)
    cases.note("check_after_hypothesis", await hostile.check("JSON frames (hypothesis)"))


# --- the extremes, by name -------------------------------------------------------


def _nested(depth: int, inner: bytes = b"") -> bytes:
    return b"[" * depth + inner + b"]" * depth


def _frame(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


BAD = {"error:bad_request"}
ANY = None


def extreme_cases() -> list[tuple[str, bytes, set[str] | None, Any]]:
    """(name, frame, allowed replies, ref to echo)."""
    deep = 10_000
    cases: list[tuple[str, bytes, set[str] | None, Any]] = [
        ("array nested 10,000 deep", _nested(deep), BAD, None),
        ("object nested 10,000 deep", b'{"a":' * deep + b"1" + b"}" * deep, BAD, None),
        (
            "publish data nested 10,000 deep",
            b'{"type":"publish","room":"hostile.deep","ref":1,"data":' + _nested(deep) + b"}",
            {"ack", "error:bad_request", "error:too_large"},
            # Too deep to read at all: the error cannot carry the ref (schemas/PROTOCOL.md 9.1).
            None,
        ),
        (
            "unknown field nested 10,000 deep",
            b'{"type":"ping","ref":2,"x":' + _nested(deep) + b"}",
            {"pong", "error:bad_request"},
            None,
        ),
        ("ref nested 10,000 deep", b'{"type":"ping","ref":' + _nested(deep) + b"}", BAD, None),
        (
            "since nested 30,000 deep",
            b'{"type":"join","room":"hostile.deep","since":' + _nested(30_000) + b"}",
            BAD,
            None,
        ),
        (
            "object with 4,000 keys",
            json.dumps({"type": "ping", "ref": 3, **{f"k{i}": i for i in range(4000)}}, separators=(",", ":")).encode(),
            {"pong"},
            3,
        ),
        (
            "data: array of 20,000 zeros",
            b'{"type":"publish","room":"hostile.wide","ref":4,"data":[' + b",".join([b"0"] * 20_000) + b"]}",
            {"ack", "error:too_large"},
            4,
        ),
        # huge numbers
        ("since 1e400", b'{"type":"join","room":"hostile.num","since":1e400}', BAD, None),
        ("since 10**400", b'{"type":"join","room":"hostile.num","since":1' + b"0" * 400 + b"}", BAD, None),
        ("since -1", _frame(type="join", room="hostile.num", since=-1, ref=5), BAD, 5),
        ("since 1.5", _frame(type="join", room="hostile.num", since=1.5, ref=6), BAD, 6),
        ("since '1'", _frame(type="join", room="hostile.num", since="1", ref=7), BAD, 7),
        ("since true", _frame(type="join", room="hostile.num", since=True, ref=8), BAD, 8),
        # NATS sequences are unsigned 64-bit: past that a since cannot be a seq the server gave.
        (
            "since 2**63",
            _frame(type="join", room="hostile.num2", since=2**63, ref=9),
            {"joined", "error:bad_request"},
            9,
        ),
        (
            "since 2**64",
            _frame(type="join", room="hostile.num4", since=2**64, ref="9b"),
            {"joined", "error:bad_request"},
            "9b",
        ),
        ("since -0", b'{"type":"join","room":"hostile.num3","since":-0,"ref":10}', {"joined", "error"}, 10),
        ("ref 1e400", b'{"type":"ping","ref":1e400}', BAD, None),
        ("ref 10**400", b'{"type":"ping","ref":1' + b"0" * 400 + b"}", {"pong", "error:bad_request"}, None),
        ("ref -0", b'{"type":"ping","ref":-0}', {"pong"}, 0),
        ("ref 1.0", b'{"type":"ping","ref":1.0}', BAD, None),
        ("ref true", b'{"type":"ping","ref":true}', BAD, None),
        ("ref {}", b'{"type":"ping","ref":{}}', BAD, None),
        ("data 1e400", b'{"type":"publish","room":"' + ROOM.encode() + b'","ref":11,"data":1e400}', {"ack"}, 11),
        ("data -0", b'{"type":"publish","room":"' + ROOM.encode() + b'","ref":12,"data":-0}', {"ack"}, 12),
        (
            "data 10**400",
            b'{"type":"publish","room":"' + ROOM.encode() + b'","ref":13,"data":1' + b"0" * 400 + b"}",
            {"ack"},
            13,
        ),
        ("data NaN", b'{"type":"publish","room":"hostile.num","ref":14,"data":NaN}', BAD, None),
        ("data Infinity", b'{"type":"publish","room":"hostile.num","data":Infinity}', BAD, None),
        ("since 'NaN'", _frame(type="join", room="hostile.num", since="NaN", ref=15), BAD, 15),
        *history_numbers(),
        # long strings, just under max_frame_bytes
        ("room of 65,000 characters", _frame(type="join", room="a" * 65_000, ref=16), {"error:invalid_room"}, 16),
        (
            "publish room of 65,000 characters",
            _frame(type="publish", room="a" * 65_000, data=1, ref=17),
            {"error:invalid_room"},
            17,
        ),
        ("ref of 65,000 characters", _frame(type="ping", ref="r" * 65_000), {"pong"}, "r" * 65_000),
        (
            "data string of 65,000 characters",
            _frame(type="publish", room="hostile.long", data="d" * 65_000, ref=18),
            {"ack", "error:too_large"},
            18,
        ),
        ("refresh token of 65,000 characters", _frame(type="refresh", token="t" * 65_000, ref=19), BAD, 19),
        ("epoch of 65,000 characters", _frame(type="join", room="hostile.long", epoch="e" * 65_000), ANY, None),
        ("publish id of 256 characters", _frame(type="publish", room="hostile.id", data=1, id="i" * 256), ANY, None),
        ("publish id of 257 characters", _frame(type="publish", room="hostile.id", data=1, id="i" * 257), BAD, None),
        ("publish id ''", _frame(type="publish", room="hostile.id", data=1, id="", ref=20), BAD, 20),
        # unicode and control characters
        ("ref lone high surrogate", b'{"type":"ping","ref":"\\ud800"}', BAD, None),
        ("ref lone low surrogate", b'{"type":"ping","ref":"\\udc00"}', BAD, None),
        ("ref reversed surrogate pair", b'{"type":"ping","ref":"\\ude00\\ud83d"}', BAD, None),
        ("ref surrogate pair", b'{"type":"ping","ref":"\\ud83d\\ude00"}', {"pong"}, "\U0001f600"),
        ("room lone surrogate", b'{"type":"join","room":"a\\ud800"}', BAD, None),
        ("data lone surrogate", b'{"type":"publish","room":"' + ROOM.encode() + b'","data":"\\udfff"}', BAD, None),
        ("room NUL", _frame(type="join", room="\u0000", ref=21), {"error:invalid_room"}, 21),
        ("room DEL", _frame(type="join", room="hostile.ctrl\u007f", ref=22), {"error:invalid_room"}, 22),
        (
            "ref of every escaped control character",
            _frame(type="ping", ref="".join(map(chr, range(32)))),
            {"pong"},
            "".join(map(chr, range(32))),
        ),
        ("raw control character in a string", b'{"type":"ping","ref":"a\x01b"}', BAD, None),
        ("raw NUL between tokens", b'{"type":"ping",\x00"ref":1}', BAD, None),
        ("raw DEL in a string", b'{"type":"ping","ref":"a\x7fb"}', {"pong"}, "a\x7fb"),
        ("ref in 4-byte UTF-8", _frame(type="ping", ref="\U0010ffff"), {"pong"}, "\U0010ffff"),
        ("byte order mark first", b"\xef\xbb\xbf" + _frame(type="ping"), BAD, None),
        ("UTF-16 frame", '{"type":"ping"}'.encode("utf-16"), BAD, None),
        ("type 'PING'", _frame(type="PING", ref=23), BAD, 23),
        ("type 'ping\\u0000'", _frame(type="ping\u0000", ref=24), BAD, 24),
        ("type null", _frame(type=None, ref=25), BAD, 25),
        ("type 1", _frame(type=1, ref=26), BAD, 26),
        ("no type", _frame(ref=27), BAD, 27),
        ("trailing garbage", _frame(type="ping") + b" x", BAD, None),
        ("two objects", _frame(type="ping") + _frame(type="ping"), BAD, None),
        ("empty frame", b"", BAD, None),
        ("whitespace frame", b" \t\r\n ", BAD, None),
        ("null", b"null", BAD, None),
        ("0", b"0", BAD, None),
        ("string", b'"ping"', BAD, None),
        ("duplicate keys", b'{"type":"ping","type":"join","room":"hostile.dup","ref":28}', ANY, None),
        ("ref null", b'{"type":"ping","ref":null}', {"pong"}, None),
        ("unterminated string", b'{"type":"ping","ref":"abc', BAD, None),
        ("single quotes", b"{'type':'ping'}", BAD, None),
        ("comment", b'{"type":"ping"} // hi', BAD, None),
    ]
    required = {
        "auth": ["token"],
        "join": ["room"],
        "leave": ["room"],
        "publish": ["room", "data"],
        "refresh": ["token"],
        "history": ["room"],
    }
    sample = {"token": "x.y.z", "room": "hostile.shape", "data": 1}
    for kind, names in required.items():
        for name in names:
            good = {n: sample[n] for n in names}
            missing = {k: v for k, v in good.items() if k != name}
            expect = {"error:bad_request"}
            ref = f"{kind}-{name}"
            cases.append((f"{kind} without {name}", _frame(type=kind, ref=ref, **missing), expect, ref))
            for wrong in (None, 5, 1.5, True, [], {}, ["hostile.shape"]):
                if name == "data":
                    continue  # any JSON value is valid data
                frame = _frame(type=kind, **{**good, name: wrong}, ref=f"{kind}-{name}-{wrong!r}")
                cases.append((f"{kind} with {name}={wrong!r}", frame, expect, f"{kind}-{name}-{wrong!r}"))
    for wrong in (5, [], {}, True):
        cases.append((f"join with epoch={wrong!r}", _frame(type="join", room="hostile.shape", epoch=wrong), BAD, None))
        cases.append(
            (f"publish with id={wrong!r}", _frame(type="publish", room="hostile.shape", data=1, id=wrong), BAD, None)
        )
    return cases


def history_numbers() -> list[tuple[str, bytes, set[str] | None, Any]]:
    """`last` of a join, `before` and `limit` of a history request: every number that is not an
    integer in range (PROTOCOL.md 9.12), each with its ref; the bounds themselves are answered."""
    out: list[tuple[str, bytes, set[str] | None, Any]] = []
    bad = [b"0", b"-1", b"-0", b"1.5", b"1.0", b"1e2", b"1e400", b"-1e400", b"1" + b"0" * 400]
    bad += [b"9223372036854775808", b"18446744073709551616", b'"1"', b'"NaN"', b"true", b"false", b"[]", b"{}"]
    for kind, field in (("join", "last"), ("history", "before"), ("history", "limit")):
        room = f"hostile.{field}"
        for i, literal in enumerate(bad):
            ref = f"{field}-{i}"
            text = b'{"type":"%s","room":"%s","%s":%s,"ref":"%s"}' % (
                kind.encode(),
                room.encode(),
                field.encode(),
                literal,
                ref.encode(),
            )
            out.append((f"{kind} {field} {literal[:20]!r}", text, BAD, ref))
    # Above the node's max_history_page (100) but within the schema's ceiling: bad_request too.
    out.append(("join last 101", _frame(type="join", room="hostile.last.big", last=101, ref="l101"), BAD, "l101"))
    out.append(("history limit 101", _frame(type="history", room=ROOM, limit=101, ref="h101"), BAD, "h101"))
    # The bounds: answered.
    out.append(("join last 100", _frame(type="join", room="hostile.last.ok", last=100, ref="l100"), {"joined"}, "l100"))
    out.append(("history limit 100", _frame(type="history", room=ROOM, limit=100, ref="h100"), {"history"}, "h100"))
    out.append(("history before 1", _frame(type="history", room=ROOM, before=1, ref="b1"), {"history"}, "b1"))
    out.append(
        ("history before 2**63-1", _frame(type="history", room=ROOM, before=2**63 - 1, ref="bmax"), {"history"}, "bmax")
    )
    invalid = _frame(type="history", room="a.*", ref="hr")
    out.append(("history of an invalid room", invalid, {"error:invalid_room"}, "hr"))
    # null is "absent", as for every optional field (schemas/PROTOCOL.md 9.1).
    null = b'{"type":"history","room":"hostile.n","limit":null,"before":null,"ref":"hn"}'
    out.append(("history null limit and before", null, {"history"}, "hn"))
    return out


async def test_extreme_frames_get_one_valid_reply_on_an_open_connection(hostile: Hostile, cases: Cases) -> None:
    probe = FrameProbe(hostile)
    failures = []
    try:
        for name, payload, expect, ref in extreme_cases():
            assert len(payload) < MAX_FRAME, name
            problem = judge(await probe.exchange(payload), expect, ref)
            cases.add()
            if problem is not None:
                failures.append(f"{name}: {problem}")
    finally:
        probe.close()
    cases.note("check_after_extremes", await hostile.check("JSON frames (extremes)"))
    assert not failures, f"{len(failures)} frames not answered as they should be:\n" + "\n".join(failures)


async def test_http_publish_bodies_of_wrong_shapes(hostile: Hostile, cases: Cases) -> None:
    """The HTTP publish body is the same JSON: 10,000-deep nesting, huge numbers, NaN."""
    url = f"{hostile.http}/v1/rooms/hostile.http/messages"
    headers = {"Authorization": "Bearer " + token("hostile-http"), "Content-Type": "application/json"}
    bodies = [
        ("10,000-deep array", _nested(10_000), {400}),
        ("9,000-deep object", b'{"a":' * 9_000 + b"1" + b"}" * 9_000, {400}),
        ("NaN", b"NaN", {400}),
        ("two values", b"1 2", {400}),
        ("1e400", b"1e400", {201}),
        ("10**400", b"1" + b"0" * 400, {201}),
        ("lone surrogate escape", b'"\\ud800"', {400}),
    ]
    failures = []
    async with aiohttp.ClientSession() as http:
        for name, body, statuses in bodies:
            async with http.post(url, data=body, headers=headers) as response:
                text = await response.text()
                cases.add()
                if response.status not in statuses:
                    failures.append(f"{name}: HTTP {response.status} {text[:200]}")
                elif response.status == 400 and json.loads(text).get("code") != "bad_request":
                    failures.append(f"{name}: {text[:200]}")
    cases.note("check_after_http", await hostile.check("JSON frames (HTTP bodies)"))
    assert not failures, "\n".join(failures)


HISTORY_QUERIES = [
    "before=1e400",
    "before=" + "9" * 400,
    "limit=" + "1" * 21,
    "before=9223372036854775808",
    "before=18446744073709551616",
    "limit=NaN",
    "limit=Infinity",
    "limit=-0",
    "limit=0",
    "before=0",
    "limit=%00",
    "limit=1%00",
    "limit=%EF%BC%91",  # FULLWIDTH DIGIT ONE
    "limit=%D9%A1",  # ARABIC-INDIC DIGIT ONE
    "limit=%FF",
    "limit=%",
    "limit=1;limit=2",
    "limit=1&limit=1",
    "before=5&before=",
    "limit=+5",
    "limit=%2B5",
    "limit=%205",
    "limit=5%20",
    "limit=0x10",
    "limit=1_0",
    "limit=true",
    "limit=[1]",
    "limit=101",
    "before=" + "1" * 8000,
]
"""Query strings of GET /v1/rooms/<room>/messages that must get 400 `bad_request`."""


async def test_http_history_queries_of_wrong_shapes(hostile: Hostile, cases: Cases) -> None:
    """GET /v1/rooms/<room>/messages with `before` and `limit` of every wrong shape: 400 with a
    JSON `bad_request` body each time (never a 500), and the plain forms still answer 200."""
    url = f"{hostile.http}/v1/rooms/{ROOM}/messages"
    headers = {"Authorization": "Bearer " + token("hostile-http")}
    failures = []
    async with aiohttp.ClientSession() as http:
        for query in HISTORY_QUERIES:
            async with http.get(yarl.URL(f"{url}?{query}", encoded=True), headers=headers) as response:
                text = await response.text()
            cases.add()
            if response.status != 400 or json.loads(text).get("code") != "bad_request":
                failures.append(f"{query[:60]}: HTTP {response.status} {text[:200]}")
        for query in ("", "limit=100", "before=1", "before=9223372036854775807&limit=1", "unknown=1e400"):
            async with http.get(yarl.URL(f"{url}?{query}", encoded=True), headers=headers) as response:
                body = await response.json() if response.status == 200 else await response.text()
            cases.add()
            if response.status != 200 or set(body) != {"room", "epoch", "messages", "more"}:
                failures.append(f"{query!r}: HTTP {response.status} {str(body)[:200]}")
    cases.note("check_after_http_history", await hostile.check("JSON frames (HTTP history queries)"))
    assert not failures, "\n".join(failures)
