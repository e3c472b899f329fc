"""The compose topology as local processes: `jetsock cluster` (and `make cluster`).

Three nats-servers clustered with JetStream (the stream at R3), two edge
nodes, and HAProxy in front on 127.0.0.1:8080 with the same haproxy.cfg that
compose.yaml mounts. The nats-servers run deploy/nats-server.conf, as compose
does: the `edge` and `backend` users with their least-privilege permissions
and passwords made for this run (written, owner-only, to `credentials.env` in
the work directory), no anonymous clients. Every process is started by this
one and stops with it.
The cluster tests drive the same class: kill an edge, drain one, restart one,
find and kill the stream leader.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from core.embedded import EmbeddedNats, die_with_parent, free_port, free_ports, write_private

REPO = Path(__file__).parents[1]
HAPROXY_CFG = REPO / "deploy" / "haproxy.cfg"
NATS_CONF = REPO / "deploy" / "nats-server.conf"
BACKEND_INBOX = "_INBOX_backend"
"""The reply-inbox prefix deploy/nats-server.conf lets the backend user subscribe to."""
BEHIND_PROXY = {
    # Behind HAProxy every socket comes from HAProxy's address: a per-source limit
    # would be one limit for all clients. deploy/haproxy.cfg limits per source instead.
    "JETSOCK_MAX_UNAUTHENTICATED_PER_SOURCE": "0",
    "JETSOCK_MAX_CONNECTIONS_PER_SOURCE": "0",
}


def cluster_nats_config() -> str:
    """deploy/nats-server.conf without its store_dir: each server's store is given with -sd
    (nats-server refuses a store set both ways), and listen is overridden by -a/-p."""
    text, replaced = re.subn(r"(?m)^\s*store_dir:.*$", "", NATS_CONF.read_text())
    if replaced != 1:
        raise RuntimeError(f"{NATS_CONF} should set jetstream.store_dir exactly once")
    return text


def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout} s")
        time.sleep(0.1)


class EdgeNode:
    """One `jetsock serve` process on a fixed port."""

    def __init__(self, name: str, port: int, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.port = port
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> EdgeNode:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge.cli", "serve"],
                env={**self.env, "JETSOCK_PORT": str(self.port), "JETSOCK_NODE": self.name},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        _wait_http(f"http://127.0.0.1:{self.port}/readyz")
        return self

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int | None:
        return None if self.process is None else self.process.wait(timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def nats_config_password() -> str:
    """A random password for deploy/nats-server.conf's `$EDGE_PASSWORD` / `$BACKEND_PASSWORD`.

    nats-server parses a variable's value as a config value, so one that starts with `-`
    (token_urlsafe's, one time in 64) is read as a broken negative number and the server
    exits: a letter first, then hex, is always a string."""
    return "p" + secrets.token_hex(24)


class LocalCluster:
    def __init__(
        self,
        workdir: Path,
        port: int = 8080,
        edges: int = 2,
        jwt_secret: str = "",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port
        self.jwt_secret = jwt_secret
        self.extra_env = extra_env or {}
        self.edge_count = edges
        self.nats: list[EmbeddedNats] = []
        self.edges: list[EdgeNode] = []
        self.haproxy: subprocess.Popen[bytes] | None = None
        self.monitor_ports: list[int] = []
        self.edge_password = nats_config_password()
        self.backend_password = nats_config_password()

    @property
    def credentials_path(self) -> Path:
        return self.workdir / "credentials.env"

    def nats_url_as(self, user: str, index: int = 0) -> str:
        """A NATS URL for one server with a user's credentials in it (`edge` or `backend`)."""
        password = {"edge": self.edge_password, "backend": self.backend_password}[user]
        return f"nats://{user}:{password}@127.0.0.1:{self.nats[index].port}"

    def edge_env(self) -> dict[str, str]:
        """The environment of every edge node."""
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("JETSOCK_")},
            "JETSOCK_NATS_URL": ",".join(self.nats_urls),
            "JETSOCK_NATS_USER": "edge",
            "JETSOCK_NATS_PASSWORD": self.edge_password,
            "JETSOCK_REPLICAS": "3",
            "JETSOCK_JWT_SECRET": self.jwt_secret,
            "JETSOCK_DRAIN_SECONDS": "3",
            # Pages of this cluster itself and local dev servers, as in dev mode; never `*`.
            "JETSOCK_ALLOWED_ORIGINS": "self,http://localhost:*,http://127.0.0.1:*",
            **BEHIND_PROXY,
            **self.extra_env,
        }

    @property
    def nats_urls(self) -> list[str]:
        return [server.url for server in self.nats]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> LocalCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_private(
            self.credentials_path,
            f"EDGE_PASSWORD={self.edge_password}\nBACKEND_PASSWORD={self.backend_password}\n",
        )
        self._start_nats()
        env = self.edge_env()
        for i in range(self.edge_count):
            edge = EdgeNode(f"edge-{i + 1}", free_port(), env, self.workdir / f"edge-{i + 1}.log")
            self.edges.append(edge.start())
        self._start_haproxy()
        return self

    def _start_nats(self) -> None:
        ports = free_ports(9)
        client_ports, cluster_ports, self.monitor_ports = ports[0:3], ports[3:6], ports[6:9]
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in cluster_ports)
        config = cluster_nats_config()
        passwords = {"EDGE_PASSWORD": self.edge_password, "BACKEND_PASSWORD": self.backend_password}
        for i in range(3):
            server = EmbeddedNats(
                self.workdir / f"nats-{i + 1}",
                port=client_ports[i],
                config=config,
                env=passwords,
                extra_args=[
                    "--server_name",
                    f"nats-{i + 1}",
                    "--cluster_name",
                    "jetsock",
                    "--cluster",
                    f"nats://127.0.0.1:{cluster_ports[i]}",
                    "--routes",
                    routes,
                    "-m",
                    str(self.monitor_ports[i]),
                ],
            )
            self.nats.append(server.start())
        # JetStream needs a meta leader before a stream can be created.
        deadline = time.monotonic() + 30
        while not self._meta_leader_ready():
            if time.monotonic() > deadline:
                raise TimeoutError("the NATS cluster elected no JetStream leader")
            time.sleep(0.2)

    def _jsz(self, index: int, query: str = "") -> dict[str, Any]:
        """nats-server's JetStream monitoring report (no NATS client needed)."""
        url = f"http://127.0.0.1:{self.monitor_ports[index]}/jsz{query}"
        with urllib.request.urlopen(url, timeout=2) as response:
            report: dict[str, Any] = json.load(response)
            return report

    def _meta_leader_ready(self) -> bool:
        try:
            return bool(self._jsz(0).get("meta_cluster", {}).get("leader"))
        except OSError:
            return False

    def _start_haproxy(self) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            raise FileNotFoundError("haproxy not found: apt-get install haproxy (make cluster installs it as root)")
        # deploy/haproxy.cfg picks its servers from these (compose sets LB_EDGE_DNS instead).
        env = {**os.environ, "LB_BIND": f"127.0.0.1:{self.port}"}
        env.update({f"LB_EDGE{i + 1}": f"127.0.0.1:{edge.port}" for i, edge in enumerate(self.edges)})
        with open(self.workdir / "haproxy.log", "ab") as out:
            self.haproxy = subprocess.Popen(
                [binary, "-W", "-db", "-f", str(HAPROXY_CFG)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        _wait_http(f"http://127.0.0.1:{self.port}/readyz")

    def stream_leader(self, stream: str = "ROOMS") -> EmbeddedNats:
        """The nats-server that leads the stream's raft group."""
        for i in range(len(self.nats)):
            try:
                report = self._jsz(i, "?streams=true&raft=true")
            except OSError:
                continue
            for account in report.get("account_details", []):
                for detail in account.get("stream_detail", []):
                    if detail.get("name") == stream and detail.get("cluster", {}).get("leader"):
                        leader = detail["cluster"]["leader"]
                        return next(s for j, s in enumerate(self.nats) if f"nats-{j + 1}" == leader)
        raise LookupError(f"no leader found for stream {stream}")

    def stop(self) -> None:
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            self.haproxy.wait(10)
        for edge in self.edges:
            edge.signal(signal.SIGTERM)
        for edge in self.edges:
            try:
                edge.wait(30)
            except subprocess.TimeoutExpired:
                edge.signal(signal.SIGKILL)
        for server in self.nats:
            server.stop()
