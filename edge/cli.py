"""The `jetsock` command: `jetsock serve [flags]`, and `jetsock cluster` for a local cluster."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

import msgspec

from core import jsonlog
from core.auth import make_token
from core.broker import Unavailable
from core.embedded import EmbeddedNats
from core.settings import Settings, add_flags, load_settings
from core.stream import StreamMismatch
from edge.app import serve
from edge.localcluster import LocalCluster
from edge.workers import raise_fd_limit, supervise, worker_index

log = logging.getLogger("jetsock")

DEV_SECRET = "jetsock-development-secret-not-for-production"
"""The HS256 key `make run` uses when JETSOCK_JWT_SECRET is not set. Development only."""


def _banner(settings: Settings, nats_url: str) -> str:
    token = make_token(settings.jwt_secret, "dev-user", join=[">"], publish=[">"], ttl=7 * 86400)
    base = f"{settings.host}:{settings.port}"
    return f"""
jetsock is up.
  Demo chat  http://{base}/     (open it in two tabs; kill and restart jetsock to watch the resume)
  WebSocket  ws://{base}/ws     (subprotocol jetsock.v1; browser client at http://{base}/jetsock.js)
  health     http://{base}/healthz  ready: http://{base}/readyz  metrics: http://{base}/metrics
  NATS       {nats_url}

Dev token (sub dev-user, may join and publish in every room, valid 7 days; dev mode only):
  {token}

Try it:
  # publish over HTTP
  curl -s -X POST http://{base}/v1/rooms/chat.lobby/messages \\
       -H "Authorization: Bearer {token}" -H 'Content-Type: application/json' -d '{{"text":"hello"}}'
  # listen from a browser console (dev mode accepts any Origin; set JETSOCK_ALLOWED_ORIGINS to restrict):
  const ws = new WebSocket("ws://{base}/ws", ["jetsock.v1", "bearer.{token}"]);
  ws.onmessage = (e) => console.log(e.data);
  ws.onopen = () => ws.send(JSON.stringify({{type: "join", room: "chat.lobby", since: 0}}));
"""


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="jetsock serve", description="Run a jetsock edge node.")
    add_flags(parser)
    settings = load_settings(parser.parse_args(argv))
    jsonlog.configure(settings.log_level, settings.log_format)
    if settings.dev:
        # Development conveniences, never applied without --dev / JETSOCK_DEV.
        dev_overrides: dict[str, str] = {}
        if not settings.jwt_secret:
            dev_overrides["jwt_secret"] = DEV_SECRET
        if not settings.allowed_origins:
            dev_overrides["allowed_origins"] = "*"
        settings = msgspec.structs.replace(settings, **dev_overrides)
    if not (settings.jwt_secret or settings.jwt_public_key or settings.jwks_url):
        parser.error("set JETSOCK_JWT_SECRET (or --jwt-secret): client tokens cannot be verified without a key")
    raise_fd_limit()
    index = worker_index()
    if index is not None and not settings.node:
        settings = msgspec.structs.replace(settings, node=f"{socket.gethostname()}-{os.getppid()}-w{index}")
    embedded: EmbeddedNats | None = None
    servers = settings.nats_servers
    try:
        if not servers:
            port = settings.embedded_nats_port
            if port and not _port_free(port):
                log.warning("port %d is taken; the embedded nats-server takes a free one", port)
                port = 0
            embedded = EmbeddedNats(Path(settings.data_dir) / "nats", port=port).start()
            servers = [embedded.url]
            log.info("embedded nats-server on %s, store in %s", embedded.url, embedded.store_dir)
        if settings.workers > 1:
            env = {**os.environ, "JETSOCK_NATS_URL": ",".join(servers), "JETSOCK_JWT_SECRET": settings.jwt_secret}
            if settings.dev:
                print(_banner(settings, ",".join(servers)), flush=True)
            return supervise(settings.workers, argv, env)
        started: asyncio.Future[None] | None = None

        async def main() -> None:
            nonlocal started
            started = asyncio.get_running_loop().create_future()
            started.add_done_callback(
                lambda _f: settings.dev and index is None and print(_banner(settings, ",".join(servers)), flush=True)
            )
            await serve(settings, servers, started)

        try:
            asyncio.run(main())
        except (ValueError, Unavailable, StreamMismatch) as exc:
            # Settings or NATS problems at start: one clear line, no traceback.
            log.error("cannot start: %s", exc)
            return 1
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def _cluster(argv: list[str]) -> int:
    """`jetsock cluster`: 3 clustered nats-servers, 2 edges and HAProxy on one machine."""
    parser = argparse.ArgumentParser(prog="jetsock cluster", description=_cluster.__doc__)
    parser.add_argument("--port", type=int, default=8080, help="HAProxy's port on 127.0.0.1")
    parser.add_argument("--edges", type=int, default=2, help="edge nodes behind HAProxy")
    parser.add_argument("--dir", default=".data/cluster", help="where the NATS stores and logs go")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    secret = os.environ.get("JETSOCK_JWT_SECRET") or DEV_SECRET
    cluster = LocalCluster(Path(args.dir), port=args.port, edges=args.edges, jwt_secret=secret)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: stop.set())
    try:
        cluster.start()
        token = make_token(secret, "dev-user", join=[">"], publish=[">"], ttl=7 * 86400)
        print(
            f"""
jetsock cluster is up: HAProxy on http://127.0.0.1:{args.port} (round robin, no stickiness)
  edges   {", ".join(f"{e.name} on 127.0.0.1:{e.port}" for e in cluster.edges)}
  NATS    {", ".join(cluster.nats_urls)}  (JetStream cluster, stream at R3)
  logs    {args.dir}/
  token   {token}
Ctrl-C stops all of it.""",
            flush=True,
        )
        stop.wait()
    finally:
        cluster.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: jetsock serve [flags]   (jetsock serve --help lists every setting)")
        print("       jetsock cluster [--port 8080]   (3 NATS, 2 edges, HAProxy: the compose topology locally)")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "serve":
        return _serve(rest)
    if command == "cluster":
        return _cluster(rest)
    print(f"jetsock: unknown command {command!r}; try: jetsock serve --help", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
