"""The invariant checker: what each connection received against what the stream stored."""

from __future__ import annotations

import json
from typing import Any

import nats


async def stored_seqs(nats_url: str, room: str, stream: str = "ROOMS") -> list[int]:
    """Every sequence stored for `room`, read straight from the stream."""
    nc = await nats.connect(nats_url)
    try:
        seqs: list[int] = []
        after = 0
        while True:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            request = {"seq": after + 1, "next_by_subj": f"rooms.{room}", "batch": 500}
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
            got = 0
            while True:
                msg = await sub.next_msg(timeout=5)
                if msg.headers and msg.headers.get("Status"):
                    break
                seqs.append(int(msg.headers["Nats-Sequence"]))
                got += 1
            await sub.unsubscribe()
            if not got:
                return seqs
            after = seqs[-1]
    finally:
        await nc.close()


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
