"""Plays one parity scenario with the Python client and prints what the application saw, as JSON.

    python -m tests.clients.drive_py <ws url> '<program json>'

The twin of drive_js.mjs: the same program, the same trace format (see test_parity.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import jetsock

Event = list[Any]


async def play(url: str, program: dict[str, Any]) -> list[Event]:
    trace: list[Event] = []
    calls = 0

    def record(*event: Any) -> None:
        trace.append(list(event))

    async def token() -> str | None:
        nonlocal calls
        values = program["token"]
        value = values[min(calls, len(values) - 1)]
        calls += 1
        record("token", calls)
        if value == "!throw":
            raise RuntimeError("token endpoint down")
        return value  # type: ignore[no-any-return]

    def on_state(state: str, info: Any) -> None:
        if state == "reconnecting":
            record("state", state, {"code": info.get("code"), "delayMs": info.get("delayMs")})
        elif state in ("closed", "disconnected"):
            record("state", state, {"code": info.get("code"), "loggedOut": info.get("loggedOut") is True})
        else:
            record("state", state)

    # Made without connecting, so that the listener sees the first "connecting" too.
    client = jetsock.Client(url, token, auto_connect=False)
    client.on_state(on_state)
    if program.get("options", {}).get("auto_connect", True):
        client.connect()
    rooms: dict[str, jetsock.Room] = {}
    pending: list[asyncio.Task[None]] = []

    def join(step: dict[str, Any]) -> None:
        room = client.join(step["room"], since=step.get("since"), epoch=step.get("epoch"), last=step.get("last"))
        rooms[step["room"]] = room

        def on_room_state(state: str, info: Any) -> None:
            if state == "joined":
                record("room", room.name, state, {"recovered": info.recovered, "seq": info.seq})
            elif state == "left":
                record("room", room.name, state, {"reason": info.reason})
            else:
                record("room", room.name, state)

        room.on_state(on_room_state)
        room.on_message(lambda msg: record("message", msg.room, msg.seq))
        room.on_reset(lambda _room, info: record("reset", info.room, info.reason, info.seq))

        def on_presence(event: jetsock.PresenceEvent) -> None:
            # Each presence event, with the members the room holds once it is applied.
            members = {sub: [m.connections, m.info] for sub, m in room.members.items()}
            joined = [m.sub for m in event.joined]
            record("presence", room.name, {"joined": joined, "left": list(event.left), "members": members})

        room.on_presence(on_presence)

    async def ready(name: str) -> None:
        try:
            await rooms[name].ready()
            record("ready", name, "ok")
        except jetsock.JetsockError as exc:
            record("ready", name, "error", exc.code)

    async def publish(step: dict[str, Any]) -> None:
        try:
            ack = await client.publish(step["room"], step.get("data", {"text": "hi"}), id=step.get("id"))
            record("publish", step.get("id"), "ok", ack.seq, ack.duplicate)
        except jetsock.JetsockError as exc:
            record("publish", step.get("id"), "error", exc.code)

    def count(any_of: list[list[Any]]) -> int:
        return sum(1 for event in trace if any(event[: len(match)] == match for match in any_of))

    async def until(any_of: list[list[Any]], n: int, timeout: float = 15.0) -> None:
        end = time.monotonic() + timeout
        while count(any_of) < n:
            if time.monotonic() > end:
                record("timeout", json.dumps(any_of))
                return
            await asyncio.sleep(0.01)

    for step in program["steps"]:
        match step["do"]:
            case "join":
                join(step)
            case "ready":
                pending.append(asyncio.create_task(ready(step["room"])))
            case "publish":
                pending.append(asyncio.create_task(publish(step)))
            case "until":
                await until(step["any"], step.get("count", 1))
            case "disconnect":
                await client.disconnect()
            case "connect":
                client.connect()
            case "sleep":
                await asyncio.sleep(step["ms"] / 1000)
            case other:
                raise ValueError(f"unknown step {other}")
    record("end")
    await client.close()
    await asyncio.gather(*pending, return_exceptions=True)
    return trace


def main() -> None:
    url, text = sys.argv[1:3]
    trace = asyncio.run(play(url, json.loads(text)))
    sys.stdout.write(json.dumps({"trace": trace}) + "\n")


if __name__ == "__main__":
    main()
