"""The invariant checker: what each connection received against what the stream stored."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import nats

from core.stored import ID_HEADER


@dataclass(frozen=True)
class Stored:
    seq: int
    payload: bytes
    id: str | None
    """The client's idempotency key (Jetsock-Id), when it gave one."""

    @property
    def data(self) -> Any:
        """The payload, decoded from JSON."""
        return json.loads(self.payload)


async def stored_messages(nats_url: str, room: str, stream: str = "ROOMS") -> list[Stored]:
    """Every message stored for `room`, in stream order, read straight from the stream (batched direct get)."""
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
                found.append(Stored(int(headers["Nats-Sequence"]), msg.data, headers.get(ID_HEADER)))
                got += 1
            await sub.unsubscribe()
            if not got:
                return found
            after = found[-1].seq
    finally:
        await nc.close()


async def stored_seqs(nats_url: str, room: str, stream: str = "ROOMS") -> list[int]:
    """Every sequence stored for `room`, read straight from the stream."""
    return [message.seq for message in await stored_messages(nats_url, room, stream)]


def check_exact(received: list[dict[str, Any]], stored: list[int], after: int) -> None:
    """`received` (msg frames) is exactly the stored seqs > `after`, in order, once each."""
    seqs = [m["seq"] for m in received]
    expected = [s for s in stored if s > after]
    assert seqs == expected, _diff(seqs, expected)


def _diff(got: list[int], want: list[int]) -> str:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    dups = sorted({s for s in got if got.count(s) > 1})
    order = got == sorted(got)
    return (
        f"missing={missing[:10]} extra={extra[:10]} duplicates={dups[:10]} in_order={order} ({len(got)} vs {len(want)})"
    )
