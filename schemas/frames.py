"""Every frame of PROTOCOL.md section 2 as a msgspec tagged union.

The tag field is `type`; its value is the frame name on the wire. Optional
fields default to None and are left out when encoding (`omit_defaults`), so a
frame carries only what it says. `data` is `msgspec.Raw`: the JSON a publisher
sent is spliced into outgoing frames byte for byte, never decoded and encoded
again.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from schemas.codes import ErrorCode

MAX_SEQ = 2**63 - 1
"""Stream sequences are unsigned 64-bit in NATS; no real one comes near this bound."""

HISTORY_PAGE_CEILING = 10_000
"""The largest `max_history_page` a node may be configured with."""

Ref = int | str | None
"""A client-chosen request id, echoed in the reply."""


class _Frame(msgspec.Struct, tag_field="type", omit_defaults=True, forbid_unknown_fields=False):
    pass


# --- client to server -------------------------------------------------------


class Auth(_Frame, tag="auth"):
    token: str
    ref: Ref = None


PageSize = Annotated[int, msgspec.Meta(ge=1, le=HISTORY_PAGE_CEILING)]
"""`last` and `limit`: at least 1; the node's `max_history_page` (at most this) is checked
by the session, so the error can name it."""


class Join(_Frame, tag="join"):
    room: str
    since: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)] | None = None
    epoch: str | None = None
    last: PageSize | None = None
    """The room's newest `last` messages follow `joined` (version 1.1, PROTOCOL.md section 9)."""
    ref: Ref = None


class History(_Frame, tag="history"):
    """A page of a room's stored messages, older than `before` (default: from the head)."""

    room: str
    before: Annotated[int, msgspec.Meta(ge=1, le=MAX_SEQ)] | None = None
    limit: PageSize | None = None
    ref: Ref = None


class Leave(_Frame, tag="leave"):
    room: str
    ref: Ref = None


class Publish(_Frame, tag="publish"):
    room: str
    data: msgspec.Raw
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    ref: Ref = None


class Ping(_Frame, tag="ping"):
    ref: Ref = None


class Refresh(_Frame, tag="refresh"):
    token: str
    ref: Ref = None


class Who(_Frame, tag="who"):
    """Who is present in a room (version 1.1, PROTOCOL.md section 10); needs `rooms.presence`."""

    room: str
    ref: Ref = None


ClientFrame = Auth | Join | Leave | Publish | Ping | Refresh | History | Who


# --- server to client -------------------------------------------------------


class Welcome(_Frame, tag="welcome"):
    session: str
    node: str
    heartbeat: float
    exp: int
    features: list[str] | None = None
    """What this node has switched on (version 1.1): `history`, `presence`, `stream`, `deflate`."""
    ref: Ref = None


class Joined(_Frame, tag="joined"):
    room: str
    epoch: str
    seq: int
    recovered: bool
    replayed: int | None = None
    """How many stored messages follow before live ones (version 1.1). The edge always sets it
    (0 included); None only stands for a server older than 1.1."""
    ref: Ref = None


class Msg(_Frame, tag="msg"):
    room: str
    seq: int
    ts: int
    data: msgspec.Raw
    id: str | None = None
    # `from` is a Python keyword: the attribute is from_, the wire name `from`.
    from_: str | None = msgspec.field(default=None, name="from")
    encoding: str | None = None


class Left(_Frame, tag="left"):
    room: str
    reason: str | None = None
    ref: Ref = None


class Ack(_Frame, tag="ack"):
    seq: int
    duplicate: bool | None = None
    ref: Ref = None


class Reset(_Frame, tag="reset"):
    room: str
    epoch: str
    seq: int


class Expiring(_Frame, tag="expiring"):
    exp: int


class Refreshed(_Frame, tag="refreshed"):
    exp: int
    ref: Ref = None


class Pong(_Frame, tag="pong"):
    ref: Ref = None


class Error(_Frame, tag="error"):
    code: ErrorCode
    message: str
    ref: Ref = None


class HistoryPage(_Frame, tag="history"):
    """The reply to `history`: `messages` are `msg` frames without `type`, in increasing `seq`."""

    room: str
    epoch: str
    messages: msgspec.Raw
    """A JSON array, spliced from the messages' encodings (each encoded once)."""
    more: bool
    ref: Ref = None


class PresenceMember(msgspec.Struct, omit_defaults=True):
    sub: str
    info: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    """The token's `info` claim as compact JSON, spliced; left out when the token has none.
    (UNSET, not None: msgspec decodes `Raw | UnsetType` but not `Raw | None`.)"""
    connections: int | None = None
    """In `members`: the user's joined connections, cluster-wide. Not in `presence` events."""


class Members(_Frame, tag="members"):
    """The reply to `who`: present users (`count`), their joined connections (`connections`),
    and up to `max_presence_list` of them, sorted by `sub` (`truncated` when cut)."""

    room: str
    count: int
    connections: int
    members: list[PresenceMember]
    truncated: bool
    ref: Ref = None


class PresenceLeft(msgspec.Struct):
    sub: str


class Presence(_Frame, tag="presence"):
    """Users whose first connection joined, or whose last one left, during one `presence_interval`."""

    room: str
    joined: list[PresenceMember]
    left: list[PresenceLeft]


ServerFrame = (
    Welcome | Joined | Msg | Left | Ack | Reset | Expiring | Refreshed | Pong | Error | HistoryPage | Members | Presence
)
