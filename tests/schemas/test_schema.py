"""The wire types against the contract: JSON Schema freshness, frame tags, codes, encoding rules.

The expected sets are copied from the contract (PROTOCOL.md sections 2 and 7)
so these tests run on a clean clone; the project's own schemas/PROTOCOL.md is
checked to mention every code.
"""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas import (
    Ack,
    Auth,
    ClientFrame,
    CloseCode,
    Error,
    ErrorCode,
    Expiring,
    Join,
    Joined,
    Leave,
    Left,
    Msg,
    Ping,
    Pong,
    Publish,
    Refresh,
    Refreshed,
    Reset,
    ServerFrame,
    Welcome,
)
from schemas.jsonschema import SCHEMA_PATH, check, main, render

PROJECT_PROTOCOL = Path(__file__).resolve().parents[2] / "schemas" / "PROTOCOL.md"

# PROTOCOL.md section 2 (and 9-12, version 1.1): frame type -> required fields, optional fields.
CLIENT_FRAMES: dict[str, tuple[set[str], set[str]]] = {
    "auth": ({"token"}, {"ref"}),
    "join": ({"room"}, {"since", "epoch", "last", "ref"}),
    "history": ({"room"}, {"before", "limit", "ref"}),
    "who": ({"room"}, {"ref"}),
    "leave": ({"room"}, {"ref"}),
    "publish": ({"room", "data"}, {"id", "ref"}),
    "ping": (set(), {"ref"}),
    "refresh": ({"token"}, {"ref"}),
}
SERVER_FRAMES: dict[str, tuple[set[str], set[str]]] = {
    "welcome": ({"session", "node", "heartbeat", "exp"}, {"features", "ref"}),
    "joined": ({"room", "epoch", "seq", "recovered"}, {"replayed", "ref"}),
    "history": ({"room", "epoch", "messages", "more"}, {"ref"}),
    "members": ({"room", "count", "connections", "members", "truncated"}, {"ref"}),
    "presence": ({"room", "joined", "left"}, set()),
    "msg": ({"room", "seq", "ts", "data"}, {"id", "from", "encoding"}),
    "left": ({"room"}, {"reason", "ref"}),
    "ack": ({"seq"}, {"duplicate", "ref"}),
    "reset": ({"room", "epoch", "seq"}, set()),
    "expiring": ({"exp"}, set()),
    "refreshed": ({"exp"}, {"ref"}),
    "pong": (set(), {"ref"}),
    "error": ({"code", "message"}, {"ref"}),
}
# PROTOCOL.md section 2.
ERROR_CODES = {
    "bad_request",
    "invalid_room",
    "forbidden",
    "not_joined",
    "too_many_rooms",
    "too_large",
    "rate_limited",
    "unavailable",
    "internal",
}
# PROTOCOL.md section 7 (the named codes; 4000-4499 and 4500-4999 are ranges).
CLOSE_CODES = {1000, 1001, 1006, 1009, 1011, 1012, 1013, 4001, 4008, 4009, 4029, 4500, 4501, 4503}
TERMINAL_CLOSE_CODES = {1000, 1009, 4500, 4501, 4503}

CLIENT_SAMPLES: list[bytes] = [
    b'{"type":"auth","token":"eyJ.a.b","ref":1}',
    b'{"type":"join","room":"chat.lobby"}',
    b'{"type":"join","room":"chat.lobby","since":41,"epoch":"1700000000000000","ref":"j1"}',
    b'{"type":"leave","room":"chat.lobby","ref":2}',
    b'{"type":"publish","room":"chat.lobby","data":{"text":"hi","n":[1,2.5,null]},"id":"m-1","ref":3}',
    b'{"type":"publish","room":"chat.lobby","data":null}',
    b'{"type":"ping"}',
    b'{"type":"refresh","token":"eyJ.c.d","ref":4}',
]
SERVER_SAMPLES: list[Any] = [
    Welcome(session="s1", node="n1", heartbeat=25.0, exp=1790000000, ref=1),
    Joined(room="chat.lobby", epoch="1700000000000000", seq=41, recovered=True, ref="j1"),
    Msg(room="chat.lobby", seq=42, ts=1790000000123, data=msgspec.Raw(b'{"text":"hi"}'), id="m-1", from_="alice"),
    Msg(room="chat.lobby", seq=43, ts=1790000000124, data=msgspec.Raw(b'"AAEC"'), encoding="base64"),
    Left(room="chat.lobby", ref=2),
    Left(room="chat.secret", reason="forbidden"),
    Ack(seq=42, ref=3),
    Ack(seq=42, duplicate=True, ref=3),
    Reset(room="chat.lobby", epoch="1700000000000001", seq=7),
    Expiring(exp=1790000000),
    Refreshed(exp=1790003600, ref=4),
    Pong(ref="p"),
    Error(code=ErrorCode.NOT_JOINED, message="not a member of 'x'", ref=5),
]

_decode_client = msgspec.json.Decoder(ClientFrame).decode
_decode_server = msgspec.json.Decoder(ServerFrame).decode
_encode = msgspec.json.Encoder().encode


def _union_members(union: Any) -> list[type[msgspec.Struct]]:
    return list(typing.get_args(union))


def _tag(cls: type[msgspec.Struct]) -> str:
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def _wire_fields(cls: type[msgspec.Struct]) -> tuple[set[str], set[str]]:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    required = {f.encode_name for f in info.fields if f.required}
    optional = {f.encode_name for f in info.fields if not f.required}
    return required, optional


# --- the generated schema ---------------------------------------------------


def test_committed_schema_is_current() -> None:
    assert SCHEMA_PATH.is_file(), "schemas/jetsock.schema.json is missing: run `make schema`"
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render(), (
        "schemas/jetsock.schema.json is out of date with schemas/frames.py and schemas/codes.py: run `make schema`"
    )


def test_check_reports_a_stale_or_missing_file(tmp_path: Path) -> None:
    assert check() is None
    assert main(["--check"]) == 0
    stale = tmp_path / "jetsock.schema.json"
    stale.write_text(render().replace("jetsock wire protocol v1", "something else"), encoding="utf-8")
    problem = check(stale)
    assert problem is not None and "make schema" in problem
    problem = check(tmp_path / "missing.json")
    assert problem is not None and "make schema" in problem


def test_render_is_deterministic_json() -> None:
    text = render()
    assert text == render()
    assert text.endswith("}\n") and not text.endswith("\n\n")
    document = json.loads(text)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["$id"] == "https://jetsock.dev/schemas/jetsock.v1.json"
    assert document["title"] == "jetsock wire protocol v1"
    assert json.dumps(document, indent=2, sort_keys=True) + "\n" == text


def test_schema_covers_every_frame_and_code() -> None:
    document = json.loads(render())
    defs = document["$defs"]
    assert {"$ref": "#/$defs/ClientFrame"} in document["anyOf"]
    assert {"$ref": "#/$defs/ServerFrame"} in document["anyOf"]
    for union, expected in (("ClientFrame", CLIENT_FRAMES), ("ServerFrame", SERVER_FRAMES)):
        mapping = defs[union]["discriminator"]["mapping"]
        assert set(mapping) == set(expected)
        assert len(defs[union]["anyOf"]) == len(expected)
        for tag, ref in mapping.items():
            frame = defs[ref.removeprefix("#/$defs/")]
            required, optional = expected[tag]
            assert frame["properties"]["type"] == {"enum": [tag]}
            assert set(frame["required"]) == required | {"type"}
            assert set(frame["properties"]) == required | optional | {"type"}
    assert set(defs["ErrorCode"]["enum"]) == ERROR_CODES
    assert set(defs["CloseCode"]["enum"]) == CLOSE_CODES
    assert len(defs["CloseCode"]["x-enum-descriptions"]) == len(CLOSE_CODES)
    assert all(defs["CloseCode"]["x-enum-descriptions"])


def _check_against_schema(instance: Any, defs: dict[str, Any]) -> None:
    """A small structural check of a frame against its $defs entry (tag, required, known fields, types)."""
    assert isinstance(instance, dict)
    union = defs["ServerFrame"] if instance["type"] in SERVER_FRAMES else defs["ClientFrame"]
    frame = defs[union["discriminator"]["mapping"][instance["type"]].removeprefix("#/$defs/")]
    assert set(frame["required"]) <= set(instance)
    assert set(instance) <= set(frame["properties"])
    simple = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict}
    for key, value in instance.items():
        prop = frame["properties"][key]
        if "$ref" in prop:
            assert value in defs[prop["$ref"].removeprefix("#/$defs/")]["enum"]
        elif "type" in prop:
            assert isinstance(value, simple[prop["type"]]), (key, value)
            assert prop["type"] != "integer" or not isinstance(value, bool)


def test_samples_match_the_schema() -> None:
    document = json.loads(render())
    defs = document["$defs"]
    instances = [json.loads(sample) for sample in CLIENT_SAMPLES]
    instances += [json.loads(_encode(frame)) for frame in SERVER_SAMPLES]
    for instance in instances:
        _check_against_schema(instance, defs)


def test_samples_validate_with_jsonschema_when_installed() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    document = json.loads(render())
    jsonschema.Draft202012Validator.check_schema(document)
    validator = jsonschema.Draft202012Validator(document)
    for sample in CLIENT_SAMPLES:
        validator.validate(json.loads(sample))
    for frame in SERVER_SAMPLES:
        validator.validate(json.loads(_encode(frame)))
    assert not validator.is_valid({"type": "join"})
    assert not validator.is_valid({"type": "nope"})


# --- frame types and codes against the contract ----------------------------


def test_client_frames_match_protocol() -> None:
    members = _union_members(ClientFrame)
    assert {_tag(cls) for cls in members} == set(CLIENT_FRAMES)
    for cls in members:
        assert _wire_fields(cls) == CLIENT_FRAMES[_tag(cls)], cls.__name__


def test_server_frames_match_protocol() -> None:
    members = _union_members(ServerFrame)
    assert {_tag(cls) for cls in members} == set(SERVER_FRAMES)
    for cls in members:
        assert _wire_fields(cls) == SERVER_FRAMES[_tag(cls)], cls.__name__


def test_frame_tags_are_unique_across_directions() -> None:
    """But `history`: the contract (section 9) names the request and its reply alike."""
    client = {_tag(cls) for cls in _union_members(ClientFrame)}
    server = {_tag(cls) for cls in _union_members(ServerFrame)}
    assert client & server == {"history"}


def test_codes_match_protocol() -> None:
    assert {code.value for code in ErrorCode} == ERROR_CODES
    assert {int(code) for code in CloseCode} == CLOSE_CODES
    assert {int(code) for code in CloseCode if not code.recoverable} == TERMINAL_CLOSE_CODES


def test_project_protocol_mentions_every_code() -> None:
    text = PROJECT_PROTOCOL.read_text(encoding="utf-8")
    for error in ErrorCode:
        assert f"`{error.value}`" in text, f"schemas/PROTOCOL.md does not mention error code {error.value}"
    for close in CloseCode:
        assert re.search(rf"\b{int(close)}\b", text), f"schemas/PROTOCOL.md does not mention close code {int(close)}"
    for frame_type in {**CLIENT_FRAMES, **SERVER_FRAMES}:
        assert f"`{frame_type}`" in text, f"schemas/PROTOCOL.md does not mention frame {frame_type}"


def test_project_protocol_keeps_every_contract_section() -> None:
    text = PROJECT_PROTOCOL.read_text(encoding="utf-8")
    for heading in (
        "## 1. Transport",
        "## 2. Frames",
        "## 3. Authentication",
        "## 4. Rooms, order and replay",
        "## 5. Publishing",
        "## 6. Liveness and flow control",
        "## 7. Close codes",
        "## 8. Operations surface",
    ):
        assert heading in text
    assert "jetsock's choices where the contract is silent" in text


# --- decoding and encoding -------------------------------------------------


@pytest.mark.parametrize("sample", CLIENT_SAMPLES)
def test_client_samples_round_trip(sample: bytes) -> None:
    frame = _decode_client(sample)
    assert _tag(type(frame)) == json.loads(sample)["type"]
    assert json.loads(_encode(frame)) == json.loads(sample)


@pytest.mark.parametrize("frame", SERVER_SAMPLES, ids=lambda f: type(f).__name__)
def test_server_samples_round_trip(frame: Any) -> None:
    encoded = _encode(frame)
    decoded = _decode_server(encoded)
    assert type(decoded) is type(frame)
    assert _encode(decoded) == encoded


def test_client_decoder_rejects_unknown_type_and_missing_fields() -> None:
    for bad in (b'{"type":"nope"}', b'{"room":"a"}', b'{"type":"join"}', b'{"type":"join","room":"a","since":-1}'):
        with pytest.raises(msgspec.ValidationError):
            _decode_client(bad)
    with pytest.raises(msgspec.ValidationError):
        _decode_client(b'{"type":"ping","ref":true}')


def test_client_decoder_ignores_unknown_fields() -> None:
    frame = _decode_client(b'{"type":"leave","room":"a","future":{"x":1}}')
    assert frame == Leave(room="a")


def test_msg_splices_raw_data_byte_for_byte() -> None:
    data = b'{ "b" : [1, 2.50, "\\u00e9"],  "a":null }'
    encoded = _encode(Msg(room="r", seq=1, ts=2, data=msgspec.Raw(data)))
    assert data in encoded
    assert encoded == b'{"type":"msg","room":"r","seq":1,"ts":2,"data":' + data + b"}"


def test_publish_keeps_raw_data_byte_for_byte() -> None:
    data = b'[1,  {"x" : 1e3}]'
    frame = _decode_client(b'{"type":"publish","room":"r","data":' + data + b"}")
    assert isinstance(frame, Publish)
    assert bytes(frame.data) == data


def test_from_is_encoded_as_from() -> None:
    encoded = json.loads(_encode(Msg(room="r", seq=1, ts=2, data=msgspec.Raw(b"1"), from_="alice")))
    assert encoded["from"] == "alice"
    assert "from_" not in encoded
    decoded = _decode_server(b'{"type":"msg","room":"r","seq":1,"ts":2,"data":1,"from":"bob"}')
    assert isinstance(decoded, Msg) and decoded.from_ == "bob"


def test_optional_none_fields_are_omitted() -> None:
    assert json.loads(_encode(Msg(room="r", seq=1, ts=2, data=msgspec.Raw(b"{}")))) == {
        "type": "msg",
        "room": "r",
        "seq": 1,
        "ts": 2,
        "data": {},
    }
    assert _encode(Ack(seq=5)) == b'{"type":"ack","seq":5}'
    assert _encode(Pong()) == b'{"type":"pong"}'
    assert _encode(Left(room="r")) == b'{"type":"left","room":"r"}'
    assert _encode(Error(code=ErrorCode.INTERNAL, message="m")) == b'{"type":"error","code":"internal","message":"m"}'
    assert b"null" not in _encode(Join(room="r"))


def test_frames_are_reexported() -> None:
    for cls in (Auth, Join, Leave, Publish, Ping, Refresh):
        assert cls in _union_members(ClientFrame)
    for cls in (Welcome, Joined, Msg, Left, Ack, Reset, Expiring, Refreshed, Pong, Error):
        assert cls in _union_members(ServerFrame)
