"""A lean WebSocket client protocol for the load generator (RFC 6455, client side).

Tens of thousands of sockets in one process leave no room for a task, a
reader and a parser object per socket, so each connection is one
`asyncio.Protocol` that parses frames in `data_received` and hands text
payloads to a callback. Both systems under test are driven through this same
class, so the client's cost is the same for both.

Client frames must be masked; the key is all zeros, which RFC 6455 allows (a
server cannot tell), and saves an XOR of every payload in Python.

permessage-deflate (RFC 7692), when asked (`deflate`): the upgrade offers it as
Chromium does, and if the server takes it, compressed frames (RSV1) are
inflated before `on_text`: with a fresh inflater per message when the server
promised `server_no_context_takeover` (jetsock), with one kept for the
connection when it did not (python-socketio on aiohttp compresses with context
takeover, so its messages can only be read in order by one inflater). A client
that only counts (`on_compressed`) gets a compressed frame's size instead, not
inflated: jetsock compresses room messages only (PROTOCOL.md 9.15), so a
compressed frame from it is a delivery. What the client sends is compressed
(every message, as Chromium does) by one compressor for the process, with a full
flush after each message, so no message refers to another (what either side's
no context takeover allows) and no socket holds compression state.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Callable

_MASK_ZERO = b"\0\0\0\0"
_OP_TEXT = 0x1
_OP_CLOSE = 0x8
_OP_PING = 0x9
_OP_PONG = 0xA
_HANDSHAKE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample key: the server does not care
_RSV1 = 0x40
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
"""What Chromium offers (and the `websockets` library, and Node's `ws`)."""
_TAIL = b"\x00\x00\xff\xff"
SEND_MIN_BYTES = 1
"""Client messages at least this long are compressed on a compressing connection: all of them, as Chromium does."""
_compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)


def deflate_message(payload: bytes) -> bytes:
    """`payload` as one permessage-deflate message that stands alone (full flush, tail dropped)."""
    data = _compressor.compress(payload) + _compressor.flush(zlib.Z_FULL_FLUSH)
    return data[:-4] if data.endswith(_TAIL) else data


def handshake(host: str, port: int, path: str, subprotocols: str = "", deflate: bool = False) -> bytes:
    """The upgrade request for `path` on host:port, with an optional Sec-WebSocket-Protocol and deflate offer."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {_HANDSHAKE_KEY}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocols:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocols}")
    if deflate:
        lines.append(f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(opcode: int, payload: bytes, compressed: bool = False) -> bytes:
    """A final, masked (zero key) client frame; `compressed` sets RSV1 (the payload is deflated already)."""
    length = len(payload)
    first = 0x80 | opcode | (_RSV1 if compressed else 0)
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    return header + _MASK_ZERO + payload


def _deflate_answer(head: bytes) -> str | None:
    """The Sec-WebSocket-Extensions of a 101's head when it takes permessage-deflate, else None."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-extensions" and b"permessage-deflate" in value.lower():
            return value.strip().decode("latin-1").lower()
    return None


class WsProtocol(asyncio.Protocol):
    """One client WebSocket: `upgraded` resolves after 101; text payloads go to `on_text`."""

    __slots__ = (
        "_buffer",
        "_inflater",
        "_request",
        "_upgraded",
        "close_code",
        "closed",
        "deflate",
        "frame_bytes",
        "on_close",
        "on_compressed",
        "on_text",
        "server_takeover",
        "transport",
    )

    def __init__(
        self,
        request: bytes,
        on_text: Callable[[bytes], None],
        on_close: Callable[[int | None], None],
        on_compressed: Callable[[int], None] | None = None,
    ) -> None:
        self._request = request
        self.on_text = on_text
        self.on_close = on_close
        self.on_compressed = on_compressed
        """Given a compressed text frame's size on the wire instead of its inflated payload (see the module)."""
        self.deflate = False
        """The server took the permessage-deflate offer."""
        self.server_takeover = False
        """...and keeps its compression context between messages (no server_no_context_takeover)."""
        self._inflater: zlib._Decompress | None = None
        self.frame_bytes = 0
        """The size on the wire (header included) of the frame `on_text` is handed."""
        self._buffer = b""
        self._upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.close_code: int | None = None
        self.closed = False

    @property
    def upgraded(self) -> asyncio.Future[None]:
        return self._upgraded

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def send_text(self, payload: bytes) -> None:
        if self.transport is not None and not self.closed:
            if self.deflate and len(payload) >= SEND_MIN_BYTES:
                self.transport.write(client_frame(_OP_TEXT, deflate_message(payload), compressed=True))
            else:
                self.transport.write(client_frame(_OP_TEXT, payload))

    def close(self, code: int = 1000) -> None:
        """Send a close frame and drop the socket without waiting for the server's reply."""
        if self.transport is not None and not self.closed:
            self.transport.write(client_frame(_OP_CLOSE, struct.pack("!H", code)))
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        if not self._upgraded.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = buffer
                return
            status = buffer[: buffer.find(b"\r\n")]
            if b" 101 " not in status:
                self._upgraded.set_exception(ConnectionError(status.decode(errors="replace")))
                self._buffer = b""
                assert self.transport is not None
                self.transport.close()
                return
            answer = _deflate_answer(buffer[:end])
            if answer is not None:
                self.deflate = True
                self.server_takeover = "server_no_context_takeover" not in answer
            self._upgraded.set_result(None)
            buffer = buffer[end + 4 :]
        self._buffer = self._frames(buffer)

    def _frames(self, buffer: bytes) -> bytes:
        """Handle every complete frame in `buffer`; return the incomplete rest."""
        start = 0
        size = len(buffer)
        on_text = self.on_text
        while size - start >= 2:
            first = buffer[start]
            length = buffer[start + 1] & 0x7F
            offset = start + 2
            if length == 126:
                if size - offset < 2:
                    break
                (length,) = struct.unpack_from("!H", buffer, offset)
                offset += 2
            elif length == 127:
                if size - offset < 8:
                    break
                (length,) = struct.unpack_from("!Q", buffer, offset)
                offset += 8
            end = offset + length
            if end > size:
                break
            opcode = first & 0x0F
            if opcode == _OP_TEXT:
                self.frame_bytes = end - start
                if first & _RSV1:
                    if self.on_compressed is not None and not self.server_takeover:
                        self.on_compressed(end - start)
                    else:
                        on_text(self._inflate(buffer[offset:end]))
                else:
                    on_text(buffer[offset:end])
            elif opcode == _OP_PING:
                assert self.transport is not None
                self.transport.write(client_frame(_OP_PONG, buffer[offset:end]))
            elif opcode == _OP_CLOSE:
                if length >= 2:
                    (self.close_code,) = struct.unpack_from("!H", buffer, offset)
                self.close(self.close_code or 1000)
                return b""
            start = end
        return buffer[start:] if start else buffer

    def _inflate(self, data: bytes) -> bytes:
        inflater = self._inflater
        if inflater is None:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            if self.server_takeover:
                self._inflater = inflater  # the next message may refer back to this one
        return inflater.decompress(data + _TAIL)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._upgraded.done():
            self._upgraded.set_exception(exc or ConnectionError("closed before the upgrade"))
            self._upgraded.exception()  # marked retrieved: the opener may have timed out already
        self.on_close(self.close_code)
