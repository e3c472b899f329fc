"""The embedded nats-server's config: only the edge, with deploy/nats-server.conf's permissions (core/natsauth.py)."""

from __future__ import annotations

import asyncio
import re
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from core.embedded import EmbeddedNats
from core.natsauth import EDGE_SUBSCRIBE, EDGE_USER, EdgeCredentials, edge_only_config, edge_only_server, edge_publish
from tests.conftest import Edge, connect, edge_settings, refused_connect

DEPLOY_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats-server.conf"


def deploy_edge_permissions() -> tuple[list[str], list[str]]:
    """The edge user's publish and subscribe allow-lists in deploy/nats-server.conf."""
    lines = [line.split("#", 1)[0] for line in DEPLOY_CONF.read_text().splitlines()]
    text = "\n".join(lines)
    block = text[text.index("user: edge") : text.index("user: backend")]
    lists = []
    for kind in ("publish", "subscribe"):
        match = re.search(kind + r":\s*\{\s*allow:\s*\[(.*?)\]", block, re.DOTALL)
        assert match, kind
        lists.append(re.findall(r'"([^"]+)"', match.group(1)))
    return lists[0], lists[1]


def test_the_embedded_edge_user_has_exactly_the_deploy_permissions() -> None:
    publish, subscribe = deploy_edge_permissions()
    assert edge_publish("ROOMS") == publish
    assert subscribe == EDGE_SUBSCRIBE
    config = "\n".join(line.split("#", 1)[0] for line in edge_only_config("ROOMS", "p" * 32).splitlines())
    for subject in publish + subscribe:
        assert f'"{subject}"' in config
    assert "no_auth_user" not in config and "authorization" not in config
    assert config.count("user:") == 1
    # An edge answers the stream posts other edges forward to it (core/streamroute.py), in both.
    deploy = "\n".join(line.split("#", 1)[0] for line in DEPLOY_CONF.read_text().splitlines())
    edge_block = deploy[deploy.index("user: edge") : deploy.index("user: backend")]
    assert "allow_responses: true" in config and "allow_responses: true" in edge_block


@pytest.mark.parametrize("stream", ["", "A B", 'X"', "ROOMS.>", "a*", "x" * 256])
def test_a_stream_name_that_cannot_be_written_into_the_config_is_refused(stream: str) -> None:
    with pytest.raises(ValueError, match="JETSOCK_STREAM"):
        edge_only_config(stream, "p" * 32)


def test_a_weak_or_unquotable_password_is_refused() -> None:
    for password in ("short", 'has"quote' * 3, "x" * 15):
        with pytest.raises(ValueError, match="password"):
            edge_only_config("ROOMS", password)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[EmbeddedNats, EdgeCredentials]]:
    server, credentials = edge_only_server(tmp_path / "nats", 0, "ROOMS")
    server.start()
    yield server, credentials
    server.stop()


@pytest.fixture
async def edge_on_secured(secured: tuple[EmbeddedNats, EdgeCredentials]) -> AsyncIterator[Edge]:
    server, credentials = secured
    settings = edge_settings(server.url, nats_user=credentials.user, nats_password=credentials.password)
    edge = await Edge(settings, settings.nats_servers).start()
    yield edge
    await edge.stop()


async def test_only_the_edge_connects_and_it_is_fenced(secured: tuple[EmbeddedNats, EdgeCredentials]) -> None:
    server, credentials = secured
    mode = server.config_path.stat().st_mode
    assert server.config_path.parent == server.store_dir and stat.S_IMODE(mode) == 0o600
    for options in (
        {},
        {"user": EDGE_USER, "password": "wrong"},
        {"user": "backend", "password": credentials.password},
        {"token": credentials.password},
    ):
        assert "authorization violation" in str(await refused_connect(server.url, **options)).lower(), options
    errors: list[str] = []

    async def record(exc: Exception) -> None:
        errors.append(str(exc).lower())

    nc = await nats.connect(
        server.url, user=credentials.user, password=credentials.password, error_cb=record, allow_reconnect=False
    )
    try:
        await nc.publish("live.rooms.x", b"forged")
        await nc.publish("$JS.API.STREAM.DELETE.ROOMS", b"")
        await nc.subscribe("$JS.API.>")
        await nc.flush()
        for _ in range(100):
            if len(errors) >= 3:
                break
            await asyncio.sleep(0.02)
        assert len(errors) == 3 and all("permissions violation" in e for e in errors), errors
    finally:
        await nc.close()


async def test_an_edge_with_the_credentials_works(edge_on_secured: Edge) -> None:
    client = await connect(edge_on_secured.url)
    try:
        joined = await client.request(type="join", room="embedded.x", since=0)
        assert joined["type"] == "joined" and joined["recovered"] is True
        ack = await client.request(type="publish", room="embedded.x", data={"n": 1})
        if ack["type"] == "msg":
            ack, msg = await client.expect("ack"), ack
        else:
            msg = await client.expect("msg")
        assert msg["seq"] == ack["seq"] and msg["data"] == {"n": 1}
    finally:
        await client.close()


async def test_another_stream_name_gets_its_own_api_subjects(tmp_path: Path) -> None:
    server, credentials = edge_only_server(tmp_path / "nats", 0, "CHAT")
    server.start()
    try:
        settings = edge_settings(
            server.url, nats_user=credentials.user, nats_password=credentials.password, stream="CHAT"
        )
        edge = await Edge(settings, settings.nats_servers).start()
        try:
            client = await connect(edge.url)
            assert (await client.request(type="join", room="x"))["type"] == "joined"
            await client.close()
        finally:
            await edge.stop()
    finally:
        server.stop()
