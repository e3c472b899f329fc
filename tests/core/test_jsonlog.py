"""JSON log lines: their fields, and the safety net that keeps tokens out of them."""

from __future__ import annotations

import json
import logging

import pytest

from core.auth import make_token
from core.jsonlog import (
    OVERFLOW,
    REPEAT_LIMIT,
    SUMMARY,
    Cause,
    JsonFormatter,
    RedactingFormatter,
    RepeatFilter,
    RepeatLimiter,
    configure,
    redact,
)


def record(msg: str, *args: object, fields: dict[str, object] | None = None) -> logging.LogRecord:
    rec = logging.LogRecord("jetsock.test", logging.INFO, __file__, 1, msg, args, None)
    if fields is not None:
        rec.fields = fields
    return rec


def test_a_line_is_one_json_object_with_the_fields_of_the_call_site() -> None:
    line = JsonFormatter().format(record("closed %s", "conn-1", fields={"code": 4008, "sub": "u1", "rooms": 2}))
    assert "\n" not in line
    data = json.loads(line)
    assert data["msg"] == "closed conn-1"
    assert data["level"] == "info" and data["logger"] == "jetsock.test"
    assert data["code"] == 4008 and data["sub"] == "u1" and data["rooms"] == 2
    assert data["ts"].endswith("+00:00")


def test_anything_shaped_like_a_jwt_is_replaced_in_messages_and_fields() -> None:
    token = make_token("s" * 32, "user-1", join=[">"], publish=[">"])
    line = JsonFormatter().format(record("bad token %s", token, fields={"header": f"bearer.{token}"}))
    assert token not in line and token.split(".")[1] not in line
    assert json.loads(line)["header"] == "bearer.[token]"
    text = RedactingFormatter("%(message)s").format(record("cookie=%s", token))
    assert text == "cookie=[token]"
    assert redact("no secrets here: eyJ") == "no secrets here: eyJ"


# --- the repeat limit ------------------------------------------------------------------


def test_a_cause_logs_its_limit_per_window_and_the_roll_counts_what_was_dropped() -> None:
    limiter: RepeatLimiter[str] = RepeatLimiter(limit=3, window=10.0)
    assert limiter.due(100.0) and limiter.roll(100.0) == []
    assert [limiter.admit("a", f"a{i}") for i in range(5)] == [True, True, True, False, False]
    assert [limiter.admit("b", "b") for _ in range(3)] == [True, True, True]
    assert limiter.admit("c", "c", limit=1) and not limiter.admit("c", "c2", limit=1)
    assert not limiter.due(109.9)
    assert limiter.due(110.0)
    # The first dropped line is the sample; a cause that stayed within its limit has no summary.
    assert limiter.roll(110.0) == [("a", "a3", 2), ("c", "c2", 1)]
    assert limiter.admit("a", "again") and not limiter.due(119.0)
    assert limiter.roll(120.0) == []


def test_a_clock_set_back_starts_a_new_window() -> None:
    limiter: RepeatLimiter[str] = RepeatLimiter(limit=1, window=10.0)
    limiter.roll(1000.0)
    assert limiter.admit("a", "x") and not limiter.admit("a", "y")
    # A line from a thread, made a moment before the window started, is counted in it.
    assert not limiter.due(999.0)
    assert limiter.due(985.0)
    assert limiter.roll(985.0) == [("a", "y", 1)]


def test_causes_past_the_table_size_share_one_count() -> None:
    limiter: RepeatLimiter[str] = RepeatLimiter(limit=2, window=10.0, max_causes=2)
    limiter.roll(0.0)
    assert limiter.admit("a", "a") and limiter.admit("b", "b")
    # Every new key now lands in one bucket: a template built per call cannot grow the table or the flood.
    assert [limiter.admit(f"new-{i}", f"new-{i}") for i in range(5)] == [True, True, False, False, False]
    assert limiter.admit("a", "a")
    assert limiter.roll(10.0) == [(OVERFLOW, "new-2", 3)]


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def at(
    created: float, msg: str, *args: object, name: str = "jetsock.test", level: int = logging.INFO, **extra: object
) -> logging.LogRecord:
    """A record made at `created` (the filter's clock), with `extra` as attributes like logging's own `extra`."""
    rec = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    rec.created = created
    rec.__dict__.update(extra)
    return rec


def limited(limit: int = REPEAT_LIMIT) -> Collect:
    handler = Collect()
    handler.addFilter(RepeatFilter(handler, RepeatLimiter(limit=limit, window=10.0)))
    return handler


def test_lines_of_one_template_are_cut_at_the_limit_and_summed_up_in_the_next_window() -> None:
    handler = limited()
    for i in range(REPEAT_LIMIT + 30):
        handler.handle(at(1000.0 + i / 100, "connection %s closed with %s", f"c{i}", 4501))
    handler.handle(at(1000.5, "another template"))
    assert len(handler.records) == REPEAT_LIMIT + 1
    assert [r.getMessage() for r in handler.records[:2]] == [
        "connection c0 closed with 4501",
        "connection c1 closed with 4501",
    ]
    handler.handle(at(1010.5, "connection %s closed with %s", "late", 4501))
    summary, late = handler.records[-2:]
    assert summary.getMessage() == "suppressed 30 lines like: connection %s closed with %s"
    assert summary.name == "jetsock.test" and summary.levelno == logging.INFO
    assert late.getMessage() == "connection late closed with 4501"
    line = json.loads(JsonFormatter().format(summary))
    assert line["event"] == "suppressed" and line["suppressed"] == 30 and line["level"] == "info"
    assert "cause" not in line


def test_logger_and_level_are_part_of_the_cause() -> None:
    handler = limited(limit=2)
    for _ in range(3):
        handler.handle(at(0.0, "same"))
        handler.handle(at(0.0, "same", name="other"))
        handler.handle(at(0.0, "same", level=logging.WARNING))
    assert len(handler.records) == 6


def test_a_named_cause_splits_one_template_and_a_cause_without_limit_is_never_cut() -> None:
    handler = limited(limit=2)
    session = Cause("close:session", limit=None)
    for i in range(50):
        handler.handle(at(0.0, "connection %s closed", i, cause="close:unauthenticated"))
        handler.handle(at(0.0, "connection %s closed", i, cause=session))
        handler.handle(at(0.0, "connection %s closed", i, cause=Cause("close:other", limit=5)))
    causes = [r.__dict__.get("cause") for r in handler.records]
    assert causes.count("close:unauthenticated") == 2
    assert causes.count(session) == 50
    assert sum(1 for c in causes if isinstance(c, Cause) and c.name == "close:other") == 5
    # A line that is never limited ends the window all the same: the summaries come out before it.
    handler.handle(at(20.0, "tick", cause=session))
    assert handler.records[-1].msg == "tick"
    summaries = {r.fields["cause"]: r.fields["suppressed"] for r in handler.records if r.msg == SUMMARY}
    assert summaries == {"close:unauthenticated": 48, "close:other": 45}


def test_configure_limits_repeats_on_the_handler_it_installs(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure("info", "json")
        (handler,) = root.handlers
        assert any(isinstance(f, RepeatFilter) for f in handler.filters)
        flood = logging.getLogger("jetsock.flood")
        for i in range(REPEAT_LIMIT * 5):
            flood.info("malformed request %d", i)
        flood.warning("a different line")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["msg"] for line in lines] == [f"malformed request {i}" for i in range(REPEAT_LIMIT)] + [
        "a different line"
    ]
