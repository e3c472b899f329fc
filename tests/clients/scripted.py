"""A scripted jetsock server: each scenario of the parity tests plays the server's side by hand.

The parity tests claim that both clients react to the same server behaviour in the same
way (PROTOCOL.md section 9.11). The real edge cannot be made to send every close code,
refuse a publish with `unavailable` on cue or hand out a `reset` at a chosen moment, so
this server speaks the wire protocol itself, one small script per scenario, and records
what each client sent: the token offered on every connection and every frame.

A script is `async def script(conn, n)`, run once per WebSocket connection of the
scenario (`n` counts them from 0). `ping` frames are answered by the connection itself
so that no script has to care about heartbeats.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

SUBPROTOCOL = "jetsock.v1"
BEARER = "bearer."


@dataclass
class Record:
    """What one scenario's clients did, as the server saw it."""

    tokens: list[str | None] = field(default_factory=list)
    """The bearer token of each connection, in order."""
    frames: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    """(connection number, frame) for every frame a client sent (pings left out)."""

    def sent(self, kind: str) -> list[dict[str, Any]]:
        return [frame for _, frame in self.frames if frame.get("type") == kind]


class Conn:
    """One accepted WebSocket, with the helpers a script needs."""

    def __init__(self, ws: web.WebSocketResponse, n: int, record: Record) -> None:
        self.ws = ws
        self.n = n
        self._record = record
        self._inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def pump(self) -> None:
        """Read frames until the socket ends; pings are answered here, the rest queued."""
        async for message in self.ws:
            if message.type is not WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            if frame.get("type") == "ping":
                await self.send({"type": "pong", **({"ref": frame["ref"]} if "ref" in frame else {})})
                continue
            self._record.frames.append((self.n, frame))
            await self._inbox.put(frame)
        await self._inbox.put(None)

    async def send(self, frame: dict[str, Any]) -> None:
        if not self.ws.closed:
            await self.ws.send_str(json.dumps(frame))

    async def welcome(self, heartbeat: int = 25, features: list[str] | None = None) -> None:
        await self.send(
            {
                "type": "welcome",
                "session": f"s{self.n}",
                "node": "scripted",
                "heartbeat": heartbeat,
                "exp": 2_000_000_000,
                **({"features": features} if features is not None else {}),
            }
        )

    async def expect(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame of type `kind` (frames of other types before it are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self._inbox.get()
                if frame is None:
                    raise ConnectionError(f"connection {self.n} ended before a {kind!r} frame")
                if frame.get("type") == kind:
                    return frame

    async def joined(self, frame: dict[str, Any], *, seq: int, epoch: str = "e1", recovered: bool = False) -> None:
        await self.send(
            {
                "type": "joined",
                "room": frame["room"],
                "epoch": epoch,
                "seq": seq,
                "recovered": recovered,
                "ref": frame["ref"],
            }
        )

    async def msg(self, room: str, seq: int, data: Any = None) -> None:
        await self.send(
            {
                "type": "msg",
                "room": room,
                "seq": seq,
                "ts": 1_700_000_000_000 + seq,
                "data": data if data is not None else {"n": seq},
            }
        )

    async def error(self, frame: dict[str, Any], code: str) -> None:
        await self.send({"type": "error", "code": code, "message": f"scripted {code}", "ref": frame["ref"]})

    async def close(self, code: int, reason: str = "scripted") -> None:
        await self.ws.close(code=code, message=reason.encode())

    async def drop(self) -> None:
        """End the TCP connection without a close frame (the client sees 1006)."""
        transport = self.ws._req.transport if self.ws._req is not None else None
        if transport is not None:
            transport.abort()

    async def idle(self) -> None:
        """Hold the connection open until the client goes away (the client-side program ends it)."""
        while await self._inbox.get() is not None:
            pass


Script = Callable[[Conn, int], Awaitable[None]]


class ScriptedServer:
    """Serves `/s/<scenario>/ws`, each scenario with its script and its record."""

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.records: dict[str, Record] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    def add(self, name: str, script: Script) -> str:
        """Register a scenario; returns its WebSocket URL."""
        self.scripts[name] = script
        self.records[name] = Record()
        return f"ws://127.0.0.1:{self.port}/s/{name}/ws"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/s/{name}/ws", self._serve)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        script = self.scripts[name]
        record = self.records[name]
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        bearer = next((p[len(BEARER) :] for p in offered if p.startswith(BEARER)), None)
        record.tokens.append(bearer)
        n = len(record.tokens) - 1
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), autoping=True, heartbeat=None)
        await ws.prepare(request)
        conn = Conn(ws, n, record)
        pump = asyncio.create_task(conn.pump())
        try:
            await script(conn, n)
        except (ConnectionError, TimeoutError):
            pass  # The client went away (or never sent what the script waited for): its trace tells.
        finally:
            if not ws.closed:
                await ws.close()
            pump.cancel()
        return ws
