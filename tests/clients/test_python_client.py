"""The Python client (clients/python/jetsock): its pure policy, then against a real edge and nats-server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, cast

import msgspec
import pytest

import jetsock
from core.embedded import EmbeddedNats
from jetsock.policy import AT_ONCE_JITTER, RATE_LIMITED_FLOOR, Backoff, Reconnect, decide, reconnect_delay
from schemas import CloseCode, Joined, Msg, Reset
from tests.conftest import Edge, token
from tests.edge.checker import stored_seqs

FAST = Backoff(base=0.05, factor=2.0, cap=0.3, reset_after=10.0)
"""Reconnect quickly in tests; the arithmetic is the same as with the protocol's values."""


# --- backoff arithmetic -------------------------------------------------------


def test_backoff_ceiling_doubles_from_one_second_up_to_thirty() -> None:
    backoff = Backoff()
    assert [backoff.ceiling(n) for n in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.ceiling(10_000) == 30  # no overflow however long the outage


def test_backoff_is_full_jitter_over_the_ceiling() -> None:
    backoff = Backoff()
    assert backoff.delay(0, 0.0) == 0.0
    assert backoff.delay(0, 0.5) == 0.5
    assert backoff.delay(3, 0.25) == 2.0
    assert backoff.delay(9, 0.999) == pytest.approx(29.97)
    with pytest.raises(ValueError):
        backoff.delay(0, 1.5)
    with pytest.raises(ValueError):
        backoff.ceiling(-1)


def test_backoff_resets_after_ten_seconds_connected() -> None:
    backoff = Backoff()
    assert backoff.attempt_after(5, None) == 5  # never came up
    assert backoff.attempt_after(5, 9.9) == 5
    assert backoff.attempt_after(5, 10.0) == 0
    assert Backoff(reset_after=2).attempt_after(3, 2.5) == 0


# --- close policy, every code of PROTOCOL.md section 7 ---------------------------


@pytest.mark.parametrize(
    ("code", "reconnect", "fresh_token", "min_delay"),
    [
        (1000, Reconnect.NEVER, False, 0.0),
        (1001, Reconnect.AT_ONCE, False, 0.0),
        (1012, Reconnect.AT_ONCE, False, 0.0),
        (1006, Reconnect.BACKOFF, False, 0.0),
        (None, Reconnect.BACKOFF, False, 0.0),  # no close frame at all
        (1011, Reconnect.BACKOFF, False, 0.0),
        (1009, Reconnect.NEVER, False, 0.0),
        (1013, Reconnect.BACKOFF, False, 0.0),
        (4000, Reconnect.BACKOFF, False, 0.0),
        (4001, Reconnect.BACKOFF, True, 0.0),
        (4008, Reconnect.BACKOFF, False, 0.0),
        (4009, Reconnect.BACKOFF, False, 0.0),
        (4029, Reconnect.BACKOFF, False, 5.0),
        (4499, Reconnect.BACKOFF, False, 0.0),
        (4500, Reconnect.NEVER, False, 0.0),
        (4501, Reconnect.IF_NEW_TOKEN, True, 0.0),
        (4503, Reconnect.NEVER, False, 0.0),
        (4999, Reconnect.NEVER, False, 0.0),
        (1002, Reconnect.BACKOFF, False, 0.0),  # not in the table: backoff bounds a wrong guess
        (3000, Reconnect.BACKOFF, False, 0.0),
    ],
)
def test_close_policy(code: int | None, reconnect: Reconnect, fresh_token: bool, min_delay: float) -> None:
    decision = decide(code)
    assert (decision.reconnect, decision.fresh_token, decision.min_delay) == (reconnect, fresh_token, min_delay)


@pytest.mark.parametrize("code", list(CloseCode))
def test_close_policy_agrees_with_schemas(code: CloseCode) -> None:
    stops = decide(code).reconnect in (Reconnect.NEVER, Reconnect.IF_NEW_TOKEN)
    assert stops == (not code.recoverable)


def test_reconnect_delays() -> None:
    backoff = Backoff()
    assert reconnect_delay(decide(1012), backoff, 7, 0.5) == 0.5 * AT_ONCE_JITTER  # the attempt does not matter
    assert reconnect_delay(decide(1001), backoff, 0, 0.999) < 1.0
    assert reconnect_delay(decide(4029), backoff, 0, 0.0) == RATE_LIMITED_FLOOR
    assert reconnect_delay(decide(4029), backoff, 6, 0.5) == 15.0  # the floor, not a cap
    assert reconnect_delay(decide(1006), backoff, 2, 0.5) == 2.0
    assert reconnect_delay(decide(4501), backoff, 1, 1.0) == 2.0
    assert not decide(1012).counts_as_failure and decide(1006).counts_as_failure
    with pytest.raises(ValueError):
        reconnect_delay(decide(4500), backoff, 0, 0.5)


# --- a room's position, with plain frames ------------------------------------------


async def test_room_drops_what_it_has_seen_and_goes_on_after_a_reset() -> None:
    resets: list[jetsock.ResetInfo] = []
    room = jetsock.Room(cast(Any, None), "r", None, None, lambda _room, info: resets.append(info))

    def msg(seq: int) -> Msg:
        return Msg(room="r", seq=seq, ts=0, data=msgspec.Raw(b"%d" % seq))

    room.on_joined(Joined(room="r", epoch="e1", seq=10, recovered=False), sent_since=None)
    assert (room.seq, room.since_for_join(), resets) == (10, (10, "e1"), [])  # live from the head: no reset
    for seq in (9, 10, 11, 11, 13):
        room.on_msg(msg(seq))
    room.on_reset(Reset(room="r", epoch="e2", seq=3))  # a new life of the stream: seqs start over
    room.on_msg(msg(2))
    room.on_msg(msg(4))
    assert room.since_for_join() == (4, "e2")
    room.on_joined(Joined(room="r", epoch="e2", seq=60, recovered=True), sent_since=4)
    assert room.seq == 4  # the replay of (4, 60] follows
    room.on_joined(Joined(room="r", epoch="e3", seq=50, recovered=False), sent_since=4)
    assert room.since_for_join() == (50, "e3")
    assert resets == [
        jetsock.ResetInfo("r", "e2", 3, "reset"),
        jetsock.ResetInfo("r", "e3", 50, "not_recovered"),
    ]
    room.end(None)
    assert [(m.seq, m.data) async for m in room] == [(11, 11), (13, 13), (4, 4)]


# --- against a real edge -------------------------------------------------------


class States:
    """Records a client's state changes; waits for one."""

    def __init__(self, client: jetsock.Client) -> None:
        self.seen: list[tuple[str, jetsock.StateInfo]] = []
        self._changed = asyncio.Event()
        client.on_state(self._record)

    def _record(self, state: str, info: jetsock.StateInfo) -> None:
        self.seen.append((state, info))
        self._changed.set()

    def names(self) -> list[str]:
        return [state for state, _ in self.seen]

    async def wait(self, state: str, after: int = 0, timeout: float = 10.0) -> jetsock.StateInfo:
        """The info of the first `state` at index >= `after`."""
        async with asyncio.timeout(timeout):
            while True:
                for name, info in self.seen[after:]:
                    if name == state:
                        return info
                self._changed.clear()
                await self._changed.wait()


async def take(room: jetsock.Room, count: int, timeout: float = 10.0) -> list[jetsock.Message]:
    got: list[jetsock.Message] = []
    async with asyncio.timeout(timeout):
        async for message in room:
            got.append(message)
            if len(got) == count:
                break
    return got


async def shut_down(edge: Edge) -> None:
    """Stop `edge` as a deploy does: drain (1012 to every client, upgrades refused), then stop.

    A bare `edge.stop()` with WebSockets open waits out aiohttp's shutdown
    timeout twice (10 s) and the clients see the socket drop (1006), because
    the app has no on_shutdown hook that closes them first.
    """
    await edge.node.drain()
    await edge.stop()


async def restarted(edge: Edge) -> Edge:
    """A new edge on the same port and settings (the old one stopped)."""
    return await Edge(edge.settings, edge.servers).start()


def token_source(*tokens: str) -> tuple[Callable[[], str], list[str]]:
    """A token function giving `tokens` in turn (the last one from then on), and the list of what it gave."""
    given: list[str] = []

    def source() -> str:
        value = tokens[min(len(given), len(tokens) - 1)]
        given.append(value)
        return value

    return source, given


async def test_connect_join_publish_receive(edge: Edge, backend: Any) -> None:
    async with jetsock.connect(edge.url, token=token(), backoff=FAST) as client:
        states = States(client)
        await client.wait_connected()
        assert client.welcome is not None and client.welcome.node == "test-node"
        room = await client.join("chat.lobby")
        ack = await room.publish({"text": "hi"}, id="m1")
        assert ack == (ack.seq, False)
        again = await room.publish({"text": "hi"}, id="m1")
        assert again == (ack.seq, True)  # same id: stored once
        backend_seq = (await backend.jetstream().publish("rooms.chat.lobby", b"not json")).seq
        first, second = await take(room, 2)
        assert (first.seq, first.data, first.id, first.from_) == (ack.seq, {"text": "hi"}, "m1", "alice")
        assert (second.seq, second.data, second.from_) == (backend_seq, "not json", None)
        with pytest.raises(jetsock.ServerError) as refused:
            await client.join("bad room")
        assert refused.value.code == "invalid_room"
        with pytest.raises(ValueError):
            await client.join("chat.lobby")
        await room.leave()
        assert [m async for m in room] == []  # the iterator ends after a leave
        assert room.active is False
    assert states.names()[-1] == "closed"
    with pytest.raises(jetsock.ClosedError):
        await client.publish("chat.lobby", 1)


async def test_join_with_since_replays_or_resets(edge: Edge, backend: Any) -> None:
    js = backend.jetstream()
    seqs = [(await js.publish("rooms.hist", json.dumps(n).encode())).seq for n in range(5)]
    resets: list[jetsock.ResetInfo] = []
    async with jetsock.connect(edge.url, token=token(), backoff=FAST) as client:
        room = await client.join("hist", since=seqs[1], epoch=edge.node.broker.epoch)
        assert room.recovered is True
        assert [m.data for m in await take(room, 3)] == [2, 3, 4]
        await room.leave()
        other = await client.join("hist", since=seqs[1], epoch="another-life", on_reset=lambda _r, i: resets.append(i))
        assert other.recovered is False and other.seq == seqs[-1]
        assert resets == [jetsock.ResetInfo("hist", edge.node.broker.epoch, seqs[-1], "not_recovered")]
        live = (await js.publish("rooms.hist", b"5")).seq
        assert [(m.seq, m.data) for m in await take(other, 1)] == [(live, 5)]


async def test_resume_across_edge_restart_yields_every_message_once(
    edge: Edge, backend: Any, nats_server: EmbeddedNats
) -> None:
    js = backend.jetstream()
    total = 200
    acked: list[int] = []
    async with jetsock.connect(edge.url, token=token(), backoff=FAST) as client:
        states = States(client)
        room = await client.join("chat.resume")

        async def publish_all() -> None:
            for n in range(total):
                acked.append((await js.publish("rooms.chat.resume", json.dumps({"n": n}).encode())).seq)
                await asyncio.sleep(0.004)

        publisher = asyncio.create_task(publish_all())
        receiver = asyncio.create_task(take(room, total, timeout=20))
        async with asyncio.timeout(10):
            while len(acked) < 60:
                await asyncio.sleep(0.005)
        await shut_down(edge)
        info = await states.wait("reconnecting")
        assert info["code"] == 1012 and info["delayMs"] <= 1000  # a drain: at once, with jitter
        await asyncio.sleep(0.3)
        assert len(acked) < total  # the outage is in the middle of the stream
        second = await restarted(edge)
        try:
            await publisher
            got = await receiver
        finally:
            await shut_down(second)
        assert states.names().count("connected") >= 2
        assert room.recovered is True
    stored = await stored_seqs(nats_server.url, "chat.resume")
    assert stored == acked
    assert [m.seq for m in got] == stored  # in order, none missing, none twice
    assert [m.data["n"] for m in got] == list(range(total))


async def test_publish_while_edge_is_down_is_sent_after_reconnect_and_stored_once(
    edge: Edge, nats_server: EmbeddedNats
) -> None:
    async with jetsock.connect(edge.url, token=token(), backoff=FAST, max_pending_publishes=2) as client:
        states = States(client)
        room = await client.join("chat.queue")
        await shut_down(edge)
        await states.wait("reconnecting")
        queued = asyncio.create_task(room.publish({"text": "while down"}, id="offline-1"))
        other = asyncio.create_task(client.publish("chat.elsewhere", 2))
        await asyncio.sleep(0.1)
        assert not queued.done()
        with pytest.raises(jetsock.PublishQueueFull):
            await room.publish(3)  # bounded: two are already waiting
        second = await restarted(edge)
        try:
            seq, duplicate = await asyncio.wait_for(queued, 10)
            await asyncio.wait_for(other, 10)
            (message,) = await take(room, 1)
        finally:
            await shut_down(second)
    assert duplicate is False
    assert (message.seq, message.id, message.data) == (seq, "offline-1", {"text": "while down"})
    assert await stored_seqs(nats_server.url, "chat.queue") == [seq]


async def test_expiring_refreshes_the_token_without_reconnecting(make_edge: Any) -> None:
    edge = await make_edge(refresh_before=1.5)
    source, given = token_source(token(ttl=2), token(ttl=60))
    async with jetsock.connect(edge.url, token=source, backoff=FAST) as client:
        states = States(client)
        await client.wait_connected()
        assert client.welcome is not None
        session, first_exp = client.welcome.session, client.welcome.exp
        async with asyncio.timeout(5):
            while client.exp == first_exp:
                await asyncio.sleep(0.02)
        assert len(given) == 2 and client.exp is not None and client.exp > first_exp + 30
        # Past the first token's exp: without the refresh the server would have closed with 4001.
        await asyncio.sleep(max(0.0, first_exp + 0.5 - time.time()))
        room = await client.join("chat.after")
        await room.publish("still here")
        assert client.state == "connected" and client.welcome.session == session
        assert "reconnecting" not in states.names()


async def test_token_expired_4001_reconnects_with_a_fresh_token(make_edge: Any) -> None:
    # refresh_before=0: `expiring` and the 4001 close go out together, so no refresh can win.
    edge = await make_edge(refresh_before=0)
    fresh = token(ttl=60)
    source, given = token_source(token(ttl=1), fresh)
    async with jetsock.connect(edge.url, token=source, backoff=FAST) as client:
        states = States(client)
        room = await client.join("chat.expiry")
        info = await states.wait("reconnecting", timeout=5)
        assert info["code"] == 4001
        await states.wait("connected", after=states.names().index("reconnecting"))
        assert client.welcome is not None and client.welcome.exp > time.time() + 30
        assert given[-1] == fresh
        ack = await room.publish("after")
        (message,) = await take(room, 1)
        assert message.seq == ack.seq


async def test_4501_with_the_same_token_closes(edge: Edge) -> None:
    async with jetsock.connect(edge.url, token="not-a-jwt", backoff=FAST) as client:
        states = States(client)
        with pytest.raises(jetsock.ClosedError) as closed:
            await client.join("chat.a")
        assert closed.value.code == 4501
        assert states.names()[-1] == "closed" and states.seen[-1][1]["code"] == 4501
        assert "reconnecting" not in states.names()


async def test_4501_with_a_token_source_that_repeats_itself_closes(edge: Edge) -> None:
    source, given = token_source("still-not-a-jwt")
    async with jetsock.connect(edge.url, token=source, backoff=FAST) as client:
        with pytest.raises(jetsock.ClosedError):
            await client.wait_connected()
    assert len(given) == 2  # asked once more after 4501, got the same


async def test_4501_then_a_new_token_reconnects(edge: Edge) -> None:
    source, given = token_source("not-a-jwt", token())
    async with jetsock.connect(edge.url, token=source, backoff=FAST) as client:
        states = States(client)
        room = await asyncio.wait_for(client.join("chat.b"), 5)
        assert room.active
        assert states.seen[0][0] == "reconnecting" and states.seen[0][1]["code"] == 4501
        assert states.names()[-1] == "connected"
    assert len(given) == 2


async def test_4029_backs_off_at_least_five_seconds(make_edge: Any) -> None:
    edge = await make_edge(max_connections_per_sub=1)
    async with jetsock.connect(edge.url, token=token("bob"), backoff=FAST) as first:
        await first.wait_connected()
        second = jetsock.connect(edge.url, token=token("bob"), backoff=FAST)
        states = States(second)
        async with second:
            info = await states.wait("reconnecting")
            assert info["code"] == 4029
            assert info["delayMs"] >= 5000
        assert second.state == "closed"
        assert first.state == "connected"


class FreezingProxy:
    """A TCP proxy whose open connections can be frozen: bytes stop flowing, nothing is closed."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen: set[int] = set()
        self.opened = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def freeze(self) -> None:
        self.frozen.update(range(self.opened))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.opened
        self.opened += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if number not in self.frozen:
                        dst.write(data)
                        await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        for task in (asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))):
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_silent_connection_is_pinged_then_declared_dead_and_resumed(make_edge: Any, backend: Any) -> None:
    edge = await make_edge(heartbeat=0.4)
    proxy = FreezingProxy(edge.settings.port)
    port = await proxy.start()
    try:
        url = f"ws://127.0.0.1:{port}/ws"
        async with jetsock.connect(url, token=token(), backoff=FAST, dead_after=0.4) as client:
            states = States(client)
            room = await client.join("chat.frozen")
            await asyncio.sleep(1.0)  # idle: the client pings and gets pongs, so it stays up
            assert states.names() == ["connected"]
            proxy.freeze()
            seq = (await backend.jetstream().publish("rooms.chat.frozen", b'"during"')).seq
            info = await states.wait("reconnecting", timeout=5)
            assert "no reply to ping" in info["reason"]
            (message,) = await take(room, 1)
            assert (message.seq, message.data) == (seq, "during")
            assert client.state == "connected"
    finally:
        await proxy.stop()


def test_a_retry_waits_half_the_ceiling_at_least() -> None:
    backoff = Backoff()
    assert backoff.retry_delay(1, 0.0) == 0.5 and backoff.retry_delay(1, 0.999) < 1.0
    assert backoff.retry_delay(3, 0.5) == 3.0
    assert backoff.retry_delay(50, 0.0) == 15.0


async def test_a_rate_limited_publish_is_sent_again_with_the_same_id_and_stored_once(
    make_edge: Any, nats_server: EmbeddedNats
) -> None:
    """`rate_limited` (and `unavailable`, which may have been stored) is retried by the client itself, same id."""
    edge = await make_edge(publish_rate=5, publish_burst=2)
    async with jetsock.connect(edge.url, token=token(), backoff=FAST) as client:
        acks = await asyncio.wait_for(
            asyncio.gather(*(client.publish("chat.limited", {"n": n}, id=f"limited-{n}") for n in range(6))), 30
        )
    seqs = sorted(seq for seq, _duplicate in acks)
    assert len(set(seqs)) == 6, acks
    assert await stored_seqs(nats_server.url, "chat.limited") == seqs, "each stored once"
