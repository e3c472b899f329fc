"""One edge node: settings, broker, room hub and interest, sessions, heartbeat and drain."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.auth import TokenVerifier
from core.broker import Broker
from core.jsonlog import Cause
from core.settings import Settings
from core.stored import StoredMessage
from edge.admission import Admission, Phase
from edge.closes import RecentCloses
from edge.connection import Connection
from edge.deflate import DeflateFraming
from edge.hub import Hub
from edge.interest import RoomInterest
from edge.memory import CollectorPolicy, TrimPolicy, trim
from edge.outbox import Flusher
from edge.presence import NodePresence
from edge.state import State
from edge.telemetry import Metrics, NodeGauges
from edge.tracing import Tracing
from schemas import Disconnect, Disconnects, close_code_label

if TYPE_CHECKING:
    from edge.stream import StreamSessions

log = logging.getLogger(__name__)

SWEEPS_PER_HEARTBEAT = 4
BACKEND_SOURCE = {"jetsock.source": "backend"}
SWEEP_SLICES = 25
"""The heartbeat sweep runs this many times per `heartbeat`."""
SESSION_CLOSE = Cause("close:authenticated", limit=None)
"""Every authenticated session's close line is kept: one per connection, the record of it. Closes
of sockets that never authenticated share a cause per code, so a flood of them is rate limited."""


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.node or f"{socket.gethostname()}-{os.getpid()}"
        self.verifier = TokenVerifier(settings)
        self.flusher = Flusher(settings.max_write_delay)
        self.hub = Hub(self.flusher)
        self.deflate = DeflateFraming(settings.compress_min_bytes, settings.compress_level)
        """The framing of connections that negotiated permessage-deflate: one compressor per node."""
        """Local members and fan-out; the broker's feeds deliver to it."""
        self.broker = Broker(settings, self.hub)
        self.interest = RoomInterest(self.broker, settings.room_grace, lambda room: room in self.hub.rooms)
        self.streams: StreamSessions | None = None
        """The HTTP stream sessions (edge/stream.py), set by the app that serves them."""
        self.presence = NodePresence(settings, self.name)
        """Who is in the presence rooms, cluster-wide (edge/presence.py)."""
        self.broker.reconnect_listeners.append(self.presence.reconnected)
        """Which rooms the node follows on NATS, with a grace period after the last member."""
        self.hub.on_empty = self.interest.release
        self.admission = Admission(settings)
        """Sockets not yet authenticated, and per-source counts (edge/admission.py)."""
        self.connections: dict[Connection, None] = {}
        """Open sessions: a dict used as a set, since a large set's table costs
        about three times a dict's per entry."""
        self.authenticated = 0
        """Sessions past `welcome` (what `max_connections` bounds)."""
        self.collector = CollectorPolicy()
        self.recent_closes = RecentCloses()
        self.published = 0
        """Publishes stored through this node (clients and HTTP), for the operator page."""
        self.metrics = Metrics(
            NodeGauges(
                connections=self.connection_counts,
                rooms=lambda: len(self.hub.rooms),
                deliveries=lambda: self.hub.deliveries,
                bytes_out=lambda: self.flusher.bytes_out,
                gap_repairs=self.broker.repair_counts,
                nats=lambda: (self.broker.connected, self.broker.reconnects),
                live_refused=self.broker.refused_live,
                sockets_refused=self.admission.refusals,
                presence=self.presence.figures,
                history_cache=self.broker.history_cache_figures,
                deflate=lambda: (
                    self.deflate.counters.messages,
                    self.deflate.counters.raw_bytes,
                    self.deflate.counters.compressed_bytes,
                ),
            ),
            self.name,
            settings.otlp_endpoint,
            enabled=settings.metrics,
        )
        self.tracing = Tracing(settings, self.name)
        if settings.metrics:
            self.flusher.on_sample = lambda size: self.metrics.outbox_size.record(size)
        self.hub.on_message = self._observe_message
        self.draining = False
        self.on_transition: Callable[[Connection, State, State], None] | None = None
        """Called with (session, from, to) at every state change (tests and tracing)."""
        self._per_sub: dict[str, int] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._finished = asyncio.Event()
        """Set whenever a session is finished (what `wait_gone` waits on)."""
        self.max_msg_size = settings.max_frame_bytes + 1
        """For aiohttp, which refuses a message of max_msg_size bytes or more (the
        setting is inclusive); computed once rather than an int per connection."""
        self.expiry_horizon = 2 * settings.heartbeat / SWEEPS_PER_HEARTBEAT
        """Seconds ahead a connection arms a timer for its token's next expiry step;
        two sweeps' worth, so a sweep that runs late still arms it in time."""

    async def start(self, servers: list[str]) -> None:
        await self.broker.connect(servers, name=f"jetsock-edge {self.name}")
        await self.presence.start(self.broker)
        if self.streams is not None:
            await self.streams.start()
        self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop())
        log.info("node %s ready: stream %s, epoch %s", self.name, self.settings.stream, self.broker.epoch)

    async def close_connections(self) -> None:
        """Close what is still open with 1001 (after a drain, nothing is)."""
        for conn in list(self.connections):
            conn.close(Disconnects.NODE_STOPPING)
        await self.wait_gone(list(self.connections))

    async def wait_gone(self, conns: list[Connection]) -> None:
        """Until every one of `conns` has been finished (its socket gone: each close has a
        deadline of close_timeout, so this waits about that long at most)."""
        try:
            async with asyncio.timeout(self.settings.close_timeout + 1.0):
                while any(conn in self.connections for conn in conns):
                    self._finished.clear()
                    await self._finished.wait()
        except TimeoutError:
            log.warning(
                "%d connections still open after their close deadline", sum(c in self.connections for c in conns)
            )

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        await self.close_connections()
        self.interest.stop()
        self.admission.stop()
        await self.presence.stop()
        await self.broker.close()
        self.metrics.shutdown()
        self.tracing.shutdown()

    # --- sessions -------------------------------------------------------------

    def open(self, conn: Connection) -> None:
        self.connections[conn] = None

    def admit(self, conn: Connection, sub: str) -> Disconnect | None:
        """Count an authenticating session; the disconnect to close it with when a limit says no."""
        if self.authenticated >= self.settings.max_connections:
            return Disconnects.NODE_FULL
        held = self._per_sub.get(sub, 0)
        if held >= self.settings.max_connections_per_sub:
            return Disconnects.TOO_MANY_FOR_SUB
        self._per_sub[sub] = held + 1
        conn.counted_sub = sub
        self.authenticated += 1
        self.admission.authenticated(conn.transport)
        return None

    def _release(self, conn: Connection) -> None:
        sub = conn.counted_sub
        if sub is None:
            return
        conn.counted_sub = None
        self.authenticated -= 1
        left = self._per_sub[sub] - 1
        if left:
            self._per_sub[sub] = left
        else:
            del self._per_sub[sub]

    def leave_room(self, conn: Connection, room: str) -> None:
        """`conn` is no longer a member of `room` here (its NATS interest lingers for room_grace)."""
        self.hub.leave(conn, room)
        self.presence.left(conn, room)

    def finish(self, conn: Connection) -> None:
        """The session's socket is gone: count and log its close."""
        conn.lost()
        if self.connections.pop(conn, 0) is not None:
            return
        self._finished.set()
        self.collector.connection_closed()
        self._release(conn)
        code = conn.close_code
        label = close_code_label(code)
        self.metrics.closes.add(1, {"websocket.close.code": label})
        self.recent_closes.record(code)
        duration = time.monotonic() - conn.opened
        principal = conn.principal
        fields = {
            "event": "close",
            "session": conn.session,
            "node": self.name,
            "sub": principal.sub if principal is not None else None,
            "code": code,
            "duration_s": round(duration, 3),
            "rooms": len(conn.rooms),
            "messages_out": conn.sent,
        }
        cause = SESSION_CLOSE if principal is not None else f"close:{label}"
        log.info(
            "connection %s closed with %s after %.1f s",
            conn.session,
            code,
            duration,
            extra={"fields": fields, "cause": cause},
        )

    def _observe_message(self, message: StoredMessage, members: int) -> None:
        """Once per message fanned out here: its source, its delay since stored, a sampled span."""
        metrics = self.metrics
        if message.sender is None:
            # Stored without an edge's sender header: a backend published it into NATS directly.
            metrics.messages_in.add(1, BACKEND_SOURCE)
            self.published += 1
        metrics.delivery_duration.record(max(0.0, time.time() - message.ts / 1000.0))
        self.tracing.delivered(message, members)

    def connection_counts(self) -> tuple[int, int]:
        """(authenticated, not yet): sockets still in their HTTP handshake count as not yet."""
        waiting = self.admission.counts()
        pending = len(self.connections) - self.authenticated + waiting[Phase.HANDSHAKE]
        return self.authenticated, pending

    @property
    def ready(self) -> bool:
        return not self.draining and self.broker.ready

    # --- heartbeat and drain ------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Ping every connection each `heartbeat` s; close those silent for two (4009).

        One task for the whole node. Every connection is checked four times per
        heartbeat, so the timeout fires between 2 and 2.25 heartbeats of silence.
        Each of those sweeps is cut into SWEEP_SLICES slices spread over its
        period: connections that arrived together would otherwise be pinged in
        one burst of thousands of writes, a pause every other connection feels.
        The same sweep arms token-expiry timers that fall due before the next ones.
        """
        heartbeat = self.settings.heartbeat
        period = heartbeat / SWEEPS_PER_HEARTBEAT
        trim_policy = TrimPolicy()
        while True:
            conns = list(self.connections)
            per_slice = math.ceil(len(conns) / SWEEP_SLICES)
            for index in range(SWEEP_SLICES):
                await asyncio.sleep(period / SWEEP_SLICES)
                self._check(conns[index * per_slice : (index + 1) * per_slice], heartbeat)
            # The snapshot must not keep closed connections alive through the collection below.
            del conns
            open_now = len(self.connections)
            if trim_policy.observe(open_now):
                # Closed connections leave reference cycles (aiohttp's protocol,
                # transport and request objects) that only a full collection frees.
                self.collector.full_collect()
                released = trim()
                log.debug("connections fell to %d: malloc_trim released=%s", open_now, released)
            elif self.collector.tick(open_now) == "full":
                log.debug("full collection after churn; %d connections open", open_now)

    def _check(self, conns: list[Connection], heartbeat: float) -> None:
        now = time.monotonic()
        wall = time.time()
        for conn in conns:
            if conn.state is not State.OPEN:
                continue
            conn.arm_expiry(wall)
            if now - conn.last_seen > 2 * heartbeat:
                conn.close(Disconnects.HEARTBEAT_TIMEOUT)
            elif now - conn.last_ping >= heartbeat:
                conn.last_ping = now
                conn.push(conn.transport_adapter.framing.keepalive)

    async def drain(self) -> None:
        """Refuse new connections, then close the open ones with 1012 over drain_seconds."""
        self.draining = True
        conns = list(self.connections)
        log.info("draining %d connections over %.1f s", len(conns), self.settings.drain_seconds)
        steps = max(1, min(len(conns), int(self.settings.drain_seconds * 10)))
        per_step = math.ceil(len(conns) / steps) if conns else 0
        pause = self.settings.drain_seconds / steps
        for i in range(steps):
            for conn in conns[i * per_step : (i + 1) * per_step]:
                conn.close(Disconnects.NODE_RESTARTING)
            if (i + 1) * per_step >= len(conns):
                break
            await asyncio.sleep(pause)
        await self.wait_gone(conns)
        log.info("drained")
