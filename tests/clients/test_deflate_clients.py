"""Real clients with permessage-deflate against a real edge: the `websockets` library, Node's `ws`,
aiohttp's client and the Python client (clients/python), each with its own default offer.

The edge runs in this test's event loop, so what it does is seen from inside: the offer each
client really sent (recorded where the edge reads it), the compressed frames it read from the
client (counted in its frame reader), and the room messages it compressed (its counters). Each
client gets a 4 KB room message intact, inflated by its own stack, and sends a compressed publish.
(Chromium: tests/browser/test_demo.py.)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect as websockets_connect
from websockets.extensions.permessage_deflate import PerMessageDeflate

import edge.ws
import jetsock
from edge.deflate import ACCEPTED
from edge.framing import WEBSOCKET_TEXT
from edge.ws import StatelessInflateReader
from tests.conftest import Edge, connect, token
from tests.edge.test_deflate import CHROMIUM, NODE_WS, WEBSOCKETS, message_data

ROOT = Path(__file__).resolve().parents[2]
ROOM = "deflate.clients"


class Seen:
    """What the edge saw: the offers it was sent, and the compressed client messages it inflated."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offers: list[list[str]] = []
        self.inflated = 0
        accepts = edge.ws.accepts
        handle = StatelessInflateReader._handle_frame
        seen = self

        def recording_accepts(values: list[str]) -> bool:
            seen.offers.append(list(values))
            return accepts(values)

        def counting_handle(
            self: StatelessInflateReader, fin: bool, opcode: int, payload: bytes | bytearray, compressed: int
        ) -> None:
            if compressed and fin and opcode in (0x0, 0x1, 0x2):
                seen.inflated += 1
            handle(self, fin, opcode, payload, compressed)

        monkeypatch.setattr(edge.ws, "accepts", recording_accepts)
        monkeypatch.setattr(StatelessInflateReader, "_handle_frame", counting_handle)


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Seen:
    return Seen(monkeypatch)


async def test_the_websockets_library_negotiates_and_gets_4kb_intact(edge: Edge, seen: Seen) -> None:
    data = message_data(4096, seed=10)
    async with websockets_connect(
        edge.url,
        subprotocols=["jetsock.v1", f"bearer.{token('py-websockets')}"],
        proxy=None,  # type: ignore[list-item]
    ) as ws:
        assert ws.response is not None and ws.response.headers["Sec-WebSocket-Extensions"] == ACCEPTED
        (extension,) = ws.protocol.extensions
        assert isinstance(extension, PerMessageDeflate)
        assert extension.remote_no_context_takeover and extension.local_no_context_takeover
        assert json.loads(await ws.recv())["type"] == "welcome"
        await ws.send(json.dumps({"type": "join", "room": ROOM}))
        assert json.loads(await ws.recv())["type"] == "joined"
        await ws.send(json.dumps({"type": "publish", "room": ROOM, "data": data, "ref": "w"}))
        frames = {}
        while len(frames) < 2:
            frame = json.loads(await ws.recv())
            frames[frame["type"]] = frame
    assert frames["ack"]["ref"] == "w" and frames["msg"]["data"] == data
    assert seen.offers == [[WEBSOCKETS]]
    assert seen.inflated == 2  # the join and the publish: websockets compresses every message
    assert edge.node.deflate.counters.messages == 1


async def test_node_ws_negotiates_and_gets_4kb_intact(edge: Edge, seen: Seen) -> None:
    node = shutil.which("node")
    assert node, "node is not installed (make system-deps)"
    assert (ROOT / "clients/js/node_modules/ws").is_dir(), "cd clients/js && npm ci"
    data = message_data(4096, seed=11)
    env = {
        **os.environ,
        "JETSOCK_TEST_URL": edge.url,
        "JETSOCK_TEST_TOKEN": token("node-ws"),
        "JETSOCK_TEST_ROOM": ROOM,
        "JETSOCK_TEST_DATA": json.dumps(data),
    }
    process = await asyncio.create_subprocess_exec(
        node,
        str(ROOT / "tests/clients/deflate_ws.mjs"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        out, _ = await process.communicate()
    assert process.returncode == 0, out.decode(errors="replace")
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["answer"] == ACCEPTED and result["negotiated"] == "permessage-deflate"
    assert result["ack"]["ref"] == "node" and result["msg"]["data"] == data
    assert seen.offers == [[NODE_WS]]
    assert seen.inflated == 1  # the publish: ws compresses messages of 1 KiB or more
    assert edge.node.deflate.counters.messages == 1


async def test_aiohttp_client_offer_and_a_backend_message(edge: Edge, seen: Seen, backend: Any) -> None:
    client = await connect(edge.url, "aiohttp", compress=15)
    try:
        await client.request(type="join", room=ROOM)
        data = message_data(4096, seed=12)
        await backend.jetstream().publish(f"rooms.{ROOM}", json.dumps(data).encode())
        assert (await client.expect("msg"))["data"] == data
    finally:
        await client.close()
    ((offer,),) = seen.offers
    assert offer.startswith("permessage-deflate")
    assert edge.node.deflate.counters.messages == 1


async def test_the_python_client_compresses_by_default(edge: Edge, seen: Seen) -> None:
    data = message_data(4096, seed=13)
    async with jetsock.connect(edge.url, token=token("py-client")) as client:
        room = await client.join(ROOM)
        (conn,) = edge.node.connections
        assert conn.transport_adapter.framing is edge.node.deflate
        ack = await room.publish(data)
        async for msg in room:
            assert msg.seq == ack.seq and msg.data == data
            break
    ((offer,),) = seen.offers
    assert offer == "permessage-deflate; client_max_window_bits"  # aiohttp's compress=15 offer
    assert seen.inflated >= 1
    assert edge.node.deflate.counters.messages == 1


async def test_the_python_client_without_compression(edge: Edge, seen: Seen) -> None:
    data = message_data(4096, seed=14)
    async with jetsock.connect(edge.url, token=token("py-plain"), compress=False) as client:
        room = await client.join(ROOM)
        (conn,) = edge.node.connections
        assert conn.transport_adapter.framing is WEBSOCKET_TEXT
        ack = await room.publish(data)
        async for msg in room:
            assert msg.seq == ack.seq and msg.data == data
            break
    assert seen.offers == [[]] and seen.inflated == 0
    assert edge.node.deflate.counters.messages == 0


def test_the_offers_of_the_wire_tests_are_those_real_clients_send() -> None:
    """tests/edge/test_deflate.py sends these by hand; the tests above check them against the clients."""
    assert CHROMIUM == WEBSOCKETS == NODE_WS == "permessage-deflate; client_max_window_bits"
    assert websockets.__version__
