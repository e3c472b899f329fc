"""`jetsock serve --workers N`: several processes on one port, each a full node."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from core.embedded import EmbeddedNats, free_port
from tests.conftest import SECRET, connect, wait_ready

JETSOCK = str(Path(sys.executable).parent / "jetsock")


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = (int(x) for x in line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


async def _two_workers(nats_server: EmbeddedNats, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """`jetsock serve --workers 2` on `nats_server`, both workers started and ready: (supervisor, port, log)."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("JETSOCK_")},
        "JETSOCK_NATS_URL": nats_server.url,
        "JETSOCK_JWT_SECRET": SECRET,
        "JETSOCK_PORT": str(port),
        "JETSOCK_DRAIN_SECONDS": "0.5",
    }
    log = tmp_path / "workers.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [JETSOCK, "serve", "--workers", "2"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        async with asyncio.timeout(30):
            while len(_descendants(proc.pid)) < 2:
                await asyncio.sleep(0.1)
        await wait_ready(f"http://127.0.0.1:{port}", proc)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc, port, log


async def test_two_workers_share_the_port_and_the_rooms(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    proc, port, log = await _two_workers(nats_server, tmp_path)
    try:
        await asyncio.sleep(1.0)  # both workers listening
        clients = [await connect(f"ws://127.0.0.1:{port}/ws", f"u{i}") for i in range(24)]
        nodes = {c.welcome["node"] for c in clients}  # type: ignore[index]
        assert len(nodes) == 2 and all(n.endswith(("-w0", "-w1")) for n in nodes), nodes
        for client in clients:
            await client.request(type="join", room="shared")
        # A publish through one worker reaches members on both.
        ack = await clients[0].request(type="publish", room="shared", data={"hello": "workers"})
        seq = ack["seq"]  # the ack, or this member's own msg when it comes first: same seq
        for client in clients[1:]:
            msg = await client.expect("msg")
            assert msg["seq"] == seq
        workers = _descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGTERM)
        for client in clients:
            code, _ = await client.closed()
            assert code == 1012
            await client.close()
        assert await asyncio.to_thread(proc.wait, 30) == 0
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in workers):
            assert time.monotonic() < deadline, "a worker outlived the supervisor"
            await asyncio.sleep(0.1)
        text = log.read_text()
        assert "file descriptors: soft limit" in text and "started 2 workers" in text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


async def test_a_stop_during_a_restart_pause_starts_no_replacement(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    """SIGTERM while the supervisor waits to restart a dead worker: it stops, with no worker left behind."""
    proc, _port, log = await _two_workers(nats_server, tmp_path)
    try:
        first, second = sorted(_descendants(proc.pid))[:2]
        os.kill(first, signal.SIGKILL)
        async with asyncio.timeout(10):
            while "restarting" not in log.read_text():
                await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGTERM)  # inside the restart pause (RESTART_PAUSE, 1 s)
        assert await asyncio.to_thread(proc.wait, 15) == 1  # one worker died by SIGKILL
        leftover = [pid for pid in (second, *_descendants(proc.pid)) if Path(f"/proc/{pid}").exists()]
        assert leftover == [], f"workers outlived the supervisor: {leftover}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
