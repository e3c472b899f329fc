"""Which rooms client number i joins, per scenario: the same shapes for every system."""

from __future__ import annotations

from collections.abc import Callable

IDLE_ROOMS = 1000
CHAT_ROOM_SIZE = 10
STORM_ROOM_SIZE = 100
CHURN_ROOMS = 100


def _idle(i: int) -> list[str]:
    # Two rooms each, from a pool of 1,000: rooms of ~2N/1000 members, none shared by the pair.
    return [f"idle.{i % IDLE_ROOMS}", f"idle.{(i + IDLE_ROOMS // 2 + i // IDLE_ROOMS) % IDLE_ROOMS}"]


SHAPES: dict[str, Callable[[int], list[str]]] = {
    "idle": _idle,
    "fanout": lambda i: ["fanout.all"],
    "chat": lambda i: [f"chat.{i // CHAT_ROOM_SIZE}"],
    "storm": lambda i: [f"storm.{i // STORM_ROOM_SIZE}"],
    "churn": lambda i: [f"churn.{i % CHURN_ROOMS}"],
    "history": lambda i: [f"history.{i}"],
    "presence": lambda i: ["presence.all"],
    "none": lambda i: [],
}


def rooms(shape: str, index: int) -> list[str]:
    return SHAPES[shape](index)


def all_rooms(shape: str, count: int) -> list[str]:
    """Every room the first `count` clients of `shape` join, in first-seen order."""
    seen: dict[str, None] = {}
    for i in range(count):
        for room in SHAPES[shape](i):
            seen[room] = None
    return list(seen)
