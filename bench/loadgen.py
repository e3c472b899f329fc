"""A load-generator process and the conductor's handle on it.

Each process holds at most ~19,000 sockets (the fd hard limit is 20,000), so
the conductor starts several: `python -m bench.loadgen` reads one JSON command
per line on stdin and answers each, tagged with its id, on stdout. Commands
run concurrently, so `stats` answers while `open` is still connecting.

Each process binds its sockets to its own 127.<p>.0.x source addresses,
250 of them, so neither 40,000 connections nor a churn's TIME_WAIT sockets run
out of ephemeral ports (28,000 per source address).
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import resource
import sys
import time
from collections import deque
from typing import Any

from bench.clients import CLIENTS, BenchClient, JetsockStreamClient, PageStats, Stats
from bench.shapes import rooms
from core.auth import make_token

SOURCES_PER_PROCESS = 250
OPEN_CONCURRENCY = 200
PUBLISH_TICK = 0.005
"""Seconds between publishing ticks: fine enough that clients publish spread out, as real
ones do, rather than in bursts that would queue behind each other."""


class LoadGenerator:
    def __init__(self, process: int) -> None:
        self.process = process
        self.stats = Stats()
        self.clients: list[BenchClient] = []
        self.roles: dict[str, list[BenchClient]] = {}
        """The clients opened under each `role` (the presence scenario's users, watchers, askers)."""

    def source(self, index: int) -> str:
        return f"127.{self.process + 1}.0.{index % SOURCES_PER_PROCESS + 1}"

    def make(self, cmd: dict[str, Any], index: int, reconnect: bool) -> BenchClient:
        """Client `index` of the command: its token's `sub` is `<sub_prefix><index>` (`bench-` by default).

        Options of the presence scenario: `presence` (the token's `rooms.presence` patterns),
        `info` (true: an `info` claim naming the user), `ports` (client i goes to edge
        `ports[i % len(ports)]` instead of `port`), `track` (the client writes when it sends
        its joins and leaves, for the event delay). Of the compression scenario: `deflate`
        (offer permessage-deflate), `payload` (what `publish_every` sends: "100B" or "2KB"). Of the
        stream scenario: `transport` ("stream": a jetsock session over the HTTP stream instead of a
        WebSocket, bench.streamwire), `stream_posts` ("keepalive", the default: its posts over one
        kept connection; "close": a connection per post)."""
        sub = f"{cmd.get('sub_prefix', 'bench-')}{index}"
        claims: dict[str, Any] = {}
        if cmd.get("presence") is not None:
            claims["presence"] = cmd["presence"]
        if cmd.get("info"):
            claims["info"] = {"name": f"User {index}"}
        token = make_token(cmd["secret"], sub, join=[">"], publish=[">"], ttl=7200, **claims)
        stream = cmd.get("transport", "websocket") == "stream"
        if stream and cmd["system"] != "jetsock":
            raise ValueError(f"{cmd['system']} has no HTTP stream transport")
        cls = JetsockStreamClient if stream else CLIENTS[cmd["system"]]
        sampled = index % cmd.get("sample_every", 1) == 0
        source = self.source(index)
        shape = rooms(cmd["shape"], index)
        ports = cmd.get("ports")
        port = ports[index % len(ports)] if ports else cmd["port"]
        client = cls(self.stats, cmd["host"], port, token, shape, source, reconnect, sampled)
        client.defer_join = bool(cmd.get("defer_join", False))
        client.deflate = bool(cmd.get("deflate", False))
        client.payload = str(cmd.get("payload", "100B"))
        client.sub = sub
        client.tracked = bool(cmd.get("track", False))
        if isinstance(client, JetsockStreamClient):
            client.keepalive_posts = cmd.get("stream_posts", "keepalive") == "keepalive"
        return client

    async def open(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Open clients `first` … `first + count - 1`: as fast as OPEN_CONCURRENCY lets, or at `rate`
        per second (each started on its slot); kept under `role` as well."""
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)
        rate = float(cmd.get("rate") or 0.0)
        role = self.roles.setdefault(str(cmd.get("role", "")), [])
        first, count = cmd["first"], cmd["count"]
        started = time.monotonic()

        async def one(index: int) -> None:
            client = self.make(cmd, index, cmd.get("reconnect", False))
            if rate:
                await asyncio.sleep(max(0.0, started + (index - first) / rate - time.monotonic()))
            async with gate:
                try:
                    await client.open()
                except (TimeoutError, OSError, ConnectionError):
                    self.stats.failed += 1
                    return
            self.stats.opened += 1
            self.clients.append(client)
            role.append(client)

        await asyncio.gather(*(one(i) for i in range(first, first + count)))
        # The clients' objects live until the end: keep the collector from walking
        # them again, so its pauses do not show up as the server's latency.
        gc.collect()
        gc.freeze()
        return {"opened": self.stats.opened, "failed": self.stats.failed}

    async def publish_every(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Each client publishes once per `interval` seconds in its first room, at a random phase."""
        interval, duration = float(cmd["interval"]), float(cmd["duration"])
        ticks = max(1, int(interval / PUBLISH_TICK))
        slots: list[list[BenchClient]] = [[] for _ in range(ticks)]
        for client in self.clients:
            slots[random.randrange(ticks)].append(client)
        started = time.monotonic()
        sent = 0
        tick = 0
        while time.monotonic() - started < duration:
            for client in slots[tick % ticks]:
                if client.rooms and client.proto is not None and not client.proto.closed:
                    client.publish(client.rooms[0])
                    sent += 1
            tick += 1
            await asyncio.sleep(max(0.0, started + tick * PUBLISH_TICK - time.monotonic()))
        return {"sent": sent}

    async def churn(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """`concurrency` loops of connect, auth, join, close for `duration` seconds."""
        duration, loops = float(cmd["duration"]), int(cmd["concurrency"])
        deadline = time.monotonic() + duration
        cycles = 0
        serial = iter(range(cmd["first"], 1 << 40))

        async def loop() -> None:
            nonlocal cycles
            while time.monotonic() < deadline:
                client = self.make(cmd, next(serial), reconnect=False)
                started = time.time()
                try:
                    await client.open(timeout=10.0)
                except (TimeoutError, OSError, ConnectionError):
                    self.stats.failed += 1
                    continue
                self.stats.sample(started * 1000.0)
                client.close()
                self.stats.connected -= 1
                cycles += 1

        await asyncio.gather(*(loop() for _ in range(loops)))
        return {"cycles": cycles}

    async def history_pages(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """`history` pages at `rate` per second for `duration` s, round robin over the clients.

        A page's room is drawn by `tiers` (name, share of the pages, first room, room count);
        half the pages read from the head, half from a `before` drawn
        uniformly over the stream (1 to `last_seq`), which lands within the room: rooms'
        messages are spread through it. Latency, request to reply, by kind
        (`<tier>-head`, `<tier>-before`).
        """
        rate, duration, limit = float(cmd["rate"]), float(cmd["duration"]), int(cmd["limit"])
        prefix, last_seq = cmd["prefix"], int(cmd["last_seq"])
        tiers = cmd["tiers"]
        rng = random.Random(cmd.get("seed", self.process))
        clients = [c for c in self.clients if c.proto is not None and not c.proto.closed]
        self.stats.pages = PageStats()
        started = time.monotonic()
        sent = 0
        while clients and (elapsed := time.monotonic() - started) < duration:
            for _ in range(int(rate * elapsed) + 1 - sent):
                name, first, count = _draw(rng, tiers)
                room = f"{prefix}{first + rng.randrange(count)}"
                before = None if rng.random() < 0.5 else rng.randint(1, last_seq)
                kind = f"{name}-{'head' if before is None else 'before'}"
                clients[sent % len(clients)].history(room, before, limit, kind)
                sent += 1
            await asyncio.sleep(PUBLISH_TICK)
        deadline = time.monotonic() + float(cmd.get("drain", 5.0))
        while self.stats.pages.answered + self.stats.pages.errors < sent and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return {**self.stats.pages.snapshot(), "seconds": time.monotonic() - started}

    async def who_pace(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """`who` for `room` at `rate` per second for `duration` s, round robin over the clients of
        `role` (open loop: asked on time whatever the answers; late ones waited for `drain` s)."""
        rate, duration, room = float(cmd["rate"]), float(cmd["duration"]), str(cmd["room"])
        clients = [c for c in self.roles.get(str(cmd.get("role", "")), []) if c.proto and not c.proto.closed]
        presence = self.stats.presence
        presence.who_reset()
        started = time.monotonic()
        sent = 0
        while clients and (elapsed := time.monotonic() - started) < duration:
            for _ in range(int(rate * elapsed) + 1 - sent):
                clients[sent % len(clients)].who(room)
                sent += 1
            await asyncio.sleep(PUBLISH_TICK)
        deadline = time.monotonic() + float(cmd.get("drain", 5.0))
        while presence.who_answered + presence.who_errors < presence.who_sent and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return {**presence.snapshot(), "seconds": time.monotonic() - started}

    async def presence_churn(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Users of `role` leave `room` at `rate` per second for `duration` s, each joining it again
        `lag` s after its leave (so joins follow at the same rate; the last ones after the loop)."""
        rate, duration, lag, room = float(cmd["rate"]), float(cmd["duration"]), float(cmd["lag"]), str(cmd["room"])
        users = [c for c in self.roles.get(str(cmd.get("role", "")), []) if c.proto and not c.proto.closed]
        random.Random(cmd.get("seed", self.process)).shuffle(users)
        present = deque(users)
        away: deque[tuple[float, BenchClient]] = deque()
        started = time.monotonic()
        leaves = joins = 0
        while (elapsed := time.monotonic() - started) < duration or away:
            if elapsed < duration:
                for _ in range(int(rate * elapsed) + 1 - leaves):
                    if not present:
                        break
                    client = present.popleft()
                    client.leave_room(room)
                    leaves += 1
                    away.append((time.monotonic() + lag, client))
            now = time.monotonic()
            while away and away[0][0] <= now:
                client = away.popleft()[1]
                client.rejoin_room(room)
                joins += 1
                present.append(client)
            await asyncio.sleep(PUBLISH_TICK)
        return {"leaves": leaves, "joins": joins, "seconds": time.monotonic() - started}

    def join_rooms(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Every client joins its rooms now with `last`: the join storm."""
        self.stats.caught_up_at = []
        self.stats.histogram = {}
        for client in self.clients:
            client.caught_up = False
            client.join_rooms(int(cmd["last"]))
        return {"joining": len(self.clients)}

    def replays(self) -> dict[str, Any]:
        """What the join storm's clients hold: joined.replayed announced, replayed messages received."""
        joined = [c for c in self.clients if c.replay_left is not None and len(c.replay_left) >= len(c.rooms)]
        return {
            "clients": len(self.clients),
            "joined": len(joined),
            "held": len(self.stats.caught_up_at),
            "replayed": sum(c.replayed for c in self.clients),
            "received": sum(c.replay_received for c in self.clients),
        }

    def expect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.stats.expected = {room: int(n) for room, n in cmd["rooms"].items()}
        self.stats.caught_up_at = []
        for client in self.clients:
            client.caught_up = False
            client.check_caught_up()
        return {}

    def behind(self) -> int:
        """Messages in `expected` that clients have not received (yet): the tail a loss leaves."""
        expected = self.stats.expected
        if not expected:
            return 0
        return sum(
            max(0, expected.get(room, 0) - client.last_n.get(room, 0))
            for client in self.clients
            for room in client.rooms
        )

    def close(self) -> dict[str, Any]:
        for client in self.clients:
            client.close()
        self.clients = []
        self.roles = {}
        return {}

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        match cmd["cmd"]:
            case "open":
                return await self.open(cmd)
            case "publish_every":
                return await self.publish_every(cmd)
            case "churn":
                return await self.churn(cmd)
            case "history_pages":
                return await self.history_pages(cmd)
            case "who_pace":
                return await self.who_pace(cmd)
            case "presence_churn":
                return await self.presence_churn(cmd)
            case "presence":
                return self.stats.presence.snapshot()
            case "presence_reset":
                self.stats.presence.reset()
                return {}
            case "join_rooms":
                return self.join_rooms(cmd)
            case "replays":
                return self.replays()
            case "expect":
                return self.expect(cmd)
            case "reset":
                self.stats.reset()
                return {}
            case "stats":
                return {**self.stats.snapshot(), "behind": self.behind()}
            case "close":
                return self.close()
        raise ValueError(f"unknown command {cmd['cmd']!r}")


def _draw(rng: random.Random, tiers: list[list[Any]]) -> tuple[str, int, int]:
    """One of `tiers` ([name, share, first room, room count]), by share."""
    pick = rng.random() * sum(t[1] for t in tiers)
    for name, share, first, count in tiers:
        if pick < share:
            return name, first, count
        pick -= share
    name, _share, first, count = tiers[-1]
    return name, first, count


async def serve(process: int) -> None:
    generator = LoadGenerator(process)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    running: set[asyncio.Task[None]] = set()

    async def answer(cmd: dict[str, Any]) -> None:
        try:
            reply: dict[str, Any] = {"id": cmd["id"], "ok": True, **(await generator.handle(cmd))}
        except Exception as exc:  # the conductor reports it; the process goes on
            reply = {"id": cmd["id"], "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()

    while line := await reader.readline():
        task = asyncio.create_task(answer(json.loads(line)))
        running.add(task)
        task.add_done_callback(running.discard)
    generator.close()


class LoadGenHandle:
    """The conductor's side: `await handle.call("stats")` → that process's answer."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.serial = 0
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, index: int) -> LoadGenHandle:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.loadgen",
            str(index),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 26,
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            reply = json.loads(line)
            future = self.waiting.pop(reply.pop("id"), None)
            if future is not None and not future.done():
                future.set_result(reply)
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(RuntimeError("load generator exited"))

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        self.serial += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[self.serial] = future
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps({"id": self.serial, "cmd": cmd, **args}) + "\n").encode())
        reply = await future
        if not reply.pop("ok"):
            raise RuntimeError(f"load generator {cmd}: {reply['error']}")
        return reply

    async def stop(self) -> None:
        if self.process.returncode is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self.reader.cancel()


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
