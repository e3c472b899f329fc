"""HTTP requests written by hand on a TCP socket, the body in separately flushed writes.

aiohttp's client sends a body in one go; these helpers send its pieces apart,
so the server has only the first when its handler starts reading.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

PAUSE = 0.3
"""Seconds between two writes of one body: long enough for the edge to act on the first."""


def chunk(data: bytes) -> bytes:
    """One chunk of a `Transfer-Encoding: chunked` body."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


async def raw_post(
    port: int, path: str, parts: list[bytes], headers: dict[str, str], pause: float = PAUSE, timeout: float = 15.0
) -> tuple[int, Any]:
    """POST with the body written in `parts`, each flushed, `pause` apart; (status, decoded JSON body).

    The answer is waited for up to `timeout` seconds after the last part.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        writer.write(head.encode() + parts[0])
        await writer.drain()
        for part in parts[1:]:
            await asyncio.sleep(pause)
            try:
                writer.write(part)
                await writer.drain()
            except ConnectionError:
                break  # the edge answered (413) and closed before the rest: its answer is read below
        async with asyncio.timeout(timeout):
            head_bytes = await reader.readuntil(b"\r\n\r\n")
            body = await read_answer_body(reader, head_bytes)
    finally:
        writer.close()
    status = int(head_bytes.split(b" ", 2)[1])
    return status, json.loads(body)


async def read_answer_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """The body after a response head: by its Content-Length, chunked, or up to the end of the stream.

    Read by its framing, not to the end: after answering early (413, 408) aiohttp
    keeps the socket open for a while to read what the client still sends.
    """
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)  # the chunk and its CRLF
            if size == 0:
                return b"".join(chunks)
            chunks.append(data[:-2])
    return await reader.read()


async def raw_request(
    port: int, request_head: bytes, body: bytes = b"", timeout: float = 10.0
) -> tuple[int, dict[str, list[str]], bytes]:
    """Send a request head written by hand (any method, path or Host) and read one answer:
    (status, headers by lower-case name, body); status 0 when the server answered nothing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_head + body)
        await writer.drain()
        async with asyncio.timeout(timeout):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return 0, {}, b""
            status = int(head.split(b" ", 2)[1])
            # No body after a HEAD request, an upgrade, 204 or 304.
            bodiless = request_head.startswith(b"HEAD ") or status in (101, 204, 304)
            answer = b"" if bodiless else await read_answer_body(reader, head)
    finally:
        writer.close()
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    return status, headers, answer
