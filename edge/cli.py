"""The `jetsock` command: `jetsock serve [flags]`, and `jetsock cluster` for a local cluster."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
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
from core.natsauth import edge_only_server
from core.settings import Settings, add_flags, load_settings
from core.stream import StreamMismatch
from edge.app import serve
from edge.localcluster import HAPROXY_CFG, LocalCluster
from edge.origin import check_entries
from edge.workers import raise_fd_limit, supervise, worker_index

log = logging.getLogger("jetsock")

DEV_ORIGINS = "self,http://localhost:*,http://127.0.0.1:*"
"""JETSOCK_ALLOWED_ORIGINS in development mode when it is not set: the demo page's own origin and local dev
servers on any port, never `*` (any page a developer visits could otherwise open sockets to the edge)."""


def dev_secret() -> str:
    """A fresh HS256 key for one development run: no key is shared between runs or machines."""
    return secrets.token_urlsafe(32)


def _banner(settings: Settings, nats_url: str, embedded: EmbeddedNats | None, secret_made: bool) -> str:
    token = make_token(settings.jwt_secret, "dev-user", join=[">"], publish=[">"], ttl=7 * 86400)
    base = f"{settings.host}:{settings.port}"
    if secret_made:
        secret = f"""Dev secret (HS256 key of this run only, new at every start unless JETSOCK_JWT_SECRET is set):
  {settings.jwt_secret}"""
    else:
        # A key of the developer's own may be shared with other services: it is not printed.
        secret = "Dev secret: the JETSOCK_JWT_SECRET you set (not printed)."
    if embedded is not None:
        nats = f"""{nats_url}  (embedded; it accepts only this edge's own credentials, in
             {embedded.config_path}: backends publish over HTTP here, or run
             your own NATS and set JETSOCK_NATS_URL)"""
    else:
        nats = nats_url
    return f"""
jetsock is up.
  Demo chat  http://{base}/     (open it in two tabs; kill and restart jetsock to watch the resume)
  WebSocket  ws://{base}/ws     (subprotocol jetsock.v1; browser client at http://{base}/jetsock.js)
  health     http://{base}/healthz  ready: http://{base}/readyz  metrics: http://{base}/metrics
  NATS       {nats}

{secret}

Dev token (sub dev-user, may join and publish in every room, valid 7 days while this secret is in use; dev mode only):
  {token}

Try it:
  # publish over HTTP
  curl -s -X POST http://{base}/v1/rooms/chat.lobby/messages \\
       -H "Authorization: Bearer {token}" -H 'Content-Type: application/json' -d '{{"text":"hello"}}'
  # listen from the browser console of the demo page, http://{base}/ (dev mode accepts WebSockets from
  # this server's own pages and from http://localhost:* and http://127.0.0.1:*; JETSOCK_ALLOWED_ORIGINS changes it):
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
    secret_made = False
    if settings.dev:
        # Development conveniences, never applied without --dev / JETSOCK_DEV.
        # The secret is made once, here: `--workers N` hands it to its workers in JETSOCK_JWT_SECRET.
        dev_overrides: dict[str, str] = {}
        secret_made = not settings.jwt_secret
        if secret_made:
            dev_overrides["jwt_secret"] = dev_secret()
        if not settings.allowed_origins:
            dev_overrides["allowed_origins"] = DEV_ORIGINS
        if not settings.presence_rooms:
            # The demo lists who is online: presence for every room, unless set otherwise.
            dev_overrides["presence_rooms"] = ">"
        settings = msgspec.structs.replace(settings, **dev_overrides)
    if not (settings.jwt_secret or settings.jwt_public_key or settings.jwks_url):
        parser.error("set JETSOCK_JWT_SECRET (or --jwt-secret): client tokens cannot be verified without a key")
    try:
        check_entries(settings.origins)
    except ValueError as exc:
        parser.error(str(exc))
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
            embedded, credentials = edge_only_server(Path(settings.data_dir) / "nats", port, settings.stream)
            embedded.start()
            servers = [embedded.url]
            # The edge's own NATS credentials replace any given: there is no other user on this server.
            settings = msgspec.structs.replace(
                settings, nats_user=credentials.user, nats_password=credentials.password, nats_token="", nats_creds=""
            )
            log.info(
                "embedded nats-server on %s (only the edge's credentials, in %s), store in %s",
                embedded.url,
                embedded.config_path,
                embedded.store_dir,
            )
        if settings.workers > 1:
            env = {**os.environ, "JETSOCK_NATS_URL": ",".join(servers), "JETSOCK_JWT_SECRET": settings.jwt_secret}
            if embedded is not None:
                for name in ("JETSOCK_NATS_TOKEN", "JETSOCK_NATS_CREDS"):
                    env.pop(name, None)
                env.update(JETSOCK_NATS_USER=settings.nats_user, JETSOCK_NATS_PASSWORD=settings.nats_password)
            if settings.dev:
                print(_banner(settings, ",".join(servers), embedded, secret_made), flush=True)
            return supervise(settings.workers, argv, env)
        started: asyncio.Future[None] | None = None

        async def main() -> None:
            nonlocal started
            started = asyncio.get_running_loop().create_future()

            def announce(_started: asyncio.Future[None]) -> None:
                # Once listening; a worker of `--workers N` leaves the banner to its supervisor.
                if settings.dev and index is None:
                    print(_banner(settings, ",".join(servers), embedded, secret_made), flush=True)

            started.add_done_callback(announce)
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
    if not HAPROXY_CFG.is_file():
        # An installed wheel carries the server, not the repository's deploy/ configurations.
        print(
            "jetsock cluster runs from a checkout of the repository (it uses deploy/haproxy.cfg and "
            "deploy/nats-server.conf); for an installed jetsock use compose.yaml or the Helm chart",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Like dev mode: a key of this run's own unless one is given, printed below.
    given = os.environ.get("JETSOCK_JWT_SECRET", "")
    secret = given or dev_secret()
    shown = "the JETSOCK_JWT_SECRET you set (not printed)" if given else f"{secret}  (HS256 key of this run only)"
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
  NATS    {", ".join(cluster.nats_urls)}  (JetStream cluster, stream at R3; accounts of deploy/nats-server.conf:
          users edge and backend, passwords of this run in {cluster.credentials_path})
  logs    {args.dir}/
  secret  {shown}
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
