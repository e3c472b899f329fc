"""Presence on a 3-node NATS cluster with deploy/nats-server.conf's accounts (the edge user's
permissions, as compose, `jetsock cluster` and the chart run them): two edges, each on a
different NATS node, agree on `who` and deliver events across the cluster's routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge.localcluster import LocalCluster
from tests.conftest import SECRET, Client, Edge, edge_settings
from tests.edge.test_presence import events, http_presence, join, listed, present_on, subs, tok, who

ROOM = "chat.cluster"
PRESENCE = {"presence_rooms": "chat.*", "presence_ttl": 3.0, "presence_interval": 0.2}


@pytest.fixture
async def nats_cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """Three clustered nats-servers (no edges, no load balancer: the test runs its own edges)."""
    cluster = LocalCluster(tmp_path / "cluster", jwt_secret=SECRET)
    cluster.workdir.mkdir(parents=True)
    try:
        await asyncio.to_thread(cluster._start_nats)
        yield cluster
    finally:
        for server in cluster.nats:
            server.stop()


@pytest.fixture
async def cluster_edge(nats_cluster: LocalCluster) -> AsyncIterator[Any]:
    edges: list[Edge] = []

    async def factory(index: int, **overrides: Any) -> Edge:
        """An edge connected to NATS node `index` only, as the edge user."""
        settings = edge_settings(
            nats_cluster.nats[index].url,
            nats_user="edge",
            nats_password=nats_cluster.edge_password,
            replicas=3,
            node=f"edge-on-nats-{index + 1}",
            **{**PRESENCE, **overrides},
        )
        edge = await Edge(settings, settings.nats_servers).start()
        edges.append(edge)
        return edge

    yield factory
    for edge in edges:
        await edge.stop()


async def test_two_edges_on_different_nats_nodes_agree_and_tell_each_other(
    cluster_edge: Any, nats_cluster: LocalCluster, clients: list[Client]
) -> None:
    a = await cluster_edge(0)
    b = await cluster_edge(2)
    watcher_a = await join(a, "watcher-a", ROOM)
    watcher_b = await join(b, "watcher-b", ROOM)
    clients += [watcher_a, watcher_b]
    await present_on([a, b], ROOM, {"watcher-a", "watcher-b"})
    for watcher in (watcher_a, watcher_b):
        await events(watcher, lambda got: set(subs(got, "joined")) >= {"watcher-a", "watcher-b"})

    alice_a = await join(a, "alice", ROOM, info={"name": "Alice"})
    alice_b = await join(b, "alice", ROOM, info={"name": "Alice"})
    bob = await join(b, "bob", ROOM)
    clients += [alice_a, alice_b, bob]
    everyone = {"watcher-a", "watcher-b", "alice", "bob"}
    await present_on([a, b], ROOM, everyone)
    for watcher in (watcher_a, watcher_b):
        got = await events(watcher, lambda seen: {"alice", "bob"} <= set(subs(seen, "joined")))
        assert sorted(subs(got, "joined")) == ["alice", "bob"], got  # one joined for alice's two tabs
    replies = [await who(watcher_a, ROOM), await who(watcher_b, ROOM)]
    for reply in replies:
        reply.pop("ref")
    assert replies[0] == replies[1]
    assert replies[0]["count"] == 4 and replies[0]["connections"] == 5
    assert {"sub": "alice", "info": {"name": "Alice"}, "connections": 2} in replies[0]["members"]
    over_http = {k: v for k, v in replies[0].items() if k != "type"}
    assert [await http_presence(edge, ROOM, tok("reader")) for edge in (a, b)] == [(200, over_http)] * 2

    # alice closes her tab on b: still present; then on a: left, on both nodes.
    await alice_b.close()
    await asyncio.sleep(0.5)
    await alice_a.close()
    await bob.close()
    for watcher in (watcher_a, watcher_b):
        got = await events(watcher, lambda seen: {"alice", "bob"} <= set(subs(seen, "left")))
        assert sorted(subs(got, "left")) == ["alice", "bob"] and subs(got, "joined") == [], got
    await present_on([a, b], ROOM, {"watcher-a", "watcher-b"})
    # The edges needed no subject the edge user may not use.
    for server in nats_cluster.nats:
        log = (server.store_dir / "nats-server.log").read_text()
        assert "jetsock.presence" not in log, [line for line in log.splitlines() if "Violation" in line][:5]


async def test_a_third_edge_joining_late_reads_the_cluster_at_once(cluster_edge: Any, clients: list[Client]) -> None:
    a = await cluster_edge(0, presence_ttl=30.0)
    names = [f"u{i}" for i in range(20)]
    clients += [await join(a, name, ROOM) for name in names]
    await present_on([a], ROOM, set(names))
    # A new node (on another NATS node) learns the room from hello and snapshots, not after a ttl.
    late = await cluster_edge(1, presence_ttl=30.0)
    await present_on([late], ROOM, set(names), timeout=5)
    assert listed(late, ROOM) == listed(a, ROOM)
