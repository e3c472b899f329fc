"""Stored messages: payload normalisation to JSON text, and NATS timestamps."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from core.stored import (
    FROM_HEADER,
    ID_HEADER,
    MSG_ID_HEADER,
    TIMESTAMP_HEADER,
    message_id,
    normalize_payload,
    parse_timestamp_ms,
    stored_message,
)

FAST = settings(max_examples=400, deadline=None)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(data: bytes) -> Any:
    """Interoperable JSON (RFC 8259 / I-JSON): UTF-8 text, no NaN/Infinity, no raw control
    characters in strings, no lone surrogate escapes."""
    value = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # UnicodeEncodeError on a lone surrogate
    return value


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def is_strict_json(data: bytes) -> bool:
    try:
        strict_json(data)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return False
    return True


def check_round_trip(payload: bytes) -> None:
    """`data` is valid JSON; JSON payloads are kept as they are, others decode back to the payload."""
    data, encoding = normalize_payload(payload)
    value = strict_json(data)
    if encoding == "base64":
        assert base64.b64decode(value, validate=True) == payload
        return
    assert encoding is None
    if data == payload:
        return  # kept: valid JSON as checked above
    assert not is_strict_json(payload), "a JSON payload must be kept byte for byte"
    assert isinstance(value, str)
    assert value.encode("utf-8") == payload


# ----------------------------------------------------------- normalize_payload


def test_json_is_kept_byte_for_byte() -> None:
    for payload in (
        b'{"a":1}',
        b'{ "a" : [1, 2.5e3, true, null] }',
        b"  [1,\n 2]\t\n",
        b'"just a string"',
        b"42",
        b"-0.0",
        b"null",
        b'{"nested":{"x":"\\u00e9\\n"}}',
        '{"é":"ünïcode ✓"}'.encode(),
    ):
        assert normalize_payload(payload) == (payload, None), payload


def test_utf8_text_becomes_a_json_string() -> None:
    assert normalize_payload(b"hello") == (b'"hello"', None)
    assert normalize_payload(b"{not json") == (b'"{not json"', None)
    data, encoding = normalize_payload('héllo "quoted"\n'.encode())
    assert encoding is None
    assert json.loads(data) == 'héllo "quoted"\n'
    # NaN is not JSON even though Python's json module reads it.
    assert normalize_payload(b"NaN") == (b'"NaN"', None)


def test_invalid_utf8_becomes_base64() -> None:
    payload = b"\xff\xfe\x00binary"
    data, encoding = normalize_payload(payload)
    assert encoding == "base64"
    assert base64.b64decode(json.loads(data)) == payload


def test_json_with_invalid_utf8_inside_a_string_is_not_kept() -> None:
    # JSON text is UTF-8 (RFC 8259 section 8.1). These payloads have JSON's shape
    # but bytes that are not UTF-8 inside a string, so they are not JSON: kept
    # as they are, they would reach clients inside WebSocket text frames, which
    # must be valid UTF-8. Each must come out as valid JSON that decodes back.
    for payload in (b'"\x80"', b'{"a":"\xff"}', b'["ok","\xed\xa0\x80"]', b'"\xc3"'):
        data, encoding = normalize_payload(payload)
        assert is_utf8(data), f"normalize_payload({payload!r}) kept bytes that are not UTF-8 as JSON: {data!r}"
        assert encoding == "base64", (payload, data)
        assert base64.b64decode(json.loads(data)) == payload


def test_empty_payload_is_the_empty_string() -> None:
    assert normalize_payload(b"") == (b'""', None)


@FAST
@given(st.binary(max_size=64))
def test_any_bytes_give_valid_json_that_decodes_back(payload: bytes) -> None:
    check_round_trip(payload)


@FAST
@given(st.text(max_size=64))
def test_any_text_gives_valid_json_that_decodes_back(text: str) -> None:
    payload = text.encode("utf-8", "surrogatepass")
    check_round_trip(payload)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=12,
)


@FAST
@given(JSON_VALUES, st.booleans())
def test_any_json_document_is_kept(value: Any, pretty: bool) -> None:
    payload = json.dumps(value, indent=2 if pretty else None, ensure_ascii=False).encode()
    assert normalize_payload(payload) == (payload, None)


@FAST
@given(st.sampled_from([b'"', b"{", b"[", b'{"a":']), st.binary(max_size=16), st.sampled_from([b'"', b"}", b"]", b""]))
def test_json_lookalikes_with_raw_bytes_inside(head: bytes, body: bytes, tail: bytes) -> None:
    payload = head + body + tail
    check_round_trip(payload)


def test_stored_message_from_headers() -> None:
    headers = {
        TIMESTAMP_HEADER: "2026-11-24T21:19:49.492953324Z",
        ID_HEADER: "client-id",
        MSG_ID_HEADER: "backend-id",
        FROM_HEADER: "alice",
    }
    message = stored_message("room.a", 42, headers, b"plain")
    assert (message.room, message.seq, message.data, message.encoding) == ("room.a", 42, b'"plain"', None)
    assert message.id == "client-id"
    assert message.sender == "alice"
    assert message.ts == int(datetime(2026, 11, 24, 21, 19, 49, 492000, tzinfo=UTC).timestamp() * 1000)
    bare = stored_message("r", 1, None, b"{}")
    assert (bare.ts, bare.id, bare.sender, bare.data) == (0, None, None, b"{}")
    assert message_id({MSG_ID_HEADER: "backend-id"}) == "backend-id"
    assert message_id({ID_HEADER: ""}) is None


# ----------------------------------------------------------- parse_timestamp_ms


@st.composite
def timestamps(draw: st.DrawFn) -> tuple[str, int]:
    """RFC 3339 text with 0-9 fractional digits and Z or +hh:mm/-hh:mm, and its unix ms."""
    local = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
    digits = draw(st.text("0123456789", min_size=0, max_size=9))
    offset_minutes = draw(st.one_of(st.none(), st.integers(-(23 * 60 + 59), 23 * 60 + 59)))
    text = f"{local.year:04d}-{local.month:02d}-{local.day:02d}T{local.hour:02d}:{local.minute:02d}:{local.second:02d}"
    if digits:
        text += "." + digits
    micro = int((digits + "000000")[:6])
    if offset_minutes is None:
        text += "Z"
        zone = UTC
    else:
        sign = "-" if offset_minutes < 0 else "+"
        text += f"{sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"
        zone = timezone(timedelta(minutes=offset_minutes))
    moment = local.replace(microsecond=micro, tzinfo=zone)
    return text, (moment - EPOCH) // timedelta(milliseconds=1)


@FAST
@given(timestamps())
def test_timestamps_agree_with_datetime(case: tuple[str, int]) -> None:
    text, expected = case
    assert parse_timestamp_ms(text) == expected, text


def test_timestamp_examples() -> None:
    assert parse_timestamp_ms("1970-01-01T00:00:00Z") == 0
    assert parse_timestamp_ms("1970-01-01T00:00:01.5Z") == 1500
    assert parse_timestamp_ms("2026-11-24T21:19:49.492953324Z") == 1795555189492
    assert parse_timestamp_ms("2026-11-24T22:19:49.492953324+01:00") == 1795555189492
    assert parse_timestamp_ms("2026-11-24T16:19:49.492953324-05:00") == 1795555189492
    # Python's own parser agrees where it can read the text.
    text = "2024-02-29T23:59:59.999+05:30"
    assert parse_timestamp_ms(text) == int(datetime.fromisoformat(text).timestamp() * 1000)


def test_garbage_timestamps_are_zero() -> None:
    for text in (
        "",
        "garbage",
        "T",
        "2026-11-24",
        "2026-11-24T",
        "T21:19:49Z",
        "2026-11-24T21:19Z",
        "2026-11T21:19:49Z",
        "2026-11-24T21:19:49+0100",
        "2026-11-24T21:19:49.abcZ",
        "2026-13-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "yyyy-mm-ddThh:mm:ssZ",
        "2026-11-24T21:19:49+01",
    ):
        assert parse_timestamp_ms(text) == 0, text


@FAST
@given(st.text(max_size=40))
def test_any_text_parses_to_an_int_without_raising(text: str) -> None:
    assert isinstance(parse_timestamp_ms(text), int)


@FAST
@given(st.from_regex(r"\A[0-9T:.+\-Z]{0,40}\Z"))
def test_timestamp_shaped_text_parses_to_an_int_without_raising(text: str) -> None:
    assert isinstance(parse_timestamp_ms(text), int)
