"""Presence without I/O: the cluster view (core/presence.py) against a model, and the bus's
message handling (core/presencebus.py) driven with hand-made messages."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from core.presence import Change, ClusterPresence, Info, digest
from core.presencebus import (
    BEAT,
    BYE,
    DELTA,
    DELTA_WINDOW,
    HELLO,
    PART_BYTES,
    REPLY,
    SNAPSHOT,
    PresenceBus,
    delta_message,
)

TTL = 10.0
NODES = ["n1", "n2", "n3"]
ROOMS = ["r1", "r2"]
SUBS = ["ann", "bob", "cid", "dee"]
FAST = settings(max_examples=400, deadline=None)


def info_of(sub: str) -> Info:
    """Every connection of a sub carries the same info here (none for "dee")."""
    return None if sub == "dee" else json.dumps({"name": sub.title()}).encode()


# --- the model ----------------------------------------------------------------------

Op = tuple[Any, ...]

ops = st.one_of(
    st.tuples(st.just("join"), st.sampled_from(NODES), st.sampled_from(ROOMS), st.sampled_from(SUBS)),
    st.tuples(st.just("leave"), st.sampled_from(NODES), st.sampled_from(ROOMS), st.sampled_from(SUBS)),
    # A delta that never arrived: the node's truth moves, the view is not told.
    st.tuples(st.just("lost"), st.sampled_from(NODES), st.sampled_from(ROOMS), st.sampled_from(SUBS), st.booleans()),
    # Any count as a delta carries it, negative included (a receiver must not count below zero).
    st.tuples(
        st.just("set"), st.sampled_from(NODES), st.sampled_from(ROOMS), st.sampled_from(SUBS), st.integers(-2, 4)
    ),
    st.tuples(st.just("replace"), st.sampled_from(NODES), st.sampled_from(ROOMS)),
    st.tuples(st.just("drop"), st.sampled_from(NODES)),
    st.tuples(st.just("heard"), st.sampled_from(NODES)),
    st.tuples(st.just("tick"), st.sampled_from([0.5, 3.0, 6.0, 11.0])),
    st.tuples(st.just("expire"), st.sampled_from([(), ("n1",)])),
    # This node was cut off from NATS: everyone it knows gets a fresh ttl.
    st.tuples(st.just("refresh")),
)


@dataclass
class Model:
    """What each node truly holds, what the view was told of it, and when it was last heard."""

    truth: dict[str, Counter[tuple[str, str]]]
    told: dict[str, Counter[tuple[str, str]]]
    heard: dict[str, float]
    now: float = 0.0

    @classmethod
    def empty(cls) -> Model:
        return cls({n: Counter() for n in NODES}, {}, {})

    def hear(self, node: str) -> None:
        self.heard[node] = max(self.heard.get(node, self.now), self.now)
        self.told.setdefault(node, Counter())

    def tell(self, node: str, room: str, sub: str, count: int) -> None:
        self.hear(node)
        if count > 0:
            self.told[node][(room, sub)] = count
        else:
            self.told[node].pop((room, sub), None)

    def drop(self, node: str) -> None:
        self.told.pop(node, None)
        self.heard.pop(node, None)

    def present(self) -> dict[tuple[str, str], int]:
        totals: Counter[tuple[str, str]] = Counter()
        for held in self.told.values():
            totals.update(held)
        return {key: count for key, count in totals.items() if count > 0}

    def node_room(self, node: str, room: str) -> dict[str, int]:
        return {sub: c for (r, sub), c in self.told.get(node, Counter()).items() if r == room and c > 0}


def apply(view: ClusterPresence, model: Model, op: Op) -> list[Change]:
    kind = op[0]
    if kind in ("join", "leave"):
        _, node, room, sub = op
        before = model.truth[node][(room, sub)]
        if kind == "leave" and before == 0:
            return []
        after = before + (1 if kind == "join" else -1)
        model.truth[node][(room, sub)] = after
        model.tell(node, room, sub, after)
        return view.set(node, room, sub, after, info_of(sub), model.now)
    if kind == "lost":
        _, node, room, sub, up = op
        before = model.truth[node][(room, sub)]
        model.truth[node][(room, sub)] = max(0, before + (1 if up else -1))
        return []
    if kind == "set":
        _, node, room, sub, count = op
        model.truth[node][(room, sub)] = max(0, count)
        model.tell(node, room, sub, count)
        return view.set(node, room, sub, count, info_of(sub), model.now)
    if kind == "replace":
        _, node, room = op
        snapshot = {sub: (c, info_of(sub)) for (r, sub), c in model.truth[node].items() if r == room and c > 0}
        model.hear(node)
        for sub in list(model.node_room(node, room)):
            model.tell(node, room, sub, 0)
        for sub, (count, _info) in snapshot.items():
            model.tell(node, room, sub, count)
        return view.replace(node, room, snapshot, model.now)
    if kind == "drop":
        model.drop(op[1])
        return view.drop_node(op[1])
    if kind == "heard":
        model.hear(op[1])
        view.heard(op[1], model.now)
        return []
    if kind == "tick":
        model.now += op[1]
        return []
    if kind == "refresh":
        for node in model.heard:
            model.heard[node] = max(model.heard[node], model.now)
        view.refresh_all(model.now)
        return []
    if kind == "expire":
        keep = op[1]
        for node in [n for n, t in model.heard.items() if n not in keep and model.now - t > view.ttl]:
            model.drop(node)
        return view.expire(model.now, keep=keep)
    raise AssertionError(op)


def check_view(view: ClusterPresence, model: Model) -> None:
    present = model.present()
    for room in ROOMS:
        expected = {sub: c for (r, sub), c in present.items() if r == room}
        members, truncated = view.members(room, limit=len(SUBS))
        assert not truncated
        assert [m.sub for m in members] == sorted(expected), (room, members, expected)
        assert {m.sub: m.connections for m in members} == expected
        assert all(m.info == info_of(m.sub) for m in members), members
        assert view.counts(room) == (len(expected), sum(expected.values()))
        for sub in SUBS:
            assert view.is_present(room, sub) == (sub in expected)
        for node in NODES:
            held = view.node_members(node, room)
            assert {sub: c for sub, (c, _i) in held.items()} == model.node_room(node, room)
            assert (digest(held) == digest({s: (c, None) for s, c in model.node_room(node, room).items()})) is True
    assert sorted(view.rooms()) == sorted({r for r, _s in present})
    assert sorted(view.nodes()) == sorted(model.told)


@FAST
@given(st.lists(ops, max_size=80))
def test_the_view_equals_a_model_whatever_the_order(sequence: list[Op]) -> None:
    view = ClusterPresence(TTL)
    model = Model.empty()
    stream: list[Change] = []
    for op in sequence:
        changes = apply(view, model, op)
        stream += changes
        check_view(view, model)
    # Per (room, sub), the changes alternate joined, left, joined... starting with joined,
    # and the last one says what the view (and the model) hold at the end.
    last: dict[tuple[str, str], bool] = {}
    for change in stream:
        key = (change.room, change.sub)
        assert last.get(key, False) is not change.joined, (key, change, stream)
        last[key] = change.joined
        if change.joined:
            assert change.info == info_of(change.sub)
    present = model.present()
    assert {key for key, joined in last.items() if joined} == set(present)


@FAST
@given(st.lists(ops, max_size=60))
def test_changes_are_only_first_joins_and_last_leaves(sequence: list[Op]) -> None:
    """Each change is a crossing of a user's cluster-wide connection count between 0 and more."""
    view = ClusterPresence(TTL)
    model = Model.empty()
    for op in sequence:
        before = model.present()
        changes = apply(view, model, op)
        after = model.present()
        crossed = {(key, key in after) for key in set(before) | set(after) if (key in before) != (key in after)}
        assert {((c.room, c.sub), c.joined) for c in changes} == crossed
        assert len(changes) == len(crossed)


members_maps = st.dictionaries(st.sampled_from([*SUBS, "eve", "a\x00b"]), st.integers(1, 3), max_size=5)


@FAST
@given(members_maps, members_maps, st.booleans())
def test_digests_are_equal_iff_the_members_and_counts_are(a: dict[str, int], b: dict[str, int], info: bool) -> None:
    left = {sub: (c, b'{"x":1}' if info else None) for sub, c in a.items()}
    right = {sub: (c, None) for sub, c in b.items()}
    assert (digest(left) == digest(right)) == (a == b)
    # Order-independent.
    assert digest(dict(reversed(list(left.items())))) == digest(left)


def test_members_are_sorted_by_sub_and_cut_at_the_limit() -> None:
    view = ClusterPresence(TTL)
    for i, sub in enumerate(["zed", "amy", "kim", "bo"]):
        view.set(NODES[i % 2], "r", sub, 1, None, 0.0)
    members, truncated = view.members("r", 2)
    assert [m.sub for m in members] == ["amy", "bo"] and truncated
    members, truncated = view.members("r", 4)
    assert [m.sub for m in members] == ["amy", "bo", "kim", "zed"] and not truncated
    assert view.members("nobody", 10) == ([], False)


def test_expire_keeps_this_node_and_drops_the_silent_ones_with_their_members() -> None:
    view = ClusterPresence(TTL)
    view.set("me", "r", "ann", 1, None, 0.0)
    view.set("dead", "r", "ann", 2, None, 0.0)
    view.set("dead", "r", "bob", 1, None, 0.0)
    view.set("alive", "r", "cid", 1, None, 0.0)
    view.heard("alive", 9.0)
    assert view.expire(10.0, keep=["me"]) == []  # silent for exactly ttl: not yet
    changes = view.expire(10.5, keep=["me"])
    assert changes == [Change("r", "bob", False)]  # ann is still held by this node
    assert view.counts("r") == (2, 2) and sorted(view.nodes()) == ["alive", "me"]


# --- the bus, driven by hand ---------------------------------------------------------


@dataclass
class FakeMsg:
    subject: str
    data: bytes


class Bus:
    """A PresenceBus that is not started: what it would send stays in its queue."""

    def __init__(self, ttl: float = 3.0) -> None:
        self.changes: list[Change] = []
        self.bus = PresenceBus("me", ttl, self.changes.extend)

    def receive(self, subject: str, **body: Any) -> None:
        self.bus._on_message(FakeMsg(subject, json.dumps(body).encode()))  # type: ignore[arg-type]

    def receive_raw(self, subject: str, data: bytes) -> None:
        self.bus._on_message(FakeMsg(subject, data))  # type: ignore[arg-type]

    def sent(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        queue = self.bus._outgoing
        while not queue.empty():
            item = queue.get_nowait()
            assert item is not None
            subject, payload = item
            out.append((subject, json.loads(payload)))
        return out

    def asked(self) -> list[dict[str, Any]]:
        return [body for subject, body in self.sent() if subject.startswith(SNAPSHOT)]

    def delta(self, sender: str, q: int, room: str, sub: str, c: int, **extra: Any) -> None:
        self.receive(DELTA, n=sender, q=q, r=room, s=sub, c=c, **extra)

    def who(self, room: str = "r") -> dict[str, int]:
        return {m.sub: m.connections for m in self.bus.view.members(room, 100)[0]}


def test_deltas_in_order_are_applied_and_ask_for_nothing() -> None:
    b = Bus()
    b.delta("x.1", 1, "r", "ann", 1, i={"name": "Ann"})
    b.delta("x.1", 2, "r", "bob", 2)
    b.delta("x.1", 3, "r", "bob", 1)
    assert b.who() == {"ann": 1, "bob": 1}
    assert b.bus.view.members("r", 10)[0][0].info == b'{"name":"Ann"}'
    assert [(c.sub, c.joined) for c in b.changes] == [("ann", True), ("bob", True)]
    assert b.asked() == []


def test_a_gap_in_q_asks_that_node_for_a_snapshot_of_its_rooms() -> None:
    b = Bus()
    b.delta("x.1", 1, "r", "ann", 1)
    b.sent()
    b.delta("x.1", 4, "r2", "bob", 1)  # 2 and 3 were lost
    assert b.who("r2") == {"bob": 1}  # applied all the same
    asks = [(s, body) for s, body in b.sent() if s.startswith(SNAPSHOT)]
    assert len(asks) == 1
    subject, body = asks[0]
    assert subject == SNAPSHOT + "x.1" and sorted(body["r"]) == ["r", "r2"]
    assert body["to"] == REPLY + b.bus.incarnation and body["n"] == b.bus.incarnation


def test_a_snapshot_replaces_without_changes_for_those_who_stayed_and_stale_deltas_are_ignored() -> None:
    b = Bus()
    b.delta("x.1", 1, "r", "ann", 1)
    b.delta("x.1", 2, "r", "bob", 1)
    b.changes.clear()
    # Deltas 3..9 were lost: bob left, cid joined, ann opened a second tab.
    b.receive(REPLY + b.bus.incarnation, n="x.1", q=9, m={"r": {"ann": [2, None], "cid": [1, {"k": 1}]}})
    assert b.who() == {"ann": 2, "cid": 1}
    assert sorted((c.sub, c.joined) for c in b.changes) == [("bob", False), ("cid", True)]
    b.changes.clear()
    b.delta("x.1", 8, "r", "bob", 1)  # older than the snapshot: ignored
    b.delta("x.1", 9, "r", "bob", 1)
    assert b.who() == {"ann": 2, "cid": 1} and b.changes == []
    b.delta("x.1", 10, "r", "bob", 1)
    assert b.who() == {"ann": 2, "bob": 1, "cid": 1}
    assert b.asked() == []


def test_beats_ask_for_a_snapshot_only_when_the_digest_differs() -> None:
    b = Bus()
    b.delta("x.1", 1, "r", "ann", 1)
    b.sent()
    b.receive(BEAT, n="x.1", q=1, d={"r": digest({"ann": (1, None)})})
    assert b.asked() == []
    b.receive(BEAT, n="x.1", q=2, d={"r": digest({"ann": (2, None)})})
    asks = b.asked()
    assert len(asks) == 1 and asks[0]["r"] == ["r"]
    # A room we hold for it that its beat no longer lists is stale too (after the ask interval).
    b.bus._asked.clear()
    b.receive(BEAT, n="x.1", q=3, d={})
    asks = b.asked()
    assert len(asks) == 1 and asks[0]["r"] == ["r"]


def test_snapshot_asks_are_limited_to_one_per_interval_per_node() -> None:
    b = Bus()
    for q in range(1, 30, 2):  # every delta skips one
        b.delta("x.1", q, "r", f"u{q}", 1)
    assert len(b.asked()) == 1


def test_hello_is_answered_with_a_beat_and_a_snapshot_request_with_our_members() -> None:
    b = Bus()
    b.bus.local("r", "ann", 2, b'{"name":"Ann"}')
    b.bus.local("r", "bob", 1, None)
    sent = b.sent()
    assert [s for s, _ in sent] == [DELTA, DELTA]
    # Entries of a batch: the send loop wraps them in {"n": incarnation, "b": [...]}.
    assert sent[0][1] == {"q": 1, "r": "r", "s": "ann", "c": 2, "i": {"name": "Ann"}}
    b.receive(HELLO, n="y.1")
    (subject, beat), *rest = b.sent()
    assert subject == BEAT and not rest
    assert beat["d"] == {"r": digest({"ann": (2, None), "bob": (1, None)})} and beat["q"] == 2
    b.receive(SNAPSHOT + b.bus.incarnation, n="y.1", r=["r", "empty"], to=REPLY + "y.1")
    (subject, reply), *rest = b.sent()
    assert subject == REPLY + "y.1" and not rest
    assert reply == {
        "n": b.bus.incarnation,
        "q": 2,
        "m": {"r": {"ann": [2, {"name": "Ann"}], "bob": [1, None]}, "empty": {}},
    }
    # A request whose answer would go anywhere but a reply subject is not answered.
    b.receive(SNAPSHOT + b.bus.incarnation, n="y.1", r=["r"], to="rooms.r")
    assert b.sent() == []


def test_our_own_messages_and_malformed_ones_change_nothing() -> None:
    b = Bus()
    b.delta(b.bus.incarnation, 1, "r", "ann", 1)
    for subject, data in [
        (DELTA, b"not json"),
        (DELTA, b"[1,2]"),
        (DELTA, b'{"n":"x.1","q":"1","r":"r","s":"ann","c":1}'),
        (DELTA, b'{"n":"x.1","q":1,"r":["r"],"s":"ann","c":1}'),
        (BEAT, b'{"n":"x.1","d":[]}'),
        (REPLY + b.bus.incarnation, b'{"n":"x.1","q":1,"m":{"r":{"ann":[0,null],"bob":"x","cid":[]}}}'),
        (REPLY + b.bus.incarnation, b'{"n":"x.1","q":1,"m":[]}'),
        (SNAPSHOT + b.bus.incarnation, b'{"n":"x.1","r":"r","to":"jetsock.presence.reply.x"}'),
        (HELLO, b'{"n":5}'),
    ]:
        b.receive_raw(subject, data)
    assert b.who() == {} and b.changes == []


def test_a_delta_with_a_negative_count_takes_nothing_from_other_nodes() -> None:
    b = Bus()
    b.delta("x.1", 1, "r", "ann", 1)
    b.delta("y.1", 1, "r", "ann", -3)
    assert b.who() == {"ann": 1}


def test_bye_drops_the_node_at_once() -> None:
    b = Bus()
    b.delta("x.1", 1, "r", "ann", 1)
    b.delta("y.1", 1, "r", "ann", 1)
    b.delta("x.1", 2, "r", "bob", 1)
    b.changes.clear()
    b.receive(BYE, n="x.1")
    assert b.who() == {"ann": 1} and b.changes == [Change("r", "bob", False)]
    assert "x.1" not in b.bus.view.nodes()


async def test_stop_sends_what_was_queued_then_bye() -> None:
    sent: list[tuple[str, bytes]] = []

    class FakeNats:
        is_connected = True

        async def publish(self, subject: str, payload: bytes) -> None:
            sent.append((subject, payload))

        async def flush(self, timeout: float = 1.0) -> None:
            pass

    bus = PresenceBus("me", 3.0, lambda changes: None)
    bus._nc = FakeNats()  # type: ignore[assignment]
    bus._tasks = [asyncio.get_running_loop().create_task(bus._send_loop())]
    bus.local("r", "ann", 1, None)
    bus.local("r", "ann", 0, None)
    await bus.stop()
    subjects = [s for s, _ in sent]
    assert subjects == [DELTA, BYE], subjects  # The two changes went in one message.
    assert msgspec.json.decode(sent[0][1]) == {
        "n": bus.incarnation,
        "b": [{"q": 1, "r": "r", "s": "ann", "c": 1}, {"q": 2, "r": "r", "s": "ann", "c": 0}],
    }
    assert msgspec.json.decode(sent[-1][1]) == {"n": bus.incarnation}


async def test_changes_are_sent_in_batches_that_keep_their_order_around_other_messages() -> None:
    """Changes queued within DELTA_WINDOW share one message; a beat queued between them ends
    the batch and goes out between the two batches, as it was queued; a batch stops near
    PART_BYTES."""
    sent: list[tuple[str, Any]] = []

    class FakeNats:
        is_connected = True

        async def publish(self, subject: str, payload: bytes) -> None:
            sent.append((subject, msgspec.json.decode(payload)))

    bus = PresenceBus("me", 3.0, lambda changes: None)
    bus._nc = FakeNats()  # type: ignore[assignment]
    task = asyncio.get_running_loop().create_task(bus._send_loop())
    for n in range(5):
        bus.local("r", f"u{n}", 1, None)
    bus._send_beat()
    bus.local("r", "late", 1, None)
    big = b'{"bio":"' + b"x" * 900 + b'"}'
    for n in range(400):  # about 370 KB of changes: three messages
        bus.local("big", f"b{n}", 1, big)
    await asyncio.sleep(DELTA_WINDOW * 6)
    task.cancel()
    kinds = [(s, [e["q"] for e in body["b"]] if s == DELTA else None) for s, body in sent]
    assert kinds[:3] == [(DELTA, [1, 2, 3, 4, 5]), (BEAT, None), (DELTA, kinds[2][1])]
    assert kinds[2][1][0] == 6
    qs = [q for s, batch in kinds if s == DELTA and batch for q in batch]
    assert qs == list(range(1, 407)), "every change once, in order"
    assert len(kinds) == 2 + 3 and all(len(msgspec.json.encode(b)) < 2 * PART_BYTES for _, b in sent)


def test_a_batch_is_applied_entry_by_entry_with_one_callback() -> None:
    """Every entry of a batch applies like a single delta (order, gaps, bad entries skipped),
    and the changes reach the callback together."""
    b = Bus()
    calls: list[list[Change]] = []
    b.bus._on_changes = calls.append
    entries: list[Any] = [
        {"q": 1, "r": "r", "s": "ann", "c": 1},
        {"q": 2, "r": "r", "s": "bob", "c": 1, "i": {"name": "Bob"}},
        "not an entry",
        {"q": "3", "r": "r", "s": "eve", "c": 1},
        {"q": 3, "r": "r", "s": "ann", "c": 0},
    ]
    b.receive(DELTA, n="x.1", b=entries)
    assert b.who() == {"bob": 1}
    assert len(calls) == 1 and [(c.sub, c.joined) for c in calls[0]] == [("ann", True), ("bob", True), ("ann", False)]
    assert b.asked() == []
    b.receive(DELTA, n="x.1", b=[{"q": 2, "r": "r", "s": "old", "c": 1}, {"q": 9, "r": "r2", "s": "cy", "c": 1}])
    assert b.who() == {"bob": 1} and b.who("r2") == {"cy": 1}  # 2 is old news; 9 skips 4-8
    assert len(b.asked()) == 1


class Link:
    """A stand-in for the NATS connection: only whether it is up."""

    def __init__(self) -> None:
        self.is_connected = True


def test_no_node_is_expired_while_this_one_is_cut_off_from_nats() -> None:
    """Silence heard while our own NATS connection is down says nothing about the others: after
    it is back every known node gets a full ttl to be heard again; then silence counts."""
    ttl = 3.0
    b = Bus(ttl)
    link = Link()
    b.bus._nc = link  # type: ignore[assignment]
    b.delta("x.1", 1, "r", "ann", 1)
    heard = b.bus.view._nodes["x.1"].heard
    link.is_connected = False
    for k in range(1, 10):  # a NATS outage of 3 ttl, beat after beat
        b.bus.expire(heard + k * ttl / 3)
    link.is_connected = True
    b.bus.expire(heard + 3.4 * ttl)  # the first check after it is back: a fresh start
    assert b.who() == {"ann": 1} and b.changes[-1].joined
    b.bus.expire(heard + 4.3 * ttl)  # within ttl of being back
    assert b.who() == {"ann": 1}
    b.bus.expire(heard + 4.5 * ttl)  # silent for more than ttl while we were connected
    assert b.who() == {} and b.changes[-1] == Change("r", "ann", False)


def test_a_users_info_is_the_one_of_the_connection_that_joined_last() -> None:
    view = ClusterPresence(TTL)
    view.set("n1", "r", "ann", 1, b'{"v":1}', 0.0)
    view.set("n1", "r", "ann", 2, b'{"v":2}', 0.0)
    view.set("n2", "r", "ann", 1, b'{"v":3}', 0.0)
    assert view.members("r", 1)[0][0].info == b'{"v":3}'
    view.set("n1", "r", "ann", 1, b'{"v":1}', 0.0)  # a tab of n1 left: what n2's join said stays
    assert view.members("r", 1)[0][0].info == b'{"v":3}'
    assert view.node_members("n1", "r") == {"ann": (1, b'{"v":2}')}


# --- messages larger than NATS takes in one piece -----------------------------------------------


def pump(source: PresenceBus, target: PresenceBus, drop: Any = None) -> list[tuple[str, dict[str, Any]]]:
    """Deliver what `source` queued to `target` (except what `drop` says); what was sent."""
    sent = []
    queue = source._outgoing
    while not queue.empty():
        item = queue.get_nowait()
        assert item is not None
        subject, payload = item
        if subject == DELTA:  # An entry: wrapped as the send loop does
            payload = delta_message(source.incarnation, [payload])
        body = json.loads(payload)
        sent.append((subject, body))
        if drop is None or not drop(subject, body):
            target._on_message(FakeMsg(subject, payload))  # type: ignore[arg-type]
    return sent


def buses(ttl: float = 3.0) -> tuple[PresenceBus, PresenceBus, list[Change]]:
    changes: list[Change] = []
    return PresenceBus("a", ttl, lambda c: None), PresenceBus("b", ttl, changes.extend), changes


def test_a_snapshot_larger_than_a_message_goes_in_parts_and_applies_when_complete() -> None:
    a, b, changes = buses()
    info = b'{"bio":"' + b"x" * 1000 + b'"}'  # compact JSON, as the token's claim is kept
    for i in range(1500):  # about 1.5 MB of members: more than NATS's default max_payload
        a.local("big", f"user-{i:05d}", 1 + i % 2, info)
    a.local("small", "ann", 1, None)
    pump(a, b, drop=lambda subject, body: subject == DELTA)  # b missed every delta
    ask = {"n": b.incarnation, "all": True, "to": REPLY + b.incarnation}
    a._on_message(FakeMsg(SNAPSHOT + a.incarnation, json.dumps(ask).encode()))  # type: ignore[arg-type]
    replies = [body for subject, body in pump(a, b, drop=lambda subject, body: True) if subject.startswith(REPLY)]
    assert len(replies) >= 10 and [r["k"] for r in replies] == list(range(len(replies)))
    assert all(r["of"] == len(replies) and r["all"] is True for r in replies)
    assert max(len(json.dumps(r)) for r in replies) < 200 * 1024
    # A part lost: nothing is applied (a half snapshot would drop those in the other parts).
    for i, reply in enumerate(replies):
        if i != 3:
            b._on_message(FakeMsg(REPLY + b.incarnation, json.dumps(reply).encode()))  # type: ignore[arg-type]
    assert b.view.counts("big") == (0, 0)
    # All of them, in order: b holds what a holds.
    for reply in replies:
        b._on_message(FakeMsg(REPLY + b.incarnation, json.dumps(reply).encode()))  # type: ignore[arg-type]
    assert b.view.counts("big") == a.view.counts("big") == (1500, 2250)
    assert b.view.node_members(a.incarnation, "big") == a.view.node_members(a.incarnation, "big")
    assert b.view.counts("small") == (1, 1)
    assert len([c for c in changes if c.joined]) == 1501


def test_a_beat_of_many_rooms_goes_in_parts_and_asks_once_at_the_last() -> None:
    a, b, _changes = buses()
    for i in range(6000):
        a.local(f"room.{i:05d}", "ann", 1, None)
    pump(a, b)
    # Lost deltas: b holds a wrong count in the first and the last room, and a room a no longer has.
    b.view.set(a.incarnation, "room.00000", "ann", 2, None, 0.0)
    b.view.set(a.incarnation, "room.05999", "ann", 3, None, 0.0)
    b.view.set(a.incarnation, "room.gone", "bob", 1, None, 0.0)
    a._send_beat()
    beats = [body for subject, body in pump(a, b, drop=lambda s, body: True) if subject == BEAT]
    assert len(beats) > 1 and [x["k"] for x in beats] == list(range(len(beats)))
    assert max(len(json.dumps(x)) for x in beats) < 200 * 1024
    for beat in beats[:-1]:
        b._on_message(FakeMsg(BEAT, json.dumps(beat).encode()))  # type: ignore[arg-type]
    assert b._outgoing.empty()  # one ask, at the last part
    b._on_message(FakeMsg(BEAT, json.dumps(beats[-1]).encode()))  # type: ignore[arg-type]
    asks = [body for subject, body in pump(b, a, drop=lambda s, body: True) if subject.startswith(SNAPSHOT)]
    assert len(asks) == 1 and sorted(asks[0]["r"]) == ["room.00000", "room.05999", "room.gone"]
    # With the first part lost, the rooms no part listed cannot be judged; the stale digests that came still are.
    b._asked.clear()
    for beat in beats[1:]:
        b._on_message(FakeMsg(BEAT, json.dumps(beat).encode()))  # type: ignore[arg-type]
    asks = [body for subject, body in pump(b, a, drop=lambda s, body: True) if subject.startswith(SNAPSHOT)]
    assert [ask["r"] for ask in asks] == [["room.05999"]]


async def test_a_late_node_reads_40000_users_and_20000_rooms_through_real_nats(nats_server: Any) -> None:
    import nats

    nc_a, nc_b = await nats.connect(nats_server.url), await nats.connect(nats_server.url)
    a = PresenceBus("a", 3.0, lambda c: None)
    b_changes: list[Change] = []
    b = PresenceBus("b", 3.0, b_changes.extend)
    try:
        await a.start(nc_a)
        for i in range(40_000):
            a.local("big", f"user-{i:06d}", 1, b'{"name":"A user with a name"}')
        for i in range(20_000):
            a.local(f"doc.{i:06d}", "ann", 1, None)
        await asyncio.sleep(0.5)
        started = asyncio.get_running_loop().time()
        await b.start(nc_b)  # missed every delta: hello, beats, snapshots in parts
        async with asyncio.timeout(15):
            while b.view.counts("big")[0] < 40_000 or len(b.view.rooms()) < 20_001:
                await asyncio.sleep(0.05)
        took = asyncio.get_running_loop().time() - started
        assert b.view.node_members(a.incarnation, "big") == a.view.node_members(a.incarnation, "big")
        # Beats of 20,000 rooms keep a known: nothing is expired over two ttl.
        await asyncio.sleep(6.5)
        assert len(b.view.rooms()) == 20_001 and not [c for c in b_changes if not c.joined]
        print(f"\na late node read 40,000 users and 20,000 rooms in {took:.2f} s")
    finally:
        await a.stop()
        await b.stop()
        await nc_a.close()
        await nc_b.close()
