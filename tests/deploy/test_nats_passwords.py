"""The passwords `jetsock cluster` (edge/localcluster.py) gives deploy/nats-server.conf through
`$EDGE_PASSWORD` and `$BACKEND_PASSWORD`: nats-server parses a variable's value as a config value,
so one starting with `-` stops it (CI saw token_urlsafe draw one); the generated ones never do."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import nats

from core.embedded import die_with_parent, free_port, nats_server_binary
from edge.localcluster import nats_config_password

CONF = Path(__file__).parents[2] / "deploy" / "nats-server.conf"


def start(tmp_path: Path, edge: str, backend: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    # The shipped file, its store moved here (a second store_dir on the command line is refused).
    config = tmp_path / f"nats-{port}.conf"
    text, moved = re.subn(r'(?m)^(\s*store_dir:\s*)"[^"]*"', rf'\g<1>"{tmp_path / f"store-{port}"}"', CONF.read_text())
    assert moved == 1
    config.write_text(text)
    process = subprocess.Popen(
        [nats_server_binary(), "-c", str(config), "-a", "127.0.0.1", "-p", str(port)],
        env={"EDGE_PASSWORD": edge, "BACKEND_PASSWORD": backend},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    return process, port


def test_a_password_starting_with_a_dash_stops_nats_server(tmp_path: Path) -> None:
    process, _ = start(tmp_path, "p" + "a" * 20, "-" + "a" * 20)
    output, _ = process.communicate(timeout=10)
    assert process.returncode != 0 and b"BACKEND_PASSWORD" in output and b"could not be parsed" in output


async def test_generated_passwords_are_strings_to_nats_server(tmp_path: Path) -> None:
    assert all(re.fullmatch(r"p[0-9a-f]{48}", nats_config_password()) for _ in range(10_000))
    edge, backend = nats_config_password(), nats_config_password()
    process, port = start(tmp_path, edge, backend)
    try:
        async with asyncio.timeout(15):
            while True:
                assert process.poll() is None, process.communicate()[0].decode()[-2000:]
                try:
                    nc = await nats.connect(f"nats://127.0.0.1:{port}", user="backend", password=backend)
                    break
                except (nats.errors.NoServersError, OSError):
                    await asyncio.sleep(0.1)
        await nc.close()
    finally:
        process.terminate()
        process.wait(10)
