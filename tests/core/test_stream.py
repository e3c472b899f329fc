"""Provisioning the rooms stream against a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from core.embedded import EmbeddedNats
from core.settings import Settings, load_settings
from core.stream import LIVE_SUBJECTS, ROOMS_SUBJECTS, StreamMismatch, ensure_stream, epoch_of


def make_settings(**overrides: Any) -> Settings:
    return load_settings(environ={}, jwt_secret="x", **overrides)


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def test_creates_the_stream_from_settings(nc: NATS) -> None:
    js = nc.jetstream()
    settings = make_settings(stream="ROOMS_T", duplicate_window=90.0, max_age=7200.0, max_msgs_per_room=500)
    created = await ensure_stream(js, settings)
    info = await js.stream_info("ROOMS_T")
    config = info.config
    assert config.name == "ROOMS_T"
    assert config.subjects == [ROOMS_SUBJECTS] == ["rooms.>"]
    assert config.republish is not None
    republish = (config.republish.src, config.republish.dest)
    assert republish == ("rooms.>", "live.rooms.>") == (ROOMS_SUBJECTS, LIVE_SUBJECTS)
    assert not config.republish.headers_only
    assert config.allow_direct is True
    assert config.duplicate_window == pytest.approx(90.0)
    assert config.max_age == pytest.approx(7200.0)
    assert config.max_msgs_per_subject == 500
    assert config.num_replicas == 1
    assert config.storage == StorageType.FILE
    assert config.retention == RetentionPolicy.LIMITS
    assert epoch_of(created) == epoch_of(info)


async def test_defaults_give_the_documented_stream(nc: NATS) -> None:
    js = nc.jetstream()
    settings = make_settings()
    await ensure_stream(js, settings)
    config = (await js.stream_info("ROOMS")).config
    assert config.duplicate_window == pytest.approx(settings.duplicate_window)
    assert config.max_age == pytest.approx(settings.max_age)
    assert config.max_msgs_per_subject == settings.max_msgs_per_room
    assert config.num_replicas == settings.replicas == 1


async def test_republishes_stored_messages_with_sequence_headers(nc: NATS) -> None:
    js = nc.jetstream()
    await ensure_stream(js, make_settings())
    sub = await nc.subscribe("live.rooms.>")
    await nc.flush()
    first = await js.publish("rooms.a.b", b'{"n":1}')
    await js.publish("rooms.other", b"x")
    second = await js.publish("rooms.a.b", b'{"n":2}')
    got = [await sub.next_msg(timeout=2) for _ in range(3)]
    assert [m.subject for m in got] == ["live.rooms.a.b", "live.rooms.other", "live.rooms.a.b"]
    assert got[0].headers is not None and got[2].headers is not None
    assert int(got[0].headers["Nats-Sequence"]) == first.seq
    assert int(got[0].headers["Nats-Last-Sequence"]) == 0
    assert int(got[2].headers["Nats-Sequence"]) == second.seq
    # The predecessor on the same subject, skipping the other room.
    assert int(got[2].headers["Nats-Last-Sequence"]) == first.seq
    assert got[2].data == b'{"n":2}'
    await sub.unsubscribe()


async def test_is_idempotent(nc: NATS) -> None:
    js = nc.jetstream()
    settings = make_settings()
    first = await ensure_stream(js, settings)
    await js.publish("rooms.a", b"1")
    second = await ensure_stream(js, settings)
    third = await ensure_stream(js, settings)
    assert epoch_of(first) == epoch_of(second) == epoch_of(third)
    assert second.created == first.created
    assert (await js.stream_info("ROOMS")).state.messages == 1


async def test_updates_changeable_settings_in_place(nc: NATS) -> None:
    js = nc.jetstream()
    first = await ensure_stream(js, make_settings())
    await js.publish("rooms.a", b"1")
    changed = make_settings(max_age=3600.0, duplicate_window=30.0, max_msgs_per_room=50)
    await ensure_stream(js, changed)
    info = await js.stream_info("ROOMS")
    assert info.config.max_age == pytest.approx(3600.0)
    assert info.config.duplicate_window == pytest.approx(30.0)
    assert info.config.max_msgs_per_subject == 50
    # The same stream, updated: same life, messages kept.
    assert epoch_of(info) == epoch_of(first)
    assert info.state.messages == 1
    # And back, and unlimited.
    await ensure_stream(js, make_settings(max_msgs_per_room=-1, max_age=0.0))
    info = await js.stream_info("ROOMS")
    assert info.config.max_msgs_per_subject == -1
    assert not info.config.max_age
    assert epoch_of(info) == epoch_of(first)


async def test_a_memory_stream_of_the_same_name_is_a_mismatch_naming_storage(nc: NATS) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="ROOMS", subjects=["rooms.>"], storage=StorageType.MEMORY, allow_direct=True))
    with pytest.raises(StreamMismatch, match="storage") as raised:
        await ensure_stream(js, make_settings())
    assert "ROOMS" in str(raised.value)
    # Nothing was changed.
    assert (await js.stream_info("ROOMS")).config.storage == StorageType.MEMORY


async def test_a_different_retention_is_a_mismatch_naming_retention(nc: NATS) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="ROOMS", subjects=["rooms.>"], retention=RetentionPolicy.INTEREST))
    with pytest.raises(StreamMismatch, match="retention"):
        await ensure_stream(js, make_settings())


async def test_epoch_changes_when_the_stream_is_recreated(nc: NATS) -> None:
    js = nc.jetstream()
    settings = make_settings()
    before = epoch_of(await ensure_stream(js, settings))
    await js.delete_stream("ROOMS")
    with pytest.raises(NotFoundError):
        await js.stream_info("ROOMS")
    await asyncio.sleep(0.01)
    after = epoch_of(await ensure_stream(js, settings))
    assert after != before
    assert epoch_of(await js.stream_info("ROOMS")) == after
    assert int(after) > int(before)


async def test_another_stream_holding_the_room_subjects_is_a_clear_error(nc: NATS) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="SOMEONE_ELSE", subjects=[ROOMS_SUBJECTS]))
    with pytest.raises(StreamMismatch, match="another stream may already hold"):
        await ensure_stream(js, make_settings())
