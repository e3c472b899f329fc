"""Malformed HTTP requests: a fixed 400 and one short log line, instead of a traceback and an echo.

aiohttp turns a request its parser rejects (control characters in the request
line, bad bytes in a header, an invalid Content-Length, a line past the size
limit) into a response in `RequestHandler.handle_error`, which logs "Error
handling request" at ERROR with the parser's traceback and answers 400 with
the parser's message, the offending bytes quoted. On a node open to the
internet that is a traceback per probe, and an echo of whatever was sent.
Here such a request is answered with a fixed text and logged as one INFO line
(the peer and a fixed description of what was wrong), its cause named per
kind so the repeat limit of core/jsonlog.py bounds a flood of them. Anything
else that reaches `handle_error` (a handler's exception: a 500) is aiohttp's
as before: a bug stays a logged traceback.

aiohttp has no option for this (aio-libs/aiohttp#3287 and #9882), so three
small subclasses plug it in: `QuietRequestHandler` overrides `handle_error`,
`QuietServer` makes it the protocol of each socket, and `EdgeRunner`, a
drop-in for `web.AppRunner`, serves the app through that server. The aiohttp
internals they rely on (as in 3.14 and in aiohttp's master branch, 4.0 to be):

- `RequestHandler.handle_error(request, status, exc, message)` is where a
  parser error becomes a response: called with status 400 and the parser's
  `HttpProcessingError` as `exc`; a body that breaks its framing while a
  handler reads it reaches it as `RequestPayloadError` with status 500.
- `RequestHandler.log_exception(*args, exc_info=exc)` is what logs the
  traceback of a malformed body found while aiohttp discards the part of a
  body a handler did not read (`start()`).
- `Server.__call__` is the protocol factory and builds
  `RequestHandler(self, loop=self._loop, **self._kwargs)`: `QuietServer`
  builds its own class the same way, from those two private attributes.
- `AppRunner._make_server()` makes the `Server` that sites listen with;
  `EdgeRunner` takes it and serves the same handler, factory and keyword
  arguments through a `QuietServer`.

A change to any of these fails tests/edge/test_http_errors.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)

from core.jsonlog import Cause

log = logging.getLogger(__name__)

MALFORMED = "malformed HTTP request"
"""The whole body of the answer after the status: never anything of what the client sent."""
HANDSHAKE = "malformed WebSocket handshake"

PROBLEMS: tuple[tuple[type[BaseException], str, str], ...] = (
    # Most specific first: BadHttpMethod is a BadStatusLine, all are HttpProcessingErrors.
    (BadHttpMethod, "method", "invalid method (or TLS sent to the plain HTTP port)"),
    (BadStatusLine, "request-line", "invalid request line"),
    (InvalidURLError, "target", "invalid request target"),
    (LineTooLong, "too-long", "request line or header too long"),
    (InvalidHeader, "header", "invalid header"),
    (PayloadEncodingError, "body", "invalid body framing or encoding"),
    (web.RequestPayloadError, "body", "invalid body framing or encoding"),
    (HttpProcessingError, "malformed", "malformed request line or headers"),
)
"""(exception class, kind, description): the kind names the log line's cause, so the set stays small."""


def describe(exc: BaseException | None) -> tuple[str, str] | None:
    """(kind, fixed description) of a malformed request's exception; None for any other exception."""
    for cls, kind, description in PROBLEMS:
        if isinstance(exc, cls):
            return kind, description
    return None


def malformed_response(status: int, what: str = MALFORMED) -> web.Response:
    """The fixed answer, e.g. "400 Bad Request: malformed HTTP request"; the connection is closed after it."""
    resp = web.Response(status=status, text=f"{status} {HTTPStatus(status).phrase}: {what}\n")
    resp.force_close()
    return resp


def handshake_refused(request: web.BaseRequest) -> web.Response:
    """For the /ws handler: the answer when `WebSocketResponse.prepare` raises HTTPBadRequest.

    aiohttp's refusal quotes the offending header (`Handshake error: '<key>'`,
    `No WebSocket UPGRADE hdr: <value>`, `Unsupported version: <value>`); this
    is a fixed text and one line with the peer, like a malformed request.
    """
    log_malformed(request.remote, "handshake", "invalid WebSocket handshake")
    return malformed_response(HTTPStatus.BAD_REQUEST, HANDSHAKE)


def log_malformed(peer: str | None, kind: str, description: str) -> None:
    log.info(
        "malformed HTTP request from %s: %s",
        peer,
        description,
        extra={"cause": f"http400:{kind}", "fields": {"event": "malformed_request", "peer": peer, "problem": kind}},
    )


SERVED = Cause("access", limit=None)
"""The cause of an access line of a request answered below 400 (bar 101): every one is logged, as before."""


def access_cause(status: int) -> Cause | str:
    """The repeat-limit cause of an access line (edge/app.py's access logger) for a response `status`.

    A request served (2xx, 3xx) is its own record: never limited. Refusals (4xx,
    5xx, among them every malformed request) are limited per status, so a flood
    of them is bounded. So are WebSocket upgrades (101): each session's close
    line is the record of it, and its access line, written when it ends, only
    repeats part of it; a flood of sockets that never authenticate is bounded.
    """
    if status == HTTPStatus.SWITCHING_PROTOCOLS or status >= HTTPStatus.BAD_REQUEST:
        return f"access:{status}"
    return SERVED


class QuietRequestHandler(web.RequestHandler):
    """aiohttp's protocol, with malformed requests answered by `malformed_response` and logged in one line."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        problem = describe(exc)
        if problem is None:
            return super().handle_error(request, status, exc, message)
        log_malformed(request.remote, *problem)
        if request.writer.output_size > 0:
            # As aiohttp does: part of a response went out, so no answer can follow; the connection ends.
            raise ConnectionError("response already started, cannot answer the malformed request")
        # A body that breaks its framing mid-read comes as a 500; it is the client's fault all the same.
        return malformed_response(400 if status == HTTPStatus.INTERNAL_SERVER_ERROR else status)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # aiohttp also logs here, with a traceback, a body that turns out malformed while it
        # discards what a handler left unread ("Unhandled exception"); that is no bug either.
        exc = kw.get("exc_info")
        problem = describe(exc) if isinstance(exc, BaseException) else None
        if problem is None:
            super().log_exception(*args, **kw)
            return
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        log_malformed(peer[0] if isinstance(peer, tuple) else None, *problem)


class QuietServer(web.Server):
    """web.Server whose sockets speak `QuietRequestHandler`."""

    def __call__(self) -> web.RequestHandler:
        return QuietRequestHandler(self, loop=self._loop, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """web.AppRunner (same arguments) serving the app through a `QuietServer`; `on_server`
    is given that server before any site starts (edge/admission.py counts its sockets)."""

    __slots__ = ("_on_server",)

    def __init__(
        self, app: web.Application, *, on_server: Callable[[web.Server], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._on_server = on_server

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        kwargs: dict[str, Any] = made._kwargs
        server = QuietServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            **kwargs,
        )
        if self._on_server is not None:
            self._on_server(server)
        return server
