"""The WebSocket adapter: `/ws`, its frames, its close handshake. The only code that writes
a WebSocket's socket besides the session's outbox.

aiohttp does the HTTP upgrade and parses the client's frames (its reader
checks framing, masking, UTF-8, control frames and `max_frame_bytes`); this
module reads the parsed messages from that reader's queue and hands them to
the session, and writes everything itself: frames through the outbox, pongs,
and the one close frame. aiohttp's own writing paths (`receive()`, which
answers a bad frame with a close frame and then drains; `close()`;
heartbeats) are never used, so when the session closes, for any reason,
aiohttp's included (a frame over the limit is 1009), the outbox is sealed
first and nothing follows the close frame.

The close handshake (RFC 6455 7.1): after our close frame, reading goes on
until the client's close frame, then the socket is closed; a client that does
not answer within `close_timeout` (it may not even be reading) is dropped.
After a framing error the stream cannot be read any more: the socket is
closed as soon as the close frame is flushed, with the same deadline.

permessage-deflate (edge/deflate.py): when the client's offer is taken, the
response answers it and its frame reader is aiohttp's pure-Python one with
its inflater dropped after each message (`StatelessInflateReader`); aiohttp
itself is told `compress=False`, so it negotiates and compresses nothing.

aiohttp internals relied on (pinned in pyproject.toml, run against the newest
aiohttp by `make test`): the response's reader queue (`_reader`, whose
`read()` returns messages and raises `EofStream` or `WebSocketError`), and
its protocol's `_drain_helper()` (the event for "the socket drained"); for
permessage-deflate, `WebSocketResponse._post_start` and the pure-Python
reader's `_handle_frame`, `_max_msg_size` and `_decompressobj`
(tests/edge/test_deflate.py guards them).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp._websocket import reader_py
from aiohttp.helpers import DEFAULT_CHUNK_SIZE
from aiohttp.http_websocket import WebSocketError
from aiohttp.streams import EofStream

from edge.connection import Connection
from edge.deflate import ACCEPTED, accepts
from edge.framing import WEBSOCKET_TEXT, Framing
from edge.httperrors import handshake_refused
from edge.node import Node
from edge.origin import origin_allowed
from edge.session import NODE_KEY, auth_timed_out, authenticate, authenticate_frame, receive_text
from edge.state import State
from edge.transport import SocketTransport
from edge.wsframe import close_frame, pong_frame
from schemas import CloseCode, Disconnect, Disconnects, FramingCloseCode

log = logging.getLogger(__name__)

SUBPROTOCOL = "jetsock.v1"
_PROTOCOLS = (SUBPROTOCOL,)
BEARER_PREFIX = "bearer."

_QUERY_TOKEN_KEYS = {"token", "access_token", "jwt", "auth", "bearer", "authorization", "id_token"}
_READER_ERRORS = {
    int(FramingCloseCode.PROTOCOL_ERROR): Disconnects.PROTOCOL_ERROR,
    int(FramingCloseCode.INVALID_PAYLOAD): Disconnects.INVALID_TEXT,
    int(CloseCode.MESSAGE_TOO_BIG): Disconnects.FRAME_TOO_BIG,
}
_UNECHOED = {int(FramingCloseCode.NO_STATUS), int(CloseCode.ABNORMAL), 1015}
"""Codes a close frame must never carry (RFC 6455 7.4.1): a client's close without a valid code
is answered with 1000."""


def _looks_like_jwt(value: str) -> bool:
    return value.startswith("eyJ") and value.count(".") == 2


def _token_in_query(request: web.Request) -> bool:
    # query_string first: parsing an empty query would still cache a MultiDict on the request.
    return bool(request.query_string) and any(
        k.lower() in _QUERY_TOKEN_KEYS or _looks_like_jwt(v) for k, v in request.query.items()
    )


def _offered_bearer(request: web.Request) -> str | None:
    for header in request.headers.getall("Sec-WebSocket-Protocol", []):
        for proto in header.split(","):
            proto = proto.strip()
            if proto.startswith(BEARER_PREFIX):
                return proto[len(BEARER_PREFIX) :]
    return None


class WebSocketTransport(SocketTransport):
    """One WebSocket's socket, as the session's transport (edge/transport.py)."""

    __slots__ = ("framing",)

    def __init__(self, socket: asyncio.Transport, framing: Framing = WEBSOCKET_TEXT) -> None:
        super().__init__(socket)
        self.framing = framing
        """Plain text frames, or the node's permessage-deflate framing when it was negotiated."""

    def send_close(self, disconnect: Disconnect, timeout: float) -> None:
        self.write_close(int(disconnect.code), disconnect.reason, timeout)

    def write_close(self, code: int, reason: str, timeout: float) -> None:
        """The one close frame, then the deadline of the closing handshake."""
        self._write_last(close_frame(code, reason), timeout)

    def end(self) -> None:
        """Close the socket once what is buffered is flushed (the deadline still drops a stuck one)."""
        self.socket.close()

    def end_writing(self) -> None:
        """Send FIN once what is buffered is flushed, and go on reading: closing a socket with the
        client's data unread would make the kernel send a reset, which can destroy what the
        client has not read yet, the close frame included."""
        socket = self.socket
        if socket.can_write_eof() and not socket.is_closing():
            socket.write_eof()
        else:
            socket.close()


class StatelessInflateReader(reader_py.WebSocketReader):
    """aiohttp's frame reader (the pure-Python one, whose state can be reached) for connections
    that negotiated permessage-deflate: it inflates each compressed message with its output
    bounded by max_msg_size while inflating (aiohttp's `decompress_sync(max_length)`), then drops
    the inflater, so no compression state outlives a message (edge/deflate.py)."""

    def _handle_frame(self, fin: bool, opcode: int, payload: bytes | bytearray, compressed: int) -> None:
        if not compressed:
            super()._handle_frame(fin, opcode, payload, compressed)
            return
        # aiohttp refuses a plain message of max_msg_size bytes or more but an inflated one only
        # past max_msg_size: one byte lower while inflating makes both stop past max_frame_bytes.
        limit = self._max_msg_size
        self._max_msg_size = max(limit - 1, 1) if limit else 0
        try:
            super()._handle_frame(fin, opcode, payload, compressed)
        finally:
            self._max_msg_size = limit
        if fin:
            self._decompressobj = None


class InflatingResponse(web.WebSocketResponse):
    """The upgrade's response when the client's permessage-deflate offer was taken: as aiohttp's
    `_post_start`, with the frame reader above (aiohttp is told compress=False, so it neither
    negotiates nor compresses anything itself: the edge writes every frame)."""

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        self._ws_protocol = protocol
        self._writer = writer
        self._reset_heartbeat()
        loop = self._loop
        assert loop is not None
        self._reader = reader_py.WebSocketDataQueue(request._protocol, DEFAULT_CHUNK_SIZE, loop=loop)
        self._parser = StatelessInflateReader(
            self._reader, self._max_msg_size, compress=True, decode_text=self._decode_text
        )
        request.protocol.set_parser(self._parser, data_received_cb=None)
        request.protocol.keep_alive(False)


def _refusal(node: Node, request: web.Request) -> web.Response | None:
    """The HTTP answer that refuses the upgrade, if any (drain, foreign origin)."""
    if node.draining:
        return web.Response(status=503, text="node is draining: connect to another node\n")
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(origin, request, node.settings.origins):
        return web.Response(status=403, text=f"origin {origin!r} is not allowed\n")
    return None


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    # This coroutine lives as long as the connection and the read loop runs in
    # it, not in coroutines of its own: an idle connection waits here, so every
    # frame (and every local and stack slot of this one) held for its lifetime
    # is paid once per connection. One-off steps are in helpers that return.
    node = request.app[NODE_KEY]
    refusal = _refusal(node, request)
    if refusal is not None:
        return refusal
    # The request head is in: the socket now waits for its token (edge/admission.py).
    node.admission.request_head(request.transport, upgrade=True)
    compressed = node.settings.compression and accepts(request.headers.getall("Sec-WebSocket-Extensions", []))
    response = InflatingResponse if compressed else web.WebSocketResponse
    ws = response(
        protocols=_PROTOCOLS, compress=False, autoping=False, max_msg_size=node.max_msg_size, decode_text=False
    )
    if compressed:
        ws.headers["Sec-WebSocket-Extensions"] = ACCEPTED
    try:
        await ws.prepare(request)
    except web.HTTPBadRequest:
        # aiohttp's refusal quotes the offending header back (a reflected-bytes and log-flood risk).
        return handshake_refused(request)
    socket = request.transport
    assert socket is not None
    adapter = WebSocketTransport(socket, node.deflate if compressed else WEBSOCKET_TEXT)
    conn = Connection(node, secrets.token_urlsafe(12), adapter)
    node.open(conn)
    reader = ws._reader
    assert reader is not None
    gone = False
    try:
        if await _open(node, conn, request):
            gone = await _read(node, conn, adapter, reader)
        else:
            gone = await _read_closing(adapter, reader)
    finally:
        if gone:
            adapter.gone()
        node.finish(conn)
    return ws


async def _open(node: Node, conn: Connection, request: web.Request) -> bool:
    """Refuse, or authenticate in the handshake; True when the read loop should run."""
    if _token_in_query(request):
        node.metrics.auth_failures.add(1, {"jetsock.reason": "token_in_url"})
        conn.close(Disconnects.TOKEN_IN_URL)
        return False
    cookie = request.cookies.get(node.settings.cookie_name) if request.headers.get("Origin") is not None else None
    token = _offered_bearer(request) or cookie
    if token is not None:
        return await authenticate(node, conn, token)
    # Authenticate with the first frame: the read loop waits for it, bounded by auth_timeout.
    asyncio.get_running_loop().call_later(node.settings.auth_timeout, auth_timed_out, node, conn)
    return True


async def _read(node: Node, conn: Connection, adapter: WebSocketTransport, reader: Any) -> bool:
    """Frames to the session until the socket goes (True) or the stream breaks (False)."""
    while True:
        if conn.requests_full and conn.state is State.OPEN:
            await conn.request_slot()  # backpressure: TCP holds the client's next frames
        try:
            message = await reader.read()
        except EofStream:
            return True
        except WebSocketError as exc:
            conn.close(_READER_ERRORS.get(exc.code, Disconnects.PROTOCOL_ERROR))
            _forget(exc)
            break
        except Exception as exc:  # anything else the reader raises ends the stream too (zlib.error: 1002)
            log.debug("reader of %s failed: %s", conn.session, exc)
            conn.close(Disconnects.PROTOCOL_ERROR)
            _forget(exc)
            break
        kind = message.type
        state = conn.state
        if state is State.CLOSING or state is State.CLOSED:
            if kind is WSMsgType.CLOSE:
                adapter.end()  # the closing handshake is complete
            continue
        conn.last_seen = time.monotonic()
        if kind is WSMsgType.TEXT:
            if state is State.OPEN:
                receive_text(node, conn, message.data)
            else:
                await authenticate_frame(node, conn, message.data)
        elif kind is WSMsgType.PING:
            conn.push(pong_frame(message.data))
        elif kind is WSMsgType.BINARY:
            conn.close(Disconnects.BINARY_FRAME if state is State.OPEN else Disconnects.AUTH_FIRST)
        elif kind is WSMsgType.CLOSE:
            code = message.data if isinstance(message.data, int) and message.data else None
            conn.peer_closed(code)
            echo = code if code is not None and code not in _UNECHOED else int(CloseCode.NORMAL)
            adapter.write_close(echo, "", node.settings.close_timeout)
            adapter.end()
        # Not kept while waiting for the next frame.
        del message
    # A framing error: nothing more can be parsed (aiohttp discards the rest). The
    # client gets its frames, the close frame and FIN; the socket goes when the client
    # closes its side, or at the closing deadline. Nothing else is written.
    adapter.end_writing()
    await node.admission.gone(adapter.socket)
    return True


def _forget(exc: BaseException) -> None:
    """Drop the tracebacks of the reader's error (and what it chained). Their frames hold what the
    reader was parsing when it failed (the socket's last read, a frame's payload, an inflated
    bomb's output: hundreds of KB) in a cycle with the reader, which keeps the error; the node
    freezes the collector's survivors (edge/memory.py), so such cycles would stay until its next
    full collection, a thousand closes later, and a flood of bad frames would hold them all."""
    seen: BaseException | None = exc
    while seen is not None:
        seen.__traceback__ = None
        seen = seen.__cause__ or seen.__context__


async def _read_closing(adapter: WebSocketTransport, reader: Any) -> bool:
    """After a close before the read loop: wait for the client's close frame or the socket to go."""
    while True:
        try:
            message = await reader.read()
        except EofStream:
            return True
        except Exception as exc:
            _forget(exc)
            adapter.end()
            return False
        if message.type is WSMsgType.CLOSE:
            adapter.end()
