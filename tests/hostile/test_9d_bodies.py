"""Class 9d: HTTP publish bodies that arrive in pieces.

Each body is written on a raw socket in separately flushed writes with pauses
between them, with Content-Length or chunked: split at every byte of a small
body, in random pieces up to `max_data_bytes`, in one-byte chunks, with chunk
extensions and trailers; over the limit in pieces; stopping half way; with a
chunk size that is no number. Every body is stored whole (read back from the
stream: the same bytes at the `seq` the answer named) or refused (413 over the
limit, 408 when it does not arrive whole, the JSON error body each time), and
a refused body is never stored: the room holds exactly the accepted ones.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import token
from tests.edge.rawhttp import LAST_CHUNK, chunk, raw_post
from tests.hostile.conftest import Cases
from tests.hostile.support import ROOM, STREAM, Hostile

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.hostile("HTTP bodies in pieces")]

MAX_DATA = 60000
"""The hostile edge's max_data_bytes (the default)."""
BODY_TIMEOUT = 10.0
"""The `body_timeout` setting's default: a body that stops arriving is answered 408 after it."""
PAUSE = 0.05
PARALLEL = 16
PATH = f"/v1/rooms/{ROOM}/messages"


@dataclass
class Case:
    name: str
    body: bytes
    """The body as the server should see it (what is stored when accepted)."""
    parts: list[bytes]
    """What is written, write by write."""
    chunked: bool
    expect: int
    declared: int | None = None
    """A Content-Length other than the body's (a body that stops arriving)."""


def by_length(name: str, body: bytes, cuts: list[int], expect: int = 201) -> Case:
    edges = [0, *cuts, len(body)]
    return Case(name, body, [body[a:b] for a, b in itertools.pairwise(edges)], False, expect)


def by_chunks(name: str, body: bytes, cuts: list[int], expect: int = 201, per_write: int = 1) -> Case:
    """Chunks cut at `cuts`, `per_write` chunks to a write, the last chunk with the last write."""
    edges = [0, *cuts, len(body)]
    chunks = [chunk(body[a:b]) for a, b in itertools.pairwise(edges)]
    writes = [b"".join(chunks[i : i + per_write]) for i in range(0, len(chunks), per_write)]
    writes[-1] += LAST_CHUNK
    return Case(name, body, writes, True, expect)


def small_body(tag: str) -> bytes:
    return json.dumps({"probe9d": tag, "list": [1, 2, 3], "s": "\u00e9\u4e2d", "n": None}).encode()


def all_cases() -> list[Case]:
    rng = random.Random(1109)
    found: list[Case] = []
    # Every split point of a small body, both framings.
    body = small_body("split")
    for cut in range(1, len(body)):
        found.append(by_length(f"length split at {cut}", body, [cut]))
        found.append(by_chunks(f"chunks split at {cut}", body, [cut]))
    # Random pieces of bodies up to the limit.
    for i in range(30):
        size = rng.choice([100, 1000, 20000, MAX_DATA - 10, MAX_DATA])
        text = json.dumps("x" * (size - 2)).encode()
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(2, 5)))
        maker = by_chunks if i % 2 else by_length
        found.append(maker(f"{size} bytes in {len(cuts) + 1} pieces ({maker.__name__})", text, cuts))
    # One-byte chunks, ten to a write.
    body = small_body("bytes")
    found.append(by_chunks("one-byte chunks", body, list(range(1, len(body))), per_write=10))
    # Chunk extensions and a trailer.
    body = b'{"ext": true}'
    found.append(
        Case(
            "chunk extensions and a trailer",
            body,
            [b"5;name=value\r\n" + body[:5] + b"\r\n", b"8;x\r\n" + body[5:] + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"],
            True,
            201,
        )
    )
    # Over the limit: a valid JSON beginning, then the rest in later writes.
    head = json.dumps("y" * (MAX_DATA // 2)).encode()
    for spaces in (MAX_DATA, MAX_DATA - len(head) + 1):
        over = head + b" " * spaces
        found.append(by_chunks(f"chunked, {len(over)} bytes", over, [len(head)], expect=413))
    exact = json.dumps("z" * (MAX_DATA - 2)).encode()
    found.append(by_chunks("chunked, exactly max_data_bytes", exact, [10, 30000], expect=201))
    found.append(by_chunks("chunked, one byte over", exact + b" ", [10, MAX_DATA], expect=413))
    found.append(by_length("Content-Length one byte over", exact + b" ", [10], expect=413))
    # Stopping half way: answered once body_timeout has passed, never stored.
    body = small_body("stalled")
    found.append(Case("half a declared length", body, [body[:10]], False, 408, declared=len(body)))
    found.append(Case("a chunk that never ends", body, [b"40\r\n" + body[:10]], True, 408))
    found.append(Case("a chunk size that is no number", body, [chunk(body[:5]), b"zz\r\n" + body[5:]], True, 408))
    return found


async def send(hostile: Hostile, case: Case, auth: str) -> tuple[int, Any]:
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    if case.chunked:
        headers["Transfer-Encoding"] = "chunked"
    else:
        headers["Content-Length"] = str(case.declared if case.declared is not None else len(case.body))
    return await raw_post(hostile.port, PATH, case.parts, headers, pause=PAUSE, timeout=BODY_TIMEOUT + 10)


async def last_seq(hostile: Hostile) -> int:
    msg = await hostile.js.get_last_msg(STREAM, "rooms." + ROOM)
    seq: int = msg.seq
    return seq


async def test_bodies_in_pieces_are_stored_whole_or_refused(hostile: Hostile, cases: Cases) -> None:
    auth = "Bearer " + token("hostile-bodies", join=[], publish=[ROOM])
    todo = all_cases()
    gate = asyncio.Semaphore(PARALLEL)
    failures: list[str] = []
    accepted: dict[int, bytes] = {}
    before = await last_seq(hostile)

    async def one(case: Case) -> None:
        async with gate:
            try:
                status, answer = await send(hostile, case, auth)
            except (OSError, TimeoutError, ValueError) as exc:
                failures.append(f"{case.name}: no answer ({exc!r})")
                return
        cases.add()
        if status != case.expect:
            failures.append(f"{case.name}: HTTP {status} {str(answer)[:200]}, expected {case.expect}")
        elif status == 201:
            accepted[answer["seq"]] = case.body
        elif answer.get("code") != ("too_large" if status == 413 else "bad_request") or not answer.get("message"):
            failures.append(f"{case.name}: HTTP {status} with {answer}")

    await asyncio.gather(*(one(case) for case in todo))
    after = await last_seq(hostile)
    stored = await hostile.stored_seqs(before, after)
    if sorted(stored) != sorted(accepted):
        odd = sorted(set(stored) ^ set(accepted))[:10]
        failures.append(f"stored {len(stored)} messages, accepted {len(accepted)}: {odd}")
    for seq, body in accepted.items():
        msg = await hostile.js.get_msg(STREAM, seq)
        if msg.data != body:
            failures.append(f"seq {seq}: stored {msg.data[:60]!r}... ({len(msg.data)} bytes), sent {len(body)} bytes")
    cases.note("accepted", len(accepted))
    cases.note("refused", len(todo) - len(accepted))
    cases.note("check", await hostile.check("HTTP bodies in pieces"))
    assert not failures, f"{len(failures)} bodies not handled as they should be:\n" + "\n".join(failures[:40])
