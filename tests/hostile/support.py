"""The hostile suite's world: one nats-server, one `jetsock serve` process, a control client.

Every class of hostile input runs against the same edge process, so its RSS
(read from /proc) is the edge's alone and what one class leaves behind is
seen by the next. After each class `Hostile.check` proves two things: a
control client, joined to the room the attacks target, still got every
message stored in that room, in order and without duplicates; and the edge's
RSS is back near the baseline measured after warm-up.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import nats
from nats.js.errors import NotFoundError

from core.embedded import EmbeddedNats, free_port
from tests.conftest import SECRET, Client, connect, token, wait_ready
from tests.hostile.rawws import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawWS
from tests.schemas.test_schema import ERROR_CODES  # PROTOCOL.md section 2, stated once

JETSOCK = str(Path(sys.executable).parent / "jetsock")

ROOM = "hostile.control"
"""The room the control client listens in and every attack aims at."""
STREAM = "ROOMS"
AUTH_TIMEOUT = 2.0
CLOSE_TIMEOUT = 2.0
MAX_ROOMS = 50
MAX_FRAME = 65536
RSS_TOLERANCE_KB = 40 * 1024
HISTORY_CACHE_MESSAGES = 5000
HISTORY_CACHE_BYTES = 2 * 1024 * 1024
"""The hostile edge's history cache (core/tailcache.py): a few MB at most, within RSS_TOLERANCE_KB."""
PROBES = 5
"""Messages a backend publishes over NATS in each check (plus one from a fresh client)."""

SERVER_FRAME_TYPES = {
    "welcome",
    "joined",
    "msg",
    "left",
    "ack",
    "reset",
    "expiring",
    "refreshed",
    "pong",
    "error",
    "history",
}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def raise_nofile_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class ControlLost(AssertionError):
    pass


class Control:
    """A client joined to ROOM that records every frame it gets, in a task of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client: Client | None = None
        self.seqs: list[int] = []
        self.probes: dict[str, list[int]] = {}
        self.unexpected: list[Any] = []
        self.start_seq = 0
        self.checked_upto = 0
        """The last seq a check accounted for ..."""
        self.checked_index = 0
        """... and how many of `seqs` that was."""
        self._reader: asyncio.Task[None] | None = None

    async def start(self, since: int | None = None) -> None:
        self.client = await connect(self.url, tok=token("hostile-control", join=[ROOM], publish=[]))
        frame: dict[str, Any] = {"type": "join", "room": ROOM}
        if since is not None:
            frame["since"] = since
        joined = await self.client.request(**frame)
        assert joined["type"] == "joined", joined
        if since is None:
            self.start_seq = self.checked_upto = joined["seq"]
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.client is not None
        ws = self.client.ws
        while True:
            message = await ws.receive()
            if message.type is not aiohttp.WSMsgType.TEXT:
                self.unexpected.append((str(message.type), message.data, message.extra))
                return
            frame = json.loads(message.data)
            if frame.get("type") != "msg" or frame.get("room") != ROOM:
                self.unexpected.append(frame)
                continue
            self.seqs.append(frame["seq"])
            data = frame.get("data")
            if isinstance(data, dict) and isinstance(data.get("probe"), str):
                self.probes.setdefault(data["probe"], []).append(frame["seq"])

    @property
    def alive(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def restart(self) -> None:
        """After a failed check: resume from the last seq, so the next class starts clean."""
        await self.stop()
        self.unexpected.clear()
        since = self.seqs[-1] if self.seqs else self.checked_upto
        self.checked_upto, self.checked_index = since, len(self.seqs)
        await self.start(since=since)

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
        if self.client is not None:
            await self.client.close()


class Hostile:
    """The running world; see the module docstring."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nats = EmbeddedNats(workdir / "nats")
        self.port = free_port()
        self.log_path = workdir / "edge.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.nc: Any = None
        self.js: Any = None
        self.control = Control(self.url)
        self.baseline_kb = 0
        self.retained_kb = 0
        """RSS the allocator kept after the 5,000-socket class (see test_7_idle); later checks allow it."""
        self.rss_after: dict[str, int] = {}
        self._log_seen = 0

    # --- addresses ------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def new_errors(self) -> dict[str, int]:
        """Exceptions the edge logged since the last call, by the last line of each traceback."""
        text = self.output()
        fresh, self._log_seen = text[self._log_seen :], len(text)
        counts: dict[str, int] = {}
        # One record per log line with a timestamp; a traceback's own exception is its last unindented line.
        for record in re.split(r"\n(?=\d{4}-\d\d-\d\d )", fresh):
            if "Traceback" not in record:
                continue
            tail = [
                line
                for line in record.splitlines()[1:]
                if line and not line.startswith((" ", "Traceback", "During handling", "The above"))
            ]
            last = tail[-1].split(":")[0] if tail else "?"
            counts[last] = counts.get(last, 0) + 1
        return counts

    # --- life -----------------------------------------------------------------

    async def start(self) -> None:
        raise_nofile_limit()
        self.nats.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOCK_")}
        env.update(
            {
                "JETSOCK_NATS_URL": self.nats.url,
                "JETSOCK_JWT_SECRET": SECRET,
                "JETSOCK_PORT": str(self.port),
                "JETSOCK_NODE": "hostile-edge",
                "JETSOCK_AUTH_TIMEOUT": str(AUTH_TIMEOUT),
                "JETSOCK_HEARTBEAT": "4",
                "JETSOCK_CLOSE_TIMEOUT": str(CLOSE_TIMEOUT),
                "JETSOCK_LOG_LEVEL": os.environ.get("HOSTILE_LOG_LEVEL", "warning"),
                "JETSOCK_MAX_ROOMS_PER_CONNECTION": str(MAX_ROOMS),
                "JETSOCK_MAX_CONNECTIONS": "19000",
                "JETSOCK_MAX_CONNECTIONS_PER_SUB": "19000",
                "JETSOCK_MAX_FRAME_BYTES": str(MAX_FRAME),
                # Attacks publish a lot; the rate limit is not what this suite tests.
                "JETSOCK_PUBLISH_RATE": "100000",
                "JETSOCK_PUBLISH_BURST": "100000",
                # History requests too: their rate limit has a class and an edge of its own (test_9j_history).
                "JETSOCK_HISTORY_RATE": "100000",
                "JETSOCK_HISTORY_BURST": "100000",
                # The history cache is memory by design, bounded by its settings (its default holds up
                # to 64 MiB of payloads): kept small here, so that each class's RSS check sees what its
                # own attack leaves, and test_9j_history checks the bound holds under its floods.
                "JETSOCK_HISTORY_CACHE_MESSAGES": str(HISTORY_CACHE_MESSAGES),
                "JETSOCK_HISTORY_CACHE_BYTES": str(HISTORY_CACHE_BYTES),
                "JETSOCK_DRAIN_SECONDS": "0.5",
                # Every attack comes from 127.0.0.1: the per-source caps and the join rate limit
                # are tested by their own classes (test_9b_admission, test_9c_join_rate).
                "JETSOCK_MAX_CONNECTIONS_PER_SOURCE": "0",
                "JETSOCK_MAX_UNAUTHENTICATED_PER_SOURCE": "0",
                "JETSOCK_MAX_UNAUTHENTICATED": "19000",
                "JETSOCK_JOIN_BURST": "1000000",
                "JETSOCK_JOIN_RATE": "100000",
            }
        )
        self.proc = self._spawn(env)
        await wait_ready(self.http, self.proc, 30, self.output)
        self.nc = await nats.connect(self.nats.url)
        self.js = self.nc.jetstream()
        await self.control.start()
        await self.warm_up()
        await asyncio.sleep(1.0)
        self.baseline_kb = self.rss_kb()

    def _spawn(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.log_path, "wb") as log:
            return subprocess.Popen(
                [JETSOCK, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    async def stop(self) -> None:
        await self.control.stop()
        if self.nc is not None:
            await self.nc.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.nats.stop()

    async def warm_up(self) -> None:
        """Touch every path once, so one-time allocations are in the baseline."""
        clients = await asyncio.gather(*(connect(self.url, sub=f"warm-{i}") for i in range(50)))
        for i, client in enumerate(clients):
            await client.send(type="join", room=f"hostile.warm.{i % 5}")
            await client.send(type="publish", room=ROOM if i == 0 else "hostile.warm.x", data={"warm": i})
            await client.ws.send_str("{not json")
            await client.send(type="join", room="a.*")
            await client.send(type="history", room=ROOM if i == 0 else "hostile.warm.x", limit=5)
            await client.send(type="ping", ref=i)
        for client in clients:
            while (await client.recv())["type"] != "pong":
                pass
            await client.close()
        idle = await asyncio.gather(*(RawWS.open(self.port) for _ in range(300)))
        await asyncio.gather(*(ws.until_close(AUTH_TIMEOUT + 10) for ws in idle))
        for ws in idle:
            ws.abort()
        await self.check("warm-up", rss=False)

    # --- the checks after each class --------------------------------------------

    async def publish_probes(self) -> tuple[str, list[int]]:
        """PROBES messages from a backend over NATS, then one from a fresh client; their seqs."""
        nonce = uuid.uuid4().hex
        seqs = []
        for i in range(PROBES):
            ack = await self.js.publish("rooms." + ROOM, json.dumps({"probe": nonce, "i": i}).encode())
            seqs.append(ack.seq)
        client = await connect(self.url, tok=token("hostile-probe", join=[], publish=[ROOM]))
        try:
            ack = await client.request(type="publish", room=ROOM, data={"probe": nonce, "i": PROBES}, ref="probe")
            assert ack["type"] == "ack" and ack["ref"] == "probe", ack
            seqs.append(ack["seq"])
        finally:
            await client.close()
        return nonce, seqs

    async def stored_seqs(self, after: int, upto: int) -> list[int]:
        """The stream's seqs of ROOM in (after, upto], read back from JetStream."""
        seqs: list[int] = []
        cursor = after + 1
        while cursor <= upto:
            try:
                msg = await self.js.get_msg(STREAM, seq=cursor, subject="rooms." + ROOM, next=True)
            except NotFoundError:
                break
            if msg.seq > upto:
                break
            seqs.append(msg.seq)
            cursor = msg.seq + 1
        return seqs

    async def check(self, name: str, rss: bool = True) -> dict[str, Any]:
        """The control client got every message of ROOM; the edge's RSS is near the baseline."""
        control = self.control
        try:
            assert self.proc is not None and self.proc.poll() is None, f"the edge died:\n{self.output()[-3000:]}"
            assert control.alive, f"the control client lost its connection: {control.unexpected}"
            nonce, probe_seqs = await self.publish_probes()
            deadline = time.monotonic() + 20
            while len(control.probes.get(nonce, [])) < len(probe_seqs) and control.alive:
                assert time.monotonic() < deadline, (
                    f"control got {control.probes.get(nonce)} of probes {probe_seqs}; unexpected {control.unexpected}"
                )
                await asyncio.sleep(0.02)
            assert control.alive, f"the control client lost its connection: {control.unexpected}"
            assert control.probes[nonce] == probe_seqs, (control.probes[nonce], probe_seqs)
            # Everything received since the last check, in order, is exactly what the stream stored meanwhile.
            stored = await self.stored_seqs(control.checked_upto, probe_seqs[-1])
            got = control.seqs[control.checked_index : control.checked_index + len(stored)]
            if got != stored:
                missing = sorted(set(stored) - set(got))[:10]
                raise AssertionError(
                    f"control got {len(got)} of the {len(stored)} messages stored in {ROOM}: "
                    f"missing {missing}, order {got[:10]}... vs {stored[:10]}..."
                )
            assert not control.unexpected, control.unexpected
            control.checked_upto = probe_seqs[-1]
            control.checked_index += len(stored)
        except AssertionError:
            await control.restart()
            raise
        report: dict[str, Any] = {"control_messages": len(got)}
        errors = self.new_errors()
        if errors:
            report["edge_errors_logged"] = errors
        if rss:
            await asyncio.sleep(1.0)
            now = self.rss_kb()
            self.rss_after[name] = now
            report["rss_mb"] = round(now / 1024, 1)
            report["baseline_mb"] = round(self.baseline_kb / 1024, 1)
            allowed = max(self.baseline_kb, self.retained_kb) + RSS_TOLERANCE_KB
            assert now <= allowed, (
                f"edge RSS {now / 1024:.1f} MB after {name}, baseline {self.baseline_kb / 1024:.1f} MB"
                + (f", retained after idle sockets {self.retained_kb / 1024:.1f} MB" if self.retained_kb else "")
            )
        return report

    # --- helpers for the classes ------------------------------------------------

    async def client(self, sub: str = "hostile-attacker", **rights: Any) -> Client:
        return await connect(self.url, tok=token(sub, **rights))

    async def raw(self, *protocols: str, authenticate: bool = True, **kw: Any) -> RawWS:
        """A raw socket, upgraded and (by default) authenticated with the bearer subprotocol."""
        if authenticate:
            protocols = ("jetsock.v1", "bearer." + token("hostile-raw"), *protocols)
        ws = await RawWS.open(self.port, protocols or ("jetsock.v1",), **kw)
        assert ws.upgraded, ws.response_head
        if authenticate:
            welcome = await ws.read_frame()
            assert welcome is not None and json.loads(welcome.payload)["type"] == "welcome", welcome
        return ws


# --- one frame in, one reply out ------------------------------------------------


class Outcome:
    """What one request frame got: its replies (room messages left out) or the close that ended it."""

    def __init__(self) -> None:
        self.replies: list[Any] = []
        self.closed: int | None = None
        self.dropped = False
        self.timed_out = False

    def describe(self) -> str:
        if self.timed_out:
            return f"no answer in time after {[_short(r) for r in self.replies]}"
        if self.dropped:
            return "the connection was dropped without a close frame"
        if self.closed is not None:
            return f"the connection was closed with {self.closed}"
        return f"replies {[_short(r) for r in self.replies]}"


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


class FrameProbe:
    """An authenticated raw connection that sends a frame, then a `ping` with a fresh ref.

    Checks that need no I/O are answered in the order frames are read, and a
    `ping` at once (PROTOCOL.md 9.1): a reply that comes before that `pong` is
    the frame's. A request that waits on NATS (a valid publish or join) is
    answered after the `pong`: when none came before it, the probe reads on
    until one reply comes, then sends a second `ping` and reads up to its
    `pong`, so anything more the frame caused is still seen. A connection the
    server closed is replaced by a new one for the next frame.
    """

    def __init__(self, hostile: Hostile) -> None:
        self.hostile = hostile
        self.ws: RawWS | None = None
        self.sent = 0

    async def exchange(self, payload: bytes, opcode: int = OP_TEXT, timeout: float = 10.0) -> Outcome:
        if self.ws is None:
            self.ws = await self.hostile.raw()
        ws = self.ws
        outcome = Outcome()
        try:
            await ws.send(opcode, payload)
            async with asyncio.timeout(timeout):
                await self._ping_and_collect(ws, outcome, timeout)
                if not outcome.replies and outcome.closed is None and not outcome.dropped:
                    await self._collect(ws, None, outcome, timeout)
                    if outcome.closed is None and not outcome.dropped:
                        await self._ping_and_collect(ws, outcome, timeout)
        except TimeoutError:
            outcome.timed_out = True
        except ConnectionError:
            outcome.dropped = True
        if outcome.closed is None and not outcome.dropped and not outcome.timed_out:
            return outcome
        ws.abort()
        self.ws = None
        return outcome

    async def _ping_and_collect(self, ws: RawWS, outcome: Outcome, timeout: float) -> None:
        self.sent += 1
        sentinel = f"sentinel-{self.sent}"
        await ws.send(OP_TEXT, json.dumps({"type": "ping", "ref": sentinel}).encode())
        await self._collect(ws, sentinel, outcome, timeout)

    async def _collect(self, ws: RawWS, sentinel: str | None, outcome: Outcome, timeout: float) -> None:
        """Read until the sentinel's pong, or (no sentinel) until one reply."""
        while True:
            got = await ws.read_frame(timeout)
            if got is None:
                outcome.dropped = True
                return
            if got.opcode == OP_CLOSE:
                outcome.closed = got.close_code
                return
            if got.opcode == OP_PING:
                await ws.send(OP_PONG, got.payload)
                continue
            if got.opcode != OP_TEXT:
                outcome.replies.append(("non-text frame", got.opcode, got.payload[:100]))
                continue
            try:
                reply = json.loads(got.payload.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                outcome.replies.append(("invalid server frame", got.payload[:200]))
                continue
            if (
                isinstance(reply, dict)
                and reply.get("type") == "pong"
                and str(reply.get("ref", "")).startswith("sentinel-")
            ):
                if reply.get("ref") == sentinel:
                    return
                continue
            if isinstance(reply, dict) and reply.get("type") == "msg":
                continue
            outcome.replies.append(reply)
            if sentinel is None:
                return

    def close(self) -> None:
        if self.ws is not None:
            self.ws.abort()
            self.ws = None


def judge(outcome: Outcome, expect: set[str] | None = None, ref: Any = None) -> str | None:
    """None when `outcome` is one valid reply on an open connection (matching `expect`), else what is wrong.

    `expect` holds reply types (`"ack"`) and error codes (`"error:bad_request"`).
    """
    if outcome.closed is not None or outcome.dropped:
        return outcome.describe()
    if len(outcome.replies) != 1:
        return f"expected one reply, got {outcome.describe()}"
    reply = outcome.replies[0]
    if not isinstance(reply, dict) or reply.get("type") not in SERVER_FRAME_TYPES:
        return f"not a server frame: {_short(reply)}"
    kind = reply["type"]
    if kind in ("welcome", "msg", "reset", "expiring"):
        return f"a {kind} frame is no reply to a request: {_short(reply)}"
    if kind == "error":
        if reply.get("code") not in ERROR_CODES or not isinstance(reply.get("message"), str):
            return f"malformed error: {_short(reply)}"
        kind = "error:" + reply["code"]
    if expect is not None and kind not in expect and reply["type"] not in expect:
        return f"expected {sorted(expect)}, got {_short(reply)}"
    if ref is not None and reply.get("ref") != ref:
        return f"ref {_short(ref)} not echoed: {_short(reply)}"
    return None
