"""Class 9e: close codes chosen by clients.

A client may close with any code aiohttp accepts (its own 1000-1015 and
every code from 3000 to 65535). 300 authenticated sockets each close with a
code of their own, on raw sockets. The codes are labels the operator sees:
the /admin table (its rows are read from /admin/api/state with an admin
token) and the `jetsock_closes_total` series of /metrics. Both must stay
bounded: at most one row or series per protocol close code plus one for
every other code ("other"), however many codes clients invent.

The /admin rows are checked on an edge of this class's own (the shared one
has no /admin); the /metrics series on the shared edge.
"""

from __future__ import annotations

import asyncio
import re
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from schemas import CloseCode, FramingCloseCode
from tests.conftest import SECRET, token, wait_ready
from tests.edge.devserver import ServeProcess
from tests.hostile.conftest import Cases
from tests.hostile.rawws import OP_CLOSE, RawWS
from tests.hostile.support import Hostile

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.hostile("client-chosen close codes")]

BOUND = len(CloseCode) + len(FramingCloseCode) + 1
"""Rows or series at most: one per protocol code and per RFC 6455 code the reader sends, one for all the others."""
KNOWN = {int(code) for code in (*CloseCode, *FramingCloseCode)}
CODES = (
    [3000 + i for i in range(100)]
    + [4100 + i for i in range(100) if 4100 + i not in KNOWN]
    + [5000 + 600 * i for i in range(100)]
    + [65535, 4999, 4000]
)
SERIES = re.compile(r'^jetsock_closes_total\{[^}]*websocket_close_code="([^"]*)"', re.MULTILINE)


def three_hundred_codes() -> list[int]:
    codes = sorted(set(CODES))[:300]
    assert len(codes) == 300 and not set(codes) & KNOWN
    return codes


async def close_all_with(port: int, codes: list[int], cases: Cases) -> dict[str, int]:
    """Open an authenticated socket per code and close it with that code; the server's echoed codes, counted."""
    gate = asyncio.Semaphore(50)
    echoed: dict[str, int] = {}

    async def one(code: int) -> None:
        async with gate:
            ws = await RawWS.open(port, ("jetsock.v1", "bearer." + token(f"closer-{code}")))
            try:
                assert ws.upgraded, ws.response_head
                await ws.read_frame()  # welcome
                await ws.send(OP_CLOSE, struct.pack("!H", code) + b"chosen by the client")
                got, _ = await ws.until_close(10)
                echoed[str(got)] = echoed.get(str(got), 0) + 1
            finally:
                ws.abort()
        cases.add()

    await asyncio.gather(*(one(code) for code in codes))
    return echoed


@pytest_asyncio.fixture(loop_scope="session")
async def admin_edge(hostile: Hostile, tmp_path: Path) -> AsyncIterator[ServeProcess]:
    edge = ServeProcess(
        tmp_path / "admin-edge",
        args=[],
        env={
            "JETSOCK_NATS_URL": hostile.nats.url,
            "JETSOCK_JWT_SECRET": SECRET,
            "JETSOCK_ADMIN": "true",
            "JETSOCK_NODE": "hostile-admin-edge",
            "JETSOCK_LOG_LEVEL": "warning",
            "JETSOCK_MAX_CONNECTIONS_PER_SUB": "1000",
        },
    )
    await edge.start(banner=False)
    try:
        await wait_ready(edge.http, edge.process, 30, edge.output)
        yield edge
    finally:
        await edge.stop()


async def admin_closes(edge: ServeProcess) -> list[dict[str, object]]:
    headers = {"Authorization": f"Bearer {token('ops', admin=True)}"}
    async with aiohttp.ClientSession() as http, http.get(edge.http + "/admin/api/state", headers=headers) as r:
        assert r.status == 200, await r.text()
        rows: list[dict[str, object]] = (await r.json())["closes"]
        return rows


async def test_300_client_chosen_codes_add_a_bounded_number_of_admin_rows(
    admin_edge: ServeProcess, cases: Cases
) -> None:
    codes = three_hundred_codes()
    echoed = await close_all_with(admin_edge.port, codes, cases)
    async with asyncio.timeout(15):
        while True:
            rows = await admin_closes(admin_edge)
            if sum(int(str(row["total"])) for row in rows) >= len(codes):
                break
            await asyncio.sleep(0.1)
    cases.note("admin rows", {str(row["code"]): row["total"] for row in rows})
    cases.note("codes the server echoed", dict(sorted(echoed.items())[:5]))
    assert len(rows) <= BOUND, f"{len(rows)} rows for {len(codes)} client codes"
    labels = {str(row["code"]) for row in rows}
    assert labels <= {str(code) for code in KNOWN} | {"other"}, labels
    other = next(row for row in rows if row["code"] == "other")
    assert other["total"] == len(codes) and other["reason"], other


async def test_300_client_chosen_codes_add_a_bounded_number_of_metric_series(hostile: Hostile, cases: Cases) -> None:
    """Depends on edge/session.py labelling the close metric with schemas.codes.close_code_label."""
    codes = three_hundred_codes()
    await close_all_with(hostile.port, codes, cases)
    await asyncio.sleep(1.0)
    async with aiohttp.ClientSession() as http, http.get(hostile.http + "/metrics") as r:
        assert r.status == 200
        labels = SERIES.findall(await r.text())
    cases.note("jetsock_closes_total series", len(labels))
    report = await hostile.check("client-chosen close codes")
    cases.note("check", report)
    assert len(labels) <= BOUND, f"{len(labels)} series of jetsock_closes_total: {sorted(labels)[:20]}..."
    assert set(labels) <= {str(code) for code in KNOWN} | {"other"}, sorted(set(labels))[:20]
