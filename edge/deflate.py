"""permessage-deflate (RFC 7692) at fan-out cost: each room message compressed once per node.

Negotiation: the edge accepts the first `permessage-deflate` offer it can honour and
answers it with `server_no_context_takeover; client_no_context_takeover`, so neither
side keeps compression state between messages. It cannot honour an offer whose
`server_max_window_bits` is below 15 (its one compressor uses the full window) or one
with a parameter RFC 7692 does not define (or one given twice, or a bad value); such
offers are declined and the connection opens uncompressed, as the RFC asks.

Sending: the edge's `Framing` for such connections (`DeflateFraming`) compresses room
messages of at least `compress_min_bytes` (replayed ones included) and frames every
other frame (replies, small messages) plainly. The hub groups a room's members by
framing, so a room message is compressed once per node and the same bytes go to every
member that negotiated it. One compressor serves the node: a full flush after every
message resets it, so each message stands alone (what no context takeover promises)
and no state is kept per connection.

Receiving: a client's compressed frame is inflated by the frame reader (aiohttp's
pure-Python reader, edge/ws.py `StatelessInflateReader`) with its output bounded by
`max_frame_bytes` while inflating: a bomb is stopped (1009) after at most that many
bytes, not after inflating it all. The reader drops its inflater after each message, so
an idle connection holds none (a shared one would be cheaper, but a client's
back-references could then read what another connection's message left in its window).
Data that does not inflate closes with 1002. A frame with RSV1 on a connection that did
not negotiate compression is a protocol error: close 1002, as for any reserved bit. RSV1 on
a control frame of a compressing connection is ignored, the frame read as it is and never
inflated (aiohttp's reader's choice, for interoperability; PROTOCOL.md 9.15).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from edge.framing import Framing
from edge.wsframe import PING_FRAME, compressed_text_frame, text_frame

EXTENSION = "permessage-deflate"
ACCEPTED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
"""The answer to every offer the edge takes (RFC 7692 7.1)."""

_FLAGS = {"server_no_context_takeover", "client_no_context_takeover"}
_TAIL = b"\x00\x00\xff\xff"
"""What a sync or full flush ends with; RFC 7692 7.2.1 has the sender drop it."""


def _window_bits(value: str | None, *, optional: bool) -> bool:
    if value is None:
        return optional
    return value.isdigit() and len(value) <= 2 and 8 <= int(value) <= 15


def accepts(header_values: list[str]) -> bool:
    """True when one of the client's offers (all its Sec-WebSocket-Extensions values) can be honoured."""
    for header in header_values:
        for offer in header.split(","):
            if _acceptable(offer):
                return True
    return False


def _acceptable(offer: str) -> bool:
    name, *params = [part.strip() for part in offer.split(";")]
    if name.lower() != EXTENSION:
        return False
    seen: set[str] = set()
    for param in params:
        key, _, value = param.partition("=")
        key = key.strip().lower()
        raw: str | None = value.strip().strip('"') if value else None
        if key in seen:
            return False
        seen.add(key)
        if key in _FLAGS:
            if raw is not None:
                return False
        elif key == "client_max_window_bits":
            if not _window_bits(raw, optional=True):
                return False
        elif key == "server_max_window_bits":
            # One compressor with the full window serves the node: a smaller window cannot be promised.
            if raw != "15":
                return False
        else:
            return False
    return True


@dataclass
class DeflateCounters:
    """What compression did on this node (for the metrics)."""

    messages: int = 0
    raw_bytes: int = 0
    """Payload bytes of the messages compressed."""
    compressed_bytes: int = 0
    """Their compressed size."""


class DeflateFraming(Framing):
    """The framing of connections that negotiated permessage-deflate."""

    __slots__ = ("_compressor", "counters", "min_bytes")

    def __init__(self, min_bytes: int, level: int) -> None:
        super().__init__("websocket+deflate", text_frame, PING_FRAME)
        self.min_bytes = min_bytes
        self.counters = DeflateCounters()
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        self.message = self._message

    def _message(self, payload: bytes) -> bytes:
        if len(payload) < self.min_bytes:
            return text_frame(payload)
        compressor = self._compressor
        # A full flush resets the compressor: the next message does not refer back to this one.
        data = compressor.compress(payload) + compressor.flush(zlib.Z_FULL_FLUSH)
        if data.endswith(_TAIL):
            data = data[: -len(_TAIL)]
        counters = self.counters
        counters.messages += 1
        counters.raw_bytes += len(payload)
        counters.compressed_bytes += len(data)
        return compressed_text_frame(data)
