"""Who is in a room, cluster-wide and per user: the aggregation, without I/O.

Presence lives on the NATS cluster the edges already use, with no other store. Each
node owns the presence of its own connections and tells the others over core NATS
(core/presencebus.py); every node keeps the whole cluster's view in memory, so `who`
is a local read. This module is that view, driven with plain values:

- per room, per node incarnation, per `sub`: how many of that node's connections of
  `sub` are joined, and the `sub`'s public `info`;
- a `sub` is present in a room while the sum of its connections over all nodes is
  above 0: the first connection anywhere gives `joined`, the last one leaving gives
  `left` (not one per tab, not one per node);
- a node incarnation that is not heard from for `ttl` seconds is dropped with all its
  members (a SIGKILLed node), which gives `left` for the users it alone held;
- a node's state arrives as deltas (one per change of one `sub` on that node) and,
  when a digest says a receiver missed some, as a snapshot of a room that replaces
  what the receiver held for that node: lost deltas (a NATS reconnect) heal without
  a spurious `left`/`joined` pair for users who stayed.

Cost: a change of presence is one delta per change of a (room, sub) on one node,
received by every node; nothing is sent per member. `who` reads memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Info = bytes | None
"""A member's `info` claim as JSON bytes (at most 1 KB, checked with the token), or None."""


@dataclass(frozen=True, slots=True)
class Change:
    """A user's presence in a room changed, cluster-wide."""

    room: str
    sub: str
    joined: bool
    """True: the first connection anywhere; False: the last one left."""
    info: Info = None


@dataclass(frozen=True, slots=True)
class Member:
    sub: str
    connections: int
    info: Info


@dataclass(slots=True)
class _NodeRoom:
    """One node incarnation's members of one room: sub -> (connections, info)."""

    members: dict[str, tuple[int, Info]] = field(default_factory=dict)


@dataclass(slots=True)
class _Node:
    heard: float
    rooms: dict[str, _NodeRoom] = field(default_factory=dict)


class _Room:
    """A room's cluster view: per sub, the total connections and the info last heard."""

    __slots__ = ("connections", "info", "ordered", "totals")

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.info: dict[str, Info] = {}
        self.connections = 0
        self.ordered: list[str] | None = None
        """The subs, sorted: kept until a sub comes or goes (`who` reads it, a sort per change)."""


def digest(members: Mapping[str, tuple[int, Info]]) -> str:
    """An order-independent digest of one node's members of a room (subs and their counts).

    A receiver compares it with the one it computes from what it holds for that node;
    a difference means deltas were lost, and it asks for a snapshot."""
    acc = 0
    for sub, (connections, _info) in members.items():
        h = hashlib.blake2b(f"{sub}\x00{connections}".encode(), digest_size=8).digest()
        acc ^= int.from_bytes(h, "big")
    return f"{len(members)}:{acc:016x}"


class ClusterPresence:
    """The cluster's presence, as one node sees it. Times are monotonic seconds."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._nodes: dict[str, _Node] = {}
        self._rooms: dict[str, _Room] = {}

    # --- reading ----------------------------------------------------------------

    def counts(self, room: str) -> tuple[int, int]:
        """(present users, present connections)."""
        view = self._rooms.get(room)
        return (len(view.totals), view.connections) if view is not None else (0, 0)

    def members(self, room: str, limit: int) -> tuple[list[Member], bool]:
        """Up to `limit` members (sorted by sub, so every node lists the same ones), and
        whether the list was cut."""
        view = self._rooms.get(room)
        if view is None:
            return [], False
        if view.ordered is None:
            view.ordered = sorted(view.totals)
        shown = view.ordered[:limit]
        return [Member(sub, view.totals[sub], view.info.get(sub)) for sub in shown], len(view.totals) > limit

    def is_present(self, room: str, sub: str) -> bool:
        view = self._rooms.get(room)
        return view is not None and sub in view.totals

    def node_members(self, node: str, room: str) -> dict[str, tuple[int, Info]]:
        """What this view holds for one node in one room (a copy)."""
        known = self._nodes.get(node)
        if known is None or room not in known.rooms:
            return {}
        return dict(known.rooms[room].members)

    def node_rooms(self, node: str) -> list[str]:
        known = self._nodes.get(node)
        return list(known.rooms) if known is not None else []

    def nodes(self) -> list[str]:
        return list(self._nodes)

    def rooms(self) -> list[str]:
        return list(self._rooms)

    # --- changing ---------------------------------------------------------------

    def heard(self, node: str, now: float) -> None:
        """A node incarnation is alive (any message from it)."""
        known = self._nodes.get(node)
        if known is None:
            self._nodes[node] = _Node(now)
        else:
            known.heard = max(known.heard, now)

    def set(self, node: str, room: str, sub: str, connections: int, info: Info, now: float) -> list[Change]:
        """Node `node` now holds `connections` of `sub` joined in `room` (0 or less: none).

        `info` is the public details of the connection that joined (or left); a user's
        info is the one of its connection that joined last, so a leave keeps what was held."""
        self.heard(node, now)
        connections = max(0, connections)
        node_room = self._nodes[node].rooms.setdefault(room, _NodeRoom())
        before, held_info = node_room.members.get(sub, (0, None))
        if connections > before:
            node_room.members[sub] = (connections, info)
        elif connections > 0:
            node_room.members[sub] = (connections, held_info)
            info = held_info
        else:
            node_room.members.pop(sub, None)
            if not node_room.members:
                del self._nodes[node].rooms[room]
        return self._adjust(room, sub, connections - before, info)

    def replace(self, node: str, room: str, members: Mapping[str, tuple[int, Info]], now: float) -> list[Change]:
        """A snapshot of `node`'s members of `room` replaces what this view held for it."""
        self.heard(node, now)
        held = self.node_members(node, room)
        changes: list[Change] = []
        for sub in held.keys() | members.keys():
            old = held.get(sub, (0, None))[0]
            new, info = members.get(sub, (0, None))
            if old != new:
                changes += self.set(node, room, sub, new, info, now)
        return changes

    def drop_node(self, node: str) -> list[Change]:
        """Forget a node incarnation and its members (it stopped, or fell silent)."""
        known = self._nodes.pop(node, None)
        if known is None:
            return []
        changes: list[Change] = []
        for room, node_room in known.rooms.items():
            for sub, (connections, info) in node_room.members.items():
                changes += self._adjust(room, sub, -connections, info)
        return changes

    def refresh_all(self, now: float) -> None:
        """Every known node counts as heard `now`: this node was cut off from NATS, and the
        silence it saw meanwhile says nothing about the others (no spurious `left`)."""
        for known in self._nodes.values():
            known.heard = max(known.heard, now)

    def expire(self, now: float, keep: Iterable[str] = ()) -> list[Change]:
        """Drop every node silent for `ttl` seconds (but those in `keep`: this node itself)."""
        kept = set(keep)
        silent = [n for n, known in self._nodes.items() if n not in kept and now - known.heard > self.ttl]
        changes: list[Change] = []
        for node in silent:
            changes += self.drop_node(node)
        return changes

    def _adjust(self, room: str, sub: str, delta: int, info: Info) -> list[Change]:
        if delta == 0:
            return []
        view = self._rooms.get(room)
        if view is None:
            view = self._rooms[room] = _Room()
        before = view.totals.get(sub, 0)
        after = max(0, before + delta)
        view.connections += after - before
        if after > 0:
            view.totals[sub] = after
            if delta > 0 or sub not in view.info:
                view.info[sub] = info
        else:
            view.totals.pop(sub, None)
            view.info.pop(sub, None)
            if not view.totals:
                del self._rooms[room]
        if before == 0 and after > 0:
            view.ordered = None
            return [Change(room, sub, True, info)]
        if before > 0 and after == 0:
            view.ordered = None
            return [Change(room, sub, False)]
        return []
