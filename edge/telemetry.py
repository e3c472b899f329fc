"""Metrics through the OpenTelemetry SDK: Prometheus text at /metrics, and OTLP when configured.

Each node has its own Prometheus registry, so several nodes can live in one
process (the tests run several). Names follow OpenTelemetry's semantic
conventions where one exists (`messaging.client.operation.duration` for the
publish to JetStream), `jetsock.*` otherwise; the Prometheus exporter turns
dots into underscores and adds unit and `_total` suffixes (README lists the
exposed names).

Nothing here runs per delivery: fan-out counts in plain ints that observable
instruments read at collection time; the delivery latency is recorded once
per message per node, and the outbox size once per SAMPLE_EVERY writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, NoOpMeterProvider, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BYTES_BUCKETS = (0, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
OTLP_EXPORT_MILLIS = 15_000


@dataclass(frozen=True, slots=True)
class NodeGauges:
    """What the node reads at collection time, instead of an SDK call per event."""

    connections: Callable[[], tuple[int, int]]
    """(authenticated, pending)."""
    rooms: Callable[[], int]
    deliveries: Callable[[], int]
    bytes_out: Callable[[], int]
    gap_repairs: Callable[[], tuple[int, int]]
    """(repairs, messages fetched by them)."""
    nats: Callable[[], tuple[bool, int]]
    """(connected, reconnects)."""
    live_refused: Callable[[], dict[str, int]]
    """Live messages not delivered as they came, by reason (malformed headers, unconfirmed jumps, rebases)."""
    sockets_refused: Callable[[], dict[str, int]]
    """Sockets refused or dropped before authenticating, by reason."""
    deflate: Callable[[], tuple[int, int, int]]
    """(room messages compressed, their payload bytes, their compressed bytes): once per message per node."""
    history_cache: Callable[[], tuple[int, int, int]]
    """(messages the history cache holds, reads it answered, reads it left to the stream)."""
    presence: Callable[[], tuple[int, int, int, int, int]]
    """(present users, present connections) summed over presence rooms, as this node sees the
    cluster; `presence` frames pushed; presence messages sent and received over NATS."""


def _one(read: Callable[[], int]) -> Callable[[CallbackOptions], Iterable[Observation]]:
    return lambda _options: [Observation(read())]


class Metrics:
    def __init__(self, gauges: NodeGauges, node: str, otlp_endpoint: str = "", enabled: bool = True) -> None:
        self.enabled = enabled
        self._registry = CollectorRegistry(auto_describe=True)
        readers: list[MetricReader] = []
        if enabled:
            readers.append(PrometheusMetricReader(registry=self._registry))  # type: ignore[call-arg]
        if enabled and otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            exporter = OTLPMetricExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/metrics")
            readers.append(PeriodicExportingMetricReader(exporter, export_interval_millis=OTLP_EXPORT_MILLIS))
        resource = Resource.create({"service.name": "jetsock", "service.instance.id": node})
        self._provider = MeterProvider(metric_readers=readers, resource=resource)
        # Off, every instrument is a no-op: what is left is the cost of the calls themselves.
        meter = self._provider.get_meter("jetsock.edge") if enabled else NoOpMeterProvider().get_meter("jetsock.edge")

        def connections(_options: CallbackOptions) -> Iterable[Observation]:
            authenticated, pending = gauges.connections()
            yield Observation(authenticated, {"jetsock.auth.state": "authenticated"})
            yield Observation(pending, {"jetsock.auth.state": "pending"})

        def repairs(index: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
            return lambda _options: [Observation(gauges.gap_repairs()[index])]

        meter.create_observable_up_down_counter(
            "jetsock.connections", callbacks=[connections], description="Open WebSocket connections, by auth state"
        )
        meter.create_observable_up_down_counter(
            "jetsock.rooms.active", callbacks=[_one(gauges.rooms)], description="Rooms with local members"
        )
        meter.create_observable_counter(
            "jetsock.messages.out", callbacks=[_one(gauges.deliveries)], description="Room messages pushed to members"
        )
        meter.create_observable_counter(
            "jetsock.bytes.out", unit="By", callbacks=[_one(gauges.bytes_out)], description="Bytes written to sockets"
        )
        meter.create_observable_counter(
            "jetsock.gap.repairs", callbacks=[repairs(0)], description="Room feeds repaired from the stream"
        )
        meter.create_observable_counter(
            "jetsock.gap.repair.messages", callbacks=[repairs(1)], description="Messages fetched by gap repairs"
        )

        def by_reason(read: Callable[[], dict[str, int]]) -> Callable[[CallbackOptions], Iterable[Observation]]:
            return lambda _options: [Observation(n, {"jetsock.reason": reason}) for reason, n in read().items()]

        meter.create_observable_counter(
            "jetsock.live.refused",
            callbacks=[by_reason(gauges.live_refused)],
            description="Live messages not delivered as they came (malformed, unconfirmed jump, cursor rebased)",
        )
        meter.create_observable_counter(
            "jetsock.sockets.refused",
            callbacks=[by_reason(gauges.sockets_refused)],
            description="Sockets refused at accept (per-source and budget caps) or dropped at the handshake deadline",
        )
        meter.create_observable_gauge(
            "jetsock.history.cache.messages",
            callbacks=[_one(lambda: gauges.history_cache()[0])],
            description="Newest stream messages this node holds for history pages and joins with last",
        )

        def cache_reads(_options: CallbackOptions) -> Iterable[Observation]:
            _, hits, misses = gauges.history_cache()
            yield Observation(hits, {"jetsock.answer": "cache"})
            yield Observation(misses, {"jetsock.answer": "stream"})

        meter.create_observable_counter(
            "jetsock.history.cache.reads",
            callbacks=[cache_reads],
            description="History pages and last windows answered from the cache, or read from the stream by subject",
        )
        meter.create_observable_counter(
            "jetsock.deflate.messages",
            callbacks=[_one(lambda: gauges.deflate()[0])],
            description="Room messages compressed (once per message per node, shared by the members that took it)",
        )
        meter.create_observable_counter(
            "jetsock.deflate.raw",
            unit="By",
            callbacks=[_one(lambda: gauges.deflate()[1])],
            description="Payload bytes of the room messages compressed",
        )
        meter.create_observable_counter(
            "jetsock.deflate.compressed",
            unit="By",
            callbacks=[_one(lambda: gauges.deflate()[2])],
            description="Their compressed size (beside jetsock.bytes.out, what went on the wire)",
        )
        meter.create_observable_gauge(
            "jetsock.presence.users",
            callbacks=[_one(lambda: gauges.presence()[0])],
            description="Present users over the presence rooms, cluster-wide as this node sees it",
        )
        meter.create_observable_gauge(
            "jetsock.presence.connections",
            callbacks=[_one(lambda: gauges.presence()[1])],
            description="Joined connections of present users over the presence rooms, cluster-wide",
        )
        meter.create_observable_counter(
            "jetsock.presence.events",
            callbacks=[_one(lambda: gauges.presence()[2])],
            description="presence frames pushed to this node's sockets",
        )

        def presence_messages(_options: CallbackOptions) -> Iterable[Observation]:
            _users, _conns, _events, sent, received = gauges.presence()
            return [
                Observation(sent, {"jetsock.direction": "sent"}),
                Observation(received, {"jetsock.direction": "received"}),
            ]

        meter.create_observable_counter(
            "jetsock.presence.messages",
            callbacks=[presence_messages],
            description="Presence store operations: messages between nodes over NATS, by direction",
        )
        meter.create_observable_gauge(
            "jetsock.nats.connected",
            callbacks=[_one(lambda: int(gauges.nats()[0]))],
            description="1 while the node's NATS connection is up",
        )
        meter.create_observable_counter(
            "jetsock.nats.reconnects", callbacks=[_one(lambda: gauges.nats()[1])], description="NATS reconnections"
        )
        self.messages_in = meter.create_counter(
            "jetsock.messages.in", description="Messages published through this node, by source (client, http, backend)"
        )
        self.joins = meter.create_counter("jetsock.joins", description="Room joins")
        self.leaves = meter.create_counter("jetsock.leaves", description="Room leaves (asked for, or rights lost)")
        self.replays = meter.create_counter("jetsock.replays", description="Joins with since, by recovered")
        self.replayed = meter.create_counter("jetsock.replay.messages", description="Messages sent by replays")
        self.history_requests = meter.create_counter(
            "jetsock.history.requests", description="History pages served, by transport (frame, http)"
        )
        self.history_messages = meter.create_counter(
            "jetsock.history.messages", description="Messages served in history pages, by transport (frame, http)"
        )
        self.history_duration = meter.create_histogram(
            "jetsock.history.duration",
            unit="s",
            description="A history page from request to reply, its direct gets included",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self.closes = meter.create_counter("jetsock.closes", description="Connections closed, by close code")
        self.auth_failures = meter.create_counter("jetsock.auth.failures", description="Refused tokens, by reason")
        self.rate_limit_hits = meter.create_counter(
            "jetsock.rate_limit.hits", description="Publishes refused by the rate limit"
        )
        self.publish_duration = meter.create_histogram(
            "messaging.client.operation.duration",
            unit="s",
            description="Publish from the edge until JetStream acknowledged it",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self.delivery_duration = meter.create_histogram(
            "jetsock.delivery.duration",
            unit="s",
            description="Stored time of a message until its fan-out to this node's sockets (once per message)",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self.outbox_size = meter.create_histogram(
            "jetsock.outbox.size",
            unit="By",
            description="Bytes in one socket write (sampled)",
            explicit_bucket_boundaries_advisory=BYTES_BUCKETS,
        )

    def exposition(self) -> bytes:
        if not self.enabled:
            return b"# metrics are off (JETSOCK_METRICS=false)\n"
        return generate_latest(self._registry)

    def force_flush(self) -> None:
        """Export now (OTLP); blocks until done, so call it off the event loop."""
        self._provider.force_flush()

    def shutdown(self) -> None:
        self._provider.shutdown()


PUBLISH_ATTRIBUTES = {"messaging.system": "nats", "messaging.operation.name": "publish"}
