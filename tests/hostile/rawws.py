"""A bare RFC 6455 client on an asyncio stream: any frame, any bits, any length, any order.

aiohttp's client only sends well-formed frames; the hostile suite needs to send
fragments, unmasked frames, lying lengths and invalid UTF-8, so it writes the
bytes itself. Client frames are masked unless told otherwise (RFC 6455 5.3).
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import zlib
from dataclasses import dataclass

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    mask: bool = True,
    rsv: int = 0,
    length: int | None = None,
) -> bytes:
    """One WebSocket frame; `length` overrides the declared payload length (to lie about it)."""
    declared = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode
    mask_bit = 0x80 if mask else 0
    if declared < 126:
        head = bytes((first, mask_bit | declared))
    elif declared < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, declared)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, declared)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if len(payload) < 4096 else _mask(payload, key)
    return head + key + masked


def _mask(payload: bytes, key: bytes) -> bytes:
    # Whole-integer XOR: fast for large payloads.
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def deflate(payload: bytes, level: int = 6) -> bytes:
    """`payload` as one permessage-deflate message (RFC 7692 7.2.1: sync flush, its 4-byte tail dropped)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def inflate(data: bytes) -> bytes:
    """A permessage-deflate message's payload, inflated on its own (no context takeover)."""
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data + b"\x00\x00\xff\xff")


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes
    rsv: int = 0
    """RSV1..RSV3 as three bits (RSV1 = 4: permessage-deflate's "compressed", RFC 7692)."""
    raw: bytes = b""
    """The frame's bytes as they came off the socket, header included."""

    @property
    def compressed(self) -> bool:
        return bool(self.rsv & 4)

    def text(self) -> bytes:
        """The message's payload, inflated when RSV1 is set (no context takeover: each stands alone)."""
        return inflate(self.payload) if self.compressed else self.payload

    @property
    def close_code(self) -> int | None:
        if self.opcode != OP_CLOSE:
            return None
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else 1005


class RawWS:
    """One TCP connection that has (or has not) been upgraded to a WebSocket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.response_head = b""

    @classmethod
    async def open(
        cls,
        port: int,
        protocols: tuple[str, ...] = ("jetsock.v1",),
        headers: tuple[tuple[str, str], ...] = (),
        path: str = "/ws",
        host: str = "127.0.0.1",
    ) -> RawWS:
        """Connect and send the upgrade request; `status` is the HTTP status of the answer."""
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        ws = cls(reader, writer)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if protocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
        lines += [f"{name}: {value}" for name, value in headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            ws.response_head = await reader.readuntil(b"\r\n\r\n")
            ws.status = int(ws.response_head.split(b" ", 2)[1])
        except (asyncio.IncompleteReadError, ConnectionError, IndexError, ValueError):
            ws.status = 0
        return ws

    @property
    def upgraded(self) -> bool:
        return self.status == 101

    def header(self, name: str) -> str | None:
        """A header of the upgrade's answer (the first one of that name), or None."""
        wanted = name.lower().encode()
        for line in self.response_head.split(b"\r\n")[1:]:
            key, sep, value = line.partition(b":")
            if sep and key.strip().lower() == wanted:
                return value.strip().decode("latin-1")
        return None

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def send(self, opcode: int, payload: bytes, **kw: object) -> None:
        self.writer.write(frame(opcode, payload, **kw))  # type: ignore[arg-type]
        await self.writer.drain()

    async def send_text(self, payload: bytes | str) -> None:
        await self.send(OP_TEXT, payload.encode() if isinstance(payload, str) else payload)

    async def read_frame(self, timeout: float = 10.0) -> Frame | None:
        """The next frame from the server, or None at end of stream."""
        try:
            async with asyncio.timeout(timeout):
                head = await self.reader.readexactly(2)
                fin, opcode, length = bool(head[0] & 0x80), head[0] & 0x0F, head[1] & 0x7F
                extended = b""
                if length == 126:
                    extended = await self.reader.readexactly(2)
                    (length,) = struct.unpack("!H", extended)
                elif length == 127:
                    extended = await self.reader.readexactly(8)
                    (length,) = struct.unpack("!Q", extended)
                payload = await self.reader.readexactly(length) if length else b""
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return Frame(fin, opcode, payload, (head[0] >> 4) & 0x7, head + extended + payload)

    async def until_close(self, timeout: float = 10.0) -> tuple[int | None, list[Frame]]:
        """Read until the server's close frame (its code) or end of stream (None); the frames before it."""
        seen: list[Frame] = []
        async with asyncio.timeout(timeout):
            while True:
                got = await self.read_frame(timeout)
                if got is None:
                    return None, seen
                if got.opcode == OP_CLOSE:
                    return got.close_code, seen
                seen.append(got)

    async def at_eof(self, timeout: float = 10.0) -> bool:
        """True when the server drops the TCP connection within `timeout` (anything it sends is discarded)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True

    def abort(self) -> None:
        transport = self.writer.transport
        transport.abort()
