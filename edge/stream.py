"""The HTTP stream adapter: a session over two kinds of plain HTTP request (PROTOCOL.md section 11).

For networks whose proxies break the WebSocket upgrade. `POST /v1/stream` opens a
session and answers `text/event-stream`, held open: every server frame is one SSE
event, written by the session's outbox exactly like a WebSocket's frames (one write per
flush pass; a room message is encoded once per node and framed once per framing, here as
an event in an HTTP chunk), a comment every `heartbeat`, and on every close path the
`close` event then the end of the body. The client sends its frames with
`POST /v1/stream/<session>`, to any node: core/streamroute.py carries them over NATS to
the node holding the session, which hands them to the same `receive_text` a WebSocket's
frames reach, in order, and only then is the POST answered 204.

Authentication is the upgrade's: `Authorization: Bearer <JWT>`, or the cookie when the
request's `Origin` is allowed; never a token in the URL (400), a foreign Origin 403, no
token 401. A token that is present but refused opens the stream, whose one event is the
`close` with 4501, as a WebSocket gets that close frame (the client acts on the code the
same way); a post with one is answered 401. Bodies are bounded like frames
(`stream_post_bytes`, `stream_post_frames`, each frame `max_frame_bytes`: 413; not JSON,
or not an object or an array of them: 400; slower than `body_timeout`: 408). Liveness is
the session's: a client that posts nothing, not even a `ping` or an empty array, for two
heartbeats is closed with 4009.
Backpressure is the outbox's: a client that stops reading the response fills
`max_pending_bytes` and is closed with 4008. And in the other direction, the session's
`max_requests_in_flight`: while it is reached a POST waits (where a WebSocket's frames
wait in TCP), and is answered 503 with nothing taken if it still is after
`stream_post_timeout`. The response is never compressed by the edge and carries
`Cache-Control: no-cache, no-transform` and `X-Accel-Buffering: no` so proxies pass each
event on at once; it needs HTTP/1.1 (its chunks): an HTTP/1.0 request gets 505.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import msgspec
from aiohttp import HttpVersion11, web

from core.auth import AuthError
from core.streamroute import ACCEPTED, BUSY, FORBIDDEN, GONE, StreamRouter
from edge.connection import Connection
from edge.framing import END_OF_BODY, STREAM_EVENTS, Framing, sse_event
from edge.http_api import BodyError, problem, read_body
from edge.node import Node
from edge.origin import origin_allowed
from edge.session import NODE_KEY, authenticate, receive_text
from edge.state import State
from edge.transport import SocketTransport
from edge.ws import _refusal, _token_in_query
from schemas import Disconnect, ErrorCode

NO_CREDENTIALS = "send Authorization: Bearer <JWT> (or the cookie, from an allowed origin)"

STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}


class StreamTransport(SocketTransport):
    """One streaming response's socket, as the session's transport (edge/transport.py)."""

    __slots__ = ()
    framing: Framing = STREAM_EVENTS

    def send_close(self, disconnect: Disconnect, timeout: float) -> None:
        """The `close` event and the end of the body; the socket closes once they are flushed
        (a client that does not read them is dropped at the deadline)."""
        event = json.dumps({"type": "close", "code": int(disconnect.code), "reason": disconnect.reason})
        if self._write_last(sse_event(event.encode()) + END_OF_BODY, timeout):
            self.socket.close()


class EventStreamResponse(web.StreamResponse):
    """The response whose body the session writes straight to the socket: aiohttp writes its
    head only, and nothing after it (the close event ends the body, see send_close)."""

    async def write_eof(self, data: bytes = b"") -> None:
        transport = self._req.transport if self._req is not None else None
        if transport is None or transport.is_closing():
            return
        await super().write_eof(data)


class _Waiting:
    """The posts of one session waiting for its requests to drop below their limit, one at a time."""

    __slots__ = ("lock", "posts")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.posts = 0


class StreamSessions:
    """This node's stream sessions, reachable by id from any node."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._sessions: dict[str, Connection] = {}
        self._waiting: dict[str, _Waiting] = {}
        """Sessions with posts waiting (kept only while some are)."""
        self.router = StreamRouter(self._deliver, timeout=node.settings.stream_post_timeout)

    async def start(self) -> None:
        """Follow this node's sessions' subject on NATS (after the broker connected)."""
        assert self._node.broker.nc is not None
        await self.router.start(self._node.broker.nc)

    def new_id(self) -> str:
        return self.router.session_id(secrets.token_urlsafe(12))

    def add(self, conn: Connection) -> None:
        self._sessions[conn.session] = conn

    def remove(self, conn: Connection) -> None:
        if self._sessions.get(conn.session) is conn:
            del self._sessions[conn.session]

    def __len__(self) -> int:
        return len(self._sessions)

    async def _deliver(self, session: str, sub: str, frames: list[bytes], timeout: float) -> str:
        """On the owning node: the frames go to the session, in order.

        A WebSocket's next frames wait in TCP while its session has `max_requests_in_flight`
        requests running; a POST waits here instead (posts of one session one at a time, in
        the order they came), and is answered BUSY, having handed over nothing, when its
        `timeout` comes first. A POST's frames go in together once there is room (so a
        session has at most `stream_post_frames` requests more than its limit)."""
        conn = self._sessions.get(session)
        if conn is None or conn.closing or conn.state is not State.OPEN:
            return GONE
        principal = conn.principal
        if principal is None or principal.sub != sub:
            return FORBIDDEN
        conn.last_seen = time.monotonic()
        if not conn.requests_full and session not in self._waiting:
            self._hand_over(conn, frames)
            return ACCEPTED
        waiting = self._waiting.get(session)
        if waiting is None:
            waiting = self._waiting[session] = _Waiting()
        waiting.posts += 1
        try:
            async with asyncio.timeout(timeout), waiting.lock:
                while conn.requests_full and not conn.closing:
                    await conn.request_slot()  # returns when a request ends, or the session closes
                if conn.closing:
                    return GONE
                self._hand_over(conn, frames)
                return ACCEPTED
        except TimeoutError:
            return BUSY
        finally:
            waiting.posts -= 1
            if not waiting.posts and self._waiting.get(session) is waiting:
                del self._waiting[session]

    def _hand_over(self, conn: Connection, frames: list[bytes]) -> None:
        node = self._node
        for frame in frames:
            if conn.closing:
                break
            receive_text(node, conn, frame)


STREAMS_KEY: web.AppKey[StreamSessions] = web.AppKey("streams", StreamSessions)


def _frames(body: bytes, limit: int, frame_bytes: int) -> list[bytes]:
    """The client frames of a POST body (a JSON object, or an array of them), each as its bytes.

    The same frames a WebSocket may send: each one a JSON object of at most `frame_bytes`
    (`max_frame_bytes`; a WebSocket closes a larger one with 1009, a POST is refused 413)."""
    if not body.strip():
        return []
    try:
        value = msgspec.json.decode(body, type=msgspec.Raw)
        parsed = msgspec.json.decode(value)  # all of it, strings' UTF-8 included
    except RecursionError:
        raise BodyError(400, "the body is nested too deeply") from None
    except msgspec.DecodeError as exc:
        raise BodyError(400, f"the body must be JSON: {exc}") from None
    if isinstance(parsed, dict):
        raws = [bytes(value)]
    elif isinstance(parsed, list) and all(isinstance(f, dict) for f in parsed):
        if len(parsed) > limit:
            raise BodyError(413, f"at most {limit} frames per request")
        raws = [bytes(raw) for raw in msgspec.json.decode(body, type=list[msgspec.Raw])]
    else:
        raise BodyError(400, "the body is a frame (a JSON object) or an array of frames")
    if any(len(raw) > frame_bytes for raw in raws):
        raise BodyError(413, f"a frame is at most {frame_bytes} bytes (max_frame_bytes)")
    return raws


async def _read_frames(request: web.Request, node: Node) -> list[bytes]:
    """The frames of the request's body; BodyError when it is too large, too slow or no frames."""
    settings = node.settings
    body = await read_body(request, settings.stream_post_bytes, settings.body_timeout)
    if body is None:
        raise BodyError(413, f"the body is at most {settings.stream_post_bytes} bytes")
    return _frames(body, settings.stream_post_frames, settings.max_frame_bytes)


def _body_problem(exc: BodyError) -> web.Response:
    return problem(exc.status, ErrorCode.TOO_LARGE if exc.status == 413 else ErrorCode.BAD_REQUEST, str(exc))


async def _token(request: web.Request, node: Node) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if request.headers.get("Origin") is not None:
        return request.cookies.get(node.settings.cookie_name)
    return None


async def open_stream(request: web.Request) -> web.StreamResponse:
    """POST /v1/stream: a session over a held-open event stream."""
    node = request.app[NODE_KEY]
    refusal = _refusal(node, request)
    if refusal is not None:
        return refusal
    if _token_in_query(request):
        node.metrics.auth_failures.add(1, {"jetsock.reason": "token_in_url"})
        return problem(400, ErrorCode.BAD_REQUEST, "token in URL refused: send Authorization: Bearer <JWT>")
    if request.version < HttpVersion11:
        # The events go in chunks (the response's length is unknown): HTTP/1.1 or later only.
        return problem(505, ErrorCode.BAD_REQUEST, "the stream needs HTTP/1.1 (a chunked response)")
    token = await _token(request, node)
    if token is None:
        return problem(401, ErrorCode.FORBIDDEN, NO_CREDENTIALS)
    socket = request.transport
    if socket is None:
        return web.Response(status=400)
    # The head is in: the socket now waits to authenticate, as an upgraded WebSocket does
    # (edge/admission.py), and its body is bounded by body_timeout (408), not by the
    # handshake deadline, which would drop it mid-body without an answer.
    node.admission.request_head(socket, upgrade=True)
    try:
        frames = await _read_frames(request, node)
    except BodyError as exc:
        refused = _body_problem(exc)
        refused.force_close()  # and the socket leaves the budget of those waiting to authenticate
        return refused
    streams = request.app[STREAMS_KEY]
    response = EventStreamResponse(status=200, headers=STREAM_HEADERS)
    response.enable_chunked_encoding()
    response.force_close()
    await response.prepare(request)
    adapter = StreamTransport(socket)  # type: ignore[arg-type]
    conn = Connection(node, streams.new_id(), adapter)
    node.open(conn)
    streams.add(conn)
    try:
        if await authenticate(node, conn, token):
            for frame in frames:
                if conn.closing:
                    break
                receive_text(node, conn, frame)
        await node.admission.gone(socket)
    finally:
        adapter.gone()
        streams.remove(conn)
        node.finish(conn)
    return response


async def post_frames(request: web.Request) -> web.Response:
    """POST /v1/stream/<session>: frames into a session held by any node; 204 once it has them."""
    node = request.app[NODE_KEY]
    session = request.match_info["session"]
    if _token_in_query(request):
        node.metrics.auth_failures.add(1, {"jetsock.reason": "token_in_url"})
        return problem(400, ErrorCode.BAD_REQUEST, "token in URL refused: send Authorization: Bearer <JWT>")
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(origin, request, node.settings.origins):
        return web.Response(status=403, text=f"origin {origin!r} is not allowed\n")
    token = await _token(request, node)
    if token is None:
        return problem(401, ErrorCode.FORBIDDEN, NO_CREDENTIALS)
    principal = await bearer_principal_from(node, token)
    if isinstance(principal, web.Response):
        return principal
    node.admission.request_head(request.transport, upgrade=False)  # see open_stream
    try:
        frames = await _read_frames(request, node)
    except BodyError as exc:
        return _body_problem(exc)
    answer = await request.app[STREAMS_KEY].router.post(session, principal, frames)
    if answer == ACCEPTED:
        return web.Response(status=204)
    if answer == FORBIDDEN:
        return problem(403, ErrorCode.FORBIDDEN, "the credentials are not the session's")
    if answer == BUSY:
        busy = problem(
            503,
            ErrorCode.UNAVAILABLE,
            "the session's requests are still waiting (max_requests_in_flight): none of these frames was"
            " taken, send them again",
        )
        busy.headers["Retry-After"] = "1"
        return busy
    return problem(404, ErrorCode.BAD_REQUEST, "no such session: open a new stream and resume with since")


async def bearer_principal_from(node: Node, token: str) -> str | web.Response:
    """The `sub` of a valid token, or the 401 to answer."""
    try:
        principal = await node.verifier.verify(token)
    except AuthError as exc:
        node.metrics.auth_failures.add(1, {"jetsock.reason": exc.reason})
        return problem(401, ErrorCode.FORBIDDEN, str(exc))
    return principal.sub
