"""A `jetsock serve` process of its own, on a nats-server of its own, for classes that need other limits
than the shared hostile world (tests/hostile/support.py) runs with."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from core.embedded import EmbeddedNats, free_port
from tests.conftest import SECRET, wait_ready
from tests.hostile.support import JETSOCK


@dataclass
class EdgeProcess:
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    """JETSOCK_* settings on top of the defaults below."""
    nats_args: list[str] = field(default_factory=list)
    """Extra nats-server flags (e.g. `-m <port>` for its monitoring endpoint)."""
    port: int = field(default_factory=free_port)
    nats: EmbeddedNats | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def log_path(self) -> Path:
        return self.workdir / "edge.log"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self) -> EdgeProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nats = EmbeddedNats(self.workdir / "nats", extra_args=self.nats_args).start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOCK_")}
        env.update(
            {
                "JETSOCK_NATS_URL": self.nats.url,
                "JETSOCK_JWT_SECRET": SECRET,
                "JETSOCK_PORT": str(self.port),
                "JETSOCK_LOG_LEVEL": "warning",
                "JETSOCK_DRAIN_SECONDS": "0.5",
                **self.env,
            }
        )
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [JETSOCK, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        await wait_ready(self.http, self.process, 30, self.output)
        return self

    async def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 15)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        if self.nats is not None:
            self.nats.stop()
