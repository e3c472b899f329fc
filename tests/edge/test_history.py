"""History and rewind (PROTOCOL.md section 9, schemas/PROTOCOL.md 9.12) against a real nats-server.

`join` with `last` (the newest messages through the join seam, `joined.replayed`), the
`history` frame (pages back to the first message, rights, bad values, rate limit,
expired messages, the byte bound), `GET /v1/rooms/<room>/messages` (the same page over
HTTP) and the history metrics, each from the node's cache and from the stream (the
`make_edge` fixture below). What clients receive is checked against what the stream
stored, read straight from it (tests/edge/checker.py).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from typing import Any

import aiohttp
import pytest

from core.embedded import EmbeddedNats
from schemas.frames import MAX_SEQ
from tests.conftest import BOTH_HISTORY_SOURCES, Client, Edge, connect, token
from tests.edge.checker import check_exact, stored_messages, stored_seqs
from tests.edge.test_observability import scrape, value

Frame = dict[str, Any]

# Every test twice: pages and `last` windows answered from the node's history cache
# (core/tailcache.py, the default), and read from the stream by subject (core/history.py).
pytestmark = BOTH_HISTORY_SOURCES


# --- helpers ----------------------------------------------------------------------------


async def fill(backend: Any, room: str, count: int, *, noise: str | None = "hist.noise", pad: int = 0) -> list[int]:
    """`count` messages `{"n": i}` stored in `room` by a backend, every third one followed by one
    in `noise` (so the room's seqs are not dense); their seqs."""
    js = backend.jetstream()
    seqs = []
    for i in range(count):
        body: dict[str, Any] = {"n": i}
        if pad:
            body["pad"] = "x" * pad
        seqs.append((await js.publish(f"rooms.{room}", json.dumps(body).encode())).seq)
        if noise is not None and i % 3 == 0:
            await js.publish(f"rooms.{noise}", b'{"noise":true}')
    return seqs


async def msgs_until(client: Client, seq: int, timeout: float = 10.0) -> list[Frame]:
    """The `msg` frames received until one with `seq` (other frames are not expected)."""
    got: list[Frame] = []
    async with asyncio.timeout(timeout):
        while not got or got[-1]["seq"] < seq:
            frame = await client.recv()
            assert frame["type"] == "msg", frame
            got.append(frame)
    return got


async def before_pong(client: Client, ref: str = "fence") -> list[Frame]:
    """Everything that arrives before the pong of a ping sent now."""
    await client.send(type="ping", ref=ref)
    got: list[Frame] = []
    while (frame := await client.recv())["type"] != "pong" or frame.get("ref") != ref:
        got.append(frame)
    return got


async def page(client: Client, room: str, **fields: Any) -> Frame:
    """One `history` request and its reply (which must be a `history` frame with the ref)."""
    ref = fields.pop("ref", "h")
    reply = await client.request(type="history", room=room, ref=ref, **fields)
    assert reply["type"] == "history" and reply["ref"] == ref, reply
    return reply


async def walk_back(client: Client, room: str, limit: int | None = None) -> tuple[list[list[int]], list[Frame]]:
    """Pages from the head down to the first message; each page's seqs, and the replies."""
    pages: list[list[int]] = []
    replies: list[Frame] = []
    fields: dict[str, Any] = {} if limit is None else {"limit": limit}
    while True:
        reply = await page(client, room, **fields)
        replies.append(reply)
        seqs = [m["seq"] for m in reply["messages"]]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
        if "before" in fields:
            assert all(s < fields["before"] for s in seqs)
        pages.append(seqs)
        if not reply["more"]:
            return pages, replies
        assert seqs, "more: true on an empty page"
        fields["before"] = seqs[0]
        assert len(replies) < 1000, "the walk does not end"


def newest(stored: list[int], n: int, up_to: int) -> list[int]:
    """The newest `n` stored seqs at or before `up_to`."""
    below = [s for s in stored if s <= up_to]
    return below[-n:] if n else []


async def http_page(edge: Edge, room: str, query: str = "", tok: str | None = None) -> tuple[int, Any]:
    """GET /v1/rooms/<room>/messages?<query> with a bearer token (default: alice's); status and JSON body."""
    headers = {"Authorization": "Bearer " + (tok if tok is not None else token())}
    url = f"{edge.http}/v1/rooms/{room}/messages" + (f"?{query}" if query else "")
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        body = await response.read()
        if response.status == 200:
            assert response.content_type == "application/json"
        return response.status, json.loads(body)


# --- welcome and joined ------------------------------------------------------------------


async def test_welcome_lists_history_and_every_joined_says_how_many_are_replayed(edge: Edge, backend: Any) -> None:
    """`welcome.features` lists "history" (beside what else the node has on: "stream" always, "deflate"
    by default, "presence" when presence rooms are set); `joined.replayed` is sent on a plain join (0) and on a
    join with a recoverable `since` (the size of the replay, messages up to `joined.seq`)."""
    seqs = await fill(backend, "hist.w", 20)
    client = await connect(edge.url)
    assert client.welcome is not None and client.welcome["features"] == ["history", "stream", "deflate"]
    joined = await client.request(type="join", room="hist.w")
    assert (joined["type"], joined["recovered"], joined["replayed"], joined["seq"]) == ("joined", False, 0, seqs[-1])
    assert await before_pong(client) == []
    await client.request(type="leave", room="hist.w")
    joined = await client.request(type="join", room="hist.w", since=seqs[4], epoch=edge.node.broker.epoch)
    assert joined["recovered"] is True and joined["replayed"] == 15
    assert [m["seq"] for m in await msgs_until(client, seqs[-1])] == seqs[5:]
    # An empty room: replayed 0 there too.
    joined = await client.request(type="join", room="hist.w.empty", since=0)
    assert joined["recovered"] is True and joined["replayed"] == 0 and joined["seq"] == 0
    await client.close()


# --- join with last ------------------------------------------------------------------------


async def test_join_with_last_replays_exactly_the_newest_then_live(
    edge: Edge, backend: Any, nats_server: EmbeddedNats
) -> None:
    """A room of 200 messages, `last` 50: `joined.replayed` is 50, and exactly the 50 newest stored
    messages follow `joined`, in order and with their data, then a live one and nothing else."""
    await fill(backend, "hist.last", 200)
    stored = await stored_messages(nats_server.url, "hist.last")
    client = await connect(edge.url)
    joined = await client.request(type="join", room="hist.last", last=50, ref=1)
    assert joined["type"] == "joined" and joined["ref"] == 1, joined
    assert (joined["recovered"], joined["replayed"], joined["seq"]) == (False, 50, stored[-1].seq)
    got = await msgs_until(client, stored[-1].seq)
    assert [(m["seq"], m["data"]) for m in got] == [(s.seq, s.data) for s in stored[-50:]]
    assert all(m["room"] == "hist.last" for m in got)
    live = (await backend.jetstream().publish("rooms.hist.last", b'"live"')).seq
    # The publish ack does not wait for the edge's delivery: wait for the live message, then fence.
    assert [(m["seq"], m["data"]) for m in await msgs_until(client, live)] == [(live, "live")]
    assert await before_pong(client) == []
    await client.close()


async def test_last_beyond_the_room_replays_all_of_it_and_an_empty_room_nothing(edge: Edge, backend: Any) -> None:
    """`last` larger than the room: every stored message (replayed = the room's size); an empty
    room: replayed 0 and nothing before live messages; `last` = max_history_page is allowed."""
    seqs = await fill(backend, "hist.few", 7)
    client = await connect(edge.url)
    joined = await client.request(type="join", room="hist.few", last=100)
    assert (joined["replayed"], joined["seq"]) == (7, seqs[-1])
    assert [m["seq"] for m in await msgs_until(client, seqs[-1])] == seqs
    joined = await client.request(type="join", room="hist.none", last=30)
    assert (joined["replayed"], joined["seq"], joined["recovered"]) == (0, 0, False)
    assert await before_pong(client) == []
    first = (await backend.jetstream().publish("rooms.hist.none", b"1")).seq
    assert [m["seq"] for m in await msgs_until(client, first)] == [first]
    assert await before_pong(client) == []
    await client.close()


async def test_a_recoverable_since_ignores_last(edge: Edge, backend: Any) -> None:
    """With a recoverable `since`, `last` changes nothing: recovered, the replay after `since` (5
    messages though `last` asks 2), and `since` 0 in an intact room replays the whole room."""
    seqs = await fill(backend, "hist.since", 30)
    epoch = edge.node.broker.epoch
    client = await connect(edge.url)
    joined = await client.request(type="join", room="hist.since", since=seqs[24], epoch=epoch, last=2)
    assert (joined["recovered"], joined["replayed"]) == (True, 5)
    assert [m["seq"] for m in await msgs_until(client, seqs[-1])] == seqs[25:]
    await client.request(type="leave", room="hist.since")
    joined = await client.request(type="join", room="hist.since", since=0, last=3)
    assert (joined["recovered"], joined["replayed"]) == (True, 30)
    assert [m["seq"] for m in await msgs_until(client, seqs[-1])] == seqs
    await client.close()


async def test_an_unrecoverable_since_falls_back_to_the_newest_last(edge: Edge, backend: Any) -> None:
    """A `since` of another epoch, or one past `max_replay`: recovered false, and the newest
    `last` messages instead of nothing."""
    seqs = await fill(backend, "hist.epoch", 30)
    client = await connect(edge.url)
    joined = await client.request(type="join", room="hist.epoch", since=seqs[3], epoch="another-life", last=4)
    assert (joined["recovered"], joined["replayed"], joined["epoch"]) == (False, 4, edge.node.broker.epoch)
    assert [m["seq"] for m in await msgs_until(client, seqs[-1])] == seqs[-4:]
    assert await before_pong(client) == []
    await client.close()


async def test_a_since_older_than_what_the_room_keeps_falls_back_to_last(make_edge: Any, backend: Any) -> None:
    """`max_msgs_per_room` 10 kept the newest 10 of 30: a `since` among the discarded ones is not
    recovered, and `last` 5 gives the newest 5; `last` 50 gives the 10 kept; a `since` past
    `max_replay` is not recovered either and gets its `last`."""
    edge = await make_edge(max_msgs_per_room=10, max_replay=3)
    seqs = await fill(backend, "hist.kept", 30)
    epoch = edge.node.broker.epoch
    client = await connect(edge.url)
    for since, last, expected in [(seqs[0], 5, seqs[-5:]), (seqs[2], 50, seqs[-10:]), (seqs[-8], 6, seqs[-6:])]:
        joined = await client.request(type="join", room="hist.kept", since=since, epoch=epoch, last=last)
        assert (joined["recovered"], joined["replayed"]) == (False, len(expected)), (since, last, joined)
        assert [m["seq"] for m in await msgs_until(client, seqs[-1])] == expected
        assert (await client.request(type="leave", room="hist.kept"))["type"] == "left"
    # Within max_replay and still stored: recovered, `last` ignored.
    joined = await client.request(type="join", room="hist.kept", since=seqs[-3], epoch=epoch, last=9)
    assert (joined["recovered"], joined["replayed"]) == (True, 2)
    await client.close()


async def test_the_seam_is_exact_for_many_joiners_with_last_while_a_backend_publishes(
    edge: Edge, backend: Any, nats_server: EmbeddedNats
) -> None:
    """Ten clients join with `last` at scattered moments while a backend publishes through NATS
    without pause: each gets the newest `last` messages up to its `joined.seq` (`replayed` of
    them), then every later stored message, once each, in order, nothing skipped at the seam."""
    js = backend.jetstream()
    room = "hist.seam"
    await fill(backend, room, 60, noise=None)
    stop = asyncio.Event()

    async def publisher() -> int:
        last = 0
        n = 0
        while not stop.is_set():
            last = (await js.publish(f"rooms.{room}", b'{"live":%d}' % n)).seq
            n += 1
            if n % 4 == 0:
                await js.publish("rooms.hist.seam.other", b"0")
            await asyncio.sleep(0)
        return last

    task = asyncio.create_task(publisher())
    rnd = random.Random(14)
    lasts = [rnd.choice([1, 7, 30, 100]) for _ in range(10)]
    # Half the joiners come while the room has no member on the node (the first one starts its
    # feed), the rest while an anchor keeps it live.
    joiners = [await connect(edge.url, f"u{i}") for i in range(10)]

    async def join(client: Client, last: int, delay: float) -> None:
        await asyncio.sleep(delay)
        await client.send(type="join", room=room, last=last)

    await asyncio.gather(*(join(c, n, 0.02 * i) for i, (c, n) in enumerate(zip(joiners[:5], lasts[:5], strict=True))))
    anchor = await connect(edge.url, "anchor")
    await anchor.request(type="join", room=room)
    await asyncio.gather(*(join(c, n, 0.03 * i) for i, (c, n) in enumerate(zip(joiners[5:], lasts[5:], strict=True))))
    await asyncio.sleep(0.4)
    stop.set()
    final = await task
    stored = await stored_seqs(nats_server.url, room)
    for client, last in zip(joiners, lasts, strict=True):
        joined = await client.expect("joined")
        assert joined["recovered"] is False
        got = await msgs_until(client, final)
        expected_replay = newest(stored, last, joined["seq"])
        assert joined["replayed"] == len(expected_replay) == min(last, len([s for s in stored if s <= joined["seq"]]))
        assert [m["seq"] for m in got[: joined["replayed"]]] == expected_replay
        check_exact(got, stored, expected_replay[0] - 1)
    for client in [anchor, *joiners]:
        await client.close()


async def test_replayed_is_exact_for_a_long_since_replay_while_a_backend_publishes(
    edge: Edge, backend: Any, nats_server: EmbeddedNats
) -> None:
    """A `since` replay of 700 messages (several read batches) while a backend publishes without
    pause: `joined.replayed` is exactly the number of messages up to `joined.seq` that follow,
    and the seam is exact after them. (Counting the rest of the replay while the room grows
    once gave a number short by what was stored meanwhile.)"""
    js = backend.jetstream()
    room = "hist.long"
    seqs = await fill(backend, room, 700, noise=None)
    stop = asyncio.Event()

    async def publisher() -> int:
        last = 0
        while not stop.is_set():
            last = (await js.publish(f"rooms.{room}", b'{"live":true}')).seq
            await asyncio.sleep(0)
        return last

    task = asyncio.create_task(publisher())
    await asyncio.sleep(0.05)
    clients = [await connect(edge.url, f"u{i}") for i in range(4)]
    epoch = edge.node.broker.epoch
    await asyncio.gather(*(c.send(type="join", room=room, since=seqs[0], epoch=epoch) for c in clients))
    await asyncio.sleep(0.3)
    stop.set()
    final = await task
    stored = await stored_seqs(nats_server.url, room)
    for client in clients:
        joined = await client.expect("joined")
        assert joined["recovered"] is True
        got = await msgs_until(client, final)
        assert joined["replayed"] == len([m for m in got if m["seq"] <= joined["seq"]])
        check_exact(got, stored, seqs[0])
    for client in clients:
        await client.close()


# --- the history frame ------------------------------------------------------------------


async def test_pages_walk_back_to_the_first_message(edge: Edge, backend: Any, nats_server: EmbeddedNats) -> None:
    """Pages of 25 from the head, each asked with `before` = the smallest seq so far, are the
    room's stored messages in increasing seq, newest page first, ending with `more: false`;
    each message is exactly the `msg` frame a member got for it live, without `type`."""
    room = "hist.walk"
    member = await connect(edge.url, "member")
    await member.request(type="join", room=room)
    writer = await connect(edge.url, "writer")
    for i in range(40):
        reply = await writer.request(type="publish", room=room, data={"i": i, "t": "é"}, id=f"k{i}")
        assert reply["type"] == "ack"
    await fill(backend, room, 80)
    stored = await stored_seqs(nats_server.url, room)
    live = {m["seq"]: m for m in await msgs_until(member, stored[-1])}
    reader = await connect(edge.url, "reader", tok=token("reader", join=[room], publish=[]))
    pages, replies = await walk_back(reader, room, limit=25)
    assert [s for p in reversed(pages) for s in p] == stored
    assert [len(p) for p in pages] == [25, 25, 25, 25, 20]
    assert [r["more"] for r in replies] == [True, True, True, True, False]
    assert {(r["room"], r["epoch"]) for r in replies} == {(room, edge.node.broker.epoch)}
    for reply in replies:
        for message in reply["messages"]:
            assert message == {k: v for k, v in live[message["seq"]].items() if k != "type"}
    assert replies[-1]["messages"][0]["from"] == "writer" and replies[-1]["messages"][0]["id"] == "k0"
    for client in (member, writer, reader):
        await client.close()


async def test_limit_defaults_to_50_and_before_bounds_the_page(edge: Edge, backend: Any) -> None:
    """No `limit`: the newest 50. A `before` past the head means the head; `before` among the
    messages gives those older than it; at or below the first message, an empty page."""
    seqs = await fill(backend, "hist.limit", 80)
    client = await connect(edge.url)
    head = await page(client, "hist.limit")
    assert [m["seq"] for m in head["messages"]] == seqs[-50:] and head["more"] is True
    for before in (seqs[-1] + 1, seqs[-1] + 10_000, MAX_SEQ):
        past = await page(client, "hist.limit", before=before)
        assert past["messages"] == head["messages"] and past["more"] is True, before
    mid = await page(client, "hist.limit", before=seqs[10], limit=50)
    assert [m["seq"] for m in mid["messages"]] == seqs[:10] and mid["more"] is False
    exact = await page(client, "hist.limit", before=seqs[10], limit=10)
    assert [m["seq"] for m in exact["messages"]] == seqs[:10] and exact["more"] is False
    one_short = await page(client, "hist.limit", before=seqs[10], limit=9)
    assert [m["seq"] for m in one_short["messages"]] == seqs[1:10] and one_short["more"] is True
    for before in (seqs[0], 1):
        empty = await page(client, "hist.limit", before=before)
        assert (empty["messages"], empty["more"]) == ([], False), before
    nothing = await page(client, "hist.nobody")
    assert (nothing["room"], nothing["messages"], nothing["more"]) == ("hist.nobody", [], False)
    assert nothing["epoch"] == edge.node.broker.epoch
    await client.close()


async def test_replies_come_in_request_order_with_their_refs(edge: Edge, backend: Any) -> None:
    """Pipelined history requests (int and string refs, several rooms) are answered in the order
    sent, each with its ref, while a ping sent after them is answered too."""
    await fill(backend, "hist.order.a", 30)
    await fill(backend, "hist.order.b", 5)
    client = await connect(edge.url)
    refs: list[int | str] = [1, "two", 3, "four", 5, 6]
    for i, ref in enumerate(refs):
        await client.send(type="history", room=f"hist.order.{'ab'[i % 2]}", limit=3 + i, ref=ref)
    frames = [await client.recv() for _ in refs]
    assert [(f["type"], f["ref"]) for f in frames] == [("history", ref) for ref in refs]
    assert [len(f["messages"]) for f in frames] == [3, 4, 5, 5, 7, 5]
    assert (await client.request(type="ping", ref="p"))["type"] == "pong"
    await client.close()


async def test_history_needs_join_rights_not_membership(edge: Edge, backend: Any) -> None:
    """A token that may join the room reads it without being a member (and a member reads it
    too); without join rights (publish rights are not enough): `forbidden` with the ref, and
    the connection stays usable."""
    seqs = await fill(backend, "hist.rights", 5)
    reader = await connect(edge.url, "reader", tok=token("reader", join=["hist.rights"], publish=[]))
    assert [m["seq"] for m in (await page(reader, "hist.rights"))["messages"]] == seqs
    await reader.request(type="join", room="hist.rights")
    assert [m["seq"] for m in (await page(reader, "hist.rights", limit=2))["messages"]] == seqs[-2:]
    outsider = await connect(edge.url, "outsider", tok=token("outsider", join=["hist.other.*"], publish=[">"]))
    for ref in (7, "seven"):
        refused = await outsider.request(type="history", room="hist.rights", ref=ref)
        assert (refused["type"], refused["code"], refused["ref"]) == ("error", "forbidden", ref), refused
    assert (await outsider.request(type="ping"))["type"] == "pong"
    assert (await page(outsider, "hist.other.x"))["messages"] == []
    for client in (reader, outsider):
        await client.close()


@pytest.mark.parametrize("room", ["a.*", "a.>", ">", "", "a..b", "has space", "$JS.API.x", "x" * 300])
async def test_history_of_an_invalid_room_is_invalid_room(edge: Edge, room: str) -> None:
    """Room names that are not valid (wildcards, empty segments, whitespace, `$`, too long) get
    `invalid_room` with the ref, and the connection goes on."""
    client = await connect(edge.url)
    reply = await client.request(type="history", room=room, ref="r")
    assert (reply["type"], reply.get("code"), reply["ref"]) == ("error", "invalid_room", "r"), reply
    assert (await client.request(type="ping"))["type"] == "pong"
    await client.close()


BAD_NUMBERS: list[Any] = [0, -1, -(2**63), "5", "abc", 1.5, 1.0, 1e400, True, False, [], {}, [5], {"n": 5}]
"""Values of `last`, `limit` and `before` that are never valid (1e400 is sent as the literal)."""


def bad_values(field: str) -> list[Any]:
    """Every bad value of `field`: the common ones, then its own huge ones."""
    huge = {"last": [101, 10_001, 2**63], "limit": [101, 10_001, 2**63], "before": [2**63, 2**64, 10**30]}
    return [*BAD_NUMBERS, *huge[field]]


def frame_with(field: str, bad: Any, ref: Any) -> str:
    kind = "join" if field == "last" else "history"
    text = json.dumps({"type": kind, "room": "hist.bad", field: 12345, "ref": ref})
    literal = "1e400" if bad == 1e400 else json.dumps(bad)
    return text.replace("12345", literal)


@pytest.mark.parametrize("field", ["last", "limit", "before"])
async def test_every_bad_value_is_bad_request_and_the_connection_stays_usable(
    edge: Edge, backend: Any, field: str
) -> None:
    """0, negatives, strings, floats (1.0 included), booleans, arrays, objects, values above
    `max_history_page` (the message names the bound) or above 2**63-1: `bad_request` with the
    request's ref, nothing joined, and the next requests are answered as usual."""
    seqs = await fill(backend, "hist.bad", 3)
    client = await connect(edge.url)
    for i, bad in enumerate(bad_values(field)):
        ref = f"{field}-{i}"
        await client.ws.send_str(frame_with(field, bad, ref))
        reply = await client.recv()
        assert (reply["type"], reply.get("code"), reply.get("ref")) == ("error", "bad_request", ref), (bad, reply)
        if bad == 101:
            assert "1 to 100" in reply["message"], reply
    assert await before_pong(client) == []
    if field == "last":
        joined = await client.request(type="join", room="hist.bad", last=2)
        assert joined["type"] == "joined" and joined["replayed"] == 2, "no bad join took the room"
        assert [m["seq"] for m in await msgs_until(client, seqs[-1])] == seqs[-2:]
    else:
        assert [m["seq"] for m in (await page(client, "hist.bad"))["messages"]] == seqs
    await client.close()


async def test_null_is_absent_as_for_every_optional_field(edge: Edge, backend: Any) -> None:
    """`null` for `last`, `limit` or `before` means the field is absent (schemas/PROTOCOL.md 9.1,
    and the JSON schema): a plain join, the default page from the head."""
    seqs = await fill(backend, "hist.null", 60)
    client = await connect(edge.url)
    reply = await page(client, "hist.null", limit=None, before=None)
    assert [m["seq"] for m in reply["messages"]] == seqs[-50:]
    joined = await client.request(type="join", room="hist.null", last=None)
    assert joined["replayed"] == 0 and await before_pong(client) == []
    await client.close()


async def test_the_bound_is_the_nodes_max_history_page(make_edge: Any, backend: Any) -> None:
    """With `max_history_page` 10: `limit` and `last` 10 pass, 11 get `bad_request` naming 1 to 10."""
    edge = await make_edge(max_history_page=10)
    seqs = await fill(backend, "hist.ceiling", 12)
    client = await connect(edge.url)
    assert [m["seq"] for m in (await page(client, "hist.ceiling", limit=10))["messages"]] == seqs[-10:]
    for kind, field in (("history", "limit"), ("join", "last")):
        refused = await client.request(type=kind, room="hist.ceiling", ref=field, **{field: 11})
        assert (refused.get("code"), refused["ref"]) == ("bad_request", field), refused
        assert "1 to 10" in refused["message"]
    joined = await client.request(type="join", room="hist.ceiling", last=10)
    assert joined["replayed"] == 10
    assert [m["seq"] for m in await msgs_until(client, seqs[-1])] == seqs[-10:]
    await client.close()


async def test_the_history_rate_limit_refuses_then_closes_4029(make_edge: Any, backend: Any) -> None:
    """`history_burst` 3, `history_rate` 0.5/s, `rate_limit_strikes` 4: three pages, then
    `rate_limited` with the ref (publishes still pass: their budget is their own), and the
    fourth refusal in a row closes with 4029; the refusals are counted in /metrics."""
    edge = await make_edge(history_rate=0.5, history_burst=3, rate_limit_strikes=4)
    await fill(backend, "hist.rate", 3)
    client = await connect(edge.url)
    for i in range(3):
        await page(client, "hist.rate", ref=i)
    for i in range(3):
        refused = await client.request(type="history", room="hist.rate", ref=f"x{i}")
        assert (refused.get("code"), refused["ref"]) == ("rate_limited", f"x{i}"), refused
        assert (await client.request(type="publish", room="hist.rate", data=i))["type"] == "ack"
    await client.send(type="history", room="hist.rate", ref="last-straw")
    assert (await client.closed())[0] == 4029
    await client.close()
    samples = await scrape(edge)
    assert value(samples, "jetsock_rate_limit_hits_total", jetsock_limit="history") == 4
    # A fresh connection has a bucket of its own.
    other = await connect(edge.url, "bob")
    assert (await page(other, "hist.rate"))["messages"]
    await other.close()


async def test_an_accepted_request_resets_the_strikes(make_edge: Any, backend: Any) -> None:
    """Refusals must come in a row to close: a page accepted between them starts the count again."""
    edge = await make_edge(history_rate=4, history_burst=1, rate_limit_strikes=3)
    client = await connect(edge.url)
    for _ in range(4):
        await page(client, "hist.strikes")
        for _ in range(2):
            assert (await client.request(type="history", room="hist.strikes")).get("code") == "rate_limited"
        await asyncio.sleep(0.3)  # more than a token's worth: the next request passes
    assert (await client.request(type="ping"))["type"] == "pong"
    await client.close()


# --- what the stream no longer holds, and the byte bound ------------------------------------


async def test_pages_stop_where_max_msgs_per_room_cut_the_room(
    make_edge: Any, backend: Any, nats_server: EmbeddedNats
) -> None:
    """The stream keeps the newest 20 of 50: the page from the head holds those 20 and says
    `more: false`; a page before the fifth kept one holds the four before it, `more: false`."""
    edge = await make_edge(max_msgs_per_room=20)
    seqs = await fill(backend, "hist.cut", 50)
    assert await stored_seqs(nats_server.url, "hist.cut") == seqs[-20:]
    client = await connect(edge.url)
    head = await page(client, "hist.cut", limit=50)
    assert [m["seq"] for m in head["messages"]] == seqs[-20:] and head["more"] is False
    older = await page(client, "hist.cut", before=seqs[-16], limit=10)
    assert [m["seq"] for m in older["messages"]] == seqs[-20:-16] and older["more"] is False
    pages, _ = await walk_back(client, "hist.cut", limit=7)
    assert [s for p in reversed(pages) for s in p] == seqs[-20:]
    await client.close()


async def test_pages_stop_where_max_age_expired_the_room(make_edge: Any, backend: Any) -> None:
    """With `max_age` 1 s, messages older than that are gone: a page holds the fresh ones only
    and says `more: false`, and a page before them is empty."""
    edge = await make_edge(max_age=1.0, duplicate_window=0.5)
    old = await fill(backend, "hist.age", 10)
    client = await connect(edge.url)
    async with asyncio.timeout(10):
        while (await page(client, "hist.age"))["messages"]:
            await asyncio.sleep(0.2)
    fresh = await fill(backend, "hist.age", 5)
    reply = await page(client, "hist.age")
    assert [m["seq"] for m in reply["messages"]] == fresh and reply["more"] is False
    empty = await page(client, "hist.age", before=fresh[0])
    assert (empty["messages"], empty["more"]) == ([], False)
    assert old[-1] < fresh[0]
    await client.close()


async def test_a_page_over_history_page_bytes_is_cut_to_its_newest(
    make_edge: Any, backend: Any, nats_server: EmbeddedNats
) -> None:
    """`history_page_bytes` 20,000 and messages of 4 KB: a page asked for 30 holds only the newest
    few (at least one), says `more: true`, and paging on with `before` walks the whole room; a
    single message larger than the bound still comes, one per page."""
    edge = await make_edge(history_page_bytes=20_000)
    await fill(backend, "hist.bytes", 30, pad=4000)
    stored = await stored_seqs(nats_server.url, "hist.bytes")
    client = await connect(edge.url)
    first = await page(client, "hist.bytes", limit=30)
    got = [m["seq"] for m in first["messages"]]
    assert 1 <= len(got) <= 5 and got == stored[-len(got) :] and first["more"] is True
    assert len(json.dumps(first["messages"])) <= 20_000 + 4100
    pages, replies = await walk_back(client, "hist.bytes", limit=30)
    assert [s for p in reversed(pages) for s in p] == stored
    assert all(1 <= len(p) <= 5 for p in pages)
    await fill(backend, "hist.huge", 3, pad=30_000)
    huge = await stored_seqs(nats_server.url, "hist.huge")
    pages, replies = await walk_back(client, "hist.huge", limit=3)
    assert pages == [[huge[2]], [huge[1]], [huge[0]]]
    assert [r["more"] for r in replies] == [True, True, False]
    await client.close()


async def test_a_stream_that_does_not_answer_gets_unavailable(
    make_edge: Any, backend: Any, nats_server: EmbeddedNats
) -> None:
    """With the nats-server frozen (SIGSTOP), a history request gets `unavailable` with its ref
    once `nats_request_timeout` passes (a ping sent after it is answered first: it waits
    beside the read loop), and HTTP answers 503; once NATS answers again, so do pages."""
    edge = await make_edge(nats_request_timeout=0.5)
    seqs = await fill(backend, "hist.down", 3)
    client = await connect(edge.url)
    process = nats_server.process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(0.1)
        await client.send(type="history", room="hist.down", ref="during")
        await client.send(type="ping", ref="beside")
        first, second = await client.recv(), await client.recv()
        assert (first["type"], first["ref"]) == ("pong", "beside"), first
        assert (second["type"], second.get("code"), second["ref"]) == ("error", "unavailable", "during"), second
        status, body = await http_page(edge, "hist.down")
        assert (status, body["code"]) == (503, "unavailable")
    finally:
        process.send_signal(signal.SIGCONT)
    async with asyncio.timeout(10):
        while (reply := await client.request(type="history", room="hist.down"))["type"] != "history":
            await asyncio.sleep(0.2)
    assert [m["seq"] for m in reply["messages"]] == seqs
    await client.close()


# --- GET /v1/rooms/<room>/messages -------------------------------------------------------


async def test_http_pages_are_the_frames_pages(edge: Edge, backend: Any) -> None:
    """For the same queries, the HTTP answer is the `history` frame's object without `type` and
    `ref`: room, epoch, messages (the same ones, byte for byte after decoding), more."""
    seqs = await fill(backend, "hist.http", 70)
    client = await connect(edge.url)
    queries: list[dict[str, int]] = [{}, {"limit": 20}, {"before": seqs[30]}, {"before": seqs[30], "limit": 5}]
    queries += [{"before": seqs[0]}, {"before": seqs[-1] + 1000, "limit": 100}, {"limit": 1}]
    for query in queries:
        frame = await page(client, "hist.http", **query)
        status, body = await http_page(edge, "hist.http", "&".join(f"{k}={v}" for k, v in query.items()))
        assert status == 200
        assert body == {k: v for k, v in frame.items() if k not in ("type", "ref")}, query
        assert list(body) == ["room", "epoch", "messages", "more"]
    status, body = await http_page(edge, "hist.http.empty")
    assert (status, body["messages"], body["more"]) == (200, [], False)
    await client.close()


async def test_http_refuses_missing_tokens_rights_and_bad_values(edge: Edge, backend: Any) -> None:
    """401 without a bearer token or with a bad one; 403 with a token that may not join the room
    (publishing is not enough); 400 `bad_request` for a `before` or `limit` that is not a plain
    positive integer in range or is given twice; 400 `invalid_room` for a bad room name."""
    await fill(backend, "hist.gate", 3)
    url = f"{edge.http}/v1/rooms/hist.gate/messages"
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic eDp5"}):
            async with http.get(url, headers=headers) as response:
                assert response.status == 401, headers
                assert (await response.json())["code"] == "forbidden"
    status, body = await http_page(edge, "hist.gate", tok=token("pub", join=["elsewhere"], publish=["hist.gate"]))
    assert (status, body["code"]) == (403, "forbidden")
    status, _ = await http_page(edge, "hist.gate", tok=token("reader", join=["hist.gate"], publish=[]))
    assert status == 200
    bad = ["0", "-1", "abc", "1.5", "", "+1", "1e3", " 1", "0x10", "\u0661", "1" * 21, str(2**63)]
    for name in ("before", "limit"):
        for text in bad:
            status, body = await http_page(edge, "hist.gate", f"{name}={text}")
            assert (status, body["code"]) == (400, "bad_request"), (name, text, body)
        status, body = await http_page(edge, "hist.gate", f"{name}=2&{name}=3")
        assert (status, body["code"]) == (400, "bad_request"), body
        assert "once" in body["message"]
    for text in ("101", "10001"):
        status, body = await http_page(edge, "hist.gate", f"limit={text}")
        assert (status, body["code"]) == (400, "bad_request") and "1 to 100" in body["message"]
    status, _ = await http_page(edge, "hist.gate", f"before={MAX_SEQ}&limit=100&unknown=x")
    assert status == 200
    for room in ("a.*", "a.%3E", "a..b", "%24JS.API.x", "has%20space"):
        status, body = await http_page(edge, room)
        assert (status, body["code"]) == (400, "invalid_room"), (room, body)


async def test_history_metrics_count_each_transport(edge: Edge, backend: Any) -> None:
    """A frame page and an HTTP page show in /metrics as `jetsock_history_requests_total` with
    `jetsock_transport` "frame" and "http", with their messages and durations."""
    await fill(backend, "hist.metrics", 12)
    client = await connect(edge.url)
    await page(client, "hist.metrics", limit=10)
    assert (await http_page(edge, "hist.metrics", "limit=4"))[0] == 200
    samples = await scrape(edge)
    for transport, messages in (("frame", 10), ("http", 4)):
        assert value(samples, "jetsock_history_requests_total", jetsock_transport=transport) == 1
        assert value(samples, "jetsock_history_messages_total", jetsock_transport=transport) == messages
        assert value(samples, "jetsock_history_duration_seconds_count", jetsock_transport=transport) == 1
    cached = edge.settings.history_cache_messages > 0
    # The two pages, and nothing else, from the cache when it is on; neither counted when it is off.
    assert value(samples, "jetsock_history_cache_reads_total", jetsock_answer="cache") == (2 if cached else 0)
    assert value(samples, "jetsock_history_cache_reads_total", jetsock_answer="stream") == 0
    assert value(samples, "jetsock_history_cache_messages") == (12 + 4 if cached else 0)
    await client.close()
