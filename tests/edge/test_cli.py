"""`jetsock serve` as `make run` starts it: embedded NATS, dev token, clean stop."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from core.embedded import free_port
from tests.conftest import connect

JETSOCK = str(Path(sys.executable).parent / "jetsock")


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


async def _start(tmp_path: Path) -> tuple[subprocess.Popen[str], int, str]:
    port = free_port()
    env = {
        **os.environ,
        "JETSOCK_PORT": str(port),
        "JETSOCK_EMBEDDED_NATS_PORT": "0",
        "JETSOCK_DATA_DIR": str(tmp_path / "data"),
        "JETSOCK_DRAIN_SECONDS": "0.5",
    }
    env.pop("JETSOCK_NATS_URL", None)
    env.pop("JETSOCK_JWT_SECRET", None)
    proc = subprocess.Popen(
        [JETSOCK, "serve", "--dev"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    banner = ""
    deadline = time.monotonic() + 30
    while "Dev token" not in banner or not re.search(r"\n  (eyJ[\w-]+\.[\w-]+\.[\w-]+)\n", banner):
        assert time.monotonic() < deadline, banner
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line, f"jetsock exited early:\n{banner}"
        banner += line
    match = re.search(r"\n  (eyJ[\w-]+\.[\w-]+\.[\w-]+)\n", banner)
    assert match
    return proc, port, match.group(1)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
async def test_serve_with_embedded_nats_then_a_signal_to_the_group_stops_everything(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    proc, port, token = await _start(tmp_path)
    try:
        children = _children_of(proc.pid)
        assert children, "the embedded nats-server should be a child"
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as r:
            assert r.status == 200
        client = await connect(f"ws://127.0.0.1:{port}/ws", tok=token)
        await client.request(type="join", room="chat.lobby")
        ack = await client.request(type="publish", room="chat.lobby", data={"text": "hello"})
        assert ack["type"] in ("ack", "msg")
        os.killpg(proc.pid, stop_signal)
        code, _ = await client.closed()
        assert code == 1012
        await client.close()
        assert await asyncio.to_thread(proc.wait, 20) == 0
        for child in children:
            deadline = time.monotonic() + 10
            while _alive(child):
                assert time.monotonic() < deadline, f"child {child} still running"
                await asyncio.sleep(0.1)
        assert (tmp_path / "data" / "nats" / "jetstream").is_dir()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


async def test_sigkill_of_jetsock_takes_the_embedded_nats_with_it(tmp_path: Path) -> None:
    proc, _port, _token = await _start(tmp_path)
    children = _children_of(proc.pid)
    assert children
    proc.kill()
    proc.wait()
    for child in children:
        deadline = time.monotonic() + 10
        while _alive(child):
            assert time.monotonic() < deadline, f"nats-server {child} outlived jetsock"
            await asyncio.sleep(0.1)


def test_help_lists_every_setting() -> None:
    out = subprocess.run([JETSOCK, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    for name in ("--nats-url", "JETSOCK_NATS_URL", "--max-pending-bytes", "JETSOCK_DRAIN_SECONDS", "--heartbeat"):
        assert name in out


def test_missing_secret_is_a_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOCK_")}
    result = subprocess.run([JETSOCK, "serve"], capture_output=True, text=True, env=env)
    assert result.returncode != 0 and "JETSOCK_JWT_SECRET" in result.stderr


def test_unreachable_nats_is_one_clear_line_without_credentials() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOCK_")}
    env.update(
        JETSOCK_JWT_SECRET="x" * 40,
        JETSOCK_NATS_URL=f"nats://user:hunter2@127.0.0.1:{free_port()}",
        JETSOCK_NATS_CONNECT_TIMEOUT="2",
    )
    result = subprocess.run([JETSOCK, "serve", "--port", str(free_port())], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr
