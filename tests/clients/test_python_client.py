"""The Python client (clients/python/jetsock): its pure policy, then against a real edge and nats-server."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Callable
from typing import Any, cast

import aiohttp
import msgspec
import pytest

import jetsock
from core.embedded import EmbeddedNats, free_port
from core.rooms import is_valid_room
from jetsock import policy
from jetsock.policy import AT_ONCE_JITTER, RATE_LIMITED_FLOOR, Backoff, Reconnect, decide, reconnect_delay
from schemas import CloseCode, Joined, Msg, Reset, clientgen, clientrules
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

    room.handle_joined(Joined(room="r", epoch="e1", seq=10, recovered=False), sent_since=None)
    assert (room.seq, room.since_for_join(), resets) == (10, (10, "e1"), [])  # live from the head: no reset
    for seq in (9, 10, 11, 11, 13):
        room.handle_msg(msg(seq))
    room.handle_reset(Reset(room="r", epoch="e2", seq=3))  # a new life of the stream: seqs start over
    room.handle_msg(msg(2))
    room.handle_msg(msg(4))
    assert room.since_for_join() == (4, "e2")
    room.handle_joined(Joined(room="r", epoch="e2", seq=60, recovered=True), sent_since=4)
    assert room.seq == 4  # the replay of (4, 60] follows
    room.handle_joined(Joined(room="r", epoch="e3", seq=50, recovered=False), sent_since=4)
    assert room.since_for_join() == (50, "e3")
    assert resets == [
        jetsock.ResetInfo("r", "e2", 3, "reset"),
        jetsock.ResetInfo("r", "e3", 50, "not_recovered"),
    ]
    room.end(None)
    assert [(m.seq, m.data) async for m in room] == [(11, 11), (13, 13), (4, 4)]


async def test_iterators_share_messages_and_nothing_is_lost_between_them() -> None:
    room = jetsock.Room(cast(Any, None), "r", None, None, None)
    room.handle_joined(Joined(room="r", epoch="e", seq=0, recovered=False), sent_since=None)

    def deliver(*seqs: int) -> None:
        for seq in seqs:
            room.handle_msg(Msg(room="r", seq=seq, ts=0, data=msgspec.Raw(b"%d" % seq)))

    deliver(1)  # before any iterator: kept for the first one
    one = room.messages()
    deliver(2)
    two = room.messages()  # from its start
    deliver(3)
    assert [(await anext(one)).seq for _ in range(3)] == [1, 2, 3]
    assert (await anext(two)).seq == 3
    await one.aclose()
    deliver(4)
    await two.aclose()  # the last iterator: what it did not read waits for the next one
    deliver(5)
    async for message in room:
        assert message.seq == 4
        break  # dropping an iterator detaches it too, keeping what it did not read
    deliver(6)
    assert [m.seq for m in await take(room, 2)] == [5, 6]
    room.end(jetsock.RoomLeft("r", "forbidden"))
    with pytest.raises(jetsock.RoomLeft):
        await anext(room.messages())


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
        with pytest.raises(jetsock.InvalidRoom) as refused:
            client.join("bad room")  # refused before sending, as the server would
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
        assert (closed.value.code, closed.value.close_code, closed.value.logged_out) == ("closed", 4501, False)
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


# --- the rules: the policy is jetsock.rules, which is schemas.clientrules -------------


def test_rules_module_is_generated_from_schemas() -> None:
    assert clientgen.PY.read_text() == clientgen.py_module(), "run python -m schemas.clientgen --write"


def test_decide_is_the_close_rule_of_schemas_for_every_code() -> None:
    codes: list[int | None] = [None, *range(1000, 1016), 3000, *range(4000, 5000)]
    for code in codes:
        rule = clientrules.close_rule(code)
        decision = decide(code)
        assert (decision.reconnect.value, decision.fresh_token, decision.min_delay) == (
            rule.action.value,
            rule.fresh_token,
            rule.min_delay_ms / 1000,
        ), code


def test_the_client_s_defaults_are_the_rules() -> None:
    assert Backoff() == Backoff(
        base=clientrules.BACKOFF_BASE_MS / 1000,
        factor=clientrules.BACKOFF_FACTOR,
        cap=clientrules.BACKOFF_CAP_MS / 1000,
        reset_after=clientrules.STABLE_AFTER_MS / 1000,
    )
    assert AT_ONCE_JITTER == clientrules.AT_ONCE_JITTER_MS / 1000
    assert {code.value for code in clientrules.RETRYABLE_ERRORS} == policy.RETRYABLE_ERRORS
    defaults = clientrules.CLIENT_DEFAULTS
    parameters = inspect.signature(jetsock.Client).parameters
    options = {name: p.default for name, p in parameters.items() if name not in ("url", "token", "backoff", "draw")}
    assert options == {
        "auto_connect": True,
        "publish_timeout": defaults.publish_timeout_ms / 1000,
        "dead_after": defaults.dead_after_ms / 1000,
        "connect_timeout": defaults.connect_timeout_ms / 1000,
        "request_timeout": defaults.request_timeout_ms / 1000,
        "max_queued": defaults.max_queued,
        "max_pending_publishes": None,
        "max_frame_bytes": defaults.max_frame_bytes,
        "compress": True,  # permessage-deflate offered (PROTOCOL.md 9.15); browsers offer it by themselves
        "transports": ("websocket", "stream"),  # the JS client's default too (PROTOCOL.md section 11)
        "stream_url": None,  # beside the WebSocket URL
    }


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "chat.lobby",
        "A-b_c.9",
        "x" * 128,
        ".".join(["s"] * 16),
        "",
        "x" * 129,
        ".".join(["s"] * 17),
        "bad room",
        "chat.*",
        "chat.>",
        "chat..x",
        ".chat",
        "chat.",
        "chat\n",
        "é",
    ],
)
def test_room_names_are_checked_like_the_server_does(name: str) -> None:
    valid = is_valid_room(name) and name != ""
    assert (policy.room_name_error(name) is None) == valid
    client = jetsock.Client("ws://127.0.0.1:1/ws", "t", auto_connect=False)
    if valid:
        assert client.join(name).state == "joining"
    else:
        with pytest.raises(jetsock.InvalidRoom) as refused:
            client.join(name)
        assert (refused.value.code, refused.value.room, isinstance(refused.value, ValueError)) == (
            "invalid_room",
            name,
            True,
        )


def test_errors_are_data() -> None:
    closed = jetsock.ClosedError("bye", close_code=1000)
    about = closed.about(room="r", id="p1")
    assert (about.code, about.close_code, about.logged_out, about.room, about.id, str(about)) == (
        "closed",
        1000,
        False,
        "r",
        "p1",
        str(closed),
    )
    assert closed.room is None  # a copy per publish
    out = jetsock.ClosedError("logged out", close_code=4501, logged_out=True)
    assert (out.code, out.close_code) == ("logged_out", 4501)
    assert jetsock.ServerError("forbidden", "no").code == "forbidden"
    assert jetsock.RoomLeft("r", "forbidden").code == "left"
    assert jetsock.PublishQueueFull("full").code == "queue_full"
    assert jetsock.FrameTooLarge("big").code == "too_large"
    assert jetsock.AlreadyJoined("twice").code == "already_joined"
    timeout = jetsock.PublishTimeout("slow", room="r", id="p")
    assert (timeout.code, isinstance(timeout, TimeoutError), isinstance(timeout, jetsock.RequestTimeout)) == (
        "timeout",
        True,
        True,
    )


# --- lifecycle: rooms, listeners, iterators, connect/disconnect, timeouts, logout --------------


async def http_publish(edge: Edge, room: str, data: Any) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{edge.http}/v1/rooms/{room}/messages", json=data, headers={"Authorization": "Bearer " + token()}
        ) as response,
    ):
        assert response.status == 201, await response.text()
        seq: int = (await response.json())["seq"]
        return seq


class RoomStates:
    """Records a room's state changes."""

    def __init__(self, room: jetsock.Room) -> None:
        self.seen: list[tuple[str, jetsock.RoomInfo]] = []
        room.on_state(lambda state, info: self.seen.append((state, info)))

    def names(self) -> list[str]:
        return [state for state, _ in self.seen]


async def test_join_returns_a_joining_room_whose_ready_is_the_joined_frame(edge: Edge, backend: Any) -> None:
    head = (await backend.jetstream().publish("rooms.chat.ready", b"0")).seq
    async with jetsock.connect(edge.url, token=token(), backoff=FAST) as client:
        room = client.join("chat.ready")
        states = RoomStates(room)
        assert (room.state, room.active, room.seq, room.error) == ("joining", True, None, None)
        info = await room.ready(timeout=5)
        assert info == jetsock.JoinedInfo(edge.node.broker.epoch, head, False)
        assert (room.state, room.seq, room.epoch, room.recovered, room.joined) == (
            "joined",
            head,
            info.epoch,
            False,
            info,
        )
        assert await room.ready() == info  # at once when joined
        assert await room is room  # awaiting the room is awaiting ready()
        assert states.seen == [("joined", info)]
        with pytest.raises(jetsock.AlreadyJoined):
            client.join("chat.ready")
        await room.leave()
        assert (room.state, room.error, states.seen[-1]) == ("left", None, ("left", jetsock.LeftInfo("left", None)))
        with pytest.raises(jetsock.RoomLeft) as left:
            await room.ready()
        assert (left.value.code, left.value.reason) == ("left", "left")


async def test_a_refused_join_leaves_the_room_and_ready_raises_the_server_error(make_edge: Any) -> None:
    edge = await make_edge(max_rooms_per_connection=1)
    async with jetsock.connect(edge.url, token=token(join=["chat.*"]), backoff=FAST) as client:
        forbidden = client.join("secret.plans")
        reader = asyncio.create_task(take(forbidden, 1))
        with pytest.raises(jetsock.ServerError) as refused:
            await forbidden.ready(timeout=5)
        assert (refused.value.code, refused.value.room) == ("forbidden", "secret.plans")
        assert (forbidden.state, forbidden.error) == ("left", refused.value)
        with pytest.raises(jetsock.RoomLeft) as left:
            await reader  # an iterator raises RoomLeft with the refusal
        assert (left.value.reason, left.value.error) == ("forbidden", refused.value)
        with pytest.raises(jetsock.ServerError):
            await forbidden  # `await client.join(...)` raises it as before

        first = await client.join("chat.one")
        with pytest.raises(jetsock.ServerError) as full:
            await client.join("chat.two")
        assert full.value.code == "too_many_rooms"
        assert first.state == "joined" and client.rooms == {"chat.one": first}
        again = client.join("chat.two")  # a refused room may be joined again once there is room
        await first.leave()
        with pytest.raises(jetsock.ServerError):
            await again.ready(timeout=5)  # it was refused before the leave took effect
        assert (await client.join("chat.two").ready(timeout=5)).seq == 0


async def test_rate_limited_joins_are_retried_the_first_time_too(make_edge: Any) -> None:
    edge = await make_edge(join_rate=4, join_burst=1)
    async with jetsock.connect(edge.url, token=token(), backoff=FAST) as client:
        await client.ready(timeout=5)
        rooms = [client.join(f"chat.burst{n}") for n in range(3)]
        infos = await asyncio.wait_for(asyncio.gather(*(room.ready() for room in rooms)), 20)
        assert [room.state for room in rooms] == ["joined"] * 3
        assert all(info.seq == 0 for info in infos)


async def test_listeners_and_iterators_each_get_every_message(
    edge: Edge, backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    heard: dict[str, list[int]] = {"a": [], "b": [], "async": []}

    def broken(message: jetsock.Message) -> None:
        raise RuntimeError("a broken listener")

    async def slow(message: jetsock.Message) -> None:
        await asyncio.sleep(0)
        heard["async"].append(message.seq)

    async with jetsock.connect(edge.url, token=token(), backoff=FAST) as client:
        room = await client.join("chat.many")
        room.on_message(lambda m: heard["a"].append(m.seq))
        room.on_message(broken)
        remove = room.on_message(lambda m: heard["b"].append(m.seq))
        room.on_message(slow)
        first = room.messages()
        second = asyncio.create_task(take(room, 3))
        await asyncio.sleep(0)  # the second iterator starts
        js = backend.jetstream()
        seqs = [(await js.publish("rooms.chat.many", json.dumps(n).encode())).seq for n in range(3)]
        got = []
        async with asyncio.timeout(5):
            async for message in first:
                got.append(message.seq)
                if len(got) == 3:
                    break
        assert got == [m.seq for m in await second] == seqs
        await asyncio.sleep(0.05)
        assert heard == {"a": seqs, "b": seqs, "async": seqs}
        assert "message listener of room chat.many failed" in caplog.text
        remove()
        late = room.messages()  # starts now: gets only what comes next
        fourth = (await js.publish("rooms.chat.many", b"3")).seq
        assert [m.seq async for m in _first(late)] == [fourth]
        assert heard["b"] == seqs and heard["a"] == [*seqs, fourth]
        ending = room.messages()
        await room.leave()
        assert [m async for m in ending] == []  # iterators end when the room leaves
        assert [m async for m in room] == []


async def _first(iterator: jetsock.Messages) -> Any:
    async with asyncio.timeout(5):
        async for message in iterator:
            yield message
            return


async def test_auto_connect_false_waits_for_connect(edge: Edge) -> None:
    client = jetsock.Client(edge.url, token(), auto_connect=False, backoff=FAST)
    states = States(client)
    try:
        async with client:
            assert client.state == "idle"
            # Works before connecting. since=0: from the room's start, since the join and the publish
            # run side by side on the server (the publish may be stored before the join starts).
            room = client.join("chat.idle", since=0)
            publish = asyncio.create_task(room.publish("queued", id="idle-1"))
            await asyncio.sleep(0.2)
            assert (client.state, room.state, publish.done(), states.names()) == ("idle", "joining", False, [])
            client.connect()
            client.connect()  # already connecting: nothing more
            await client.ready(timeout=5)
            assert states.names() == ["connecting", "connected"]
            await room.ready(timeout=5)
            ack = await asyncio.wait_for(publish, 5)
            (message,) = await take(room, 1)
            assert (message.seq, message.id, message.data) == (ack.seq, "idle-1", "queued")
    finally:
        await client.close()
    assert client.state_info == {"code": 1000, "reason": "closed by the application", "loggedOut": False}
    with pytest.raises(jetsock.ClosedError) as closed:
        client.connect()
    assert (closed.value.code, closed.value.close_code) == ("closed", 1000)
    with pytest.raises(jetsock.ClosedError):
        await client.ready()


async def test_disconnect_keeps_rooms_and_publishes_and_connect_resumes_with_since(
    edge: Edge, nats_server: EmbeddedNats
) -> None:
    async with jetsock.connect(edge.url, token=token(), backoff=FAST) as client:
        states = States(client)
        room = await client.join("chat.pause")
        room_states = RoomStates(room)
        reader = room.messages()
        before = await room.publish("before")
        await client.disconnect()
        assert (client.state, room.state, client.state_info["code"]) == ("disconnected", "joining", 1000)
        await client.disconnect()  # already disconnected: nothing more
        during = [await http_publish(edge, "chat.pause", {"n": n}) for n in range(3)]
        offline = asyncio.create_task(room.publish("while disconnected", id="pause-1"))
        await asyncio.sleep(0.3)
        assert not offline.done() and client.state == "disconnected"
        client.connect()
        info = await room.ready(timeout=5)
        assert info.recovered is True and room.recovered is True
        ack = await asyncio.wait_for(offline, 5)
        got: list[jetsock.Message] = []
        async with asyncio.timeout(5):
            async for message in reader:
                got.append(message)
                if len(got) == 5:
                    break
        assert states.names() == ["connected", "disconnected", "connecting", "connected"]
        assert room_states.names() == ["joining", "joined"]
    stored = await stored_seqs(nats_server.url, "chat.pause")
    assert stored == [before.seq, *during, ack.seq]
    assert [m.seq for m in got] == stored  # nothing lost, nothing twice
    assert [m.data for m in got] == ["before", {"n": 0}, {"n": 1}, {"n": 2}, "while disconnected"]


async def test_ready_and_publish_time_out(edge: Edge, nats_server: EmbeddedNats) -> None:
    nowhere = f"ws://127.0.0.1:{free_port()}/ws"
    async with jetsock.connect(nowhere, token=token(), backoff=FAST) as lost:
        with pytest.raises(jetsock.RequestTimeout) as timed_out:
            await lost.ready(timeout=0.3)
        assert timed_out.value.code == "timeout" and isinstance(timed_out.value, TimeoutError)
        assert lost.state == "reconnecting"
        with pytest.raises(TimeoutError):
            await lost.join("chat.nowhere").ready(timeout=0.1)

    client = jetsock.connect(edge.url, token=token(), backoff=FAST, auto_connect=False, publish_timeout=0.2)
    async with client:
        with pytest.raises(jetsock.PublishTimeout) as late:
            await client.publish("chat.slow", "never sent", id="slow-1")  # the client's publish_timeout
        assert (late.value.code, late.value.room, late.value.id) == ("timeout", "chat.slow", "slow-1")
        with pytest.raises(jetsock.PublishTimeout):
            await client.publish("chat.slow", "never sent either", timeout=0.1)  # its own timeout
        client.connect()
        ack = await client.publish("chat.slow", "sent", timeout=0)  # 0: no limit
        assert await stored_seqs(nats_server.url, "chat.slow") == [ack.seq]  # timed out: never sent


async def test_a_logged_out_token_source_closes_the_client_at_once(edge: Edge) -> None:
    reasons: list[str] = []

    async def source(reason: jetsock.TokenReason) -> str | None:
        reasons.append(reason)
        return None

    client = jetsock.Client(edge.url, source, backoff=FAST, auto_connect=False)
    states = States(client)
    room = client.join("chat.out")
    reader = asyncio.create_task(take(room, 1))
    publish = asyncio.create_task(client.publish("chat.out", 1, id="out-1"))
    await asyncio.sleep(0)
    async with client:
        client.connect()
        with pytest.raises(jetsock.ClosedError) as closed:
            await client.ready(timeout=5)
        assert (closed.value.code, closed.value.close_code, closed.value.logged_out) == ("logged_out", 4501, True)
        with pytest.raises(jetsock.ClosedError) as failed:
            await publish
        assert (failed.value.code, failed.value.room, failed.value.id) == ("logged_out", "chat.out", "out-1")
        with pytest.raises(jetsock.ClosedError):
            await reader  # the room's iterator raises it too
        assert room.error is not None and room.error.code == "logged_out"
        with pytest.raises(jetsock.ClosedError) as refused:
            await client.publish("chat.out", 2)
        assert refused.value.code == "logged_out"
    assert reasons == ["connect"]
    assert states.names() == ["connecting", "closed"]
    assert states.seen[-1][1] == {"code": 4501, "reason": "logged out", "loggedOut": True}


async def test_logged_out_after_the_token_expired_4001(make_edge: Any) -> None:
    edge = await make_edge(refresh_before=0)
    first = token(ttl=1)
    reasons: list[str] = []

    def source(reason: jetsock.TokenReason) -> str | None:
        reasons.append(reason)
        return None if reason == "expired" else first  # "refresh": the same token, so nothing is sent

    async with jetsock.connect(edge.url, token=source, backoff=FAST) as client:
        states = States(client)
        room = await client.join("chat.expire")
        with pytest.raises(jetsock.ClosedError) as closed:
            await take(room, 1, timeout=10)
        assert closed.value.code == "logged_out"
        assert client.state == "closed" and client.state_info["loggedOut"] is True
        # The token is asked for at the attempt after 4001 (PROTOCOL.md 9.11): that attempt stops.
        assert states.names()[-3:] == ["reconnecting", "connecting", "closed"]
    assert reasons[0] == "connect" and reasons[-1] == "expired"
    assert set(reasons) <= {"connect", "refresh", "expired"}


async def test_logged_out_when_asked_for_a_refresh(make_edge: Any) -> None:
    edge = await make_edge(refresh_before=1.5)
    reasons: list[str] = []

    def source(reason: jetsock.TokenReason) -> str | None:
        reasons.append(reason)
        return None if reason == "refresh" else token(ttl=2)

    async with jetsock.connect(edge.url, token=source, backoff=FAST) as client:
        states = States(client)
        room = await client.join("chat.refresh")
        info = await states.wait("closed", timeout=5)
        assert info == {"code": 4501, "reason": "logged out", "loggedOut": True}
        assert (room.state, room.error is not None and room.error.code) == ("left", "logged_out")
        with pytest.raises(jetsock.ClosedError) as closed:
            await client.publish("chat.refresh", 1)
        assert (closed.value.code, closed.value.room) == ("logged_out", "chat.refresh")
        assert states.names() == ["connected", "closed"]
    assert reasons == ["connect", "refresh"]


async def test_zero_argument_token_sources_and_bad_tokens(edge: Edge) -> None:
    values: list[object] = ["", 42, token()]

    async def source() -> Any:
        return values.pop(0)

    async with jetsock.connect(edge.url, token=source, backoff=FAST) as client:
        states = States(client)
        await client.ready(timeout=5)
        failures = [info for state, info in states.seen if state == "reconnecting"]
        assert [info["attempt"] for info in failures] == [1, 2]
        assert all("bad_token" in info["reason"] for info in failures)
        assert values == []


async def test_a_join_after_a_leave_waits_for_the_left(edge: Edge, backend: Any) -> None:
    async with jetsock.connect(edge.url, token=token(), backoff=FAST) as client:
        await client.ready(timeout=5)
        for _ in range(3):
            # Join, leave while the join runs and join again, all at once: the server would answer the
            # second join `bad_request` (still a member) if it were sent before the first leave's `left`.
            first = client.join("chat.again")
            leaving = first.leave()
            again = client.join("chat.again")
            assert first.state == "left" and again.state == "joining"
            info = await again.ready(timeout=5)
            await leaving
            seq = (await backend.jetstream().publish("rooms.chat.again", b'"hello"')).seq
            (message,) = await take(again, 1)
            assert (message.seq, info.recovered) == (seq, False)
            await again.leave()
            assert [m async for m in first] == []


# --- history (PROTOCOL.md 9.12): join with last, history pages, a failed resume ----------


async def test_a_not_recovered_joined_with_replayed_resets_first_then_delivers_the_newest() -> None:
    seen: list[Any] = []
    room = jetsock.Room(cast(Any, None), "r", 5, "e0", lambda r, info: seen.append(("reset", info.seq, r.seq)), last=3)
    room.on_message(lambda m: seen.append(("msg", m.seq)))
    room.handle_joined(Joined(room="r", epoch="e1", seq=20, recovered=False, replayed=3), sent_since=5)
    assert (room.seq, room.replayed, room.joined) == (None, 3, jetsock.JoinedInfo("e1", 20, False, 3))
    for seq in (18, 19, 19, 20, 21):
        room.handle_msg(Msg(room="r", seq=seq, ts=0, data=msgspec.Raw(b"0")))
    assert seen == [("reset", 20, None), ("msg", 18), ("msg", 19), ("msg", 20), ("msg", 21)]
    assert room.since_for_join() == (21, "e1")
    # Another epoch: the newest messages may be below the old position; replayed 0: from the head.
    seen.clear()
    room.handle_joined(Joined(room="r", epoch="e2", seq=2, recovered=False, replayed=2), sent_since=21)
    room.handle_msg(Msg(room="r", seq=1, ts=0, data=msgspec.Raw(b"0")))
    room.handle_joined(Joined(room="r", epoch="e3", seq=9, recovered=False), sent_since=1)
    room.handle_msg(Msg(room="r", seq=9, ts=0, data=msgspec.Raw(b"0")))
    assert seen == [("reset", 2, None), ("msg", 1), ("reset", 9, 9)]
    assert (room.replayed, room.seq) == (0, 9)


async def publish_many(backend: Any, room: str, count: int) -> list[int]:
    js = backend.jetstream()
    return [(await js.publish(f"rooms.{room}", json.dumps({"n": n}).encode())).seq for n in range(count)]


async def test_join_with_last_delivers_the_newest_stored_then_live(edge: Edge, backend: Any) -> None:
    stored = await publish_many(backend, "chat.last", 8)
    resets: list[jetsock.ResetInfo] = []
    async with jetsock.connect(edge.url, token=token(), backoff=FAST) as client:
        with pytest.raises(ValueError):
            client.join("chat.last", last=0)
        room = client.join("chat.last", last=5, on_reset=lambda _r, info: resets.append(info))
        info = await room.ready(timeout=5)
        assert info == jetsock.JoinedInfo(edge.node.broker.epoch, stored[-1], False, 5)
        assert room.replayed == 5 and room.last == 5
        newest = await take(room, 5)
        assert [m.seq for m in newest] == stored[-5:]
        assert [m.data["n"] for m in newest] == [3, 4, 5, 6, 7]
        ack = await room.publish({"n": 8})
        assert [m.seq for m in await take(room, 1)] == [ack.seq]
        assert resets == []  # no position was given: nothing to reset
        few = await client.join("chat.few", last=50)  # an empty room: nothing replayed
        assert (few.replayed, few.recovered) == (0, False)


async def test_history_pages_back_until_more_is_false(make_edge: Any, backend: Any) -> None:
    edge = await make_edge(history_rate=5, history_burst=2)
    stored = await publish_many(backend, "chat.pages", 25)
    draws: list[float] = []  # retry delays are drawn here (nothing reconnects in this test)

    def draw() -> float:
        draws.append(0.5)
        return 0.5

    async with jetsock.connect(edge.url, token=token(), backoff=FAST, auto_connect=False, draw=draw) as client:
        # Asked before connecting: sent once connected.
        first = asyncio.create_task(client.history("chat.pages", limit=10))
        await asyncio.sleep(0.1)
        assert not first.done()
        client.connect()
        page = await asyncio.wait_for(first, 5)
        pages = [page]
        while page.more:
            page = await client.history("chat.pages", before=page.messages[0].seq, limit=10)
            pages.insert(0, page)
        assert [len(p.messages) for p in pages] == [5, 10, 10]
        got = [m for p in pages for m in p.messages]
        assert [m.seq for m in got] == stored  # every stored message once, in order
        assert [m.data for m in got] == [{"n": n} for n in range(25)]
        assert {(p.room, p.epoch) for p in pages} == {("chat.pages", edge.node.broker.epoch)}
        assert isinstance(got[0], jetsock.Message)

        # Room.history, joined or not; rate_limited pages are asked again by the client.
        room = client.join("chat.pages")
        burst = await asyncio.gather(*(room.history(before=stored[20], limit=2) for _ in range(5)))
        assert [[m.seq for m in p.messages] for p in burst] == [stored[18:20]] * 5
        assert draws, "some of the burst were refused rate_limited, and asked again"
        nothing = await client.history("chat.nothing")
        assert (nothing.messages, nothing.more) == ([], False)

        with pytest.raises(jetsock.ServerError) as bad:
            await client.history("chat.pages", limit=1000)
        assert (bad.value.code, bad.value.room) == ("bad_request", "chat.pages")
        with pytest.raises(jetsock.InvalidRoom):
            await client.history("not a room")
    async with jetsock.connect(edge.url, token=token(join=["open.*"]), backoff=FAST) as outsider:
        with pytest.raises(jetsock.ServerError) as forbidden:
            await outsider.history("chat.pages")
        assert (forbidden.value.code, forbidden.value.room) == ("forbidden", "chat.pages")
    with pytest.raises(jetsock.ClosedError):
        await outsider.history("chat.pages")


async def test_history_waits_for_a_reconnect_and_times_out(edge: Edge, backend: Any) -> None:
    stored = await publish_many(backend, "chat.wait", 3)
    async with jetsock.connect(edge.url, token=token(), backoff=FAST) as client:
        states = States(client)
        await client.ready(timeout=5)
        await shut_down(edge)
        await states.wait("reconnecting")
        waiting = asyncio.create_task(client.history("chat.wait", timeout=0))
        with pytest.raises(jetsock.RequestTimeout) as timed_out:
            await client.history("chat.wait", timeout=0.3)
        assert (timed_out.value.code, timed_out.value.room) == ("timeout", "chat.wait")
        second = await restarted(edge)
        try:
            page = await asyncio.wait_for(waiting, 10)
        finally:
            await shut_down(second)
        assert [m.seq for m in page.messages] == stored


async def test_a_failed_resume_with_last_resets_first_then_the_newest_then_live(make_edge: Any, backend: Any) -> None:
    edge = await make_edge(max_replay=20)  # more missed than that is not recovered
    events: list[Any] = []
    async with jetsock.connect(edge.url, token=token(), backoff=FAST) as client:
        room = client.join("chat.gap", last=4, on_reset=lambda _r, i: events.append(("reset", i.reason, i.seq)))
        room.on_message(lambda m: events.append(("msg", m.seq)))
        await room.ready(timeout=5)
        before = await room.publish("before")
        async with asyncio.timeout(5):
            while room.seq != before.seq:
                await asyncio.sleep(0.01)
        await client.disconnect()
        missed = await publish_many(backend, "chat.gap", 25)
        events.clear()
        client.connect()
        info = await room.ready(timeout=5)
        assert (info.recovered, info.replayed, info.seq) == (False, 4, missed[-1])
        async with asyncio.timeout(5):
            while len(events) < 5:
                await asyncio.sleep(0.01)
        live = await room.publish("live")
        async with asyncio.timeout(5):
            while len(events) < 6:
                await asyncio.sleep(0.01)
        assert events == [
            ("reset", "not_recovered", missed[-1]),
            *[("msg", seq) for seq in missed[-4:]],
            ("msg", live.seq),
        ]
        assert room.seq == live.seq


# --- presence (PROTOCOL.md section 10) ---------------------------------------------------


def presence_token(sub: str, presence: list[str] | None = None) -> str:
    """A token that may read the presence of the chat rooms, with `info` {"name": Sub}."""
    return token(sub, presence=presence or ["chat.*"], info={"name": sub.title()})


async def until_true(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def tabs(room: jetsock.Room) -> dict[str, int]:
    """`room.members` as sub -> connections."""
    return {sub: member.connections for sub, member in room.members.items()}


async def test_presence_members_events_who_and_two_tabs_of_one_user(make_edge: Any) -> None:
    edge = await make_edge(presence_rooms="chat.*", presence_ttl=3, presence_interval=0.2)
    alice1 = jetsock.Client(edge.url, presence_token("alice"), backoff=FAST)
    alice2 = jetsock.Client(edge.url, presence_token("alice"), backoff=FAST)
    bob = jetsock.Client(edge.url, presence_token("bob"), backoff=FAST)
    async with alice1, alice2, bob:
        mine = await alice1.join("chat.lobby")
        assert alice1.welcome is not None and alice1.welcome.features is not None
        assert "presence" in alice1.welcome.features
        await until_true(lambda: tabs(mine) == {"alice": 1})
        assert mine.members["alice"].info == {"name": "Alice"}
        events: list[jetsock.PresenceEvent] = []
        mine.on_presence(events.append)
        stream = mine.presence_events()

        theirs = await bob.join("chat.lobby")
        await until_true(lambda: tabs(theirs) == {"alice": 1, "bob": 1})
        await until_true(lambda: "bob" in mine.members)  # the event reached alice
        assert mine.members["bob"] == jetsock.PresenceMember("bob", {"name": "Bob"}, 1)
        # (Alice's own join may come in the same batch: events tell every member, her too.)
        assert jetsock.PresenceMember("bob", {"name": "Bob"}, 1) in [m for e in events for m in e.joined]
        assert all(e.left == () and e.room == "chat.lobby" for e in events)
        async with asyncio.timeout(5):
            while "bob" not in [m.sub for m in (await anext(stream)).joined]:
                pass

        # A second tab of alice: she counts once, with two connections.
        second = await alice2.join("chat.lobby")
        await until_true(lambda: tabs(second) == {"alice": 2, "bob": 1})
        who = await theirs.presence()
        assert (who.room, who.count, who.connections, who.truncated) == ("chat.lobby", 2, 3, False)
        assert [(m.sub, m.info, m.connections) for m in who.members] == [
            ("alice", {"name": "Alice"}, 2),
            ("bob", {"name": "Bob"}, 1),
        ]
        assert tabs(theirs) == {"alice": 2, "bob": 1}, "an answer replaces the members"
        assert (await alice1.presence("chat.lobby")).count == 2  # client.presence, same answer

        # One tab closes: alice stays; the other: she leaves.
        await alice2.close()
        await asyncio.sleep(0.5)
        await theirs.presence()
        assert tabs(theirs) == {"alice": 1, "bob": 1}
        await alice1.close()
        await until_true(lambda: "alice" not in theirs.members)
        assert tabs(theirs) == {"bob": 1}
        assert (await theirs.presence()).count == 1
        # The room of a closed client: no members, and its iterator stops.
        assert dict(mine.members) == {}
        async with asyncio.timeout(5):
            rest = [event async for event in stream]  # what it still held, then it stops
        assert all(e.room == "chat.lobby" for e in rest)


async def test_presence_resyncs_after_a_rejoin(make_edge: Any) -> None:
    edge = await make_edge(presence_rooms="chat.*", presence_ttl=3, presence_interval=0.2)
    carol = jetsock.Client(edge.url, presence_token("carol"), backoff=FAST)
    bob = jetsock.Client(edge.url, presence_token("bob"), backoff=FAST)
    async with carol, bob:
        room = await carol.join("chat.lobby")
        await bob.join("chat.lobby")
        await until_true(lambda: tabs(room) == {"bob": 1, "carol": 1})
        events: list[jetsock.PresenceEvent] = []
        room.on_presence(events.append)
        members = room.members
        await carol.disconnect()
        assert tabs(room) == {"bob": 1, "carol": 1}, "kept while away"
        await bob.close()  # carol cannot hear of it: her connection is gone
        await asyncio.sleep(0.5)
        carol.connect()
        await room.ready(timeout=10)
        await until_true(lambda: tabs(room) == {"carol": 1})
        assert room.members is members
        assert [(e.joined, e.left) for e in events] == [((), ("bob",))]


async def test_presence_without_the_right_or_in_a_room_without_presence(make_edge: Any) -> None:
    edge = await make_edge(presence_rooms="chat.*", presence_interval=0.2)
    async with jetsock.connect(edge.url, token=token("dave"), backoff=FAST) as plain:
        room = await plain.join("chat.lobby")
        await until_true(lambda: not room.who_asking and not room.who_wanted)
        assert dict(room.members) == {}
        with pytest.raises(jetsock.ServerError) as refused:
            await room.presence()
        assert (refused.value.code, refused.value.room) == ("forbidden", "chat.lobby")
    async with jetsock.connect(edge.url, token=presence_token("erin", presence=[">"]), backoff=FAST) as client:
        elsewhere = await client.join("other.room")
        await until_true(lambda: not elsewhere.who_asking and not elsewhere.who_wanted)
        with pytest.raises(jetsock.ServerError) as outside:
            await client.presence("other.room")
        assert outside.value.code == "bad_request"
        with pytest.raises(jetsock.InvalidRoom):
            await client.presence("bad room")
        lobby = await client.join("chat.lobby")
        await until_true(lambda: tabs(lobby) == {"erin": 1})
        assert lobby.who_wanted
    # A node without presence: welcome.features lacks it, and no `who` is sent.
    bare = await make_edge()
    async with jetsock.connect(bare.url, token=presence_token("fay"), backoff=FAST) as client:
        room = await client.join("chat.lobby")
        assert client.welcome is not None and "presence" not in (client.welcome.features or [])
        await asyncio.sleep(0.3)
        assert (room.who_wanted, room.who_asking, dict(room.members)) == (True, False, {})


async def test_room_members_from_who_answers_and_presence_events() -> None:
    from jetsock.wire import Members, Presence
    from jetsock.wire import PresenceLeft as LeftEntry
    from jetsock.wire import PresenceMember as MemberEntry

    room = jetsock.Room(cast(Any, None), "chat.r", None, None, None)
    events: list[jetsock.PresenceEvent] = []
    room.on_presence(events.append)
    view = room.members
    alice = MemberEntry("alice", {"name": "Alice"}, 2)
    room.sync_members(
        Members(room="chat.r", count=2, connections=3, members=[alice, MemberEntry("bob", None, 1)], truncated=False)
    )
    assert tabs(room) == {"alice": 2, "bob": 1}
    assert [(e.joined, e.left) for e in events] == [
        ((jetsock.PresenceMember("alice", {"name": "Alice"}, 2), jetsock.PresenceMember("bob", None, 1)), ())
    ]
    room.handle_presence(
        Presence(
            room="chat.r", joined=[MemberEntry("carol"), MemberEntry("alice", {"name": "A"})], left=[LeftEntry("bob")]
        )
    )
    assert tabs(room) == {"alice": 2, "carol": 1}, "a user already present keeps her count"
    assert room.members["alice"].info == {"name": "A"}
    assert events[-1].left == ("bob",)
    room.sync_members(
        Members(room="chat.r", count=1, connections=1, members=[MemberEntry("carol", None, 4)], truncated=True)
    )
    assert (events[-1].joined, events[-1].left) == ((), ("alice",))
    assert tabs(room) == {"carol": 4} and room.members is view
    with pytest.raises(TypeError):
        room.members["x"] = jetsock.PresenceMember("x")  # type: ignore[index]
    room.end(None)
    assert dict(room.members) == {}
