"""jetsock: an asyncio client for jetsock rooms, with the browser client's semantics.

```python
import jetsock

async with jetsock.connect("wss://example.com/ws", token=get_token) as client:
    client.on_state(lambda state, info: print(state, info))
    room = await client.join("chat.lobby", last=50)  # the newest 50 first, then live
    seq, duplicate = await room.publish({"text": "hi"})
    page = await room.history(before=seq, limit=50)  # older ones: page.messages, page.more
    room.on_presence(lambda event: print(event.joined, event.left, dict(room.members)))
    who = await room.presence()  # who.count, who.members (in presence rooms)
    async for message in room:
        print(message.seq, message.data)
```

The client reconnects by itself (PROTOCOL.md sections 7 and 9.11), falls back
to the HTTP stream where WebSocket cannot open (section 11; `transports=`), rejoins
every room with the last seq it delivered, drops what it has already seen,
resends unacked publishes with their idempotency id, and refreshes the token
when the server says it is expiring. Every rule comes from `jetsock.rules`,
generated from the same source as the JS client's; `jetsock.policy` holds the
pure reconnect arithmetic on top of them. See clients/python/README.md.
"""

from jetsock.client import Client, Options, connect
from jetsock.errors import (
    AlreadyJoined,
    ClosedError,
    FrameTooLarge,
    InvalidRoom,
    JetsockError,
    PublishQueueFull,
    PublishTimeout,
    RequestTimeout,
    RoomLeft,
    ServerError,
)
from jetsock.link import Transport
from jetsock.policy import Backoff, CloseDecision, Reconnect, decide, reconnect_delay
from jetsock.reconnect import TokenReason, TokenSource
from jetsock.room import (
    Ack,
    HistoryPage,
    JoinedInfo,
    LeftInfo,
    Message,
    MessageListener,
    Messages,
    Presence,
    PresenceEvent,
    PresenceEvents,
    PresenceListener,
    PresenceMember,
    ResetCallback,
    ResetInfo,
    Room,
    RoomInfo,
    RoomState,
    RoomStateListener,
)
from jetsock.rules import ErrorCode
from jetsock.state import State, StateInfo, StateListener

__version__ = "0.1.0"
"""The repository's version (its root pyproject.toml), written by `python -m schemas.clientgen --write`."""

__all__ = [
    "Ack",
    "AlreadyJoined",
    "Backoff",
    "Client",
    "CloseDecision",
    "ClosedError",
    "ErrorCode",
    "FrameTooLarge",
    "HistoryPage",
    "InvalidRoom",
    "JetsockError",
    "JoinedInfo",
    "LeftInfo",
    "Message",
    "MessageListener",
    "Messages",
    "Options",
    "Presence",
    "PresenceEvent",
    "PresenceEvents",
    "PresenceListener",
    "PresenceMember",
    "PublishQueueFull",
    "PublishTimeout",
    "Reconnect",
    "RequestTimeout",
    "ResetCallback",
    "ResetInfo",
    "Room",
    "RoomInfo",
    "RoomLeft",
    "RoomState",
    "RoomStateListener",
    "ServerError",
    "State",
    "StateInfo",
    "StateListener",
    "TokenReason",
    "TokenSource",
    "Transport",
    "connect",
    "decide",
    "reconnect_delay",
]
