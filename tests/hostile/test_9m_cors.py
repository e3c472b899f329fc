"""Class 9m: CORS preflights and cross-origin requests (edge/cors.py) under hostile input.

Against the shared edge process, whose allow-list is the default (its own origin only):
preflights to every browser-facing endpoint from foreign origins shaped to slip past the match
(the dev-mode class's list: look-alike hosts, ports out of range, user info, paths, `null`),
methods and request headers that are not allowed, oversized and repeated values, no preflight
headers at all; real requests from foreign origins. Every preflight gets a clear answer (204
for its own origin asking what is allowed, else 400, 403 or 405 with a JSON problem body), no
refusal and no foreign answer names an origin, credentials never go with `*`; then a flood of
preflights, which costs the control client nothing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from tests.conftest import token
from tests.hostile.conftest import Cases
from tests.hostile.support import Hostile
from tests.hostile.test_9h_dev_mode import FOREIGN_ORIGINS

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.hostile("CORS preflights")]

PATHS = {
    "/v1/stream": "POST",
    "/v1/stream/r1.abcdef": "POST",
    "/v1/rooms/hostile.cors/messages": "POST",
    "/v1/rooms/hostile.cors/presence": "GET",
}
"""The browser-facing paths, and a method each takes."""
FLOOD = 3000
PARALLEL = 32


def cases_for(own: str, method: str) -> list[tuple[str, dict[str, str], set[int]]]:
    """(name, headers, the statuses that are a clear answer) of one preflight to a path taking `method`."""
    ask = {"Access-Control-Request-Method": method, "Access-Control-Request-Headers": "authorization, content-type"}
    found: list[tuple[str, dict[str, str], set[int]]] = [
        (f"foreign origin {origin!r}", {**ask, "Origin": origin}, {403}) for origin in FOREIGN_ORIGINS
    ]
    found += [
        ("its own origin", {**ask, "Origin": own}, {204}),
        ("its own origin, PUT", {**ask, "Origin": own, "Access-Control-Request-Method": "PUT"}, {405}),
        ("its own origin with a slash", {**ask, "Origin": own + "/"}, {204}),
        ("no preflight headers", {}, {400}),
        ("an Origin only", {"Origin": own}, {400}),
        ("a method only", {"Access-Control-Request-Method": "POST"}, {400}),
        ("method DELETE", {**ask, "Origin": own, "Access-Control-Request-Method": "DELETE"}, {405}),
        ("method lower-case post", {**ask, "Origin": own, "Access-Control-Request-Method": "post"}, {405}),
        ("method of 4 kB", {**ask, "Origin": own, "Access-Control-Request-Method": "P" * 4000}, {405}),
        ("an empty method", {**ask, "Origin": own, "Access-Control-Request-Method": ""}, {405}),
        ("header x-evil", {**ask, "Origin": own, "Access-Control-Request-Headers": "authorization, x-evil"}, {403}),
        ("header cookie", {**ask, "Origin": own, "Access-Control-Request-Headers": "cookie"}, {403}),
        (
            "2,000 header names",
            {**ask, "Origin": own, "Access-Control-Request-Headers": ",".join(["x-a"] * 2000)},
            {403},
        ),
        ("commas only", {**ask, "Origin": own, "Access-Control-Request-Headers": ",,, ,"}, {204, 405}),
        (
            "header names in capitals",
            {**ask, "Origin": own, "Access-Control-Request-Headers": "AUTHORIZATION"},
            {204, 405},
        ),
        ("an Origin of 6 kB", {**ask, "Origin": "https://" + "e" * 6000 + ".example"}, {403}),
    ]
    return found


async def test_preflights_from_anywhere_get_clear_answers_and_name_no_foreign_origin(
    hostile: Hostile, cases: Cases
) -> None:
    own = hostile.http
    failures: list[str] = []
    gate = asyncio.Semaphore(PARALLEL)

    async def one(http: aiohttp.ClientSession, path: str, name: str, headers: dict[str, str], expect: set[int]) -> None:
        async with gate:
            try:
                async with http.options(hostile.http + path, headers=headers) as r:
                    status, answer = r.status, r.headers
                    problem = await r.json() if r.content_type == "application/json" else None
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                failures.append(f"{path} {name}: no answer ({exc!r})")
                return
        cases.add()
        allowed = answer.get("Access-Control-Allow-Origin")
        if status not in expect:
            failures.append(f"{path} {name}: HTTP {status} {str(problem)[:200]}, expected {sorted(expect)}")
        elif status >= 400 and not (problem and problem.get("code") and problem.get("message")):
            failures.append(f"{path} {name}: HTTP {status} without a problem body")
        if status != 204 and allowed is not None:
            failures.append(f"{path} {name}: a refusal names the origin {allowed!r}")
        if status == 204 and allowed != headers["Origin"]:
            failures.append(f"{path} {name}: 204 naming {allowed!r}, not the origin that asked")
        if allowed == "*" and "Access-Control-Allow-Credentials" in answer:
            failures.append(f"{path} {name}: credentials with *")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        todo = [(path, *case) for path, method in PATHS.items() for case in cases_for(own, method)]
        await asyncio.gather(*(one(http, *case) for case in todo))
        # Real requests from foreign origins: answered as they would be, but readable by no page.
        auth = {"Authorization": f"Bearer {token('hostile-cors')}"}
        for origin in FOREIGN_ORIGINS[:8]:
            async with http.get(
                f"{hostile.http}/v1/rooms/hostile.cors/messages", headers={**auth, "Origin": origin}
            ) as r:
                cases.add()
                if "Access-Control-Allow-Origin" in r.headers:
                    failures.append(f"GET from {origin!r}: answer names {r.headers['Access-Control-Allow-Origin']!r}")
    cases.note("preflights", len(todo))
    cases.note("check after bad preflights", await hostile.check("bad preflights"))
    assert not failures, f"{len(failures)} preflights not answered as they should be:\n" + "\n".join(failures[:40])


async def test_a_flood_of_preflights_costs_other_clients_nothing(hostile: Hostile, cases: Cases) -> None:
    ask: dict[str, Any] = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    statuses: dict[int, int] = {}
    gate = asyncio.Semaphore(PARALLEL)

    async def one(http: aiohttp.ClientSession, i: int) -> None:
        origin = hostile.http if i % 2 else "https://evil.example"
        async with gate, http.options(f"{hostile.http}/v1/stream", headers={**ask, "Origin": origin}) as r:
            await r.read()
            statuses[r.status] = statuses.get(r.status, 0) + 1

    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        await asyncio.gather(*(one(http, i) for i in range(FLOOD)))
    cases.add(FLOOD)
    cases.note("preflights per second", round(FLOOD / (time.monotonic() - started)))
    cases.note("check after the flood", await hostile.check("preflight flood"))
    assert statuses == {204: FLOOD // 2, 403: FLOOD // 2}, statuses
