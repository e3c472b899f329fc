"""JSON log lines: their fields, and the safety net that keeps tokens out of them."""

from __future__ import annotations

import json
import logging

from core.auth import make_token
from core.jsonlog import JsonFormatter, RedactingFormatter, redact


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
