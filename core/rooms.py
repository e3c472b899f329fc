"""Room names, the NATS subjects they map onto, and NATS-style room patterns.

A room name is 1 to 128 characters: segments of `[A-Za-z0-9_-]` joined by `.`,
at most 16 segments (PROTOCOL.md section 4). The alphabet has no wildcard, no
whitespace and no `$`, so a valid room name maps onto exactly one subject,
`rooms.<room>`, and can never reach another one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from schemas.clientrules import MAX_ROOM_LENGTH, MAX_SEGMENTS, ROOM_SEGMENT

ROOM_SUBJECT_PREFIX = "rooms."
LIVE_SUBJECT_PREFIX = "live.rooms."

# The rule is defined once, in schemas.clientrules, which both clients are generated from.
_SEGMENT = ROOM_SEGMENT
# `\Z` rather than `$`: `$` also matches before a trailing newline.
_ROOM_RE = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT}){{0,{MAX_SEGMENTS - 1}}}\Z", re.ASCII)
_PATTERN_SEGMENT_RE = re.compile(rf"(?:{_SEGMENT}|\*|>)\Z", re.ASCII)


class InvalidRoom(ValueError):
    """A room name or pattern that breaks the naming rules."""


def is_valid_room(name: str) -> bool:
    return len(name) <= MAX_ROOM_LENGTH and _ROOM_RE.match(name) is not None


ROOM_RULE = (
    f"a room name is 1-{MAX_ROOM_LENGTH} characters: segments of [A-Za-z0-9_-] joined by '.', "
    f"at most {MAX_SEGMENTS} segments"
)
"""What to tell a client whose room name breaks the rules."""


def check_room(name: str) -> str:
    if not is_valid_room(name):
        raise InvalidRoom(ROOM_RULE)
    return name


def room_subject(room: str) -> str:
    """The stream subject a room's messages are stored under."""
    return ROOM_SUBJECT_PREFIX + room


def live_subject(room: str) -> str:
    """The core-NATS subject the stream republishes a room's messages to."""
    return LIVE_SUBJECT_PREFIX + room


def room_of_subject(subject: str) -> str | None:
    """The room a `rooms.` or `live.rooms.` subject belongs to, if it is valid."""
    for prefix in (LIVE_SUBJECT_PREFIX, ROOM_SUBJECT_PREFIX):
        if subject.startswith(prefix):
            room = subject[len(prefix) :]
            return room if is_valid_room(room) else None
    return None


class RoomPattern:
    """A NATS-style pattern over room names: `*` is one segment, `>` one or more trailing."""

    __slots__ = ("_segments", "text")

    def __init__(self, text: str) -> None:
        segments = text.split(".")
        if not text or len(text) > MAX_ROOM_LENGTH or len(segments) > MAX_SEGMENTS:
            raise InvalidRoom(f"invalid room pattern {text!r}")
        for i, segment in enumerate(segments):
            if not _PATTERN_SEGMENT_RE.match(segment):
                raise InvalidRoom(f"invalid room pattern {text!r}")
            if segment == ">" and i != len(segments) - 1:
                raise InvalidRoom(f"'>' must be the last segment of {text!r}")
        self.text = text
        self._segments = tuple(segments)

    def matches(self, room: str) -> bool:
        parts = room.split(".")
        for i, segment in enumerate(self._segments):
            if segment == ">":
                return len(parts) > i
            if i >= len(parts):
                return False
            if segment != "*" and segment != parts[i]:
                return False
        return len(parts) == len(self._segments)

    def __repr__(self) -> str:
        return f"RoomPattern({self.text!r})"


class RoomRights:
    """A set of patterns; a room is allowed when any of them matches.

    Immutable (patterns are tuples), so one instance may be shared by every
    connection whose token grants the same patterns.
    """

    __slots__ = ("patterns",)

    def __init__(self, patterns: Sequence[RoomPattern]) -> None:
        self.patterns = tuple(patterns)

    @classmethod
    def parse(cls, texts: Sequence[str]) -> RoomRights:
        return cls([RoomPattern(text) for text in texts])

    def allows(self, room: str) -> bool:
        return any(pattern.matches(room) for pattern in self.patterns)


NO_RIGHTS = RoomRights(())
"""Allows nothing: a token without the claim, or a setting left empty."""
