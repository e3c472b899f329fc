"""The embedded nats-server's accounts: the edge's credentials only, with least privilege.

`jetsock serve` without JETSOCK_NATS_URL starts a nats-server of its own. A
NATS server that accepts anonymous clients lets any local process publish on
`live.rooms.>`, which the edge delivers to WebSocket clients as stored room
messages (forged, with any `seq`). So the embedded server gets a config of
one account and one user, `edge`, with a random password made at every start
and the permissions of the edge user in deploy/nats-server.conf (the test
tests/core/test_natsauth.py keeps the two the same): no anonymous access, no
`no_auth_user`, and no backend user (backends publish over HTTP there, or run
their own NATS and point JETSOCK_NATS_URL at it).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from core.embedded import EmbeddedNats
from core.presencebus import PREFIX as PRESENCE_PREFIX
from core.rooms import LIVE_SUBJECT_PREFIX, ROOM_SUBJECT_PREFIX
from core.streamroute import PREFIX as STREAM_ROUTE_PREFIX

EDGE_USER = "edge"
ACCOUNT = "JETSOCK"
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")


PRESENCE_SUBJECTS = PRESENCE_PREFIX + ">"
"""Presence between edges (core/presencebus.py): each edge publishes and subscribes there."""
STREAM_SUBJECTS = STREAM_ROUTE_PREFIX + ">"
"""Frames posted to an HTTP stream session on another node (core/streamroute.py): an edge requests
there, subscribes to its own sessions' subjects, and answers (hence `allow_responses`)."""


def edge_publish(stream: str) -> list[str]:
    """Subjects an edge publishes to: room messages, the JetStream API of its own stream only,
    presence between edges, and frames for stream sessions on other edges."""
    return [
        ROOM_SUBJECT_PREFIX + ">",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.UPDATE.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        PRESENCE_SUBJECTS,
        STREAM_SUBJECTS,
    ]


EDGE_SUBSCRIBE = [LIVE_SUBJECT_PREFIX + ">", "_INBOX.>", PRESENCE_SUBJECTS, STREAM_SUBJECTS]
"""The stream's RePublish, replies (PubAcks, stream info, direct-get batches), presence, and frames
posted for this edge's stream sessions."""


def _quoted(values: list[str]) -> str:
    return ", ".join(f'"{value}"' for value in values)


def edge_only_config(stream: str, password: str) -> str:
    """A nats-server config with one account whose only user is the edge."""
    if not _STREAM_NAME.fullmatch(stream):
        raise ValueError(f"JETSOCK_STREAM={stream!r}: a stream name is letters, digits, '_' and '-'")
    if not re.fullmatch(r"[A-Za-z0-9_-]{16,}", password):
        raise ValueError("the embedded NATS password must be 16 or more URL-safe characters")
    return f"""# Written by jetsock at start (core/natsauth.py); rewritten, with a new password, at every start.
# Only the edge may connect: no anonymous clients, no no_auth_user, no backend user.
accounts {{
  {ACCOUNT} {{
    jetstream: enabled
    users: [
      {{
        user: "{EDGE_USER}"
        password: "{password}"
        permissions: {{
          publish: {{ allow: [{_quoted(edge_publish(stream))}] }}
          subscribe: {{ allow: [{_quoted(EDGE_SUBSCRIBE)}] }}
          # One answer to each request received: a stream post's ok/gone/forbidden.
          allow_responses: true
        }}
      }}
    ]
  }}
}}
"""


@dataclass(frozen=True)
class EdgeCredentials:
    user: str
    password: str


def edge_only_server(store_dir: str | Path, port: int, stream: str) -> tuple[EmbeddedNats, EdgeCredentials]:
    """An embedded nats-server (not started) that takes only the returned edge credentials."""
    credentials = EdgeCredentials(EDGE_USER, secrets.token_urlsafe(24))
    server = EmbeddedNats(store_dir, port=port, config=edge_only_config(stream, credentials.password))
    return server, credentials
