"""The server's frames as this client decodes them.

`schemas.ServerFrame` is the wire's definition, shared with the edge. The client
decodes the same union except for the presence frames (PROTOCOL.md section 10):
there `schemas.PresenceMember.info` is `msgspec.Raw | None`, which the edge uses to
splice a token's `info` claim as it was signed, but which msgspec cannot decode (a
Raw inside a union only takes `null`). Here `info` is decoded as the JSON object it
is, so the application gets a dict, once.
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas import Ack, Error, Expiring, HistoryPage, Joined, Left, Msg, Pong, Refreshed, Reset, Welcome
from schemas.frames import Ref


class _Frame(msgspec.Struct, tag_field="type", omit_defaults=True, forbid_unknown_fields=False):
    pass


class MemberEntry(msgspec.Struct, forbid_unknown_fields=False):
    """A user in `members` (with `connections`) or in a `presence` event's `joined` (without)."""

    sub: str
    info: dict[str, Any] | None = None
    connections: int | None = None


class LeftEntry(msgspec.Struct, forbid_unknown_fields=False):
    sub: str


class Members(_Frame, tag="members"):
    """The answer to `who`."""

    room: str
    count: int
    connections: int
    members: list[MemberEntry]
    truncated: bool
    ref: Ref = None


class Presence(_Frame, tag="presence"):
    """Users whose first connection joined, or whose last one left, during one `presence_interval`."""

    room: str
    joined: list[MemberEntry]
    left: list[LeftEntry]


Incoming = (
    Welcome | Joined | Msg | Left | Ack | Reset | Expiring | Refreshed | Pong | Error | HistoryPage | Members | Presence
)
"""What a link decodes: `schemas.ServerFrame` with the presence frames above."""
