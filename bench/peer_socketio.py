"""The peer: python-socketio as a Python team would deploy it for the same job.

AsyncServer on aiohttp, WebSocket transport only (no long-polling, so no
sticky sessions are needed), an AsyncRedisManager on a local redis-server so
that several processes share rooms, and the same JWT (HS256, checked with
pyjwt) in the connect packet's `auth`. One process per `python -m
bench.peer_socketio`; the conductor starts two on one port with SO_REUSEPORT,
as jetsock's `--workers 2` does.

Events: `join` (ack true), `publish` (emitted to the room as `msg`, ack true).
Backends publish with a write-only AsyncRedisManager, python-socketio's
documented way to emit from another process.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import jwt
import socketio
from aiohttp import web


def build(redis_url: str, secret: str) -> web.Application:
    manager = socketio.AsyncRedisManager(redis_url)
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        transports=["websocket"],
        ping_interval=25,
        ping_timeout=20,
        cors_allowed_origins=None,
    )

    @sio.event  # type: ignore[untyped-decorator]
    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> None:
        try:
            jwt.decode((auth or {}).get("token", ""), secret, algorithms=["HS256"], options={"require": ["exp", "sub"]})
        except jwt.InvalidTokenError as exc:
            raise socketio.exceptions.ConnectionRefusedError("unauthorized") from exc

    @sio.on("join")  # type: ignore[untyped-decorator]
    async def join(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True

    @sio.on("publish")  # type: ignore[untyped-decorator]
    async def publish(sid: str, message: dict[str, Any]) -> bool:
        await sio.emit("msg", message, room=message["room"])
        return True

    app = web.Application()
    sio.attach(app)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    web.run_app(
        build(args.redis, args.secret),
        host="127.0.0.1",
        port=args.port,
        reuse_port=True,
        print=None,
        access_log=None,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
