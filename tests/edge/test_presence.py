"""Presence (PROTOCOL.md section 10): per user, cluster-wide, on real nats-servers and real sockets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from tests.conftest import Client, Edge, connect, open_ws, token

PRESENCE: dict[str, Any] = {"presence_rooms": "chat.*", "presence_ttl": 3.0, "presence_interval": 0.2}


def tok(sub: str, **claims: Any) -> str:
    return token(sub, presence=["chat.*"], **claims)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def who(client: Client, room: str) -> dict[str, Any]:
    await client.send(type="who", room=room, ref="who")
    while True:
        frame = await client.recv()
        if frame.get("ref") == "who":
            return frame


async def join(edge: Edge, sub: str, room: str, **claims: Any) -> Client:
    client = await connect(edge.url, sub, tok(sub, **claims))
    await client.send(type="join", room=room, ref="j")
    while (await client.recv())["type"] != "joined":
        pass
    return client


async def test_who_agrees_on_two_nodes_and_counts_users_not_tabs(make_edge: Any) -> None:
    a = await make_edge(**PRESENCE)
    b = await make_edge(**PRESENCE)
    alice1 = await join(a, "alice", "chat.room", info={"name": "Alice"})
    alice2 = await join(b, "alice", "chat.room", info={"name": "Alice"})
    bob = await join(b, "bob", "chat.room")
    watcher = await connect(a.url, "watcher", tok("watcher"))

    async def both_see(count: int, connections: int) -> bool:
        for edge in (a, b):
            members = edge.node.presence.who("chat.room")
            if (members.count, members.connections) != (count, connections):
                return False
        return True

    await eventually(lambda: both_see(2, 3))
    reply = await who(watcher, "chat.room")
    assert reply["type"] == "members" and reply["count"] == 2 and reply["connections"] == 3
    assert reply["members"] == [
        {"sub": "alice", "info": {"name": "Alice"}, "connections": 2},
        {"sub": "bob", "connections": 1},
    ]
    assert reply["truncated"] is False
    await alice1.close()
    await eventually(lambda: both_see(2, 2))
    await alice2.close()
    await eventually(lambda: both_see(1, 1))
    for client in (bob, watcher):
        await client.close()


async def events(
    client: Client, until: Callable[[list[dict[str, Any]]], bool], timeout: float = 10.0
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not until(seen):
            frame = await client.recv(timeout=timeout)
            if frame["type"] == "presence":
                seen.append(frame)
    return seen


def subs(frames: list[dict[str, Any]], key: str) -> list[str]:
    return [m["sub"] for f in frames for m in f[key]]


async def test_first_join_and_last_leave_across_tabs_and_nodes(make_edge: Any) -> None:
    a = await make_edge(**PRESENCE)
    b = await make_edge(**PRESENCE)
    watcher = await join(a, "watcher", "chat.room")
    first = await events(watcher, lambda seen: "watcher" in subs(seen, "joined"))
    assert subs(first, "joined") == ["watcher"]
    tab1 = await join(b, "alice", "chat.room", info={"name": "Alice"})
    joined = await events(watcher, lambda seen: "alice" in subs(seen, "joined"))
    assert [m for f in joined for m in f["joined"]] == [{"sub": "alice", "info": {"name": "Alice"}}]
    tab2 = await join(a, "alice", "chat.room")
    await tab1.close()  # alice still has a tab: nothing to tell
    await asyncio.sleep(1.0)
    await tab2.close()
    gone = await events(watcher, lambda seen: "alice" in subs(seen, "left"))
    assert subs(gone, "joined") == [] and subs(gone, "left") == ["alice"]
    await watcher.close()


# --- helpers for the tests below ---------------------------------------------------------

MANUAL = {**PRESENCE, "presence_interval": 3600.0}
"""Events flushed by the test (`edge.node.presence.flush()`), so netting is deterministic."""


async def quiet(client: Client, ref: str = "quiet") -> list[dict[str, Any]]:
    """Every frame until the pong of a fresh ping: what the server had sent before it."""
    await client.send(type="ping", ref=ref)
    seen: list[dict[str, Any]] = []
    while True:
        frame = await client.recv()
        if frame.get("type") == "pong" and frame.get("ref") == ref:
            return seen
        seen.append(frame)


def presence_frames(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == "presence"]


def listed(edge: Edge, room: str) -> set[str]:
    """Who `edge` holds present in `room` (all of them, whatever max_presence_list)."""
    return {m.sub for m in edge.node.presence.bus.view.members(room, 1 << 30)[0]}


async def present_on(edges: list[Edge], room: str, expected: set[str], timeout: float = 10.0) -> None:
    """Until every edge's view of `room` lists exactly `expected`."""

    async def check() -> bool:
        return all(listed(e, room) == expected for e in edges)

    await eventually(check, timeout)


async def http_presence(edge: Edge, room: str, tok: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {tok}"} if tok is not None else {}
    async with aiohttp.ClientSession() as http, http.get(f"{edge.http}/v1/rooms/{room}/presence", headers=headers) as r:
        return r.status, await r.json(content_type=None)


# --- who, the HTTP endpoint, rights and settings --------------------------------------------


async def test_who_and_http_need_the_right_and_a_kept_room(make_edge: Any, clients: list[Client]) -> None:
    a = await make_edge(**PRESENCE)
    alice = await join(a, "alice", "chat.room", info={"name": "Alice", "tags": ["x"]})
    blind = await connect(a.url, "blind", token("blind"))  # may join anything, read no presence
    other = await connect(a.url, "other", token("other", presence=["other.*", "chat.room"]))
    clients += [alice, blind, other]
    await present_on([a], "chat.room", {"alice"})

    reply = await blind.request(type="who", room="chat.room", ref=1)
    assert reply["type"] == "error" and reply["code"] == "forbidden" and reply["ref"] == 1, reply
    reply = await other.request(type="who", room="chat.room", ref=2)
    assert reply["type"] == "members" and reply["count"] == 1 and reply["ref"] == 2, reply
    reply = await other.request(type="who", room="other.room", ref=3)
    assert reply["type"] == "error" and reply["code"] == "bad_request" and reply["ref"] == 3, reply
    assert "not kept" in reply["message"]
    reply = await other.request(type="who", room="chat.*", ref=4)
    assert reply["type"] == "error" and reply["code"] == "invalid_room" and reply["ref"] == 4, reply
    reply = await other.request(type="who", ref=5)
    assert reply["type"] == "error" and reply["code"] == "bad_request", reply

    status, body = await http_presence(a, "chat.room", tok("reader"))
    assert status == 200, body
    assert body == {
        "room": "chat.room",
        "count": 1,
        "connections": 1,
        "members": [{"sub": "alice", "info": {"name": "Alice", "tags": ["x"]}, "connections": 1}],
        "truncated": False,
    }
    status, body = await http_presence(a, "chat.room", None)
    assert status == 401, body
    status, body = await http_presence(a, "chat.room", "not-a-token")
    assert status == 401, body
    status, body = await http_presence(a, "chat.room", token("blind"))
    assert status == 403 and body["code"] == "forbidden", body
    status, body = await http_presence(a, "other.room", token("other", presence=["other.*"]))
    assert status == 404 and "not kept" in body["message"], body
    for bad in ("chat..room", "chat.%2A", "%24JS.API.x", "chat.%3E", "a" * 200):
        status, body = await http_presence(a, bad, tok("reader"))
        assert status == 400 and body["code"] == "invalid_room", (bad, status, body)


async def test_welcome_lists_presence_only_when_presence_rooms_is_set(make_edge: Any) -> None:
    on = await make_edge(**PRESENCE)
    off = await make_edge()
    client_on = await connect(on.url, "a", tok("a"))
    client_off = await connect(off.url, "a", tok("a"))
    assert client_on.welcome is not None and "presence" in client_on.welcome["features"]
    assert client_off.welcome is not None and "presence" not in client_off.welcome["features"]
    # Without presence rooms nothing is kept: `who` says so, and no presence message goes on NATS.
    reply = await client_off.request(type="who", room="chat.room", ref="w")
    assert reply["code"] == "bad_request" and "not kept" in reply["message"], reply
    await client_off.send(type="join", room="chat.room")
    await client_off.expect("joined")
    assert off.node.presence.bus.sent == 0 and off.node.presence.bus.received == 0
    for client in (client_on, client_off):
        await client.close()


async def test_max_presence_list_truncates_sorted_by_sub(make_edge: Any, clients: list[Client]) -> None:
    a = await make_edge(**PRESENCE, max_presence_list=3)
    b = await make_edge(**PRESENCE, max_presence_list=3)
    names = ["mia", "bea", "zoe", "abe", "kai"]
    for i, name in enumerate(names):
        clients.append(await join((a, b)[i % 2], name, "chat.room"))
    await present_on([a, b], "chat.room", set(names))
    for edge in (a, b):
        reply = await who(clients[0], "chat.room") if edge is a else None
        status, body = await http_presence(edge, "chat.room", tok("reader"))
        assert status == 200
        for got in filter(None, (reply, body)):
            assert got["count"] == 5 and got["connections"] == 5 and got["truncated"] is True, got
            assert [m["sub"] for m in got["members"]] == ["abe", "bea", "kai"], got


async def test_events_only_to_members_holding_the_right(make_edge: Any, clients: list[Client]) -> None:
    a = await make_edge(**PRESENCE)
    b = await make_edge(**PRESENCE)
    seeing = await join(a, "seeing", "chat.room")
    blind = await connect(a.url, "blind", token("blind"))
    await blind.send(type="join", room="chat.room")
    await blind.expect("joined")
    elsewhere = await connect(a.url, "elsewhere", tok("elsewhere"))  # holds the right, not a member
    clients += [seeing, blind, elsewhere]
    await events(seeing, lambda seen: "blind" in subs(seen, "joined"))
    alice = await join(b, "alice", "chat.room")
    clients.append(alice)
    got = await events(seeing, lambda seen: "alice" in subs(seen, "joined"))
    assert subs(got, "joined") == ["alice"]
    # Same node, same flush: anything the others were sent came before their pong.
    assert presence_frames(await quiet(blind)) == []
    assert presence_frames(await quiet(elsewhere)) == []


async def test_join_and_leave_within_one_interval_is_netted_away(make_edge: Any, clients: list[Client]) -> None:
    a = await make_edge(**MANUAL)
    b = await make_edge(**MANUAL)
    watcher_a = await join(a, "watcher", "chat.room")
    watcher_b = await join(b, "watcher", "chat.room")
    clients += [watcher_a, watcher_b]
    await present_on([a, b], "chat.room", {"watcher"})
    for edge in (a, b):
        edge.node.presence.flush()
    for watcher in (watcher_a, watcher_b):
        assert subs(presence_frames(await quiet(watcher)), "joined") == ["watcher"]
    # alice comes and goes (on b, by a leave frame); carl comes and stays (on a, two tabs).
    alice = await join(b, "alice", "chat.room")
    await present_on([a, b], "chat.room", {"watcher", "alice"})
    left = await alice.request(type="leave", room="chat.room", ref="bye")
    assert left["type"] == "left"
    carl1 = await join(a, "carl", "chat.room")
    carl2 = await join(b, "carl", "chat.room")
    clients += [alice, carl1, carl2]
    await present_on([a, b], "chat.room", {"watcher", "carl"})
    for edge in (a, b):
        edge.node.presence.flush()
    for watcher in (watcher_a, watcher_b):
        frames = presence_frames(await quiet(watcher))
        assert len(frames) == 1, frames
        assert frames[0]["joined"] == [{"sub": "carl"}] and frames[0]["left"] == [], frames
    # Nothing changed since: a flush sends nothing.
    for edge in (a, b):
        edge.node.presence.flush()
    for watcher in (watcher_a, watcher_b):
        assert presence_frames(await quiet(watcher)) == []
    # carl leaves and comes back within an interval: nothing either, though his count moved.
    await carl1.close()
    await eventually(lambda: _async(a.node.presence.who("chat.room").connections == 3))
    await eventually(lambda: _async(b.node.presence.who("chat.room").connections == 3))
    carl1 = await join(a, "carl", "chat.room")
    clients.append(carl1)
    await eventually(lambda: _async(b.node.presence.who("chat.room").connections == 4))
    for edge in (a, b):
        edge.node.presence.flush()
    for watcher in (watcher_a, watcher_b):
        assert presence_frames(await quiet(watcher)) == []


async def _async(value: bool) -> bool:
    return value


async def test_no_events_above_presence_events_max_members(make_edge: Any, clients: list[Client]) -> None:
    a = await make_edge(**PRESENCE, presence_events_max_members=2)
    watcher = await join(a, "watcher", "chat.room")
    clients.append(watcher)
    await events(watcher, lambda seen: "watcher" in subs(seen, "joined"))
    clients.append(await join(a, "ann", "chat.room"))
    await events(watcher, lambda seen: "ann" in subs(seen, "joined"))
    bob = await join(a, "bob", "chat.room")  # 3 > 2: the room goes silent
    clients.append(bob)
    await asyncio.sleep(3 * PRESENCE["presence_interval"])
    assert presence_frames(await quiet(watcher)) == []
    reply = await who(watcher, "chat.room")
    assert reply["count"] == 3 and [m["sub"] for m in reply["members"]] == ["ann", "bob", "watcher"]
    await bob.close()  # back to 2: events again (bob's leave among them)
    got = await events(watcher, lambda seen: "bob" in subs(seen, "left"))
    assert subs(got, "left") == ["bob"]


async def test_presence_frame_bytes_splits_events_over_frames(make_edge: Any, clients: list[Client]) -> None:
    limit = 600
    a = await make_edge(**MANUAL, presence_frame_bytes=limit)
    watcher = await join(a, "watcher", "chat.room")
    clients.append(watcher)
    await present_on([a], "chat.room", {"watcher"})
    a.node.presence.flush()
    await quiet(watcher)
    names = [f"user-{i:02d}" for i in range(30)]
    for name in names:
        clients.append(await join(a, name, "chat.room", info={"name": name.upper(), "pad": "x" * 40}))
    await present_on([a], "chat.room", {"watcher", *names})
    a.node.presence.flush()
    await watcher.send(type="ping", ref="p")
    raw: list[str] = []
    while True:
        msg = await watcher.ws.receive(timeout=5)
        frame = json.loads(msg.data)
        if frame["type"] == "pong":
            break
        raw.append(msg.data)
    frames = [json.loads(text) for text in raw]
    assert all(f["type"] == "presence" for f in frames)
    assert len(frames) > 3, [len(t) for t in raw]
    assert max(len(text.encode()) for text in raw) <= limit, [len(t) for t in raw]
    assert sorted(subs(frames, "joined")) == names
    assert all(m["info"] == {"name": m["sub"].upper(), "pad": "x" * 40} for f in frames for m in f["joined"])


# --- the info claim and refresh ------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


async def test_hostile_info_claims_refuse_the_token_with_a_clear_reason(make_edge: Any) -> None:
    a = await make_edge(**PRESENCE)
    refused = {
        "too large": ({"name": "x" * 1100}, "1024"),
        "a list": (["x"], "object"),
        "a string": ("Alice", "object"),
        "a number": (5, "object"),
        "nested dicts": (nested(9), "8 levels"),
        "nested lists": ({"a": [[[[[[[[1]]]]]]]]}, "8 levels"),
        "deep and large": ({"a": [nested(200)]}, "8 levels"),
    }
    for name, (info, reason) in refused.items():
        client = await open_ws(a.url, ("jetsock.v1", "bearer." + tok("mallory", info=info)))
        code, text = await client.closed()
        await client.close()
        assert code == 4501 and reason in text and "info" in text, (name, code, text)
    # At the limits: accepted.
    padded = {"p": "x" * (1024 - len('{"p":""}'))}
    assert len(json.dumps(padded, separators=(",", ":"))) == 1024
    for info in (padded, nested(8), {"a": [[[[[[1]]]]]]}, {}):
        client = await connect(a.url, "ok", tok("ok", info=info))
        await client.close()
    # A refresh with a bad info is refused like any bad claim, and the session goes on.
    client = await connect(a.url, "ann", tok("ann", info={"name": "Ann"}))
    reply = await client.request(type="refresh", token=tok("ann", info=["nope"]), ref="r")
    assert reply["type"] == "error" and reply["code"] == "bad_request" and "info" in reply["message"], reply
    assert (await client.request(type="ping", ref="still"))["type"] == "pong"
    await client.close()


async def test_a_refresh_that_drops_the_presence_right_stops_events(make_edge: Any, clients: list[Client]) -> None:
    a = await make_edge(**PRESENCE)
    watcher = await join(a, "watcher", "chat.room")
    clients.append(watcher)
    await events(watcher, lambda seen: "watcher" in subs(seen, "joined"))
    reply = await watcher.request(type="refresh", token=token("watcher"), ref="r")
    assert reply["type"] == "refreshed", reply
    clients.append(await join(a, "alice", "chat.room"))
    await asyncio.sleep(3 * PRESENCE["presence_interval"])
    assert presence_frames(await quiet(watcher)) == []
    reply = await watcher.request(type="who", room="chat.room", ref="w")
    assert reply["code"] == "forbidden", reply
    # Still a member, and still present itself.
    assert {m.sub for m in a.node.presence.who("chat.room").members} == {"alice", "watcher"}
    # Given back: events again.
    assert (await watcher.request(type="refresh", token=tok("watcher"), ref="r2"))["type"] == "refreshed"
    clients.append(await join(a, "bob", "chat.room"))
    got = await events(watcher, lambda seen: "bob" in subs(seen, "joined"))
    assert subs(got, "joined") == ["bob"]


async def test_a_refresh_that_drops_the_join_right_leaves_presence(make_edge: Any, clients: list[Client]) -> None:
    a = await make_edge(**PRESENCE)
    b = await make_edge(**PRESENCE)
    watcher = await join(a, "watcher", "chat.room")
    alice = await join(b, "alice", "chat.room")
    clients += [watcher, alice]
    await events(watcher, lambda seen: "alice" in subs(seen, "joined"))  # else the leave nets it away
    await alice.send(type="refresh", token=tok("alice", join=["other.>"]), ref="r")
    await present_on([a, b], "chat.room", {"watcher"})
    got = await events(watcher, lambda seen: "alice" in subs(seen, "left"))
    assert "alice" in subs(got, "left")


# --- nodes ---------------------------------------------------------------------------------


async def test_a_node_that_stops_takes_its_members_out_at_once(make_edge: Any, clients: list[Client]) -> None:
    slow_ttl = {**PRESENCE, "presence_ttl": 60.0}
    a = await make_edge(**slow_ttl)
    b = await make_edge(**slow_ttl)
    watcher = await join(a, "watcher", "chat.room")
    clients.append(watcher)
    on_b = [await join(b, f"b{i}", "chat.room") for i in range(5)]
    await present_on([a, b], "chat.room", {"watcher", *(f"b{i}" for i in range(5))})
    await events(watcher, lambda seen: len(subs(seen, "joined")) >= 6)
    started = time.monotonic()
    # A graceful stop: closes (whose deltas go at once), then a bye. The stop itself waits
    # close_timeout for these clients, which do not read their close frames.
    stopping = asyncio.create_task(b.stop())
    await present_on([a], "chat.room", {"watcher"}, timeout=5)
    took = time.monotonic() - started
    await stopping
    gone = b.node.presence.bus.incarnation
    await eventually(lambda: _async(gone not in a.node.presence.bus.view.nodes()), timeout=2)  # its bye
    got = await events(watcher, lambda seen: len(subs(seen, "left")) >= 5)
    assert sorted(subs(got, "left")) == [f"b{i}" for i in range(5)]
    assert took < 1, took
    print(f"graceful stop: members out of the other node's view after {took:.2f} s (ttl 60 s)")
    for client in on_b:
        await client.close()


async def test_metrics_follow_presence(make_edge: Any, clients: list[Client]) -> None:
    from tests.edge.test_observability import scrape, value

    a = await make_edge(**PRESENCE)
    b = await make_edge(**PRESENCE)
    before = await scrape(a)
    assert value(before, "jetsock_presence_users") == 0
    watcher = await join(a, "watcher", "chat.room")
    clients.append(watcher)
    clients.append(await join(b, "alice", "chat.room"))
    clients.append(await join(b, "alice", "chat.room"))
    await present_on([a, b], "chat.room", {"watcher", "alice"})
    await events(watcher, lambda seen: "alice" in subs(seen, "joined"))
    for edge in (a, b):
        samples = await scrape(edge)
        assert value(samples, "jetsock_presence_users") == 2, edge.settings.port
        assert value(samples, "jetsock_presence_connections") == 3
        assert value(samples, "jetsock_presence_messages_total", jetsock_direction="sent") >= 1
        assert value(samples, "jetsock_presence_messages_total", jetsock_direction="received") >= 1
    assert value(await scrape(a), "jetsock_presence_events_total") >= 1


async def test_who_has_a_rate_limit_of_its_own(make_edge: Any, clients: list[Client]) -> None:
    a = await make_edge(**PRESENCE, who_rate=2.0, who_burst=3)
    reader = await join(a, "reader", "chat.room")
    clients.append(reader)
    for i in range(3):
        await reader.send(type="who", room="chat.room", ref=i)
    await reader.send(type="who", room="chat.room", ref="over")
    replies = [r for r in await quiet(reader) if r["type"] != "presence"]
    assert [r["type"] for r in replies] == ["members"] * 3 + ["error"], replies
    assert replies[-1]["code"] == "rate_limited" and replies[-1]["ref"] == "over", replies[-1]
    # Other requests are not counted against it, and it refills.
    assert (await reader.request(type="ping", ref="p"))["type"] == "pong"
    await asyncio.sleep(0.6)
    assert (await who(reader, "chat.room"))["type"] == "members"
