"""Metrics through the OpenTelemetry SDK, exposed in Prometheus text format.

Each node has its own Prometheus registry, so several nodes can live in one
process (the tests run several).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, connections: Callable[[], int], rooms: Callable[[], int], deliveries: Callable[[], int]) -> None:
        self._registry = CollectorRegistry(auto_describe=True)
        self._reader = PrometheusMetricReader(registry=self._registry)
        self._provider = MeterProvider(metric_readers=[self._reader])
        meter = self._provider.get_meter("jetsock.edge")

        def gauge(read: Callable[[], int]) -> Callable[[CallbackOptions], Iterable[Observation]]:
            return lambda _options: [Observation(read())]

        meter.create_observable_up_down_counter(
            "jetsock.connections", callbacks=[gauge(connections)], description="Open WebSocket connections"
        )
        meter.create_observable_up_down_counter(
            "jetsock.rooms.active", callbacks=[gauge(rooms)], description="Rooms with local members"
        )
        self.messages_in = meter.create_counter(
            "jetsock.messages.in", description="Messages published through this node, by source"
        )
        # Fan-out counts deliveries in a plain int (no SDK call per member); read at scrape time.
        meter.create_observable_counter(
            "jetsock.messages.out", callbacks=[gauge(deliveries)], description="Room messages pushed to members"
        )
        self.joins = meter.create_counter("jetsock.joins", description="Room joins")
        self.replayed = meter.create_counter("jetsock.replay.messages", description="Messages sent by replays")
        self.closes = meter.create_counter("jetsock.closes", description="Connections closed, by close code")
        self.slow_consumers = meter.create_counter(
            "jetsock.slow_consumers", description="Connections closed for a full outbound buffer"
        )

    def exposition(self) -> bytes:
        return generate_latest(self._registry)

    def shutdown(self) -> None:
        self._provider.shutdown()
