"""Observability against a real edge and nats-server: /metrics moves with the traffic, a
backend's traceparent links to the delivery span, close log lines carry their fields and
never a token, and /admin answers only an admin token."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from core.embedded import free_port
from core.jsonlog import JsonFormatter
from edge.tracing import Tracing
from tests.conftest import Edge, connect, open_ws, token
from tests.deploy.test_dashboard import METRICS


async def scrape(edge: Edge) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by name and its labels (otel_scope_* dropped)."""
    async with aiohttp.ClientSession() as http, http.get(f"{edge.http}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if not k.startswith("otel_scope")))
            samples[(sample.name, labels)] = sample.value
    return samples


async def frames_of(client: Any, kind: str, count: int) -> list[dict[str, Any]]:
    """The next `count` frames of `kind`, skipping others (an ack may come before or after a msg)."""
    found = []
    while len(found) < count:
        frame = await client.recv()
        if frame["type"] == kind:
            found.append(frame)
    return found


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


async def test_metrics_move_as_the_traffic_does(make_edge: Any, backend: Any) -> None:
    edge = await make_edge(max_pending_bytes=32 * 1024, close_timeout=2, publish_rate=1, publish_burst=2)
    before = await scrape(edge)
    alice = await connect(edge.url, "alice")
    joined = await alice.request(type="join", room="obs")
    after_join = await scrape(edge)
    assert value(after_join, "jetsock_joins_total") == value(before, "jetsock_joins_total") + 1
    assert value(after_join, "jetsock_connections", jetsock_auth_state="authenticated") == 1
    assert value(after_join, "jetsock_rooms_active") == 1

    # A client's publish, an HTTP publish and a backend's: each counted by source, each delivered.
    await alice.send(type="publish", room="obs", data={"n": 1})
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {token('svc', publish=['>'])}"}
        async with http.post(f"{edge.http}/v1/rooms/obs/messages", json={"n": 2}, headers=headers) as response:
            assert response.status == 201
    await backend.jetstream().publish("rooms.obs", b'{"n":3}')
    await frames_of(alice, "msg", 3)
    traffic = await scrape(edge)
    for source in ("client", "http", "backend"):
        assert value(traffic, "jetsock_messages_in_total", jetsock_source=source) == 1, source
    assert value(traffic, "jetsock_messages_out_total") >= 3
    assert value(traffic, "jetsock_bytes_out_bytes_total") > 0
    publishes = value(traffic, "messaging_client_operation_duration_seconds_count", messaging_system="nats")
    assert publishes == 2
    assert value(traffic, "jetsock_delivery_duration_seconds_count") == 3
    assert value(traffic, "jetsock_nats_connected") == 1

    # The rate limit (1/s, burst 2): the third publish at once is refused and counted.
    for n in range(3):
        await alice.send(type="publish", room="obs", data={"n": n}, ref=f"r{n}")
    assert (await frames_of(alice, "error", 1))[0]["code"] == "rate_limited"
    assert value(await scrape(edge), "jetsock_rate_limit_hits_total") >= 1

    # A rejoin with `since` replays what was missed, recovered.
    await alice.close()
    bob = await connect(edge.url, "bob")
    await bob.request(type="join", room="obs", since=joined["seq"])
    replayed = await scrape(edge)
    assert value(replayed, "jetsock_replays_total", jetsock_recovered="true") == 1
    assert value(replayed, "jetsock_replay_messages_total") >= 3
    await bob.request(type="leave", room="obs")
    assert value(await scrape(edge), "jetsock_leaves_total") == 1

    # A history page (membership not needed), by transport, and its latency.
    await bob.send(type="history", room="obs", limit=2, ref="page")
    page = await bob.recv()
    while page["type"] in ("msg", "left"):  # what the replay and the leave sent, still on its way
        page = await bob.recv()
    assert (page["type"], page.get("ref"), len(page.get("messages", ()))) == ("history", "page", 2), page
    paged = await scrape(edge)
    assert value(paged, "jetsock_history_requests_total", jetsock_transport="frame") == 1
    assert value(paged, "jetsock_history_messages_total", jetsock_transport="frame") == 2
    assert value(paged, "jetsock_history_duration_seconds_count", jetsock_transport="frame") == 1

    # A refused token, by reason.
    refused = await open_ws(edge.url, ("jetsock.v1", "bearer.not-a-jwt"))
    assert (await refused.closed())[0] == 4501
    assert value(await scrape(edge), "jetsock_auth_failures_total", jetsock_reason="invalid") == 1

    # A slow consumer: closed with 4008, and the close is counted by code.
    slow = await connect(edge.url, "slow")
    await slow.request(type="join", room="flood")
    slow.ws._response.connection.transport.pause_reading()  # type: ignore[union-attr]
    js = backend.jetstream()
    blob = b'{"blob":"' + b"x" * 16000 + b'"}'
    for _ in range(600):
        await js.publish("rooms.flood", blob)
        if any(conn.close_code == 4008 for conn in edge.node.connections):
            break
    slow.ws._response.connection.transport.resume_reading()  # type: ignore[union-attr]
    for _ in range(100):
        flooded = await scrape(edge)
        if value(flooded, "jetsock_closes_total", websocket_close_code="4008"):
            break
        await asyncio.sleep(0.1)
    assert value(flooded, "jetsock_closes_total", websocket_close_code="4008") == 1
    assert value(flooded, "jetsock_outbox_size_bytes_count") >= 1

    # Every series the Grafana dashboard queries exists in a real scrape.
    names = {name for name, _labels in flooded}
    exposed = {n.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for n in names}
    missing = sorted(set(METRICS) - exposed - {"jetsock_gap_repairs_total", "jetsock_gap_repair_messages_total"})
    assert not missing, missing
    # Counters that only move on a gap exist from the start too.
    assert {"jetsock_gap_repairs_total", "jetsock_gap_repair_messages_total"} <= names
    await bob.close()
    await slow.close()


async def traced_edge(make_edge: Any, ratio: float) -> tuple[Edge, InMemorySpanExporter]:
    """An edge whose spans land in memory, sampling deliveries at `ratio`."""
    edge: Edge = await make_edge(trace_sample_ratio=ratio)
    spans = InMemorySpanExporter()
    edge.node.tracing = Tracing(edge.node.settings, edge.node.name, exporter=spans)
    return edge, spans


async def test_a_backend_traceparent_links_the_delivery_span(make_edge: Any, backend: Any) -> None:
    edge, spans = await traced_edge(make_edge, 1.0)
    client = await connect(edge.url, "alice")
    await client.request(type="join", room="traced")
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    await backend.jetstream().publish(
        "rooms.traced", b'{"hello":1}', headers={"traceparent": f"00-{trace_id}-{parent_id}-01"}
    )
    await client.expect("msg")
    delivered = [s for s in spans.get_finished_spans() if s.name == "deliver traced"]
    assert len(delivered) == 1
    span = delivered[0]
    assert span.kind is SpanKind.CONSUMER
    assert [format(link.context.trace_id, "032x") for link in span.links] == [trace_id]
    assert [format(link.context.span_id, "016x") for link in span.links] == [parent_id]
    assert span.attributes is not None and span.attributes["jetsock.members"] == 1

    # A client's publish through the edge: a PRODUCER span, and the delivery links to it.
    spans.clear()
    await client.send(type="publish", room="traced", data={"hi": 2})
    await frames_of(client, "msg", 1)
    finished = spans.get_finished_spans()
    producer = next(s for s in finished if s.name == "publish traced")
    consumer = next(s for s in finished if s.name == "deliver traced")
    assert producer.kind is SpanKind.PRODUCER
    assert consumer.links[0].context.span_id == producer.context.span_id
    await client.close()


async def test_sampling_keeps_delivery_spans_to_the_ratio(make_edge: Any, backend: Any) -> None:
    edge, spans = await traced_edge(make_edge, 0.0)
    client = await connect(edge.url, "alice")
    await client.request(type="join", room="quiet")
    for n in range(20):
        await backend.jetstream().publish("rooms.quiet", json.dumps({"n": n}).encode())
    for _ in range(20):
        await client.expect("msg")
    assert [s for s in spans.get_finished_spans() if s.name.startswith("deliver")] == []
    await client.close()


async def test_close_lines_carry_their_fields_and_no_token(make_edge: Any, caplog: pytest.LogCaptureFixture) -> None:
    edge = await make_edge()
    caplog.set_level(logging.INFO)
    secret = token("carol", join=["room.*"], publish=["room.*"])
    client = await connect(edge.url, "carol", tok=secret)
    await client.request(type="join", room="room.a")
    await client.request(type="join", room="room.b")
    await client.send(type="refresh", token=secret + "x")  # a bad refresh: logged nowhere with its token
    await client.expect("error")
    await client.close()
    for _ in range(50):
        closes = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "close"]
        if closes:
            break
        await asyncio.sleep(0.05)
    line = json.loads(JsonFormatter().format(closes[0]))
    assert line["sub"] == "carol" and line["rooms"] == 2 and line["node"] == "test-node"
    assert line["code"] == 1000 and line["duration_s"] >= 0 and line["messages_out"] >= 2
    everything = "\n".join(JsonFormatter().format(r) for r in caplog.records) + caplog.text
    assert secret not in everything and secret.split(".")[2] not in everything


async def test_admin_state_needs_an_admin_token(make_edge: Any) -> None:
    off = await make_edge()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{off.http}/admin") as response:
            assert response.status == 404
        edge = await make_edge(admin=True)
        client = await connect(edge.url, "dave")
        await client.request(type="join", room="busy")
        url = f"{edge.http}/admin/api/state"
        async with http.get(url) as response:
            assert response.status == 401
        async with http.get(url, headers={"Authorization": f"Bearer {token('dave')}"}) as response:
            assert response.status == 403
            assert "admin" in (await response.json())["message"]
        admin = token("ops", admin=True)
        async with http.get(url, headers={"Authorization": f"Bearer {admin}"}) as response:
            assert response.status == 200
            state = await response.json()
        async with http.get(f"{edge.http}/admin") as response:
            assert response.status == 200 and "operator" in await response.text()
    assert state["connections"] == {"authenticated": 1, "pending": 0}
    assert state["top_rooms"] == [{"room": "busy", "members": 1}]
    assert state["nats"]["connected"] is True
    await client.close()


async def test_otlp_pushes_metrics_and_spans_to_the_collector(make_edge: Any, backend: Any) -> None:
    """A real OTLP/HTTP endpoint (an aiohttp server decoding the protobuf bodies) receives both signals."""
    received: dict[str, list[bytes]] = {"metrics": [], "traces": []}

    async def collect(request: web.Request) -> web.Response:
        received[request.match_info["signal"]].append(await request.read())
        return web.Response(content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/{signal}", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        edge = await make_edge(otlp_endpoint=f"http://127.0.0.1:{port}", trace_sample_ratio=1.0)
        client = await connect(edge.url, "alice")
        await client.request(type="join", room="pushed")
        await client.send(type="publish", room="pushed", data={"n": 1})
        await frames_of(client, "msg", 1)
        # The exporters post from their own threads; the loop must stay free to answer them.
        await asyncio.to_thread(edge.node.metrics.force_flush)
        await asyncio.to_thread(edge.node.tracing.force_flush)
        await client.close()
        await edge.stop()  # while the collector still answers the exporters' last flush
    finally:
        await runner.cleanup()
    metric_names = set()
    for body in received["metrics"]:
        request = ExportMetricsServiceRequest.FromString(body)
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                metric_names |= {metric.name for metric in scope.metrics}
    assert {"jetsock.connections", "jetsock.joins", "messaging.client.operation.duration"} <= metric_names
    span_names = set()
    for body in received["traces"]:
        for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans:
            for scope_spans in resource_spans.scope_spans:
                span_names |= {span.name for span in scope_spans.spans}
    assert {"publish pushed", "deliver pushed"} <= span_names
