"""A flush that timed out or was cancelled leaves core.natsconn.StrictTlsClient working (issue 12).

nats-py 2.16 keeps the future of such a flush in its list of pending PONGs;
when the PONG comes, `set_result` on that future raises inside the read loop
and stops it: the client says "connected" and every request times out until
its ping timer notices (minutes with nats-py's defaults). A hung NATS server
makes flushes time out, so the edge's client resolves only futures still
waiting. These tests make the PONG come late for real: the nats-server is
stopped with SIGSTOP while the flush waits and resumed with SIGCONT.

The tests with nats-py's own client are the control: they show that the same
sequence does break it, so the guard is needed (if nats-py fixes this, they
fail and the override can go).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from core.embedded import EmbeddedNats
from core.natsconn import StrictTlsClient

SUBJECT = "pong.echo"
STREAM = "PONGS"
RECOVERY = 5.0
"""Seconds within which a working client gets a request answered after SIGCONT."""


@contextlib.contextmanager
def stopped(server: EmbeddedNats) -> Iterator[None]:
    """The nats-server is stopped (SIGSTOP) inside the block, and always resumed after it."""
    process = server.process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    # SIGSTOP is delivered asynchronously: a server thread on a CPU may still answer for a moment.
    deadline = time.monotonic() + 5
    while _state(process.pid) != "T" and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)
    try:
        yield
    finally:
        process.send_signal(signal.SIGCONT)


def _state(pid: int) -> str:
    """The process state letter from /proc (T: stopped)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


@pytest.fixture
async def responder(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    """Another connection answering requests on SUBJECT (it never flushes while the server is stopped)."""
    nc = await nats.connect(nats_server.url)

    async def echo(msg: Msg) -> None:
        await msg.respond(b"echo:" + msg.data)

    await nc.subscribe(SUBJECT, cb=echo)
    await nc.flush()
    yield nc
    await nc.close()


async def connected(kind: type[NATS], url: str) -> NATS:
    nc = kind()
    # nats-py's default ping interval (120 s): nothing else repairs a stopped read loop within the test.
    await nc.connect(url, max_reconnect_attempts=0)
    return nc


async def works(nc: NATS) -> bool:
    """A request/reply through `nc` is answered within RECOVERY seconds (tried once a second)."""
    deadline = time.monotonic() + RECOVERY
    while time.monotonic() < deadline:
        try:
            reply = await nc.request(SUBJECT, b"hi", timeout=1.0)
        except nats.errors.TimeoutError:
            continue
        assert reply.data == b"echo:hi"
        return True
    return False


async def timed_out_flush(nc: NATS, server: EmbeddedNats) -> None:
    await nc.flush()  # no PONG of an earlier PING still on its way, to be taken for this flush's
    with stopped(server), pytest.raises(nats.errors.TimeoutError):
        await nc.flush(timeout=0.2)  # type: ignore[arg-type]  # typed int, takes seconds


async def cancelled_flush(nc: NATS, server: EmbeddedNats) -> None:
    await nc.flush()  # no PONG of an earlier PING still on its way, to be taken for this flush's
    with stopped(server):
        waiting = asyncio.create_task(nc.flush(timeout=30))
        await asyncio.sleep(0.3)  # the PING is written; its PONG cannot come
        assert not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting


LATE_PONGS: dict[str, Callable[[NATS, EmbeddedNats], Awaitable[None]]] = {
    "timed-out": timed_out_flush,
    "cancelled": cancelled_flush,
}


@pytest.mark.parametrize("late", sorted(LATE_PONGS))
async def test_strict_client_works_after_a_flush_whose_pong_came_late(
    nats_server: EmbeddedNats, responder: NATS, late: str
) -> None:
    nc = await connected(StrictTlsClient, nats_server.url)
    try:
        assert await works(nc)
        await LATE_PONGS[late](nc, nats_server)
        assert await works(nc), "requests time out after the late PONG: the client's read loop stopped"
        # The late PONG was matched to the flush given up on, not to the next one.
        await nc.flush(timeout=2)
        js = nc.jetstream(timeout=2)
        await js.add_stream(name=STREAM, subjects=["pong.stored"])
        ack = await js.publish("pong.stored", b"{}")
        assert ack.stream == STREAM and ack.seq == 1
        assert nc.is_connected and nc._reading_task is not None and not nc._reading_task.done()
    finally:
        await nc.close()


@pytest.mark.parametrize("late", sorted(LATE_PONGS))
async def test_plain_nats_py_stops_reading_after_the_same_sequence(
    nats_server: EmbeddedNats, responder: NATS, late: str
) -> None:
    """The control: why StrictTlsClient overrides `_process_pong`."""
    nc = await connected(NATS, nats_server.url)
    try:
        assert await works(nc)
        await LATE_PONGS[late](nc, nats_server)
        assert not await works(nc), "nats-py survives a late PONG now: StrictTlsClient._process_pong may go"
        assert nc.is_connected, "still 'connected' while it reads nothing"
        assert nc._reading_task is not None and nc._reading_task.done()
    finally:
        await nc.close()
