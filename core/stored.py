"""A room message as the stream stored it, ready to be framed for delivery.

`data` is always valid JSON text: a payload that is JSON is kept byte for byte;
one that is not becomes a JSON string when it is UTF-8, else base64 with
`encoding = "base64"` (PROTOCOL.md section 5). The check runs once per message
per node, not once per member.
"""

from __future__ import annotations

import base64
import calendar
from collections.abc import Mapping

import msgspec
from nats.js.api import Header

from core.position import MAX_SEQUENCE

FROM_HEADER = "Jetsock-From"
ID_HEADER = "Jetsock-Id"
MSG_ID_HEADER: str = Header.MSG_ID.value
# nats-py names no constant for the headers RePublish and direct get add.
SEQUENCE_HEADER = "Nats-Sequence"
LAST_SEQUENCE_HEADER = "Nats-Last-Sequence"
TIMESTAMP_HEADER = "Nats-Time-Stamp"
SUBJECT_HEADER = "Nats-Subject"

_json_encode = msgspec.json.encode


class StoredMessage(msgspec.Struct, frozen=True):
    room: str
    seq: int
    ts: int
    """Stored time, unix milliseconds."""
    data: bytes
    """Valid JSON text."""
    id: str | None = None
    sender: str | None = None
    encoding: str | None = None
    traceparent: str | None = None
    """W3C trace context of the publish, when the publisher sent one (delivery spans link to it)."""


def normalize_payload(payload: bytes) -> tuple[bytes, str | None]:
    """The payload as JSON text, and the encoding when it had to be wrapped."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        # JSON text is UTF-8 (RFC 8259); msgspec does not check the bytes inside strings.
        return _json_encode(base64.b64encode(payload).decode("ascii")), "base64"
    if payload:
        try:
            msgspec.json.decode(payload, type=msgspec.Raw)
            return payload, None
        except msgspec.DecodeError:
            pass
    return _json_encode(text), None


def parse_timestamp_ms(text: str) -> int:
    """RFC 3339 with up to nanoseconds (`2026-11-24T21:19:49.492953324Z`) to unix ms."""
    # Runs once per message per node: slicing the fixed layout is several
    # times cheaper than datetime parsing, and nanoseconds need truncating anyway.
    try:
        date, _, clock = text.partition("T")
        year, month, day = (int(p) for p in date.split("-"))
        zone_at = max(clock.find("Z"), clock.find("+"), clock.rfind("-"))
        body, zone = (clock[:zone_at], clock[zone_at:]) if zone_at > 0 else (clock, "Z")
        hms, _, fraction = body.partition(".")
        hour, minute, second = (int(p) for p in hms.split(":"))
        millis = int((fraction + "000")[:3]) if fraction else 0
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
        if zone not in ("Z", "z"):
            sign = 1 if zone[0] == "+" else -1
            zh, zm = zone[1:].split(":")
            seconds -= sign * (int(zh) * 3600 + int(zm) * 60)
        return seconds * 1000 + millis
    except (ValueError, IndexError):
        return 0


_MAX_DIGITS = len(str(MAX_SEQUENCE))


def parse_sequence(text: str | None) -> int | None:
    """A sequence header's value as an int, or None when it is absent or not one.

    Headers on `live.rooms.>` and in replies come from the network: anything
    but 1 to 20 ASCII digits within JetStream's 64-bit range is refused here,
    so a bad header costs its message and nothing else.
    """
    if text is None or not 0 < len(text) <= _MAX_DIGITS or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= MAX_SEQUENCE else None


def message_id(headers: Mapping[str, str]) -> str | None:
    """The publisher's idempotency key: the client's own id, else the backend's Nats-Msg-Id."""
    return headers.get(ID_HEADER) or headers.get(MSG_ID_HEADER) or None


TRACEPARENT_HEADER = "traceparent"


def stored_message(room: str, seq: int, headers: Mapping[str, str] | None, payload: bytes) -> StoredMessage:
    headers = headers or {}
    data, encoding = normalize_payload(payload)
    return StoredMessage(
        room=room,
        seq=seq,
        ts=parse_timestamp_ms(headers.get(TIMESTAMP_HEADER, "")),
        data=data,
        id=message_id(headers),
        sender=headers.get(FROM_HEADER) or None,
        encoding=encoding,
        traceparent=headers.get(TRACEPARENT_HEADER) or None,
    )
