"""A reverse proxy that breaks WebSocket, as some corporate proxies do, for the fallback tests.

Every request with `Upgrade: websocket` is refused (403, or the connection closed without
an answer); everything else is forwarded to the backends in turn, round-robin per request (so
that nothing is sticky: a stream's posts land on any edge), with the client's Host header (the
edges check a browser's Origin against it), and the answer streamed back chunk by chunk as it
arrives, never buffered (the event stream of `POST /v1/stream` passes event by event). A
backend that cannot be reached is skipped for the next one, as a load balancer's retry on a
refused connection does (the request never reached it); a backend that dies in the middle of an
answer drops the client's connection too.

    proxy = await NoUpgradeProxy(["http://127.0.0.1:8001", "http://127.0.0.1:8002"]).start()
    proxy.url   # ws://127.0.0.1:<port>/ws: refused
    proxy.http  # http://127.0.0.1:<port>
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Literal

import aiohttp
from aiohttp import web

from core.embedded import free_port

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
    )
)


class NoUpgradeProxy:
    def __init__(self, backends: list[str], refuse: Literal["403", "close"] = "403") -> None:
        assert backends
        self.backends = backends
        self.refuse = refuse
        self.port = free_port()
        self.refused = 0
        """Upgrade requests refused."""
        self.forwarded: Counter[str] = Counter()
        """Requests forwarded, by backend."""
        self.paths: list[tuple[str, str, str]] = []
        """(method, path, backend) of every forwarded request, in order."""
        self._turn = itertools.cycle(range(len(backends)))
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self) -> NoUpgradeProxy:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True), auto_decompress=False
        )
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            self.refused += 1
            if self.refuse == "close" and request.transport is not None:
                request.transport.close()
            return web.Response(status=403, text="WebSocket is not allowed through this proxy\n")
        assert self._http is not None
        body = await request.read()  # small (the edge bounds posts): kept for a retry elsewhere
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream: aiohttp.ClientResponse | None = None
        backend = ""
        first = next(self._turn)
        for i in range(len(self.backends)):
            backend = self.backends[(first + i) % len(self.backends)]
            try:
                upstream = await self._http.request(
                    request.method,
                    backend + request.path_qs,
                    headers=headers,
                    data=body if body else None,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=2),
                )
                break
            except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, ConnectionError):
                continue  # not reached: the next backend
        if upstream is None:
            return web.Response(status=502, text="no backend answered\n")
        self.forwarded[backend] += 1
        self.paths.append((request.method, request.path, backend))
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in HOP_BY_HOP:
                response.headers.add(key, value)
        if upstream.status in (204, 304):
            pass  # no body
        elif upstream.content_length is not None:
            response.content_length = upstream.content_length
        else:
            response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)  # as it comes: an event is passed on at once
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ConnectionError):
            # The backend (or the client) went in the middle of the answer: so does the rest.
            upstream.close()
            if request.transport is not None:
                request.transport.abort()
            return response
        finally:
            upstream.close()
        await response.write_eof()
        return response
