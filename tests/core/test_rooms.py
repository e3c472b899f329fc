"""PROTOCOL.md section 4: room names, their subjects, and NATS-style room patterns."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from core.rooms import (
    MAX_ROOM_LENGTH,
    MAX_SEGMENTS,
    InvalidRoom,
    RoomPattern,
    RoomRights,
    check_room,
    is_valid_room,
    live_subject,
    room_of_subject,
    room_subject,
)

ALPHABET = string.ascii_letters + string.digits + "_-"
FAST = settings(max_examples=300, deadline=None)


@st.composite
def room_names(draw: st.DrawFn) -> str:
    """Any valid name: 1-16 segments of the alphabet, at most 128 characters in all."""
    count = draw(st.integers(1, MAX_SEGMENTS))
    budget = MAX_ROOM_LENGTH - (count - 1)
    segments = []
    for left in range(count, 0, -1):
        most = budget - (left - 1)  # keep at least one character for each later segment
        segment = draw(st.text(ALPHABET, min_size=1, max_size=min(most, 40)))
        budget -= len(segment)
        segments.append(segment)
    return ".".join(segments)


# Characters outside the alphabet and the dot: wildcards, `$`, whitespace,
# look-alike dots, control characters, anything else unicode has.
FORBIDDEN = st.characters(exclude_characters=ALPHABET + ".")
SPECIAL = [
    "*",
    ">",
    "$",
    " ",
    "\t",
    "\n",
    "\r",
    "\x00",
    "\u2024",
    "\uff0e",
    "\u3002",
    "/",
    "\\",
    "\u00a0",
    "\u00e9",
    "\uff21",
]


# ---------------------------------------------------------------- valid names


@FAST
@given(room_names())
def test_every_well_formed_name_is_valid_and_maps_to_its_own_subjects(name: str) -> None:
    assert is_valid_room(name)
    assert check_room(name) == name
    assert room_subject(name) == "rooms." + name
    assert live_subject(name) == "live.rooms." + name
    assert room_of_subject(room_subject(name)) == name
    assert room_of_subject(live_subject(name)) == name


def test_boundaries_are_valid() -> None:
    longest = "a" * MAX_ROOM_LENGTH
    most_segments = ".".join(["a"] * MAX_SEGMENTS)
    for name in ("a", "-", "_", "0", longest, most_segments, "A-z_0.9"):
        assert is_valid_room(name), name
        assert room_of_subject(room_subject(name)) == name


# -------------------------------------------------------------- invalid names


def assert_invalid(name: str) -> None:
    assert not is_valid_room(name), repr(name)
    with pytest.raises(InvalidRoom):
        check_room(name)
    assert room_of_subject(room_subject(name)) is None, repr(name)
    assert room_of_subject(live_subject(name)) is None, repr(name)


@FAST
@given(room_names(), FORBIDDEN, st.data())
def test_a_character_outside_the_alphabet_makes_a_name_invalid(name: str, bad: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(name)))
    assert_invalid(name[:at] + bad + name[at:])


@FAST
@given(room_names(), st.sampled_from(SPECIAL), st.data())
def test_special_characters_make_a_name_invalid(name: str, bad: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(name)))
    assert_invalid(name[:at] + bad + name[at:])
    assert_invalid(name[:at] + bad)


@FAST
@given(st.text())
def test_arbitrary_text_is_valid_exactly_when_it_follows_the_rules(text: str) -> None:
    segments = text.split(".")
    expected = (
        0 < len(text) <= MAX_ROOM_LENGTH
        and len(segments) <= MAX_SEGMENTS
        and all(segment and all(c in ALPHABET for c in segment) for segment in segments)
    )
    assert is_valid_room(text) is expected


@FAST
@given(room_names(), st.data())
def test_empty_segments_make_a_name_invalid(name: str, data: st.DataObject) -> None:
    assume(len(name) < MAX_ROOM_LENGTH)
    dots = [i for i, c in enumerate(name) if c == "."]
    assert_invalid("." + name)
    assert_invalid(name + ".")
    if dots:
        at = data.draw(st.sampled_from(dots))
        assert_invalid(name[:at] + "." + name[at:])


def test_listed_invalid_names() -> None:
    cases = [
        "",
        ".",
        "..",
        ".a",
        "a.",
        "a..b",
        "a" * (MAX_ROOM_LENGTH + 1),
        ".".join(["a"] * (MAX_SEGMENTS + 1)),
        ".".join(["ab"] * 40),
        "*",
        ">",
        "a.*",
        "a.>",
        "a*",
        "$JS.API",
        "$SYS",
        "a b",
        "a\tb",
        " a",
        "a ",
        "a\n",
        "a\r\n",
        "a.b\n",
        "\na",
        "a\u2024b",
        "a\uff0eb",
        "a\u3002b",
        "a\x00",
        "\uff52\uff4f\uff4f\uff4d",  # fullwidth "room"
    ]
    for name in cases:
        assert_invalid(name)


@FAST
@given(st.integers(MAX_ROOM_LENGTH + 1, 400))
def test_too_long_is_invalid(length: int) -> None:
    assert_invalid("a" * length)
    # Even when the segments themselves are fine.
    assert_invalid(".".join(["ab"] * ((length + 2) // 3)))


@FAST
@given(st.integers(MAX_SEGMENTS + 1, 60))
def test_too_many_segments_is_invalid(count: int) -> None:
    assert_invalid(".".join(["a"] * count))


def test_room_of_subject_rejects_other_subjects() -> None:
    others = ("rooms", "rooms.", "live.rooms.", "room.a", "other.a", "live.a", "$JS.API.x", "rooms.a.*", "rooms.>")
    for subject in others:
        assert room_of_subject(subject) is None, subject
    # A room may itself be called "rooms" or "live"; the prefix is stripped once.
    assert room_of_subject("rooms.rooms") == "rooms"
    assert room_of_subject("live.rooms.live") == "live"
    assert room_of_subject("rooms.live.rooms.x") == "live.rooms.x"


# ------------------------------------------------------------------- patterns


def reference_matches(pattern: str, name: str) -> bool:
    """NATS subject matching, written independently as a regular expression."""
    parts = []
    for segment in pattern.split("."):
        if segment == "*":
            parts.append(r"[^.]+")
        elif segment == ">":
            parts.append(r"[^.]+(?:\.[^.]+)*")
        else:
            parts.append(re.escape(segment))
    return re.fullmatch(r"\.".join(parts), name) is not None


SMALL_SEGMENTS = st.sampled_from(["a", "b", "c-1"])


@st.composite
def patterns(draw: st.DrawFn) -> str:
    body = draw(st.lists(st.one_of(SMALL_SEGMENTS, st.just("*")), min_size=0, max_size=5))
    if not body or draw(st.booleans()):
        body.append(">")
    return ".".join(body)


@st.composite
def small_names(draw: st.DrawFn) -> str:
    return ".".join(draw(st.lists(SMALL_SEGMENTS, min_size=1, max_size=7)))


@st.composite
def pattern_and_matching_name(draw: st.DrawFn) -> tuple[str, str]:
    pattern = draw(patterns())
    out = []
    for segment in pattern.split("."):
        if segment == "*":
            out.append(draw(SMALL_SEGMENTS))
        elif segment == ">":
            out.extend(draw(st.lists(SMALL_SEGMENTS, min_size=1, max_size=3)))
        else:
            out.append(segment)
    return pattern, ".".join(out)


@FAST
@given(patterns(), small_names())
def test_pattern_matches_like_nats(pattern: str, name: str) -> None:
    assert RoomPattern(pattern).matches(name) is reference_matches(pattern, name)


@FAST
@given(pattern_and_matching_name())
def test_pattern_matches_names_built_from_it(pair: tuple[str, str]) -> None:
    pattern, name = pair
    assert reference_matches(pattern, name)
    assert RoomPattern(pattern).matches(name)


def test_pattern_examples() -> None:
    assert RoomPattern(">").matches("a")
    assert RoomPattern(">").matches("a.b.c")
    assert RoomPattern("*").matches("a")
    assert not RoomPattern("*").matches("a.b")
    assert not RoomPattern("a.>").matches("a")
    assert RoomPattern("a.>").matches("a.b")
    assert RoomPattern("a.*.c").matches("a.x.c")
    assert not RoomPattern("a.*.c").matches("a.c")
    assert not RoomPattern("a.*.c").matches("a.x.c.d")
    assert RoomPattern("chat.lobby").matches("chat.lobby")
    assert not RoomPattern("chat.lobby").matches("chat.lobby2")
    assert not RoomPattern("chat").matches("chat.lobby")


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "a..b",
        ".a",
        "a.",
        ">.a",
        "a.>.b",
        ">.>",
        "a*",
        "*a",
        "a>",
        ">a",
        "**",
        "$SYS.>",
        "a b",
        "a\n",
        "a\u2024b",
        "a" * (MAX_ROOM_LENGTH + 1),
        ".".join(["*"] * (MAX_SEGMENTS + 1)),
    ],
)
def test_invalid_patterns_raise(text: str) -> None:
    with pytest.raises(InvalidRoom):
        RoomPattern(text)
    with pytest.raises(InvalidRoom):
        RoomRights.parse(["a", text])


@FAST
@given(room_names())
def test_every_valid_room_name_is_a_literal_pattern_matching_only_itself(name: str) -> None:
    pattern = RoomPattern(name)
    assert pattern.matches(name)
    assert not pattern.matches(name + ".x")
    assert not pattern.matches("x." + name)


@FAST
@given(st.lists(patterns(), max_size=4), small_names())
def test_rights_allow_when_any_pattern_matches(texts: list[str], name: str) -> None:
    rights = RoomRights.parse(texts)
    assert rights.allows(name) is any(reference_matches(text, name) for text in texts)


def test_no_rights_allow_nothing() -> None:
    assert not RoomRights.parse([]).allows("a")
    assert RoomRights.parse(["x", "a.*"]).allows("a.b")
    assert not RoomRights.parse(["x", "a.*"]).allows("a")
