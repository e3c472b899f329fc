"""A room's stored messages read straight back from the stream: seq, headers and data (tests only).

tests/edge/checker.py reads the seqs; these tests also need what was stored
(the send index a publish carried, its idempotency id), so this reads whole
messages with the same batched direct get.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import nats

from core.stored import ID_HEADER


@dataclass(frozen=True)
class Stored:
    seq: int
    data: Any
    """The payload, decoded from JSON."""
    id: str | None
    """The client's idempotency key (Jetsock-Id), when it gave one."""


async def stored_messages(nats_url: str, room: str, stream: str = "ROOMS") -> list[Stored]:
    """Every message stored for `room`, in stream order."""
    nc = await nats.connect(nats_url)
    try:
        found: list[Stored] = []
        after = 0
        while True:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            request = {"seq": after + 1, "next_by_subj": f"rooms.{room}", "batch": 500}
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
            got = 0
            while True:
                msg = await sub.next_msg(timeout=5)
                headers = msg.headers or {}
                if headers.get("Status"):
                    break
                found.append(Stored(int(headers["Nats-Sequence"]), json.loads(msg.data), headers.get(ID_HEADER)))
                got += 1
            await sub.unsubscribe()
            if not got:
                return found
            after = found[-1].seq
    finally:
        await nc.close()
