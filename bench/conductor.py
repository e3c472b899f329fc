"""What every scenario needs: a system up, load generators, merged counts, a progress line."""

from __future__ import annotations

import asyncio
import math
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bench import hist, procstat
from bench.loadgen import LoadGenHandle
from bench.systems import HOST, SECRET, SYSTEMS, Jetsock, System

SOCKETS_PER_GENERATOR = 15_000
"""Under the 20,000 fd limit with room to spare; more processes also spread the client's CPU."""


def progress(text: str) -> None:
    """One line, rewritten in place on a terminal and a line per call otherwise."""
    if sys.stderr.isatty():
        print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


class Run:
    """One system under test with its load generators."""

    def __init__(self, system: System, generators: list[LoadGenHandle], label: str) -> None:
        self.system = system
        self.generators = generators
        self.label = label

    async def each(self, cmd: str, **args: Any) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(g.call(cmd, **args) for g in self.generators)))

    async def stats(self) -> dict[str, Any]:
        """The load generators' counts added up; `histogram` merged."""
        parts = await self.each("stats")
        total: dict[str, Any] = {
            key: sum(p[key] for p in parts)
            for key in (
                "connected",
                "opened",
                "failed",
                "reconnects",
                "deliveries",
                "wire_bytes",
                "acks",
                "lost",
                "duplicates",
                "posts",
            )
        }
        total["behind"] = sum(p["behind"] for p in parts)
        total["histogram"] = hist.merge(p["histogram"] for p in parts)
        total["post_histogram"] = hist.merge(p["post_histogram"] for p in parts)
        closes: dict[str, int] = {}
        for part in parts:
            for code, count in part["closes"].items():
                closes[code] = closes.get(code, 0) + count
        total["closes"] = closes
        total["errors"] = {k: sum(p["errors"].get(k, 0) for p in parts) for p in parts for k in p["errors"]}
        total["caught_up_at"] = sorted(t for p in parts for t in p["caught_up_at"])
        total["duplicate_samples"] = [d for p in parts for d in p["duplicate_samples"]][:20]
        return total

    async def open(
        self,
        shape: str,
        count: int,
        reconnect: bool = False,
        sample_every: int = 1,
        defer_join: bool = False,
        **extra: Any,
    ) -> int:
        """Open `count` clients of `shape`, split over the generators; the number that opened.

        With `sample_every` n, one client in n decodes its messages for latency and
        numbering; the others only count them, so that the load generator's own
        decoding does not become the latency of a 5,000-member fan-out. With `defer_join`,
        clients authenticate only and join their rooms at the `join_rooms` command.
        `extra` goes to the generators' `open` as it is (the presence scenario's roles,
        ports, token claims and pacing: LoadGenerator.make).
        """
        share = math.ceil(count / len(self.generators))
        calls = [
            g.call(
                "open",
                system=self.system.protocol,
                host=HOST,
                port=self.system.port,
                secret=SECRET,
                shape=shape,
                first=i * share,
                count=max(0, min(share, count - i * share)),
                reconnect=reconnect,
                sample_every=sample_every,
                defer_join=defer_join,
                **extra,
            )
            for i, g in enumerate(self.generators)
        ]
        opening = asyncio.gather(*calls)
        while not opening.done():
            await asyncio.wait([opening], timeout=1.0)
            counts = await self.stats()
            progress(f"{self.label}: connected {counts['connected']}/{count} ({counts['failed']} failed)")
        await opening
        return int((await self.stats())["connected"])

    def cpu(self) -> float:
        return procstat.cpu_seconds(self.system.server_pids())

    def loadgen_cpu(self) -> float:
        """The load generators' CPU seconds: on a shared machine, what they leave the system tells
        whether a step saturated the system or its clients."""
        return procstat.cpu_seconds(g.process.pid for g in self.generators)

    def infra_cpu(self) -> float:
        return procstat.cpu_seconds(self.system.infra_pids())

    def rss_kb(self) -> int:
        return procstat.rss_kb(self.system.server_pids())


@asynccontextmanager
async def running(
    system_name: str,
    workers: int,
    clients: int,
    label: str,
    env: dict[str, str] | None = None,
    cls: type[System] | None = None,
) -> AsyncIterator[Run]:
    """A fresh system and enough load generators for `clients` sockets; all stopped after.

    `cls` starts another class than the named system's (bench.systems.JetsockEdges), and
    `env` adds settings to a jetsock system's edges."""
    with tempfile.TemporaryDirectory(prefix="jetsock-bench-") as workdir:
        system = (cls or SYSTEMS[system_name])(Path(workdir), workers)
        if env:
            if not isinstance(system, Jetsock):
                raise ValueError(f"settings for {system_name}'s edges: only jetsock takes them")
            system.extra_env = dict(env)
        progress(f"{label}: starting {system.name} ({workers} processes)")
        await system.start()
        count = max(2, math.ceil(clients / SOCKETS_PER_GENERATOR))
        generators = [await LoadGenHandle.start(i) for i in range(count)]
        try:
            yield Run(system, generators, label)
        finally:
            await asyncio.gather(*(g.stop() for g in generators), return_exceptions=True)
            await system.stop()


async def chat_round(run: Run, interval: float, seconds: float, settle: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The open clients each publish every `interval` s for `seconds`, then close: the figures of
    the round (sent, acked, delivered, CPU per delivery, latency) and the load generators' stats."""
    cpu_before, started = run.cpu(), time.monotonic()
    sent = sum(r["sent"] for r in await run.each("publish_every", interval=interval, duration=seconds))
    await asyncio.sleep(settle)
    elapsed, cpu = time.monotonic() - started, run.cpu() - cpu_before
    stats = await run.stats()
    await run.each("close")
    await asyncio.sleep(settle)
    delivered = stats["deliveries"]
    figures = {
        "published": sent,
        "acked": stats["acks"],
        "deliveries": delivered,
        "deliveries_per_s": round(delivered / elapsed),
        "cpu_us_per_delivery": round(cpu / max(delivered, 1) * 1e6, 2),
        **hist.summary(stats["histogram"]),
    }
    return figures, stats
