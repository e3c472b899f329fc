"""jetsock: an asyncio client for jetsock rooms, with the browser client's semantics.

```python
import jetsock

async with jetsock.connect("wss://example.com/ws", token=get_token) as client:
    client.on_state(lambda state, info: print(state, info))
    room = await client.join("chat.lobby")
    seq, duplicate = await room.publish({"text": "hi"})
    async for message in room:
        print(message.seq, message.data)
```

The client reconnects by itself (PROTOCOL.md section 7), rejoins every room
with the last seq it received, drops what it has already seen, resends
unacked publishes with their idempotency id, and refreshes the token when the
server says it is expiring. `jetsock.policy` holds the pure reconnect rules.
"""

from jetsock.client import Client, Options, connect
from jetsock.errors import (
    ClosedError,
    FrameTooLarge,
    JetsockError,
    PublishQueueFull,
    RoomLeft,
    ServerError,
)
from jetsock.policy import Backoff, CloseDecision, Reconnect, decide, reconnect_delay
from jetsock.reconnect import TokenSource
from jetsock.room import Ack, Message, ResetCallback, ResetInfo, Room
from jetsock.state import State, StateInfo, StateListener

__all__ = [
    "Ack",
    "Backoff",
    "Client",
    "CloseDecision",
    "ClosedError",
    "FrameTooLarge",
    "JetsockError",
    "Message",
    "Options",
    "PublishQueueFull",
    "Reconnect",
    "ResetCallback",
    "ResetInfo",
    "Room",
    "RoomLeft",
    "ServerError",
    "State",
    "StateInfo",
    "StateListener",
    "TokenSource",
    "connect",
    "decide",
    "reconnect_delay",
]
