"""History pages: the `history` frame and `GET /v1/rooms/<room>/messages` (PROTOCOL.md section 9).

Both read through the broker's backward reader (core/history.py: a few direct gets, no
consumer) and answer the same object; only the envelope differs. Each message is encoded
once, as a `msg` frame is, and spliced into the page without its `type`.

Choices where the contract is silent (schemas/PROTOCOL.md 9.12): join rights are needed,
membership is not; a page is at most `history_page_bytes` of messages, cut to its newest
ones with `more: true` when larger (the client pages on with `before`); requests have their
own rate limit per connection (`history_rate`, `history_burst`: paging back must not eat
the publish budget), whose persistent excess closes with 4029 as for publishes.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs

import msgspec

from core.broker import Unavailable
from core.history import Page
from core.rooms import ROOM_RULE, is_valid_room
from edge.connection import Connection
from edge.hub import encode_msg
from edge.node import Node
from schemas import Disconnects, ErrorCode, History, HistoryPage
from schemas.frames import MAX_SEQ, Ref

DEFAULT_LIMIT = 50
_MSG_PREFIX = b'{"type":"msg",'


def messages_json(page: Page) -> bytes:
    """The page's messages as a JSON array of `msg` objects without `type`."""
    parts = [b"{" + encode_msg(message)[len(_MSG_PREFIX) :] for message in page.messages]
    return b"[" + b",".join(parts) + b"]"


def check_request(node: Node, room: str, before: int | None, limit: int | None) -> str | None:
    """What is wrong with a request's values (bad_request / 400), if anything."""
    if not is_valid_room(room):
        return ROOM_RULE
    ceiling = node.settings.max_history_page
    if limit is not None and not 1 <= limit <= ceiling:
        return f"limit is 1 to {ceiling}"
    if before is not None and not 1 <= before <= MAX_SEQ:
        return "before is a seq, at least 1"
    return None


async def read_page(node: Node, room: str, before: int | None, limit: int | None, transport: str) -> Page:
    """One page, measured: raises Unavailable when NATS cannot answer."""
    started = time.perf_counter()
    page = await node.broker.history_page(room, before, limit or DEFAULT_LIMIT)
    labels = {"jetsock.transport": transport}
    node.metrics.history_requests.add(1, labels)
    node.metrics.history_messages.add(len(page.messages), labels)
    node.metrics.history_duration.record(time.perf_counter() - started, labels)
    return page


# --- the frame ----------------------------------------------------------------------


def history(node: Node, conn: Connection, frame: History) -> None:
    """A `history` request: checked now, read beside the read loop, answered by `ref`."""
    room, ref = frame.room, frame.ref
    principal = conn.principal
    assert principal is not None
    bucket = conn.history_bucket()
    if not bucket.take(time.monotonic()):
        node.metrics.rate_limit_hits.add(1, {"jetsock.limit": "history"})
        if bucket.strikes >= node.settings.rate_limit_strikes:
            conn.close(Disconnects.HISTORY_RATE)
        else:
            rate = node.settings.history_rate
            conn.error(ErrorCode.RATE_LIMITED, f"at most {rate:g} history requests per second", ref)
        return
    problem = check_request(node, room, frame.before, frame.limit)
    if problem is not None:
        code = ErrorCode.INVALID_ROOM if not is_valid_room(room) else ErrorCode.BAD_REQUEST
        conn.error(code, problem, ref)
        return
    if not principal.can_join(room):
        conn.error(ErrorCode.FORBIDDEN, f"the token does not allow reading {room!r}", ref)
        return
    # One lane for a connection's history requests: their replies come in request order.
    conn.submit(("history",), lambda: _answer(node, conn, room, frame.before, frame.limit, ref))


async def _answer(node: Node, conn: Connection, room: str, before: int | None, limit: int | None, ref: Ref) -> None:
    try:
        page = await read_page(node, room, before, limit, "frame")
    except Unavailable as exc:
        conn.error(ErrorCode.UNAVAILABLE, f"cannot read the room now, retry: {exc}", ref)
        return
    principal = conn.principal
    if principal is None or not principal.can_join(room):
        # A refresh took the right away while the page was read.
        conn.error(ErrorCode.FORBIDDEN, f"the token does not allow reading {room!r}", ref)
        return
    conn.send(
        HistoryPage(
            room=room, epoch=node.broker.epoch, messages=msgspec.Raw(messages_json(page)), more=page.more, ref=ref
        )
    )


def page_body(node: Node, room: str, page: Page) -> bytes:
    """The HTTP answer: the `history` frame's object without `type` and `ref`."""
    return b'{"room":%s,"epoch":%s,"messages":%s,"more":%s}' % (
        msgspec.json.encode(room),
        msgspec.json.encode(node.broker.epoch),
        messages_json(page),
        b"true" if page.more else b"false",
    )


def int_param(query: str, name: str) -> int | None:
    """A query parameter that must be a plain decimal integer, given once, if present."""
    values = parse_qs(query, keep_blank_values=True).get(name)
    if values is None:
        return None
    if len(values) != 1:
        raise ValueError(f"{name} is given once")
    text = values[0]
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise ValueError(f"{name} is a positive integer, not {text[:40]!r}")
    return int(text)
