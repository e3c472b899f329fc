"""A join, from the reserved room to live delivery, through the join seam (edge/seam.py).

1. The member enters the room's seam in the hub: from now on every live
   message of the room reaches the seam.
2. The node follows the room on NATS (edge/interest.py); the feed's cursor,
   read after that, is the head: everything after it reaches the seam.
3. With `since`, the broker decides whether the replay is complete (same
   epoch, nothing expired, at most `max_replay`); the seam starts after
   `since` then, else after the head.
4. `joined` is sent; the backlog (replayed messages, then what the seam held)
   is written beside the read loop, paced by the client's reading, and the
   member goes live.

Runs in the connection's lane for the room, so a `leave` of the same room
read meanwhile waits for it, and a leave or a close at any await stops it.
"""

from __future__ import annotations

from core.broker import Replay, Unavailable
from core.position import Position
from edge.connection import Connection
from edge.hub import encode_msg
from edge.node import Node
from edge.seam import JoinSeam
from schemas import Disconnects, ErrorCode, Joined
from schemas.frames import Ref

RECOVERED = {"jetsock.recovered": "true"}
NOT_RECOVERED = {"jetsock.recovered": "false"}


async def join(
    node: Node, conn: Connection, room: str, since: int | None, epoch: str | None, last: int | None, ref: Ref
) -> None:
    """Join `room` (already reserved in `conn.rooms`) and answer `joined`, or an error.

    With `last` (version 1.1) and no recoverable `since`, the room's newest `last`
    messages are the replay instead: the same seam, the same pacing, only its start
    differs (found by counting backwards, core/history.py).
    """
    hub = node.hub
    framing = conn.transport_adapter.framing
    seam = hub.add_joining(conn, room, framing)
    replay: Replay | None = None
    recovered = False
    try:
        head = await node.interest.watch(room)
        if since is not None:
            outcome = await node.broker.replay(room, Position(since, epoch or head.epoch), head.seq)
            replay = outcome if outcome.recovered else None
            recovered = replay is not None
        if replay is None and last is not None:
            newest = await node.broker.replay_last(room, last, head)
            replay = newest if newest.count else None
    except Unavailable as exc:
        _abandon(node, conn, room, seam)
        conn.error(ErrorCode.UNAVAILABLE, f"cannot join now, retry: {exc}", ref)
        return
    except BaseException:
        _abandon(node, conn, room, seam)
        raise
    if hub.seam_of(conn, room) is not seam or conn.closing:
        return
    principal = conn.principal
    if principal is None or not principal.can_join(room):
        # A refresh took the right away while the join waited on NATS.
        _abandon(node, conn, room, seam)
        conn.error(ErrorCode.FORBIDDEN, f"the token does not allow joining {room!r}", ref)
        return
    # A replay sends (its start, head]: after `since` when it is recovered, from the oldest
    # of the newest `last` otherwise; without one the member starts at the head.
    seam.start(replay.after if replay is not None else head.seq)
    replayed = replay.count if replay is not None else 0
    conn.send(Joined(room=room, epoch=head.epoch, seq=head.seq, recovered=recovered, replayed=replayed, ref=ref))
    node.metrics.joins.add(1)
    node.presence.joined(conn, room)
    if since is not None:
        node.metrics.replays.add(1, RECOVERED if recovered else NOT_RECOVERED)
    if replay is None and not seam.held:
        hub.finish_seam(conn, room, seam, node.broker.cursor(room))
    else:
        # The backlog is paced by the client's reading; the read loop goes on
        # meanwhile, so pings, pongs and other requests are not held up.
        conn.spawn(send_backlog(node, conn, room, seam, replay))


def _abandon(node: Node, conn: Connection, room: str, seam: JoinSeam) -> None:
    if node.hub.seam_of(conn, room) is seam:
        node.leave_room(conn, room)
    conn.drop_room(room)


async def send_backlog(node: Node, conn: Connection, room: str, seam: JoinSeam, replay: Replay | None) -> None:
    """Replayed, then held messages, then live; stops if the member leaves or the session closes."""
    hub = node.hub
    frame = conn.transport_adapter.framing.message
    try:
        if replay is not None:
            async for batch in replay.batches():
                for message in batch:
                    if not await conn.writable() or hub.seam_of(conn, room) is not seam:
                        return
                    if seam.replayed(message.seq):
                        conn.push(frame(encode_msg(message)))
                node.metrics.replayed.add(len(batch))
        while held := seam.take():
            for _seq, held_frame in held:
                if not await conn.writable() or hub.seam_of(conn, room) is not seam:
                    return
                conn.push(held_frame)
    except Unavailable as exc:
        # Continuity cannot be kept: the client reconnects and rejoins with its last seq.
        conn.close(Disconnects.REPLAY_INTERRUPTED.with_detail(str(exc)))
        return
    # No await since `take` came back empty: nothing can have been held meanwhile.
    hub.finish_seam(conn, room, seam, node.broker.cursor(room))
