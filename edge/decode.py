"""Client frames from the bytes of a text frame, with one clear error for every bad input."""

from __future__ import annotations

from typing import Any

import msgspec

from schemas import ClientFrame

_decoder: msgspec.json.Decoder[ClientFrame] = msgspec.json.Decoder(ClientFrame)


class BadFrame(Exception):
    """A frame that is not a valid client frame; `ref` is the client's, when it could be read."""

    def __init__(self, message: str, ref: int | str | None = None) -> None:
        super().__init__(message)
        self.ref = ref


class _RefOnly(msgspec.Struct):
    ref: Any = None


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def decode_client_frame(data: bytes) -> ClientFrame:
    # A text frame must be UTF-8 (RFC 6455); msgspec does not check the bytes
    # inside strings it keeps raw, and raises UnicodeDecodeError on others.
    if not is_utf8(data):
        raise BadFrame("invalid frame: not UTF-8 text")
    try:
        return _decoder.decode(data)
    except RecursionError:
        raise BadFrame("invalid frame: nested too deeply") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadFrame(f"invalid frame: {exc}", _ref_of(data)) from None


def _ref_of(data: bytes) -> int | str | None:
    """The `ref` of a frame that failed validation, so the error can still carry it."""
    try:
        ref = msgspec.json.decode(data, type=_RefOnly).ref
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    return ref if isinstance(ref, int | str) and not isinstance(ref, bool) else None
