"""The session's state machine, driven through every transition with real sockets (issue 12).

AUTHENTICATING -> OPEN -> CLOSING -> CLOSED (edge/state.py). `Node.on_transition`
records every change; each test drives one way through the machine with a raw
RFC 6455 client (tests/hostile/rawws.py) against a real edge and nats-server,
and checks three things: the transitions recorded, the close the client saw
(exactly one close frame, nothing after it), and the session's `close_code`.

The server-initiated closes include aiohttp's reader's own close paths (a
frame over max_frame_bytes, invalid UTF-8, RFC 6455 violations): the edge
reads aiohttp's parsed frames but writes the close itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from nats.js.errors import NotFoundError

from core.auth import make_token
from core.embedded import EmbeddedNats
from edge.connection import Connection
from edge.state import State
from tests.conftest import Edge, token
from tests.hostile.rawws import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, Frame, RawWS, frame

Step = tuple[State, State]
AUTH_OPEN: Step = (State.AUTHENTICATING, State.OPEN)
AUTH_CLOSING: Step = (State.AUTHENTICATING, State.CLOSING)
AUTH_CLOSED: Step = (State.AUTHENTICATING, State.CLOSED)
OPEN_CLOSING: Step = (State.OPEN, State.CLOSING)
OPEN_CLOSED: Step = (State.OPEN, State.CLOSED)
CLOSING_CLOSED: Step = (State.CLOSING, State.CLOSED)

SERVER_CLOSED = [AUTH_OPEN, OPEN_CLOSING, CLOSING_CLOSED]
REFUSED = [AUTH_CLOSING, CLOSING_CLOSED]

SUB = "walker"
ROOM = "transitions.room"
WAIT = 8.0
"""Seconds any one step may take before the test fails (a bound against hanging, not a timing claim)."""


@dataclass
class Recorder:
    """Every (session, from, to) the node reports, in order."""

    seen: list[tuple[Connection, State, State]] = field(default_factory=list)
    misreported: list[tuple[State, State, State]] = field(default_factory=list)
    """Calls whose `to` was not the session's state at the time (the hook runs after the change)."""

    def __call__(self, conn: Connection, before: State, after: State) -> None:
        # Nothing raised here: an exception would go into the edge's own close path, not the test.
        if conn.state is not after:
            self.misreported.append((before, after, conn.state))
        self.seen.append((conn, before, after))

    def session(self) -> Connection:
        conns = list(dict.fromkeys(conn for conn, _, _ in self.seen))
        assert len(conns) == 1, f"{len(conns)} sessions made transitions"
        return conns[0]

    def steps(self, conn: Connection) -> list[Step]:
        assert not self.misreported, self.misreported
        return [(a, b) for c, a, b in self.seen if c is conn]


async def recorded_edge(make_edge: Callable[..., Awaitable[Edge]], **settings: Any) -> tuple[Edge, Recorder]:
    edge = await make_edge(**settings)
    recorder = Recorder()
    edge.node.on_transition = recorder
    return edge, recorder


async def until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
    assert condition(), what


async def finished(edge: Edge, conn: Connection) -> None:
    """Until the node has finished the session (its socket is gone)."""
    await until(lambda: conn not in edge.node.connections, "the session was never finished")


def state_of(conn: Connection) -> State:
    """The session's state now (a call, so a type checker does not carry an earlier check over)."""
    return conn.state


def only_session(edge: Edge) -> Connection:
    (conn,) = edge.node.connections
    return conn


async def open_raw(edge: Edge, *, bearer: str | None = None, path: str = "/ws") -> RawWS:
    protocols = ("jetsock.v1",) if bearer is None else ("jetsock.v1", "bearer." + bearer)
    ws = await RawWS.open(edge.settings.port, protocols, path=path)
    assert ws.upgraded, ws.response_head
    return ws


async def read_json(ws: RawWS) -> dict[str, Any]:
    got = await ws.read_frame(WAIT)
    assert got is not None and got.opcode == OP_TEXT, got
    value: dict[str, Any] = json.loads(got.payload)
    return value


async def welcomed(edge: Edge) -> RawWS:
    ws = await open_raw(edge, bearer=token(SUB))
    assert (await read_json(ws))["type"] == "welcome"
    return ws


@dataclass
class Seen:
    """What the client saw of the server's close."""

    before: list[Frame]
    code: int | None
    after: list[Frame]


async def server_close(ws: RawWS, echo: bool = True) -> Seen:
    """Read up to the server's close frame, answer it (`echo`), then read to the end of the stream."""
    before: list[Frame] = []
    code: int | None = None
    async with asyncio.timeout(WAIT):
        while (got := await ws.read_frame(WAIT)) is not None:
            if got.opcode == OP_CLOSE:
                code = got.close_code
                break
            before.append(got)
        if code is not None and echo:
            with contextlib.suppress(ConnectionError):
                await ws.send(OP_CLOSE, struct.pack("!H", code))
        after: list[Frame] = []
        while (got := await ws.read_frame(WAIT)) is not None:
            after.append(got)
    ws.writer.close()
    return Seen(before, code, after)


def one_close(seen: Seen, code: int) -> None:
    assert seen.code == code, f"the client saw close code {seen.code}, not {code}"
    assert not seen.after, f"{len(seen.after)} frames after the close frame: {seen.after[:3]}"


def reset(ws: RawWS) -> None:
    """Vanish: drop the TCP connection with a reset (SO_LINGER 0), no close frame, no FIN."""
    sock = ws.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.abort()


# --- AUTHENTICATING -> OPEN ------------------------------------------------------------


async def test_a_bearer_in_the_handshake_opens_the_session(make_edge: Any) -> None:
    edge, recorder = await recorded_edge(make_edge)
    ws = await welcomed(edge)
    conn = recorder.session()
    assert recorder.steps(conn) == [AUTH_OPEN] and conn.state is State.OPEN
    assert conn.principal is not None and conn.principal.sub == SUB and conn.close_code is None
    await ws.send(OP_CLOSE, struct.pack("!H", 1000))
    one_close(await server_close(ws, echo=False), 1000)
    await finished(edge, conn)
    assert recorder.steps(conn) == SERVER_CLOSED and conn.close_code == 1000


async def test_an_auth_frame_opens_the_session(make_edge: Any) -> None:
    edge, recorder = await recorded_edge(make_edge)
    ws = await open_raw(edge)
    await until(lambda: len(edge.node.connections) == 1, "no session for the upgraded socket")
    conn = only_session(edge)
    await asyncio.sleep(0.2)
    assert conn.state is State.AUTHENTICATING and recorder.seen == [], "nothing happens before the auth frame"
    await ws.send_text(json.dumps({"type": "auth", "token": token(SUB), "ref": "a1"}))
    welcome = await read_json(ws)
    assert welcome["type"] == "welcome" and welcome["ref"] == "a1", welcome
    assert recorder.steps(conn) == [AUTH_OPEN] and state_of(conn) is State.OPEN
    await ws.send(OP_CLOSE, struct.pack("!H", 1000))
    one_close(await server_close(ws, echo=False), 1000)
    await finished(edge, conn)
    assert recorder.steps(conn) == SERVER_CLOSED and conn.close_code == 1000


# --- AUTHENTICATING -> CLOSING -> CLOSED ---------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    code: int
    bearer: str | None = None
    path: str = "/ws"
    first: bytes | None = None
    """Bytes written after the upgrade (a frame), or nothing: wait for auth_timeout."""


REFUSALS = {
    "no auth frame within auth_timeout": Refusal(4501),
    "a first frame that is not auth": Refusal(4501, first=frame(OP_TEXT, b'{"type":"ping","ref":1}')),
    "an invalid token in the auth frame": Refusal(
        4501, first=frame(OP_TEXT, json.dumps({"type": "auth", "token": "eyJ.not.valid"}).encode())
    ),
    "an invalid token in the handshake": Refusal(4501, bearer="eyJhbGciOiJIUzI1NiJ9.e30.bad-signature"),
    "a token signed with another key": Refusal(
        4501, bearer=make_token("another-key-that-is-long-enough-for-hs256", SUB, [">"], [">"])
    ),
    "a token in the URL": Refusal(4500, path="/ws?token=" + token(SUB)),
    "a binary first frame": Refusal(4501, first=frame(OP_BINARY, b'{"type":"auth"}')),
    "a frame over max_frame_bytes before auth (aiohttp's reader)": Refusal(
        1009, first=frame(OP_TEXT, b'{"type":"auth","token":"' + b"t" * 70_000 + b'"}')
    ),
}


@pytest.mark.parametrize("name", list(REFUSALS))
async def test_a_session_refused_before_it_opens_closes_with_one_frame(make_edge: Any, name: str) -> None:
    refusal = REFUSALS[name]
    edge, recorder = await recorded_edge(make_edge, auth_timeout=0.5)
    ws = await open_raw(edge, bearer=refusal.bearer, path=refusal.path)
    if refusal.first is not None:
        ws.write(refusal.first)
    seen = await server_close(ws)
    one_close(seen, refusal.code)
    assert not seen.before, f"frames before the close: {seen.before}"
    conn = recorder.session()
    await finished(edge, conn)
    assert recorder.steps(conn) == REFUSED
    assert conn.close_code == refusal.code and conn.principal is None


# --- AUTHENTICATING -> CLOSED --------------------------------------------------------------


async def test_a_client_that_vanishes_before_authenticating_goes_straight_to_closed(make_edge: Any) -> None:
    edge, recorder = await recorded_edge(make_edge, auth_timeout=30)
    ws = await open_raw(edge)
    await until(lambda: len(edge.node.connections) == 1, "no session for the upgraded socket")
    conn = only_session(edge)
    reset(ws)
    await finished(edge, conn)
    assert recorder.steps(conn) == [AUTH_CLOSED]
    assert conn.close_code == 1006 and conn.principal is None


# --- OPEN -> CLOSING -> CLOSED: the server ends the session ------------------------------------


Trigger = Callable[[Edge, RawWS], Awaitable["asyncio.Task[None] | None"]]
"""Makes the server close the session; may return a task to await once the session is finished."""


async def heartbeat_silence(edge: Edge, ws: RawWS) -> None:
    """Answer nothing, not even the server's pings."""


async def rate_limit(edge: Edge, ws: RawWS) -> None:
    for i in range(20):
        with contextlib.suppress(ConnectionError):
            await ws.send_text(json.dumps({"type": "publish", "room": ROOM, "data": {"i": i}, "ref": i}))


async def operator(edge: Edge, ws: RawWS) -> None:
    admin = {"Authorization": "Bearer " + token("ops", admin=True)}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{edge.http}/v1/subjects/{SUB}/disconnect", headers=admin) as r,
    ):
        assert r.status == 200, await r.text()
        assert await r.json() == {"closed": 1}


async def drain(edge: Edge, ws: RawWS) -> asyncio.Task[None]:
    return asyncio.create_task(edge.node.drain())


def writes(data: bytes) -> Trigger:
    async def write(edge: Edge, ws: RawWS) -> None:
        ws.write(data)

    return write


@dataclass(frozen=True)
class ServerClose:
    code: int
    trigger: Trigger
    settings: dict[str, Any] = field(default_factory=dict)


SERVER_CLOSES = {
    "4009 heartbeat timeout": ServerClose(4009, heartbeat_silence, {"heartbeat": 1.0}),
    "4029 rate limit": ServerClose(
        4029, rate_limit, {"publish_rate": 0.01, "publish_burst": 1, "rate_limit_strikes": 3}
    ),
    "4503 operator disconnect": ServerClose(4503, operator),
    "1012 drain": ServerClose(1012, drain, {"drain_seconds": 0.1}),
    "4500 binary frame": ServerClose(4500, writes(frame(OP_BINARY, b"\x00\x01"))),
    "1009 frame over max_frame_bytes (aiohttp's reader)": ServerClose(
        1009, writes(frame(OP_TEXT, b'{"type":"ping","pad":"' + b"p" * 70_000 + b'"}'))
    ),
    "1002 reserved bit (aiohttp's reader)": ServerClose(1002, writes(frame(OP_TEXT, b'{"type":"ping"}', rsv=4))),
    "1002 fragmented ping (aiohttp's reader)": ServerClose(1002, writes(frame(OP_PING, b"x", fin=False))),
    "1002 continuation without a start (aiohttp's reader)": ServerClose(
        1002, writes(frame(0x0, b'{"type":"ping"}', fin=True))
    ),
}


@pytest.mark.parametrize(
    "case",
    [pytest.param(case, id=name) for name, case in SERVER_CLOSES.items()],
)
async def test_the_server_ends_an_open_session_with_one_close_frame(make_edge: Any, case: ServerClose) -> None:
    edge, recorder = await recorded_edge(make_edge, **case.settings)
    ws = await welcomed(edge)
    conn = recorder.session()
    pending = await case.trigger(edge, ws)
    seen = await server_close(ws)
    one_close(seen, case.code)
    await finished(edge, conn)
    assert recorder.steps(conn) == SERVER_CLOSED
    assert conn.close_code == case.code
    if pending is not None:
        await pending


# --- OPEN -> CLOSING -> CLOSED: the client's close frame ---------------------------------------


@pytest.mark.parametrize(
    ("payload", "echoed", "recorded"),
    [
        (struct.pack("!H", 4321) + b"bye", 4321, 4321),
        (struct.pack("!H", 1000), 1000, 1000),
        (struct.pack("!H", 1001), 1001, 1001),
        (b"", 1000, 1005),  # no code: answered with 1000, recorded as "no status" (RFC 6455 7.1.5)
    ],
    ids=["4321", "1000", "1001", "no-code"],
)
async def test_the_clients_close_frame_is_echoed_once_and_its_code_kept(
    make_edge: Any, payload: bytes, echoed: int, recorded: int
) -> None:
    edge, recorder = await recorded_edge(make_edge)
    ws = await welcomed(edge)
    conn = recorder.session()
    await ws.send(OP_CLOSE, payload)
    one_close(await server_close(ws, echo=False), echoed)
    await finished(edge, conn)
    assert recorder.steps(conn) == SERVER_CLOSED
    assert conn.close_code == recorded


# --- OPEN -> CLOSED --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["rst", "fin"])
async def test_a_socket_lost_without_a_close_frame_is_1006(make_edge: Any, how: str) -> None:
    edge, recorder = await recorded_edge(make_edge)
    ws = await welcomed(edge)
    conn = recorder.session()
    if how == "rst":
        reset(ws)
    else:
        ws.writer.close()
    await finished(edge, conn)
    assert recorder.steps(conn) == [AUTH_OPEN, OPEN_CLOSED]
    assert conn.close_code == 1006


# --- CLOSING serves nothing ----------------------------------------------------------------


async def test_a_closing_session_serves_no_request(make_edge: Any, backend: Any) -> None:
    """After the server's close frame the client sends requests before its own close: none is served."""
    edge, recorder = await recorded_edge(make_edge)
    ws = await welcomed(edge)
    conn = recorder.session()
    await operator(edge, ws)
    got = await ws.read_frame(WAIT)
    assert got is not None and got.close_code == 4503, got
    assert conn.state is State.CLOSING
    for request in (
        {"type": "ping", "ref": "p"},
        {"type": "publish", "room": ROOM, "data": {"late": True}, "id": "late", "ref": "pub"},
        {"type": "join", "room": ROOM, "ref": "join"},
        {"type": "refresh", "token": token(SUB), "ref": "refresh"},
    ):
        await ws.send_text(json.dumps(request))
    await asyncio.sleep(0.5)  # the requests are read (reading goes on until the client's close)
    assert conn.state is State.CLOSING and ROOM not in edge.node.hub.rooms
    await ws.send(OP_CLOSE, struct.pack("!H", 4503))
    seen = await server_close(ws, echo=False)
    assert seen.code is None and not seen.before and not seen.after, "nothing after the close frame"
    await finished(edge, conn)
    assert recorder.steps(conn) == SERVER_CLOSED and conn.close_code == 4503
    with pytest.raises(NotFoundError):
        await backend.jetstream().get_last_msg("ROOMS", f"rooms.{ROOM}")


async def test_a_request_in_flight_when_closing_begins_is_not_answered(
    make_edge: Any, nats_server: EmbeddedNats
) -> None:
    """A publish waiting on a stopped NATS when the operator disconnects: its reply never follows the close."""
    # The socket outlives the wait below: the client answers the close only after it.
    edge, recorder = await recorded_edge(make_edge, close_timeout=10.0)
    ws = await welcomed(edge)
    conn = recorder.session()
    await ws.send_text(json.dumps({"type": "publish", "room": ROOM, "data": {"warm": 1}, "ref": "warm"}))
    warm = await read_json(ws)
    assert warm["type"] == "ack", warm
    process = nats_server.process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    await asyncio.sleep(0.1)  # delivered asynchronously: a running server thread may answer for a moment
    try:
        await ws.send_text(
            json.dumps({"type": "publish", "room": ROOM, "data": {"stuck": 1}, "id": "s", "ref": "stuck"})
        )
        await ws.send_text(json.dumps({"type": "ping", "ref": "after"}))
        pong = await read_json(ws)
        assert pong == {"type": "pong", "ref": "after"}, pong
        assert conn.work.busy(("publish", ROOM)), "the publish waits on NATS"
        await operator(edge, ws)
        got = await ws.read_frame(WAIT)
        assert got is not None and got.close_code == 4503, got
        assert not conn.work.busy(("publish", ROOM)), "entering CLOSING cancelled the request"
    finally:
        process.send_signal(signal.SIGCONT)
    # NATS answers the stuck publish as soon as it runs again: a reply to it would be written by now.
    await asyncio.sleep(1.5)
    await ws.send(OP_CLOSE, struct.pack("!H", 4503))
    seen = await server_close(ws, echo=False)
    assert seen.code is None and not seen.before and not seen.after, f"after the close frame: {seen.before}"
    await finished(edge, conn)
    assert recorder.steps(conn) == SERVER_CLOSED and conn.close_code == 4503
