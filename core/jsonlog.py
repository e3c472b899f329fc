"""Structured logs: one JSON object per line, for the log pipeline an operator already has.

Fields: `ts` (ISO 8601, UTC), `level`, `logger`, `msg`, plus whatever the
call site passes as `extra={"fields": {...}}` (a connection close carries its
duration, code, sub, node, rooms and messages out). Exceptions come as `exc`.

Tokens are never passed to a logger; as a second line of defence the
formatter replaces anything shaped like a JWT (three base64url segments, the
first starting `eyJ`) with `[token]`, wherever it appears.

Repeats are limited, so a flood of one kind (malformed requests, sockets that
never authenticate) costs a couple of lines a second, not a line per request.
A line's cause is its logger, level and unformatted template (`record.msg`),
unless the call site names one: `extra={"cause": "close:unauthenticated"}`,
or `extra={"cause": Cause("close:session", limit=None)}` for a line that is
never limited. Each cause may log `REPEAT_LIMIT` lines per `REPEAT_WINDOW`
seconds; the rest are dropped and counted, and the first line logged after the
window ends is preceded by one summary per cut cause, at its level and from
its logger: "suppressed K lines like: <template>".
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

REPEAT_LIMIT = 20
"""Lines one cause may log per window (default 20): more than a healthy node logs for one cause in
`REPEAT_WINDOW`, few enough that a flood of one kind costs two lines a second."""
REPEAT_WINDOW = 10.0
"""Seconds of one counting window (default 10); after it, each cut cause gets its summary line."""
MAX_CAUSES = 1000
"""Causes counted in one window (default 1000); past it, new causes share one count. A template built
per call (an f-string) is a new cause every time: this keeps the table, and such a flood, bounded."""
SUMMARY = "suppressed %d lines like: %s"

S = TypeVar("S")


def redact(text: str) -> str:
    return JWT_SHAPE.sub("[token]", text)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(_clean(line), ensure_ascii=False, default=str)


class RedactingFormatter(logging.Formatter):
    """The plain-text format, with the same safety net."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


# --- repeat limit ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cause:
    """A cause named by the call site, for a line whose template alone would lump together what differs.

    `limit`: lines it may log per window; None: never limited (a line per served
    connection, which the operator wants every one of).
    """

    name: str
    limit: int | None = REPEAT_LIMIT


OVERFLOW = "(causes past the table's size)"
"""The one key shared by every cause first seen after a window's table is full."""


class _Tally(Generic[S]):
    __slots__ = ("count", "limit", "sample")

    def __init__(self, limit: int) -> None:
        self.count = 0
        self.limit = limit
        self.sample: S | None = None


class RepeatLimiter(Generic[S]):
    """Lines counted per cause in fixed windows; no I/O and no clock of its own: the caller passes the time.

    `admit` counts one line and says whether it may go out; a cause's first
    dropped line leaves its `sample`, and `roll` ends the window and returns
    (key, sample, lines dropped) for each cause that was cut.
    """

    def __init__(self, limit: int = REPEAT_LIMIT, window: float = REPEAT_WINDOW, max_causes: int = MAX_CAUSES) -> None:
        self.limit = limit
        self.window = window
        self.max_causes = max_causes
        self._tallies: dict[Hashable, _Tally[S]] = {}
        self._start = float("-inf")
        self._end = float("-inf")

    def due(self, now: float) -> bool:
        """`now` is past the current window, or more than a window before it (the wall clock was set back).

        A little before it is no reason: threads' lines can arrive a little out of order.
        """
        return now >= self._end or now < self._start - self.window

    def roll(self, now: float) -> list[tuple[Hashable, S, int]]:
        """Start a new window at `now`; what the one that ended dropped, per cause."""
        dropped = [(key, t.sample, t.count - t.limit) for key, t in self._tallies.items() if t.sample is not None]
        self._tallies = {}
        self._start, self._end = now, now + self.window
        return dropped

    def admit(self, key: Hashable, sample: S, limit: int | None = None) -> bool:
        """One line of `key`: True while the cause is within `limit` (default `self.limit`) this window."""
        tally = self._tallies.get(key)
        if tally is None:
            if len(self._tallies) >= self.max_causes:
                key, limit = OVERFLOW, None
                tally = self._tallies.get(key)
            if tally is None:
                tally = self._tallies[key] = _Tally(self.limit if limit is None else limit)
        tally.count += 1
        if tally.count <= tally.limit:
            return True
        if tally.sample is None:
            tally.sample = sample
        return False


_Sample = tuple[str, int, str, str | None]
"""What a summary line needs of the first dropped line: logger, level, template, cause name."""


class RepeatFilter(logging.Filter):
    """The repeat limit on one handler: drops a cause's lines past its limit, then hands it the summaries.

    Per line: one key built, one dict lookup, one counter. The time is the
    record's own `created`, so tests drive it with records and no clock.
    """

    def __init__(self, handler: logging.Handler, limiter: RepeatLimiter[_Sample] | None = None) -> None:
        super().__init__()
        self.handler = handler
        self.limiter: RepeatLimiter[_Sample] = limiter if limiter is not None else RepeatLimiter()
        # Threads log too (the event loop's executor); the counts and the window swap stay consistent.
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        attrs = record.__dict__  # a dict lookup, not getattr's exception, for the common case of no cause
        if attrs.get("repeat_summary"):
            return True
        with self._lock:
            # Any line ends a window, an unlimited one too: summaries come out with the next line logged.
            ended = self.limiter.roll(record.created) if self.limiter.due(record.created) else []
            admitted = self._admit(record, attrs.get("cause"))
        for key, sample, dropped in ended:
            self.handler.handle(self.summary(key, sample, dropped))
        return admitted

    def _admit(self, record: logging.LogRecord, cause: object) -> bool:
        key: Hashable
        limit: int | None = None
        if isinstance(cause, Cause):
            if cause.limit is None:
                return True
            key, name, limit = cause.name, cause.name, cause.limit
        elif isinstance(cause, str):
            key, name = cause, cause
        else:
            key, name = (record.name, record.levelno, record.msg if isinstance(record.msg, str) else "?"), None
        return self.limiter.admit(key, (record.name, record.levelno, str(record.msg), name), limit)

    def summary(self, key: Hashable, sample: _Sample, dropped: int) -> logging.LogRecord:
        logger, level, template, name = sample
        fields: dict[str, Any] = {"event": "suppressed", "suppressed": dropped, "window_s": self.limiter.window}
        if key == OVERFLOW:
            fields["cause"] = OVERFLOW
        elif name is not None:
            fields["cause"] = name
        return logging.makeLogRecord(
            {
                "name": logger,
                "levelno": level,
                "levelname": logging.getLevelName(level),
                "msg": SUMMARY,
                "args": (dropped, template),
                "fields": fields,
                "repeat_summary": True,
            }
        )


def configure(level: str, fmt: str) -> None:
    """Route the root logger to stderr as JSON lines (`fmt` "json") or text, repeats limited."""
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be json or text, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else RedactingFormatter(TEXT_FORMAT))
    handler.addFilter(RepeatFilter(handler))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
