"""Traces: a publish and the deliveries it causes, linked across processes by `traceparent`.

The edge opens a PRODUCER span around each publish it makes (from a client
or over HTTP) and writes the W3C `traceparent` into the NATS headers, where
JetStream stores it. A backend may set the same header itself. Each node
that fans a message out records a CONSUMER span linked to that context, for a
`trace_sample_ratio` share of messages: fan-out multiplies spans, so they are
sampled, and there is one per message per node, never one per member.

Tracing is on when `otlp_endpoint` is set (spans go to its /v1/traces), or
when a test hands in its own exporter.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from core.settings import Settings
from core.stored import TRACEPARENT_HEADER, StoredMessage

_PROPAGATOR = TraceContextTextMapPropagator()
_GETTER = DefaultGetter()


class Tracing:
    def __init__(self, settings: Settings, node: str, exporter: SpanExporter | None = None) -> None:
        if not 0.0 <= settings.trace_sample_ratio <= 1.0:
            raise ValueError(f"trace_sample_ratio must be within [0, 1], not {settings.trace_sample_ratio}")
        self.ratio = settings.trace_sample_ratio
        self.enabled = bool(settings.otlp_endpoint) or exporter is not None
        self._provider: TracerProvider | None = None
        self._tracer: trace.Tracer = trace.NoOpTracer()
        if not self.enabled:
            return
        provider = TracerProvider(resource=Resource.create({"service.name": "jetsock", "service.instance.id": node}))
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self._provider = provider
        self._tracer = provider.get_tracer("jetsock.edge")

    @contextmanager
    def publish(self, room: str, source: str) -> Iterator[dict[str, str]]:
        """A PRODUCER span around one publish; yields the headers that carry its context (empty when off)."""
        if not self.enabled:
            yield {}
            return
        attributes = {"messaging.system": "nats", "messaging.destination.name": room, "jetsock.source": source}
        with self._tracer.start_as_current_span(f"publish {room}", kind=SpanKind.PRODUCER, attributes=attributes):
            headers: dict[str, str] = {}
            _PROPAGATOR.inject(headers)
            yield headers

    def delivered(self, message: StoredMessage, members: int) -> None:
        """Record, for a sampled share of messages, this node's fan-out of `message`."""
        if not self.enabled or (self.ratio < 1.0 and random.random() >= self.ratio):
            return
        links = []
        if message.traceparent:
            context = _PROPAGATOR.extract({TRACEPARENT_HEADER: message.traceparent}, getter=_GETTER)
            span_context = trace.get_current_span(context).get_span_context()
            if span_context.is_valid:
                links.append(Link(span_context))
        attributes: dict[str, str | int] = {
            "messaging.system": "nats",
            "messaging.destination.name": message.room,
            "jetsock.seq": message.seq,
            "jetsock.members": members,
        }
        span = self._tracer.start_span(
            f"deliver {message.room}", kind=SpanKind.CONSUMER, links=links, attributes=attributes
        )
        span.end()

    def force_flush(self) -> None:
        """Export finished spans now; blocks, so call it off the event loop."""
        if self._provider is not None:
            self._provider.force_flush()

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()
