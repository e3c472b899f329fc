"""Server-to-client WebSocket frames as bytes (RFC 6455 section 5.2).

Frames from a server are not masked, and compression keeps no context
(edge/deflate.py), so a frame is a fixed function of its payload: a room
message is framed (and compressed) once and the same bytes go to every
member's socket that uses that framing.
"""

from __future__ import annotations

import struct

_FIN_TEXT = 0x81
_FIN_TEXT_COMPRESSED = 0xC1
"""FIN, RSV1 (RFC 7692: "Per-Message Compressed"), opcode text."""
_FIN_PING = 0x89
_FIN_PONG = 0x8A

PING_FRAME = bytes((_FIN_PING, 0))


def _header(first: int, length: int) -> bytes:
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def text_frame(payload: bytes) -> bytes:
    """A complete, final text frame carrying `payload` (UTF-8 JSON)."""
    return _header(_FIN_TEXT, len(payload)) + payload


def compressed_text_frame(deflated: bytes) -> bytes:
    """A final text frame whose payload is a permessage-deflate compressed message (RSV1 set)."""
    return _header(_FIN_TEXT_COMPRESSED, len(deflated)) + deflated


def pong_frame(payload: bytes) -> bytes:
    """The reply to a client's ping, echoing its application data (at most 125 bytes)."""
    return _header(_FIN_PONG, len(payload)) + payload


_FIN_CLOSE = 0x88
MAX_REASON_BYTES = 123
"""RFC 6455 5.5: a control frame's payload is at most 125 bytes, two of them the code."""


def close_frame(code: int, reason: str = "") -> bytes:
    """The close frame with `code` and `reason` (cut to MAX_REASON_BYTES without splitting a character)."""
    text = reason.encode("utf-8")[:MAX_REASON_BYTES].decode("utf-8", "ignore").encode("utf-8")
    payload = struct.pack("!H", code) + text
    return _header(_FIN_CLOSE, len(payload)) + payload
