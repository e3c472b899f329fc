"""Close codes chosen by clients: the operator page's table stays bounded (edge/closes.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from edge import admin
from edge.closes import RecentCloses
from schemas import CloseCode, FramingCloseCode
from tests.conftest import token

BOUND = len(CloseCode) + len(FramingCloseCode) + 1
"""Rows at most: one per protocol code, one for every other code."""


def test_unknown_codes_share_one_row_known_codes_keep_theirs() -> None:
    closes = RecentCloses()
    for code in range(3000, 3300):
        closes.record(code, now=0.0)
    for known_or_odd in (1000, 4501, 4501, None, 65535, 0):
        closes.record(known_or_odd, now=1.0)
    rows = {row["code"]: row for row in closes.summary(now=2.0)}
    assert set(rows) == {"other", "1000", "4501", "1006"}
    assert rows["other"]["total"] == 302 and rows["other"]["recent"] == 302
    assert rows["4501"] == {"code": "4501", "reason": "unauthenticated", "recent": 2, "total": 2}
    assert rows["1006"]["reason"] == "abnormal"  # no code at all: the connection was lost
    # Out of the window, the totals stay and the recent counts go.
    later = {row["code"]: row for row in closes.summary(now=1000.0)}
    assert later["other"] == {**rows["other"], "recent": 0}


async def test_300_client_chosen_close_codes_add_a_bounded_number_of_rows(make_edge: Any) -> None:
    edge = await make_edge(admin=True, max_connections_per_sub=1000)
    codes = [3000 + i for i in range(150)] + [4100 + i for i in range(100)] + [5000 + 1000 * i for i in range(50)]
    assert len(set(codes)) == 300 and not set(codes) & {int(c) for c in CloseCode}
    protocols = ("jetsock.v1", "bearer." + token("closer"))
    async with aiohttp.ClientSession() as http:

        async def close_with(code: int) -> None:
            ws = await http.ws_connect(edge.url, protocols=protocols)
            assert (await ws.receive_json())["type"] == "welcome"
            await ws.close(code=code)

        await asyncio.gather(*(close_with(code) for code in codes))
    async with asyncio.timeout(10):
        while sum(edge.node.recent_closes.total.values()) < len(codes):
            await asyncio.sleep(0.05)
    rows = admin.state(edge.node)["closes"]
    assert isinstance(rows, list)
    assert len(rows) <= BOUND, rows
    assert [(row["code"], row["total"]) for row in rows] == [("other", 300)]
    # The same through the operator's HTTP API.
    async with (
        aiohttp.ClientSession() as http,
        http.get(edge.http + "/admin/api/state", headers={"Authorization": f"Bearer {token('ops', admin=True)}"}) as r,
    ):
        assert r.status == 200
        assert (await r.json())["closes"] == rows
