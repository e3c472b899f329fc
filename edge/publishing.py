"""A publish from this edge (a client's frame or an HTTP request), as telemetry sees it."""

from __future__ import annotations

import time

from core.broker import PublishResult
from edge.node import Node
from edge.telemetry import PUBLISH_ATTRIBUTES


async def publish_traced(
    node: Node, room: str, data: bytes, sender: str, key: str | None, source: str
) -> PublishResult:
    """Publish in a PRODUCER span, timing the JetStream round trip; count it by source once stored."""
    with node.tracing.publish(room, source) as trace:
        started = time.perf_counter()
        result = await node.broker.publish(room, data, sender=sender, key=key, trace=trace)
        node.metrics.publish_duration.record(time.perf_counter() - started, PUBLISH_ATTRIBUTES)
    node.metrics.messages_in.add(1, {"jetsock.source": source})
    node.published += 1
    return result
