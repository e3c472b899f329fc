"""Class 9k: the HTTP stream transport (PROTOCOL.md section 11) under hostile input.

Against the shared edge process: bodies that are not JSON, too large, too many frames,
frames too large, bad framing, unknown and malformed session ids (NATS wildcards,
spaces, line breaks), other users' sessions, missing or bad credentials, HTTP/1.0;
slow-loris uploads to both endpoints; streams opened and never read (in a busy room,
with a replay to wait on, and idle ones that never post); floods of posts (frames to
one's own session, publishes past `max_requests_in_flight`, unknown sessions, other
users' sessions, open-and-drop churn). Every bad input gets a clear answer (its HTTP
status with a JSON problem body, or a `close` event with its code), and costs other
clients nothing: the control client (a WebSocket) and a stream client in the same room
(a `StreamWatcher`) both get every message stored in it, and the edge's RSS comes back.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.conftest import token
from tests.edge.rawhttp import raw_request
from tests.edge.sse import EventStream, open_stream
from tests.hostile.conftest import Cases
from tests.hostile.support import ROOM, Hostile

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.hostile("HTTP streams")]

HEARTBEAT = 4.0
"""The hostile edge's heartbeat: a stream that posts nothing for two is closed 4009."""
BODY_TIMEOUT = 10.0
WRITE_TIMEOUT = 30.0
"""The defaults of the hostile edge (body_timeout, write_timeout)."""
POST_BYTES = 262144
POST_FRAMES = 100
MAX_FRAME = 65536
MAX_PENDING = 1 << 20
PER_STALLED_BOUND = int(1.5 * MAX_PENDING)
"""What one unread stream may cost the edge (see test_8_stalled)."""
MARGIN_KB = 40 * 1024
PARALLEL = 32
BUSY = "hostile.stream.busy"
QUIET = "hostile.stream.quiet"
CLOSE_CODE = re.compile(r'^jetsock_closes_total\{[^}]*websocket_close_code="(\d+)"[^}]*\} (\S+)$', re.M)


def bearer(sub: str = "hostile-stream", **kw: Any) -> str:
    return "Bearer " + token(sub, **kw)


async def closes(http: aiohttp.ClientSession, base: str) -> Counter[int]:
    """The edge's closes so far, by code (from /metrics)."""
    async with http.get(base + "/metrics") as response:
        text = await response.text()
    return Counter({int(code): int(float(n)) for code, n in CLOSE_CODE.findall(text)})


class StreamWatcher:
    """A stream client joined to ROOM, alive (a `ping` every half heartbeat), recording every msg."""

    def __init__(self, hostile: Hostile) -> None:
        self.hostile = hostile
        self.stream: EventStream | None = None
        self.start_seq = 0
        self.seqs: list[int] = []
        self.unexpected: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        tok = token("hostile-stream-watcher", join=[ROOM], publish=[])
        self.stream = await open_stream(self.hostile.http, tok=tok, frames=[{"type": "join", "room": ROOM}])
        joined = await self.stream.expect("joined")
        self.start_seq = joined["seq"]
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._ping())]

    async def _read(self) -> None:
        assert self.stream is not None
        while True:
            frame = await self.stream.next(timeout=3600)
            if frame is None or frame["type"] == "close":
                self.unexpected.append(frame)
                return
            if frame["type"] == "msg" and frame["room"] == ROOM:
                self.seqs.append(frame["seq"])
            elif frame["type"] != "pong":
                self.unexpected.append(frame)

    async def _ping(self) -> None:
        assert self.stream is not None
        while True:
            status = await self.stream.post({"type": "ping"})
            if status != 204:
                self.unexpected.append(f"ping answered {status}")
                return
            await asyncio.sleep(HEARTBEAT / 2)

    async def check(self) -> int:
        """After `hostile.check`: exactly the messages stored in ROOM since the join, in order."""
        upto = self.hostile.control.checked_upto
        deadline = time.monotonic() + 20
        while (not self.seqs or self.seqs[-1] < upto) and not self.unexpected:
            assert time.monotonic() < deadline, f"the stream watcher is at {self.seqs[-1:]}, the room at {upto}"
            await asyncio.sleep(0.05)
        assert not self.unexpected, self.unexpected
        stored = await self.hostile.stored_seqs(self.start_seq, upto)
        got = [seq for seq in self.seqs if seq <= upto]
        assert got == stored, f"the stream watcher got {len(got)} of {len(stored)} messages"
        return len(got)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.stream is not None:
            await self.stream.close()


@pytest_asyncio.fixture(loop_scope="session")
async def watcher(hostile: Hostile) -> AsyncIterator[StreamWatcher]:
    watching = StreamWatcher(hostile)
    await watching.start()
    yield watching
    await watching.stop()


async def finish(hostile: Hostile, watcher: StreamWatcher, cases: Cases, name: str) -> None:
    cases.note(f"check after {name}", await hostile.check(name))
    cases.note(f"stream watcher messages after {name}", await watcher.check())


# --- bad input, one request at a time -------------------------------------------------------


def bodies() -> list[tuple[str, bytes, set[int]]]:
    """(name, body, the statuses that are a clear refusal) for both endpoints."""
    ping = {"type": "ping"}
    found: list[tuple[str, bytes, set[int]]] = [
        ("not JSON", b"{not json", {400}),
        ("truncated", b'[{"type": "ping"}', {400}),
        ("a string", b'"ping"', {400}),
        ("a number", b"1e999", {400}),
        ("null", b"null", {400}),
        ("an array of arrays", b"[[]]", {400}),
        ("an array with a number", b'[{"type": "ping"}, 7]', {400}),
        ("two documents", b"{} {}", {400}),
        ("invalid UTF-8 in a string", b'{"type": "ping", "ref": "\xc3\x28"}', {400}),
        ("a lone surrogate escape", b'{"type": "ping", "ref": "\\ud800"}', {400, 200}),
        ("a NUL byte", b'{"type": "ping"}\x00', {400}),
        ("nested 100000 deep", b"[" * 100000 + b"]" * 100000, {400}),
        ("nested 5000 deep", b"[" * 5000 + b"]" * 5000, {400}),
        ("over stream_post_bytes", b"[" + b" " * POST_BYTES + b"]", {413}),
        ("one past the frames", json.dumps([ping] * (POST_FRAMES + 1)).encode(), {413}),
        ("a frame past max_frame_bytes", json.dumps({"type": "ping", "ref": "x" * MAX_FRAME}).encode(), {413}),
        ("ten thousand frames", json.dumps([ping] * 10000).encode(), {413}),
    ]
    rng = random.Random(911)
    for i in range(150):
        junk = bytes([rng.choice(b"\x00\x01\x7f\xff#!x")]) + rng.randbytes(rng.randint(0, 3000))
        found.append((f"random bytes {i}", junk, {400}))
    return found


async def test_bad_bodies_sessions_and_credentials_get_clear_answers(
    hostile: Hostile, cases: Cases, watcher: StreamWatcher
) -> None:
    failures: list[str] = []
    gate = asyncio.Semaphore(PARALLEL)
    attacker = await open_stream(hostile.http, sub="hostile-stream")
    victim = watcher.stream
    assert victim is not None
    reading = asyncio.create_task(_drain_events(attacker))

    async def one(name: str, url: str, body: bytes, headers: dict[str, str], expect: set[int]) -> None:
        async with gate:
            try:
                async with http.post(url, data=body, headers=headers) as r:
                    status = r.status
                    problem = await r.json() if r.content_type == "application/json" else None
                    if status == 200 and expect == {200}:
                        # A refused token opens the stream: its one event is the close, then the end.
                        text = await asyncio.wait_for(r.text(), 10)
                        if '"code": 4501' not in text or text.count("data:") != 1:
                            failures.append(f"{name}: the stream said {text[:300]!r}, not one close 4501")
                    elif status == 200:
                        r.close()  # a stream that opened: not held
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(f"{name}: no answer ({exc!r})")
                return
        cases.add()
        if status not in expect:
            failures.append(f"{name}: HTTP {status} {str(problem)[:200]}, expected {sorted(expect)}")
        elif status >= 400 and status != 403 and not (problem and problem.get("message") and problem.get("code")):
            failures.append(f"{name}: HTTP {status} without a problem body: {problem}")

    auth = {"Authorization": bearer()}
    own = f"{hostile.http}/v1/stream/{attacker.session}"
    route = attacker.session.split(".")[0]
    todo: list[Any] = []
    for name, body, expect in bodies():
        todo.append((f"open, {name}", f"{hostile.http}/v1/stream", body, auth, expect))
        todo.append((f"post, {name}", own, body, auth, {204 if status == 200 else status for status in expect}))
    # (name, headers, the open's answer, the post's): a refused token opens a stream whose one
    # event is the close with 4501 (as a WebSocket's close frame), and is a 401 on a post.
    credentials = [
        ("no credentials", {}, 401, 401),
        ("a token that does not verify", {"Authorization": "Bearer " + "e" * 500}, 200, 401),
        ("an expired token", {"Authorization": bearer(ttl=-60)}, 200, 401),
        ("a token of 8000 bytes that does not verify", {"Authorization": "Bearer " + "e" * 8000}, 200, 401),
        ("Basic", {"Authorization": "Basic aG9zdGlsZTp4"}, 401, 401),
        ("the cookie without an Origin", {"Cookie": f"jetsock_token={token()}"}, 401, 401),
        ("a foreign Origin with a token", {**auth, "Origin": "https://evil.example"}, 403, 403),
        (
            "a foreign Origin with the cookie",
            {"Origin": "https://evil.example", "Cookie": f"jetsock_token={token()}"},
            403,
            403,
        ),
    ]
    for name, headers, opened, posted in credentials:
        todo.append((f"open, {name}", f"{hostile.http}/v1/stream", b"[]", headers, {opened}))
        todo.append((f"post, {name}", own, b'{"type": "ping"}', headers, {posted}))
    for query in (f"?token={token()}", f"?next={token()}", f"?access_token={token()}"):
        todo.append((f"open, token in URL {query[:8]}", f"{hostile.http}/v1/stream{query}", b"[]", auth, {400}))
        todo.append((f"post, token in URL {query[:8]}", own + query, b"{}", auth, {400}))
    # Other users' sessions: the watcher's (a real one), with the attacker's valid token.
    todo.append(("post to another user's session", f"{hostile.http}/v1/stream/{victim.session}", b"{}", auth, {403}))
    unknown = [
        f"{route}.{secrets.token_urlsafe(12)}",
        f"{secrets.token_hex(5)}.{secrets.token_urlsafe(12)}",
        f"{route}.*",
        f"{route}.%3E",
        "%3E",
        "*",
        "x.y%20z",
        "x.y%0D%0APUB%20rooms.hostile.control%205%0D%0Ahello",
        "x.%00",
        "%C3%A9.%C3%A9",
        "a" * 2000,
        f"{route}." + "b" * 2000,
    ]
    for session in unknown:
        url = f"{hostile.http}/v1/stream/{session}"
        todo.append((f"post to unknown session {session[:30]}", url, b'{"type": "ping"}', auth, {404}))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=BODY_TIMEOUT + 20)) as http:
        started = time.monotonic()
        await asyncio.gather(*(one(*case) for case in todo))
        took = time.monotonic() - started
        # Bad frames inside a good body: the stream opens and answers each one with an error event.
        bad_frames = [
            {"type": "nope", "ref": 1},
            {"type": "join", "room": "a b", "ref": 2},
            {"type": "publish", "ref": 3},
            {"type": "auth", "token": "x", "ref": 4},
            {"type": "join", "room": ROOM, "since": -1, "ref": 5},
            {"type": "publish", "room": "hostile.x", "data": "x" * 70000, "ref": 6},
        ]
        bad = await open_stream(hostile.http, sub="hostile-stream", frames=bad_frames[:5])
        errors = [await bad.expect("error") for _ in range(5)]
        await bad.close()
        if [e.get("ref") for e in errors] != [1, 2, 3, 4, 5]:
            failures.append(f"bad frames in a good body: {errors}")
        cases.add(len(bad_frames))
    # The raw ones: HTTP/1.0, smuggling-shaped framing, a head too long.
    tok = token("hostile-stream").encode()
    raw = [
        (
            "HTTP/1.0",
            b"POST /v1/stream HTTP/1.0\r\nAuthorization: Bearer %s\r\nContent-Length: 2\r\n\r\n[]" % tok,
            {505},
        ),
        (
            "Content-Length and chunked",
            b"POST /v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 2\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n" % tok,
            {400},
        ),
        (
            "a chunk size that is no number",
            b"POST /v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\n[]\r\n0\r\n\r\n" % tok,
            {400, 408},
        ),
        ("a 20 kB path", b"POST /v1/stream/" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", {400, 414, 431}),
        (
            "a 9 kB Authorization header",
            b"POST /v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n" % (b"e" * 9000),
            {400, 431},
        ),
    ]
    for name, request, expect in raw:
        status, _, _ = await raw_request(hostile.port, request, timeout=BODY_TIMEOUT + 10)
        cases.add()
        if status not in expect:
            failures.append(f"raw, {name}: HTTP {status}, expected {sorted(expect)}")
    reading.cancel()
    await attacker.close()
    cases.note("requests", len(todo) + len(raw))
    cases.note("seconds for the bad requests", round(took, 1))
    await finish(hostile, watcher, cases, "bad stream requests")
    assert not failures, f"{len(failures)} requests not answered as they should be:\n" + "\n".join(failures[:40])


async def _drain_events(stream: EventStream) -> None:
    """Read a stream's events and throw them away (its client is alive and reading)."""
    while await stream.next(timeout=3600) is not None:
        pass


# --- slow uploads ---------------------------------------------------------------------------


async def test_slow_loris_uploads_to_both_endpoints_are_answered_408(
    hostile: Hostile, cases: Cases, watcher: StreamWatcher
) -> None:
    attacker = await open_stream(hostile.http, sub="hostile-loris")
    reading = asyncio.create_task(_drain_events(attacker))
    tok = token("hostile-loris")
    results: Counter[str] = Counter()
    slow: list[float] = []

    async def loris(path: str, chunked: bool) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", hostile.port)
        started = time.monotonic()
        framing = "Transfer-Encoding: chunked" if chunked else "Content-Length: 5000"
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n{framing}\r\n\r\n".encode()
        writer.write(head + (b"1000\r\n[" if chunked else b"["))
        try:
            async with asyncio.timeout(BODY_TIMEOUT + 15):
                answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
                while not answer.done():
                    # A byte every second: never idle, never done.
                    writer.write(b" ")
                    await asyncio.wait([answer], timeout=1.0)
                status = int(answer.result().split(b" ", 2)[1])
                results[f"{path.count('/')}:{status}"] += 1
                slow.append(time.monotonic() - started)
        except (asyncio.IncompleteReadError, ConnectionError):
            results["dropped"] += 1
        except TimeoutError:
            results["held"] += 1
        finally:
            writer.close()

    paths = ["/v1/stream", f"/v1/stream/{attacker.session}"]
    await asyncio.gather(*(loris(paths[i % 2], chunked=i % 4 >= 2) for i in range(200)))
    cases.add(200)
    reading.cancel()
    await attacker.close()
    cases.note("outcomes (slashes in the path: status)", dict(results))
    cases.note("slowest answer, s", round(max(slow, default=0.0), 1))
    await finish(hostile, watcher, cases, "slow stream uploads")
    assert results == Counter({"2:408": 100, "3:408": 100}), results
    assert max(slow) <= BODY_TIMEOUT + 5, max(slow)


# --- streams that are never read --------------------------------------------------------------


class Unread:
    """A stream opened on a raw socket whose answer is then never read."""

    def __init__(self, writer: asyncio.StreamWriter, session: str) -> None:
        self.writer = writer
        self.session = session

    @classmethod
    async def open(cls, hostile: Hostile, sub: str, frames: list[dict[str, Any]]) -> Unread:
        reader, writer = await asyncio.open_connection("127.0.0.1", hostile.port)
        body = json.dumps(frames).encode()
        writer.write(
            b"POST /v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
            % (token(sub).encode(), len(body), body)
        )
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            welcome = json.loads((await reader.readexactly(size + 2))[6:-4])
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        return cls(writer, welcome["session"])

    def abort(self) -> None:
        self.writer.transport.abort()  # type: ignore[attr-defined]


async def test_streams_never_read_are_closed_and_memory_stays_bounded(
    hostile: Hostile, cases: Cases, watcher: StreamWatcher
) -> None:
    js = hostile.js
    payload = b'{"fill":"' + b"x" * 2000 + b'"}'
    history = b'{"fill":"' + b"x" * 4000 + b'"}'
    first = (await js.publish("rooms." + QUIET, history)).seq
    for _ in range(3000):  # 12 MB to replay to each joiner with since: more than the kernel's buffers take
        await js.publish("rooms." + QUIET, history)
    stop = asyncio.Event()

    async def backend() -> None:
        while not stop.is_set():
            await asyncio.gather(*(js.publish("rooms." + BUSY, payload) for _ in range(10)))
            await asyncio.sleep(0.02)  # ~1 MB/s

    busy_count, replay_count, idle_count = 30, 10, 200
    posting: list[asyncio.Task[None]] = []
    async with aiohttp.ClientSession() as http:
        before = await closes(http, hostile.http)
        baseline = hostile.rss_kb()
        feeder = asyncio.create_task(backend())
        try:
            busy = [
                await Unread.open(hostile, "hostile-unread", [{"type": "join", "room": BUSY}])
                for _ in range(busy_count)
            ]
            replaying = [
                await Unread.open(hostile, "hostile-unread", [{"type": "join", "room": QUIET, "since": first}])
                for _ in range(replay_count)
            ]
            idle = [await Unread.open(hostile, "hostile-idle", []) for _ in range(idle_count)]

            async def keep_alive(unread: Unread) -> None:
                # Alive (it posts), only not reading: what ends it is 4008, not 4009.
                while True:
                    async with http.post(
                        f"{hostile.http}/v1/stream/{unread.session}",
                        data=b'{"type": "ping"}',
                        headers={"Authorization": bearer("hostile-unread")},
                    ) as r:
                        if r.status == 404:
                            return
                    await asyncio.sleep(1.0)

            posting += [asyncio.create_task(keep_alive(u)) for u in busy + replaying]
            peak = baseline
            started = time.monotonic()
            wanted = {4008: busy_count + replay_count, 4009: idle_count}
            seen: Counter[int] = Counter()
            try:
                async with asyncio.timeout(WRITE_TIMEOUT + 40):
                    while any(seen[code] < n for code, n in wanted.items()):
                        peak = max(peak, hostile.rss_kb())
                        now = await closes(http, hostile.http)
                        seen = Counter({code: now[code] - before[code] for code in now})
                        await asyncio.sleep(0.2)
            except TimeoutError:
                raise AssertionError(
                    f"closes after {time.monotonic() - started:.0f} s: {dict(seen)}, wanted {wanted}"
                ) from None
            took = time.monotonic() - started
            await asyncio.gather(*posting)
        finally:
            stop.set()
            await feeder
            for task in posting:
                task.cancel()
        for unread in busy + replaying + idle:
            unread.abort()
    cases.add(busy_count + replay_count + idle_count)
    grew_kb = peak - baseline
    cases.note("unread streams closed 4008 (busy room, replay)", busy_count + replay_count)
    cases.note("idle streams closed 4009", idle_count)
    cases.note("seconds until all were closed", round(took, 1))
    cases.note("edge RSS growth while they were held, MB", round(grew_kb / 1024, 1))
    allowed_kb = (busy_count + replay_count) * PER_STALLED_BOUND // 1024 + MARGIN_KB
    assert grew_kb <= allowed_kb, f"RSS grew {grew_kb / 1024:.0f} MB for {busy_count + replay_count} unread streams"
    await finish(hostile, watcher, cases, "unread streams")


# --- floods of posts --------------------------------------------------------------------------


async def test_floods_of_posts_cost_other_clients_nothing(
    hostile: Hostile, cases: Cases, watcher: StreamWatcher
) -> None:
    victim = watcher.stream
    assert victim is not None
    attacker = await open_stream(hostile.http, sub="hostile-flood", frames=[{"type": "join", "room": "hostile.flood"}])
    events: Counter[str] = Counter()
    closed: list[Any] = []

    async def read() -> None:
        while True:
            frame = await attacker.next(timeout=3600)
            if frame is None or frame["type"] == "close":
                closed.append(frame)
                return
            events[frame["type"]] += 1

    reading = asyncio.create_task(read())
    statuses: dict[str, Counter[int]] = {}
    gate = asyncio.Semaphore(PARALLEL)
    auth = {"Authorization": bearer("hostile-flood")}
    own = f"{hostile.http}/v1/stream/{attacker.session}"
    pings = json.dumps([{"type": "ping"}] * POST_FRAMES).encode()
    publishes = json.dumps(
        [{"type": "publish", "room": "hostile.flood", "data": {"n": i}} for i in range(POST_FRAMES)]
    ).encode()
    floods: list[tuple[str, int, str, bytes, dict[str, str]]] = [
        ("100 pings a post", 300, own, pings, auth),
        ("100 publishes a post", 100, own, publishes, auth),
        ("unknown sessions", 1000, f"{hostile.http}/v1/stream/{secrets.token_hex(5)}.x", b"{}", auth),
        ("another user's session", 1000, f"{hostile.http}/v1/stream/{victim.session}", b"{}", auth),
        ("no credentials", 1000, own, b"{}", {}),
    ]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=PARALLEL)) as http:

        async def one(name: str, url: str, body: bytes, headers: dict[str, str]) -> None:
            async with gate:
                try:
                    async with http.post(url, data=body, headers=headers) as r:
                        await r.read()
                        statuses.setdefault(name, Counter())[r.status] += 1
                except (aiohttp.ClientError, TimeoutError):
                    statuses.setdefault(name, Counter())[-1] += 1  # no answer: a failure below

        started = time.monotonic()
        for name, count, url, body, headers in floods:
            await asyncio.gather(*(one(name, url, body, headers) for _ in range(count)))
            cases.add(count)

        # Open-and-drop churn: streams opened and their sockets dropped at once.
        async def churn() -> None:
            async with gate:
                stream = await open_stream(hostile.http, sub="hostile-churn")
                statuses.setdefault("open and drop", Counter())[stream.status] += 1
                stream.transport.abort()
                await stream.close()

        await asyncio.gather(*(churn() for _ in range(300)))
        cases.add(300)
        took = time.monotonic() - started
    # Still open, it gets an answer to every frame it was let in with (or it was closed, with a code).
    answered = POST_FRAMES * statuses["100 pings a post"][204]
    async with asyncio.timeout(30):
        while events["pong"] < answered and not closed:
            await asyncio.sleep(0.1)
    reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)
    await attacker.close()
    cases.note("statuses", {name: dict(counts) for name, counts in statuses.items()})
    cases.note("attacker's events", dict(events))
    cases.note("attacker closed with", closed)
    cases.note("seconds for the floods", round(took, 1))
    await finish(hostile, watcher, cases, "post floods")
    expected = {
        "100 pings a post": {204, 503},
        "100 publishes a post": {204, 503},
        "unknown sessions": {404},
        "another user's session": {403},
        "no credentials": {401},
        "open and drop": {200},
    }
    odd = {name: dict(counts) for name, counts in statuses.items() if set(counts) - expected[name]}
    assert not odd, f"answers other than {expected}: {odd}"
    assert closed or events["pong"] == answered, (events, answered)
    assert all(frame is not None and frame["code"] in (4008, 4029) for frame in closed), closed
