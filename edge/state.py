"""A connection's explicit state, and the only transitions it can make.

```
AUTHENTICATING ──welcome──▶ OPEN ──close──▶ CLOSING ──socket gone──▶ CLOSED
      │                       │                                        ▲
      └──────close───▶ CLOSING┘        (either, on a lost socket) ─────┘
```

AUTHENTICATING: upgraded (or the stream opened), no principal yet; only an
`auth` frame is read. OPEN: authenticated; requests are served. CLOSING: the
close frame (or close event) has been written, or is being: the outbox is
sealed, the rooms are left, in-flight requests are cancelled, and nothing else
is ever written; the transport waits for the peer's close or its deadline.
CLOSED: the socket is gone. `Connection._enter` is the one place a state
changes, and it refuses every transition not listed here.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    AUTHENTICATING = "authenticating"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.AUTHENTICATING: frozenset({State.OPEN, State.CLOSING, State.CLOSED}),
    State.OPEN: frozenset({State.CLOSING, State.CLOSED}),
    State.CLOSING: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A bug: a state change the machine does not allow."""


def check_transition(current: State, target: State) -> None:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(f"{current.value} -> {target.value}")
