"""Provisioning the rooms stream, idempotently, and naming its epoch.

The stream stores `rooms.>` and republishes each stored message to
`live.rooms.>` with its sequence headers. At start an edge creates the stream,
or brings an existing one to the configured settings where NATS allows an
update; where it does not (storage type, retention), it stops with a message
naming each difference instead of guessing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RePublish, RetentionPolicy, StorageType, StreamConfig, StreamInfo
from nats.js.errors import BadRequestError, NotFoundError

from core.rooms import LIVE_SUBJECT_PREFIX, ROOM_SUBJECT_PREFIX
from core.settings import Settings

ROOMS_SUBJECTS = ROOM_SUBJECT_PREFIX + ">"
LIVE_SUBJECTS = LIVE_SUBJECT_PREFIX + ">"

# Fields NATS refuses to change on an existing stream.
_IMMUTABLE = ("storage", "retention")


class StreamMismatch(RuntimeError):
    """The existing stream differs from the settings in a way NATS cannot update."""


def desired_config(settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=settings.stream,
        subjects=[ROOMS_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=settings.replicas,
        duplicate_window=settings.duplicate_window,
        max_age=settings.max_age,
        max_msgs_per_subject=settings.max_msgs_per_room,
        republish=RePublish(src=ROOMS_SUBJECTS, dest=LIVE_SUBJECTS),
        allow_direct=True,
    )


def _compared(config: StreamConfig) -> dict[str, Any]:
    republish = config.republish
    return {
        "subjects": sorted(config.subjects or []),
        "retention": config.retention,
        "storage": config.storage,
        "num_replicas": config.num_replicas,
        "duplicate_window": float(config.duplicate_window or 0),
        "max_age": float(config.max_age or 0),
        "max_msgs_per_subject": config.max_msgs_per_subject,
        "republish": (republish.src, republish.dest, bool(republish.headers_only)) if republish else None,
        "allow_direct": bool(config.allow_direct),
    }


def differences(existing: StreamConfig, wanted: StreamConfig) -> dict[str, tuple[Any, Any]]:
    """Field -> (existing, wanted) for every field jetsock cares about that differs."""
    have, want = _compared(existing), _compared(wanted)
    return {key: (have[key], want[key]) for key in want if have[key] != want[key]}


def describe(diff: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{key} is {have!r}, settings want {want!r}" for key, (have, want) in diff.items())


async def ensure_stream(js: JetStreamContext, settings: Settings) -> StreamInfo:
    """Create the stream, or update it to the settings; idempotent."""
    wanted = desired_config(settings)
    try:
        info = await js.stream_info(settings.stream)
    except NotFoundError:
        try:
            return await js.add_stream(wanted)
        except BadRequestError as exc:
            raise StreamMismatch(
                f"cannot create stream {settings.stream!r} on {ROOMS_SUBJECTS}: {exc.description} "
                "(another stream may already hold these subjects)"
            ) from None
    diff = differences(info.config, wanted)
    if not diff:
        return info
    immutable = {key: diff[key] for key in _IMMUTABLE if key in diff}
    if immutable:
        raise StreamMismatch(
            f"stream {settings.stream!r} exists with settings NATS cannot change: {describe(immutable)}. "
            "Delete the stream or point JETSOCK_STREAM at another name."
        )
    try:
        return await js.update_stream(wanted)
    except BadRequestError as exc:
        raise StreamMismatch(
            f"stream {settings.stream!r} differs from the settings ({describe(diff)}) and NATS refused "
            f"the update: {exc.description}"
        ) from None


def epoch_of(info: StreamInfo) -> str:
    """One life of the stream: its creation time, in microseconds, as text."""
    created = info.created
    if isinstance(created, str):
        created = datetime.fromisoformat(created.replace("Z", "+00:00"))
    if created is None:
        raise RuntimeError("stream info has no creation time")
    return str(int(created.timestamp() * 1_000_000))
