"""The JS client against a real edge: runs tests/js/live/client.live.mjs with node.

The edge runs in this test's event loop (the `make_edge` fixture, on a real nats-server),
so node runs as an asyncio subprocess: a blocking wait would stall the edge it talks to.
The live tests use the `ws` package from clients/js/node_modules (`cd clients/js && npm ci`,
which `make test` runs first).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SECRET

ROOT = Path(__file__).resolve().parents[2]
LIVE = sorted((ROOT / "tests/js/live").glob("*.live.mjs"))
MAX_ROOMS = 4
"""The edge's max_rooms_per_connection, small so that too_many_rooms is quick to reach."""
MAX_REPLAY = 20
"""The edge's max_replay, small so that a resume that fails (more missed than that) is quick to cause."""
PRESENCE_ROOMS = "live.presence.*"
"""The rooms whose presence the edge keeps (the live tests' presence rooms are named so)."""


@pytest.mark.timeout(180)
async def test_js_client_against_a_real_edge(make_edge: Any) -> None:
    node = shutil.which("node")
    assert node, "node is not installed (make system-deps)"
    dev_deps = ROOT / "clients/js/node_modules/ws"
    assert dev_deps.is_dir(), "the JS dev dependencies are missing: cd clients/js && npm ci"
    assert LIVE, "no tests/js/live/*.live.mjs"
    edge = await make_edge(
        max_rooms_per_connection=MAX_ROOMS,
        max_replay=MAX_REPLAY,
        presence_rooms=PRESENCE_ROOMS,
        presence_ttl=3,
        presence_interval=0.2,
    )
    env = {
        **os.environ,
        "JETSOCK_TEST_URL": edge.url,
        "JETSOCK_TEST_HTTP": edge.http,
        "JETSOCK_TEST_SECRET": SECRET,
        "JETSOCK_TEST_MAX_ROOMS": str(MAX_ROOMS),
        "JETSOCK_TEST_MAX_REPLAY": str(MAX_REPLAY),
        "JETSOCK_TEST_PRESENCE_ROOMS": PRESENCE_ROOMS,
        "NO_COLOR": "1",
    }
    # The files by name: node 20 finds nothing under a directory whose files do not
    # match its test patterns, and would pass with 0 tests.
    process = await asyncio.create_subprocess_exec(
        node,
        "--test",
        "--test-reporter=tap",
        *map(str, LIVE),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(150):
            out, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        out, _ = await process.communicate()
        raise AssertionError(f"node --test did not finish in 150 s:\n{out.decode(errors='replace')}") from None
    output = out.decode(errors="replace")
    assert process.returncode == 0, f"node --test exited {process.returncode}:\n{output}"
    passed = re.search(r"^# pass (\d+)$", output, re.M)
    failed = re.search(r"^# fail (\d+)$", output, re.M)
    ran = passed is not None and int(passed.group(1)) > 0
    assert ran and failed is not None and failed.group(1) == "0", f"no test ran, or some failed:\n{output}"
