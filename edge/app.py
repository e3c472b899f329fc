"""The aiohttp application of one edge node, and running it until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from core.settings import Settings
from edge import admin, cors, headers, http_api, pages, stream
from edge.httperrors import EdgeRunner, access_cause
from edge.node import Node
from edge.session import NODE_KEY
from edge.stream import StreamSessions
from edge.ws import websocket_handler

log = logging.getLogger(__name__)

WEBSOCKET_PATH = "/ws"


class PathOnlyAccessLogger(AbstractAccessLogger):
    """Access log lines without the query string: a token put there must never be logged."""

    @property
    def enabled(self) -> bool:
        # aiohttp reads the clock for every request only when this is true.
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %.1fms",
            request.method,
            request.path,
            response.status,
            time * 1000,
            extra={"cause": access_cause(response.status)},
        )


async def _request_answered(request: web.Request, response: web.StreamResponse) -> None:
    """A plain HTTP request got its answer: its socket leaves the handshake budget (edge/admission.py).
    A signal, not a middleware: a middleware's frame would live as long as every WebSocket."""
    request.app[NODE_KEY].admission.request_head(request.transport, upgrade=response.status == 101)


def build_app(node: Node, servers: list[str]) -> web.Application:
    app = web.Application(client_max_size=node.settings.max_data_bytes + 1024)
    app[NODE_KEY] = node
    node.streams = app[stream.STREAMS_KEY] = StreamSessions(node)
    app.on_response_prepare.append(headers.security_headers)
    app.on_response_prepare.append(_request_answered)
    app.on_response_prepare.append(cors.cors_headers)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await node.start(servers)
        yield
        await node.stop()

    async def close_sockets(_app: web.Application) -> None:
        # aiohttp waits for handlers to finish before cleanup runs: open WebSockets
        # must be closed here, or shutdown would wait out its timeout and cut them.
        await node.close_connections()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(close_sockets)
    app.router.add_get(WEBSOCKET_PATH, websocket_handler)
    app.router.add_get("/healthz", http_api.healthz)
    app.router.add_get("/readyz", http_api.readyz)
    app.router.add_get("/metrics", http_api.metrics)
    app.router.add_post("/v1/rooms/{room}/messages", http_api.publish)
    app.router.add_get("/v1/rooms/{room}/messages", http_api.get_messages)
    app.router.add_get("/v1/rooms/{room}/presence", http_api.get_presence)
    app.router.add_post("/v1/stream", stream.open_stream)
    app.router.add_post("/v1/stream/{session}", stream.post_frames)
    app.router.add_post("/v1/subjects/{sub}/disconnect", http_api.disconnect)
    cors.add_preflights(app)
    pages.add_routes(app)
    admin.add_routes(app)
    return app


def make_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """The runner of `serve()` and of the tests' edges: path-only access lines, malformed requests
    answered with a fixed 400 and one short log line (edge/httperrors.py); `kwargs` go to web.AppRunner."""
    node = app.get(NODE_KEY)
    on_server = node.admission.install if node is not None else None
    return EdgeRunner(app, access_log_class=PathOnlyAccessLogger, on_server=on_server, **kwargs)


async def serve(settings: Settings, servers: list[str], started: asyncio.Future[None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain and return."""
    node = Node(settings)
    app = build_app(node, servers)
    # aiohttp makes an access logger per connection; with the access log off
    # (the log level is above info) none is made, which saves memory per socket.
    access_log = logging.getLogger("aiohttp.access")
    runner = make_runner(app, access_log=access_log if access_log.isEnabledFor(logging.INFO) else None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=True)
    await site.start()
    log.info("listening on http://%s:%d", settings.host, settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if started is not None:
        started.set_result(None)
    try:
        await stop.wait()
        drain = asyncio.ensure_future(node.drain())
        # A second signal skips the rest of the drain.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, drain.cancel)
        try:
            await drain
        except asyncio.CancelledError:
            log.warning("drain cut short by a second signal")
    finally:
        await runner.cleanup()
