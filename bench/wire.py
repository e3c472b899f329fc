"""A lean WebSocket client protocol for the load generator (RFC 6455, client side).

Tens of thousands of sockets in one process leave no room for a task, a
reader and a parser object per socket, so each connection is one
`asyncio.Protocol` that parses frames in `data_received` and hands text
payloads to a callback. Both systems under test are driven through this same
class, so the client's cost is the same for both.

Client frames must be masked; the key is all zeros, which RFC 6455 allows (a
server cannot tell), and saves an XOR of every payload in Python.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

_MASK_ZERO = b"\0\0\0\0"
_OP_TEXT = 0x1
_OP_CLOSE = 0x8
_OP_PING = 0x9
_OP_PONG = 0xA
_HANDSHAKE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample key: the server does not care


def handshake(host: str, port: int, path: str, subprotocols: str = "") -> bytes:
    """The upgrade request for `path` on host:port, with an optional Sec-WebSocket-Protocol."""
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
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked (zero key) client frame."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return header + _MASK_ZERO + payload


class WsProtocol(asyncio.Protocol):
    """One client WebSocket: `upgraded` resolves after 101; text payloads go to `on_text`."""

    __slots__ = ("_buffer", "_request", "_upgraded", "close_code", "closed", "on_close", "on_text", "transport")

    def __init__(
        self,
        request: bytes,
        on_text: Callable[[bytes], None],
        on_close: Callable[[int | None], None],
    ) -> None:
        self._request = request
        self.on_text = on_text
        self.on_close = on_close
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

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._upgraded.done():
            self._upgraded.set_exception(exc or ConnectionError("closed before the upgrade"))
            self._upgraded.exception()  # marked retrieved: the opener may have timed out already
        self.on_close(self.close_code)
