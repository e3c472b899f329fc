"""`jetsock serve` as a real process, as `make run` starts it, with what its banner printed.

Its output goes to a file (a pipe nobody reads would fill and stop the edge
in a long test); the banner is read from there: the HTTP port, the dev
secret, the dev token and the NATS address.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.embedded import free_port

JETSOCK = str(Path(sys.executable).parent / "jetsock")
_SECRET = re.compile(r"\nDev secret [^\n]*:\n  (\S+)\n")
_TOKEN = re.compile(r"\nDev token [^\n]*:\n  (eyJ[\w-]+\.[\w-]+\.[\w-]+)\n")
_NATS = re.compile(r"\n  NATS +(nats://[\w.:-]+)")
_BANNER_END = "ws.onopen"


@dataclass
class ServeProcess:
    workdir: Path
    args: list[str] = field(default_factory=lambda: ["--dev"])
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    secret: str = ""
    token: str = ""
    nats_url: str = ""

    @property
    def log_path(self) -> Path:
        return self.workdir / "serve.log"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def store_dir(self) -> Path:
        return self.workdir / "data" / "nats"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self, banner: bool = True, timeout: float = 30.0) -> ServeProcess:
        """Start it; with `banner`, wait for the whole dev banner and read it."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOCK_")}
        env.update(
            {
                "JETSOCK_PORT": str(self.port),
                "JETSOCK_EMBEDDED_NATS_PORT": "0",
                "JETSOCK_DATA_DIR": str(self.workdir / "data"),
                "JETSOCK_DRAIN_SECONDS": "0.5",
                **self.env,
            }
        )
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [JETSOCK, "serve", *self.args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if banner:
            deadline = time.monotonic() + timeout
            while _BANNER_END not in (text := self.output()):
                assert self.process.poll() is None, f"jetsock exited early:\n{text}"
                assert time.monotonic() < deadline, f"no banner within {timeout} s:\n{text}"
                await asyncio.sleep(0.05)
            secret, token, nats = _SECRET.search(text), _TOKEN.search(text), _NATS.search(text)
            assert token and nats, text
            # The secret is printed when dev mode made it (JETSOCK_JWT_SECRET unset).
            self.secret = secret.group(1) if secret else ""
            self.token, self.nats_url = token.group(1), nats.group(1)
        return self

    async def stop(self) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                await asyncio.to_thread(process.wait)
        return process.returncode
