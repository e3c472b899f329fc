"""Parity: the same scripted server behaviour, played against both clients, gives the same result.

Every scenario is a server script (tests/clients/scripted.py) and a client program, played
once by the JS client (drive_js.mjs, in node with the `ws` package) and once by the Python
client (drive_py.py). Each driver prints what the application saw: state changes and token
requests (the client stream), each room's events (one stream per room), and the outcomes of
publishes and ready() calls. The test compares each against the behaviour PROTOCOL.md 9.11
asks for, derived from schemas/clientrules.py where it can be, and checks what the server
received (tokens, `since`, publish ids). Streams are compared in order; across streams only
each stream's own order is fixed, as the clients promise no more than that.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from schemas.clientrules import AT_ONCE_JITTER_MS, BACKOFF_BASE_MS, CloseAction, close_rule
from tests.clients.scripted import Conn, Record, Script, ScriptedServer

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = {
    "js": ["node", str(ROOT / "tests/clients/drive_js.mjs")],
    "py": [sys.executable, "-m", "tests.clients.drive_py"],
}
ROOM = "chat.lobby"
Event = list[Any]


@dataclass
class Scenario:
    name: str
    script: Script
    program: dict[str, Any]
    client: list[Event]
    """The client stream: ["state", ...] and ["token", n] events, in order."""
    room: list[Event] = field(default_factory=list)
    """The room's events (state changes, messages, resets), in order."""
    results: list[Event] = field(default_factory=list)
    """Publish and ready() outcomes, in any order."""
    server: Callable[[Record], None] | None = None
    """Checks on what the server received."""


def until(*any_of: Event, count: int = 1) -> dict[str, Any]:
    return {"do": "until", "any": list(any_of), "count": count}


def join_step(**extra: Any) -> dict[str, Any]:
    return {"do": "join", "room": ROOM, **extra}


# --- server scripts --------------------------------------------------------------


def close_after_join(code: int) -> Script:
    """Join answered at seq 10, then the connection ends with `code`; later connections resume."""

    async def script(conn: Conn, n: int) -> None:
        await conn.welcome()
        join = await conn.expect("join")
        await conn.joined(join, seq=10, recovered=n > 0)
        if n == 0:
            await (conn.drop() if code == 1006 else conn.close(code))
            return
        await conn.idle()

    return script


async def serve_idle(conn: Conn, n: int) -> None:
    await conn.welcome()
    await conn.idle()


def refuse_publish_once(code: str, duplicate: bool) -> Script:
    async def script(conn: Conn, n: int) -> None:
        await conn.welcome()
        first = await conn.expect("publish")
        await conn.error(first, code)
        again = await conn.expect("publish")
        await conn.send({"type": "ack", "seq": 5, "ref": again["ref"], **({"duplicate": True} if duplicate else {})})
        await conn.idle()

    return script


async def refuse_publish(conn: Conn, n: int) -> None:
    await conn.welcome()
    await conn.error(await conn.expect("publish"), "forbidden")
    await conn.idle()


async def refuse_join(conn: Conn, n: int) -> None:
    await conn.welcome()
    await conn.error(await conn.expect("join"), "forbidden")
    await conn.idle()


def refuse_join_once(code: str) -> Script:
    async def script(conn: Conn, n: int) -> None:
        await conn.welcome()
        await conn.error(await conn.expect("join"), code)
        await conn.joined(await conn.expect("join"), seq=3)
        await conn.idle()

    return script


async def expiring(conn: Conn, n: int) -> None:
    await conn.welcome()
    await conn.send({"type": "expiring", "exp": 2_000_000_030})
    refresh = await conn.expect("refresh")
    await conn.send({"type": "refreshed", "exp": 2_000_003_600, "ref": refresh["ref"]})
    await conn.idle()


async def reset(conn: Conn, n: int) -> None:
    await conn.welcome()
    await conn.joined(await conn.expect("join"), seq=1)
    await conn.msg(ROOM, 2)
    await conn.send({"type": "reset", "room": ROOM, "epoch": "e2", "seq": 50})
    await conn.msg(ROOM, 51)
    await conn.idle()


async def not_recovered(conn: Conn, n: int) -> None:
    await conn.welcome()
    await conn.joined(await conn.expect("join"), seq=20, epoch="e1", recovered=False)
    await conn.msg(ROOM, 21)
    await conn.idle()


async def recovered(conn: Conn, n: int) -> None:
    await conn.welcome()
    await conn.joined(await conn.expect("join"), seq=7, epoch="e1", recovered=True)
    for seq in (6, 7, 7, 8):  # the replay, a duplicate of its last message, then live
        await conn.msg(ROOM, seq)
    await conn.idle()


async def left_by_server(conn: Conn, n: int) -> None:
    await conn.welcome()
    await conn.joined(await conn.expect("join"), seq=1)
    await conn.send({"type": "left", "room": ROOM, "reason": "forbidden"})
    await conn.idle()


async def close_4001(conn: Conn, n: int) -> None:
    await conn.welcome()
    await conn.close(4001, "token expired")


async def disconnect_and_resume(conn: Conn, n: int) -> None:
    await conn.welcome()
    join = await conn.expect("join")
    if n == 0:
        await conn.joined(join, seq=4)
        await conn.msg(ROOM, 5)
    else:
        await conn.joined(join, seq=6, recovered=True)
        await conn.msg(ROOM, 6)
        publish = await conn.expect("publish")
        await conn.send({"type": "ack", "seq": 9, "ref": publish["ref"]})
    await conn.idle()


async def joined_replaying(conn: Conn, join: dict[str, Any], *, seq: int, replayed: int, epoch: str = "e1") -> None:
    """`joined` with `recovered: false` and `replayed` (a 1.1 server), then the newest `replayed` messages."""
    await conn.send(
        {
            "type": "joined",
            "room": join["room"],
            "epoch": epoch,
            "seq": seq,
            "recovered": False,
            "replayed": replayed,
            "ref": join["ref"],
        }
    )
    for replay_seq in range(seq - replayed + 1, seq + 1):
        await conn.msg(ROOM, replay_seq)


async def not_recovered_with_last(conn: Conn, n: int) -> None:
    await conn.welcome()
    await joined_replaying(conn, await conn.expect("join"), seq=20, replayed=3)
    await conn.msg(ROOM, 21)
    await conn.idle()


async def rejoin_not_recovered_with_last(conn: Conn, n: int) -> None:
    """The first join gets the newest 2 and the connection drops; the rejoin's `since` is not recoverable."""
    await conn.welcome()
    join = await conn.expect("join")
    if n == 0:
        await joined_replaying(conn, join, seq=4, replayed=2)
        await conn.drop()
        return
    await joined_replaying(conn, join, seq=30, replayed=2)
    await conn.msg(ROOM, 31)
    await conn.idle()


def _joins_with_last(record: Record) -> None:
    joins = [{k: v for k, v in j.items() if k != "ref"} for j in record.sent("join")]
    assert joins == [
        {"type": "join", "room": ROOM, "last": 2},
        {"type": "join", "room": ROOM, "since": 4, "epoch": "e1", "last": 2},
    ], "last goes with the first join and with the rejoin, beside since"


PRESENCE = ["history", "presence"]
"""welcome.features of a node that keeps presence."""
ALICE = {"sub": "alice", "info": {"name": "Alice"}}
CAROL = {"sub": "carol", "info": {"name": "Carol"}}


async def who_answer(conn: Conn, who: dict[str, Any], members: list[dict[str, Any]]) -> None:
    await conn.send(
        {
            "type": "members",
            "room": who["room"],
            "count": len(members),
            "connections": sum(m["connections"] for m in members),
            "members": members,
            "truncated": False,
            "ref": who["ref"],
        }
    )


async def presence_resync(conn: Conn, n: int) -> None:
    """A who after each joined: answered, an event on top, a drop; the rejoin's who resyncs."""
    await conn.welcome(features=PRESENCE)
    await conn.joined(await conn.expect("join"), seq=1, recovered=n > 0)
    who = await conn.expect("who")
    if n == 0:
        await who_answer(conn, who, [{**ALICE, "connections": 2}, {"sub": "bob", "connections": 1}])
        await conn.send({"type": "presence", "room": ROOM, "joined": [CAROL], "left": [{"sub": "bob"}]})
        await conn.drop()
        return
    # bob is long gone; alice closed a tab, dave came with three.
    members = [{**ALICE, "connections": 1}, {**CAROL, "connections": 1}, {"sub": "dave", "connections": 3}]
    await who_answer(conn, who, members)
    await conn.idle()


async def presence_forbidden(conn: Conn, n: int) -> None:
    """The token lacks rooms.presence: the who is refused once, and not asked again."""
    await conn.welcome(features=PRESENCE)
    await conn.joined(await conn.expect("join"), seq=1, recovered=n > 0)
    if n == 0:
        await conn.error(await conn.expect("who"), "forbidden")
        await conn.drop()
        return
    await conn.idle()


def _whos(count: int) -> Callable[[Record], None]:
    def check(record: Record) -> None:
        whos = [(n, frame) for n, frame in record.frames if frame.get("type") == "who"]
        assert [n for n, _ in whos] == list(range(count)), f"one who per joined, on each connection: {whos}"
        assert all(set(frame) == {"type", "room", "ref"} and frame["room"] == ROOM for _, frame in whos)

    return check


# --- expectations derived from schemas/clientrules.py ---------------------------------


def reconnecting(code: int) -> Event:
    rule = close_rule(code)
    kind = "at_once" if rule.action is CloseAction.AT_ONCE else "backoff"
    return ["state", "reconnecting", {"code": code, "delay": kind}]


def close_code_scenario(code: int) -> Scenario:
    rule = close_rule(code)
    start: list[Event] = [["state", "connecting"], ["token", 1], ["state", "connected"]]
    joined_first: Event = ["room", ROOM, "joined", {"recovered": False, "seq": 10}]
    program = {
        "token": ["t1"] if code != 4501 else ["t1", "t1"],
        "steps": [
            join_step(),
            until(["room", ROOM, "joined"]),
            until(["state", "closed"], ["room", ROOM, "joined"], count=2),
        ],
    }
    if rule.action in (CloseAction.STOP, CloseAction.IF_NEW_TOKEN):
        # 4501 with a token source that gives the same token again: stop.
        asked_again = [["token", 2]] if rule.action is CloseAction.IF_NEW_TOKEN else []
        return Scenario(
            f"close-{code}",
            close_after_join(code),
            program,
            client=[*start, *asked_again, ["state", "closed", {"code": code, "loggedOut": False}]],
            # The room waits for a rejoin from the moment the connection ends, until the
            # client has decided (4501: asked its token source) that there will be none.
            room=[joined_first, ["room", ROOM, "joining"], ["room", ROOM, "left", {"reason": "closed"}]],
            server=lambda record: _tokens(record, ["t1"]),
        )

    def resumed(record: Record) -> None:
        _tokens(record, ["t1", "t2"])
        joins = record.sent("join")
        assert len(joins) == 2, joins
        assert joins[1]["since"] == 10 and joins[1]["epoch"] == "e1", f"the rejoin resumes: {joins[1]}"

    program["token"] = ["t1", "t2"]
    return Scenario(
        f"close-{code}",
        close_after_join(code),
        program,
        client=[*start, reconnecting(code), ["state", "connecting"], ["token", 2], ["state", "connected"]],
        room=[joined_first, ["room", ROOM, "joining"], ["room", ROOM, "joined", {"recovered": True, "seq": 10}]],
        server=resumed,
    )


def _tokens(record: Record, want: list[str]) -> None:
    assert record.tokens == want, f"tokens offered per connection: {record.tokens}"


def _one_publish_id(count: int) -> Callable[[Record], None]:
    def check(record: Record) -> None:
        publishes = record.sent("publish")
        assert len(publishes) == count, publishes
        assert {p["id"] for p in publishes} == {"p1"}, "every send of a publish carries its id"
        assert len({json.dumps(p["data"]) for p in publishes}) == 1

    return check


CONNECTED: list[Event] = [["state", "connecting"], ["token", 1], ["state", "connected"]]

CLOSE_CODES = (
    1000,
    1001,
    1006,
    1009,
    1011,
    1012,
    1013,
    3000,
    4000,
    4001,
    4008,
    4009,
    4029,
    4499,
    4500,
    4501,
    4503,
    4999,
)


def scenarios() -> list[Scenario]:
    publish = {"do": "publish", "room": ROOM, "id": "p1", "data": {"text": "hi"}}
    out = [close_code_scenario(code) for code in CLOSE_CODES]

    def rejoined_with_new_token(record: Record) -> None:
        _tokens(record, ["t1", "t2"])

    out += [
        Scenario(
            "close-4501-new-token",
            close_after_join(4501),
            {"token": ["t1", "t2"], "steps": [join_step(), until(["room", ROOM, "joined"], count=2)]},
            client=[*CONNECTED, ["token", 2], reconnecting(4501), ["state", "connecting"], ["state", "connected"]],
            room=[
                ["room", ROOM, "joined", {"recovered": False, "seq": 10}],
                ["room", ROOM, "joining"],
                ["room", ROOM, "joined", {"recovered": True, "seq": 10}],
            ],
            server=rejoined_with_new_token,
        ),
        Scenario(
            "publish-rate-limited",
            refuse_publish_once("rate_limited", duplicate=False),
            {"token": ["t1"], "steps": [publish, until(["publish", "p1"])]},
            client=CONNECTED,
            results=[["publish", "p1", "ok", 5, False]],
            server=_one_publish_id(2),
        ),
        Scenario(
            "publish-unavailable",
            refuse_publish_once("unavailable", duplicate=True),
            {"token": ["t1"], "steps": [publish, until(["publish", "p1"])]},
            client=CONNECTED,
            results=[["publish", "p1", "ok", 5, True]],
            server=_one_publish_id(2),
        ),
        Scenario(
            "publish-forbidden",
            refuse_publish,
            # Long enough for a wrong retry (equal jitter: 0.5-1 s) to reach the server.
            {"token": ["t1"], "steps": [publish, until(["publish", "p1"]), {"do": "sleep", "ms": 1300}]},
            client=CONNECTED,
            results=[["publish", "p1", "error", "forbidden"]],
            server=_one_publish_id(1),
        ),
        Scenario(
            "join-forbidden",
            refuse_join,
            {"token": ["t1"], "steps": [join_step(), {"do": "ready", "room": ROOM}, until(["ready", ROOM])]},
            client=CONNECTED,
            room=[["room", ROOM, "left", {"reason": "forbidden"}]],
            results=[["ready", ROOM, "error", "forbidden"]],
        ),
        *(
            Scenario(
                f"join-{code}",
                refuse_join_once(code),
                {"token": ["t1"], "steps": [join_step(), {"do": "ready", "room": ROOM}, until(["ready", ROOM])]},
                client=CONNECTED,
                room=[["room", ROOM, "joined", {"recovered": False, "seq": 3}]],
                results=[["ready", ROOM, "ok"]],
                server=lambda record: _count(record, "join", 2),
            )
            for code in ("rate_limited", "unavailable")
        ),
        Scenario(
            "expiring",
            expiring,
            {"token": ["t1", "t2"], "steps": [until(["token", 2]), {"do": "sleep", "ms": 300}]},
            client=[*CONNECTED, ["token", 2]],
            server=lambda record: _refreshed_with(record, "t2"),
        ),
        Scenario(
            "reset",
            reset,
            {"token": ["t1"], "steps": [join_step(), until(["message", ROOM, 51])]},
            client=CONNECTED,
            room=[
                ["room", ROOM, "joined", {"recovered": False, "seq": 1}],
                ["message", ROOM, 2],
                ["reset", ROOM, "reset", 50],
                ["message", ROOM, 51],
            ],
        ),
        Scenario(
            "not-recovered",
            not_recovered,
            {"token": ["t1"], "steps": [join_step(since=5, epoch="e0"), until(["message", ROOM, 21])]},
            client=CONNECTED,
            room=[
                ["room", ROOM, "joined", {"recovered": False, "seq": 20}],
                ["reset", ROOM, "not_recovered", 20],
                ["message", ROOM, 21],
            ],
        ),
        Scenario(
            "not-recovered-with-last",
            not_recovered_with_last,
            {"token": ["t1"], "steps": [join_step(since=5, epoch="e0", last=3), until(["message", ROOM, 21])]},
            client=CONNECTED,
            # PROTOCOL.md 9.12: the reset first, then the newest `last` (seq <= joined.seq), then live.
            room=[
                ["room", ROOM, "joined", {"recovered": False, "seq": 20}],
                ["reset", ROOM, "not_recovered", 20],
                ["message", ROOM, 18],
                ["message", ROOM, 19],
                ["message", ROOM, 20],
                ["message", ROOM, 21],
            ],
            server=lambda record: _count(record, "join", 1),
        ),
        Scenario(
            "rejoin-not-recovered-with-last",
            rejoin_not_recovered_with_last,
            {"token": ["t1", "t2"], "steps": [join_step(last=2), until(["message", ROOM, 31])]},
            client=[*CONNECTED, reconnecting(1006), ["state", "connecting"], ["token", 2], ["state", "connected"]],
            room=[
                ["room", ROOM, "joined", {"recovered": False, "seq": 4}],
                ["message", ROOM, 3],
                ["message", ROOM, 4],
                ["room", ROOM, "joining"],
                ["room", ROOM, "joined", {"recovered": False, "seq": 30}],
                ["reset", ROOM, "not_recovered", 30],
                ["message", ROOM, 29],
                ["message", ROOM, 30],
                ["message", ROOM, 31],
            ],
            server=_joins_with_last,
        ),
        Scenario(
            "recovered",
            recovered,
            {"token": ["t1"], "steps": [join_step(since=5, epoch="e1"), until(["message", ROOM, 8])]},
            client=CONNECTED,
            room=[
                ["room", ROOM, "joined", {"recovered": True, "seq": 7}],
                ["message", ROOM, 6],
                ["message", ROOM, 7],
                ["message", ROOM, 8],
            ],
            server=lambda record: _since(record, 0, 5, "e1"),
        ),
        Scenario(
            "left-by-server",
            left_by_server,
            {"token": ["t1"], "steps": [join_step(), until(["room", ROOM, "left"])]},
            client=CONNECTED,
            room=[
                ["room", ROOM, "joined", {"recovered": False, "seq": 1}],
                ["room", ROOM, "left", {"reason": "forbidden"}],
            ],
        ),
        Scenario(
            "logged-out-at-start",
            serve_idle,
            {"token": [None], "steps": [publish, until(["state", "closed"]), until(["publish", "p1"])]},
            client=[["state", "connecting"], ["token", 1], ["state", "closed", {"code": 4501, "loggedOut": True}]],
            results=[["publish", "p1", "error", "logged_out"]],
            server=lambda record: _tokens(record, []),
        ),
        Scenario(
            "logged-out-after-4001",
            close_4001,
            {"token": ["t1", None], "steps": [until(["state", "closed"])]},
            client=[
                *CONNECTED,
                reconnecting(4001),
                ["state", "connecting"],
                ["token", 2],
                ["state", "closed", {"code": 4501, "loggedOut": True}],
            ],
            server=lambda record: _tokens(record, ["t1"]),
        ),
        Scenario(
            "token-source-fails",
            serve_idle,
            {"token": ["!throw", "t1"], "steps": [until(["state", "connected"])]},
            client=[
                ["state", "connecting"],
                ["token", 1],
                ["state", "reconnecting", {"code": 1006, "delay": "backoff"}],
                ["state", "connecting"],
                ["token", 2],
                ["state", "connected"],
            ],
            server=lambda record: _tokens(record, ["t1"]),
        ),
        Scenario(
            "disconnect-and-connect",
            disconnect_and_resume,
            {
                "token": ["t1", "t2"],
                "steps": [
                    join_step(),
                    until(["message", ROOM, 5]),
                    {"do": "disconnect"},
                    until(["state", "disconnected"]),
                    publish,
                    {"do": "connect"},
                    until(["message", ROOM, 6]),
                    until(["publish", "p1"]),
                ],
            },
            client=[
                *CONNECTED,
                ["state", "disconnected", {"code": 1000, "loggedOut": False}],
                ["state", "connecting"],
                ["token", 2],
                ["state", "connected"],
            ],
            room=[
                ["room", ROOM, "joined", {"recovered": False, "seq": 4}],
                ["message", ROOM, 5],
                ["room", ROOM, "joining"],
                ["room", ROOM, "joined", {"recovered": True, "seq": 6}],
                ["message", ROOM, 6],
            ],
            results=[["publish", "p1", "ok", 9, False]],
            server=lambda record: _since(record, 1, 5, "e1"),
        ),
        Scenario(
            "presence-resync",
            presence_resync,
            {"token": ["t1", "t2"], "steps": [join_step(), until(["presence", ROOM], count=3)]},
            client=[*CONNECTED, reconnecting(1006), ["state", "connecting"], ["token", 2], ["state", "connected"]],
            # PROTOCOL.md 9.13: a who after each joined; its answer replaces the members and is
            # told as the difference; events apply on top; the rejoin's who resyncs.
            room=[
                ["room", ROOM, "joined", {"recovered": False, "seq": 1}],
                [
                    "presence",
                    ROOM,
                    {
                        "joined": ["alice", "bob"],
                        "left": [],
                        "members": {"alice": [2, {"name": "Alice"}], "bob": [1, None]},
                    },
                ],
                [
                    "presence",
                    ROOM,
                    {
                        "joined": ["carol"],
                        "left": ["bob"],
                        "members": {"alice": [2, {"name": "Alice"}], "carol": [1, {"name": "Carol"}]},
                    },
                ],
                ["room", ROOM, "joining"],
                ["room", ROOM, "joined", {"recovered": True, "seq": 1}],
                [
                    "presence",
                    ROOM,
                    {
                        "joined": ["dave"],
                        "left": [],
                        "members": {
                            "alice": [1, {"name": "Alice"}],
                            "carol": [1, {"name": "Carol"}],
                            "dave": [3, None],
                        },
                    },
                ],
            ],
            server=_whos(2),
        ),
        Scenario(
            "presence-forbidden",
            presence_forbidden,
            {
                "token": ["t1", "t2"],
                "steps": [join_step(), until(["room", ROOM, "joined"], count=2), {"do": "sleep", "ms": 300}],
            },
            client=[*CONNECTED, reconnecting(1006), ["state", "connecting"], ["token", 2], ["state", "connected"]],
            room=[
                ["room", ROOM, "joined", {"recovered": False, "seq": 1}],
                ["room", ROOM, "joining"],
                ["room", ROOM, "joined", {"recovered": True, "seq": 1}],
            ],
            server=_whos(1),
        ),
    ]
    return out


def _count(record: Record, kind: str, n: int) -> None:
    assert len(record.sent(kind)) == n, record.sent(kind)


def _refreshed_with(record: Record, token: str) -> None:
    refreshes = record.sent("refresh")
    assert [r["token"] for r in refreshes] == [token], refreshes


def _since(record: Record, index: int, since: int, epoch: str) -> None:
    join = record.sent("join")[index]
    assert (join.get("since"), join.get("epoch")) == (since, epoch), join


# --- running them ----------------------------------------------------------------


def normalize(events: list[Event]) -> dict[str, list[Event]]:
    """Split a trace into its streams, up to the program's end; delays become their kind."""
    streams: dict[str, list[Event]] = {"client": [], "room": [], "results": [], "other": []}
    for event in events:
        kind = event[0]
        if kind == "end":
            break
        if kind == "state" and event[1] == "reconnecting":
            info = event[2]
            event = [
                "state",
                "reconnecting",
                {"code": info["code"], "delay": delay_kind(info["code"], info["delayMs"])},
            ]
        if kind in ("state", "token"):
            streams["client"].append(event)
        elif kind in ("room", "message", "reset", "presence"):
            streams["room"].append(event)
        elif kind in ("publish", "ready"):
            streams["results"].append(event)
        else:
            streams["other"].append(event)
    streams["results"].sort(key=json.dumps)
    return streams


def delay_kind(code: int, delay_ms: float | None) -> str:
    """The kind of wait the rule asks for, if `delay_ms` is one of it (first failure: attempt 0)."""
    rule = close_rule(code)
    if delay_ms is None:
        return "missing"
    if rule.action is CloseAction.AT_ONCE:
        return "at_once" if 0 <= delay_ms <= AT_ONCE_JITTER_MS else f"at_once?{delay_ms}"
    ceiling = max(rule.min_delay_ms, BACKOFF_BASE_MS)
    return "backoff" if rule.min_delay_ms <= delay_ms <= ceiling else f"backoff?{delay_ms}"


@dataclass
class Played:
    streams: dict[str, list[Event]]
    record: Record
    output: str


async def play_all(selected: list[Scenario]) -> dict[tuple[str, str], Played]:
    server = ScriptedServer()
    await server.start()
    gate = asyncio.Semaphore(6)
    results: dict[tuple[str, str], Played] = {}

    async def play(scenario: Scenario, client: str) -> None:
        name = f"{scenario.name}-{client}"
        url = server.add(name, scenario.script)
        async with gate:
            process = await asyncio.create_subprocess_exec(
                *DRIVERS[client],
                url,
                json.dumps(scenario.program),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(process.communicate(), 60)
        text = out.decode()
        output = f"exit {process.returncode}\n{text}\n{err.decode()[-3000:]}"
        try:
            trace = json.loads(text.strip().splitlines()[-1])["trace"]
        except (IndexError, ValueError, KeyError):
            trace = [["driver-failed"]]
        results[(scenario.name, client)] = Played(normalize(trace), server.records[name], output)

    try:
        await asyncio.gather(*(play(s, c) for s in selected for c in DRIVERS))
    finally:
        await server.stop()
    return results


SCENARIOS = scenarios()


@pytest.fixture(scope="module")
def played() -> Iterator[dict[tuple[str, str], Played]]:
    if shutil.which("node") is None:
        pytest.fail("node is needed for the JS client's side of the parity tests (make system-deps)")
    yield asyncio.run(play_all(SCENARIOS))


@pytest.mark.parametrize("client", sorted(DRIVERS))
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_parity(played: dict[tuple[str, str], Played], scenario: Scenario, client: str) -> None:
    result = played[(scenario.name, client)]
    got = result.streams
    context = f"{client} client, scenario {scenario.name}\n{result.output}"
    assert got["other"] == [], context
    assert got["client"] == scenario.client, context
    assert got["room"] == scenario.room, context
    assert got["results"] == sorted(scenario.results, key=json.dumps), context
    if scenario.server is not None:
        scenario.server(result.record)


def test_both_clients_play_every_scenario_alike(played: dict[tuple[str, str], Played]) -> None:
    """Beside each matching the rule: the two traces are equal, stream by stream."""
    differ = [s.name for s in SCENARIOS if played[(s.name, "js")].streams != played[(s.name, "py")].streams]
    assert differ == []
