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

Ref = int | str | None
"""A client-chosen request id, echoed in the reply."""


class _Frame(msgspec.Struct, tag_field="type", omit_defaults=True, forbid_unknown_fields=False):
    pass


# --- client to server -------------------------------------------------------


class Auth(_Frame, tag="auth"):
    token: str
    ref: Ref = None


class Join(_Frame, tag="join"):
    room: str
    since: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)] | None = None
    epoch: str | None = None
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


ClientFrame = Auth | Join | Leave | Publish | Ping | Refresh


# --- server to client -------------------------------------------------------


class Welcome(_Frame, tag="welcome"):
    session: str
    node: str
    heartbeat: float
    exp: int
    ref: Ref = None


class Joined(_Frame, tag="joined"):
    room: str
    epoch: str
    seq: int
    recovered: bool
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


ServerFrame = Welcome | Joined | Msg | Left | Ack | Reset | Expiring | Refreshed | Pong | Error
