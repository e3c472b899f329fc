"""The JSON Schema (draft 2020-12) of the wire protocol, built from the msgspec frame types.

Clients in other languages validate or generate code from
`schemas/jetsock.schema.json`; this module is the only way that file is made,
so it cannot drift from the types the server decodes and encodes with.

    python -m schemas.jsonschema            # print the schema (`make schema` writes it)
    python -m schemas.jsonschema --check    # exit 1 when the committed file is stale

The output is deterministic: sorted keys, two-space indent, ASCII only, one
trailing newline.
"""

from __future__ import annotations

import argparse
import ast
import enum
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from schemas.codes import CloseCode, ErrorCode
from schemas.frames import ClientFrame, ServerFrame

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "https://jetsock.dev/schemas/jetsock.v1.json"
SCHEMA_PATH = Path(__file__).with_name("jetsock.schema.json")
_CODES_PATH = Path(__file__).with_name("codes.py")
_REF_TEMPLATE = "#/$defs/{name}"

_DESCRIPTION = (
    "Frames of the jetsock WebSocket protocol, version 1 (subprotocol jetsock.v1): one JSON "
    "object per text frame, tagged by its `type` field. See schemas/PROTOCOL.md. Unknown "
    "fields are ignored by the server, so objects allow additional properties. Optional "
    "fields are omitted when absent; the server also accepts null for them."
)

# Meanings from PROTOCOL.md section 2, so the schema documents itself.
_FRAME_DOCS: dict[str, str] = {
    "Auth": "Client: authenticate with a JWT; must be the first frame. Reply: `welcome`, or close 4501.",
    "Join": (
        "Client: join a room, optionally resuming after `since` (a seq the server gave) under `epoch`. "
        "Reply: `joined`, then replayed `msg`s, then live `msg`s; or `error`."
    ),
    "Leave": "Client: leave a room. Reply: `left`, or `error` not_joined.",
    "Publish": (
        "Client: store `data` (any JSON value) in a room; `id` is an idempotency key. "
        "Reply: `ack` with the message's seq, or `error`."
    ),
    "Ping": "Client: application-level ping. Reply: `pong`.",
    "Refresh": "Client: replace the token with a new one for the same `sub`. Reply: `refreshed`, or `error`.",
    "Welcome": "Server: authenticated; `heartbeat` in seconds, `exp` the token expiry (unix s).",
    "Joined": (
        "Server: membership is live; `seq` is the room's head at join; `recovered` is true when the replay is complete."
    ),
    "Msg": (
        "Server: a room message; `seq` its stream sequence, `ts` its stored time (unix ms), `data` the JSON published."
    ),
    "Left": "Server: membership ended, asked for or (reason forbidden) lost on refresh.",
    "Ack": "Server: the publish is stored durably at `seq`; `duplicate` when its `id` was seen before.",
    "Reset": "Server: continuity for the room is lost; reload app state and go on from `seq` under `epoch`.",
    "Expiring": "Server: the token expires soon (at `exp`, unix s); send `refresh`.",
    "Refreshed": "Server: the new token is accepted; it expires at `exp` (unix s).",
    "Pong": "Server: reply to `ping`.",
    "Error": "Server: a request failed; the connection stays open.",
}


def _member_docs(path: Path, class_name: str) -> dict[str, str]:
    """Docstrings written under the members of an enum class (not kept at runtime)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except OSError:
        return {}
    docs: dict[str, str] = {}
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name == class_name):
            continue
        body = node.body
        for stmt, following in itertools.pairwise(body):
            if (
                isinstance(stmt, ast.Assign)
                and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[stmt.targets[0].id] = following.value.value.strip()
    return docs


def _enum_schema(cls: type[enum.Enum], json_type: str, description: str) -> dict[str, Any]:
    members = list(cls)
    schema: dict[str, Any] = {
        "title": cls.__name__,
        "description": description,
        "type": json_type,
        "enum": [member.value for member in members],
        "x-enum-varnames": [member.name for member in members],
    }
    docs = _member_docs(_CODES_PATH, cls.__name__)
    if docs:
        schema["x-enum-descriptions"] = [docs.get(member.name, "") for member in members]
    return schema


def build() -> dict[str, Any]:
    """The schema document as a dict."""
    (client, server), components = msgspec.json.schema_components(
        [ClientFrame, ServerFrame], ref_template=_REF_TEMPLATE
    )
    defs: dict[str, Any] = dict(components)
    for name, doc in _FRAME_DOCS.items():
        if name in defs:
            defs[name].setdefault("description", doc)
    client["title"] = "ClientFrame"
    client["description"] = "A frame a client sends to the server."
    server["title"] = "ServerFrame"
    server["description"] = "A frame the server sends to a client."
    defs["ClientFrame"] = client
    defs["ServerFrame"] = server
    defs["ErrorCode"] = _enum_schema(ErrorCode, "string", "The `code` of an `error` frame (PROTOCOL.md section 2).")
    defs["CloseCode"] = _enum_schema(
        CloseCode,
        "integer",
        "WebSocket close codes the server uses, with what a client does on each (PROTOCOL.md section 7). "
        "4000-4499: recoverable, reconnect with backoff and resume; 4500-4999: terminal.",
    )
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        "title": "jetsock wire protocol v1",
        "description": _DESCRIPTION,
        "$defs": defs,
        "anyOf": [
            {"$ref": _REF_TEMPLATE.format(name="ClientFrame")},
            {"$ref": _REF_TEMPLATE.format(name="ServerFrame")},
        ],
    }


def render() -> str:
    """The schema document as text, exactly as committed in schemas/jetsock.schema.json."""
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def check(path: Path = SCHEMA_PATH) -> str | None:
    """None when `path` holds what `render()` produces, else what is wrong with it."""
    try:
        committed = path.read_text(encoding="utf-8")
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror}): run `make schema` to generate it"
    if committed != render():
        return f"{path} is out of date with schemas/frames.py and schemas/codes.py: run `make schema` and commit it"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m schemas.jsonschema",
        description="Print the JSON Schema of the jetsock wire protocol.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 when {SCHEMA_PATH.name} differs from what would be generated",
    )
    args = parser.parse_args(argv)
    if args.check:
        problem = check()
        if problem is not None:
            print(problem, file=sys.stderr)
            return 1
        print(f"{SCHEMA_PATH.name} is up to date")
        return 0
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
