"""Requests in flight beside the read loop: ordered per key, concurrent across keys, bounded."""

from __future__ import annotations

import asyncio

from edge.inflight import InFlight


async def test_same_key_runs_in_order_other_keys_do_not_wait() -> None:
    done: list[str] = []
    gate = asyncio.Event()
    crashes: list[BaseException] = []
    work = InFlight(16, crashes.append)

    async def slow(name: str) -> None:
        await gate.wait()
        done.append(name)

    async def fast(name: str) -> None:
        done.append(name)

    work.submit("a", lambda: slow("a1"))
    work.submit("a", lambda: fast("a2"))
    work.submit("b", lambda: fast("b1"))
    await asyncio.sleep(0.01)
    assert done == ["b1"], "b does not wait for a's slow request"
    assert work.busy("a") and not work.busy("b") and work.count == 2
    gate.set()
    await asyncio.sleep(0.01)
    assert done == ["b1", "a1", "a2"], "a's requests ran in the order submitted"
    assert work.count == 0 and not work.busy("a") and not crashes


async def test_past_the_limit_the_reader_waits_for_a_slot() -> None:
    gate = asyncio.Event()
    work = InFlight(2, lambda exc: None)

    async def held() -> None:
        await gate.wait()

    work.submit(1, held)
    work.submit(2, held)
    assert work.full
    waiting = asyncio.create_task(work.slot())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    gate.set()
    await asyncio.wait_for(waiting, 1)
    assert not work.full


async def test_a_crashing_request_is_reported_and_the_lane_goes_on() -> None:
    crashes: list[BaseException] = []
    done: list[int] = []
    work = InFlight(4, crashes.append)

    async def boom() -> None:
        raise RuntimeError("bug")

    async def after() -> None:
        done.append(1)

    work.submit("k", boom)
    work.submit("k", after)
    await asyncio.sleep(0.01)
    assert [str(c) for c in crashes] == ["bug"] and done == [1] and work.count == 0


async def test_cancel_stops_running_and_queued_requests_and_wakes_the_reader() -> None:
    started: list[int] = []
    work = InFlight(1, lambda exc: None)

    async def forever(n: int) -> None:
        started.append(n)
        await asyncio.Event().wait()

    work.submit("k", lambda: forever(1))
    work.submit("k", lambda: forever(2))  # queued behind 1: never made into a coroutine
    waiting = asyncio.create_task(work.slot())
    await asyncio.sleep(0.01)
    work.cancel()
    await asyncio.wait_for(waiting, 1)
    await asyncio.sleep(0.01)
    assert started == [1]
