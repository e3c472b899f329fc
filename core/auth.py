"""JWT verification into a principal: who the client is and which rooms it may use.

Algorithms come from an explicit allow-list and each is bound to its key
source (core.keys); `none` is never accepted. `exp` and `sub` are required,
`nbf` is honoured, `aud` and `iss` are checked when configured.
"""

from __future__ import annotations

import functools
import json
import re
import time
from typing import Any

import jwt

from core.keys import ASYMMETRIC, JwksCache, KeyUnavailable, pem_algorithm
from core.rooms import NO_RIGHTS, InvalidRoom, RoomRights
from core.settings import Settings

ALLOWED_ALGORITHMS = ("HS256", *ASYMMETRIC)
SUB_PLACEHOLDER = "{sub}"
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+\Z", re.ASCII)


class AuthError(Exception):
    """A token that does not authenticate; the message is safe to show the client.

    `reason` is a short fixed word for metrics: invalid, expired, not_yet_valid,
    too_large, algorithm, key, claims."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class Principal:
    """An authenticated client: its subject, token expiry and room rights."""

    __slots__ = ("admin", "exp", "info", "join", "presence", "publish", "sub")

    def __init__(
        self,
        sub: str,
        exp: int,
        join: RoomRights,
        publish: RoomRights,
        admin: bool = False,
        presence: RoomRights = NO_RIGHTS,
        info: bytes | None = None,
    ) -> None:
        self.sub = sub
        self.exp = exp
        self.join = join
        self.publish = publish
        self.admin = admin
        """The token's `admin` claim is `true`: it may use the operator endpoints."""
        self.presence = presence
        """`rooms.presence`: the rooms whose presence it may read (`who`, `presence` events)."""
        self.info = info
        """The `info` claim, as JSON (at most MAX_INFO_BYTES): the public details shown in presence."""

    def can_join(self, room: str) -> bool:
        return self.join.allows(room)

    def can_publish(self, room: str) -> bool:
        return self.publish.allows(room)

    def can_see_presence(self, room: str) -> bool:
        return self.presence.allows(room)


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        self._secret = settings.jwt_secret or None
        self._pem: tuple[Any, str] | None = None
        if settings.jwt_public_key:
            self._pem = pem_algorithm(settings.jwt_public_key)
        self._jwks: JwksCache | None = None
        if settings.jwks_url:
            self._jwks = JwksCache(
                settings.jwks_url, settings.jwks_cache_seconds, settings.jwks_min_refresh, settings.jwks_timeout
            )
        if not (self._secret or self._pem or self._jwks):
            raise ValueError("no token key: set JETSOCK_JWT_SECRET, JETSOCK_JWT_PUBLIC_KEY or JETSOCK_JWKS_URL")
        self._audience = settings.jwt_audience or None
        self._issuer = settings.jwt_issuer or None
        self._leeway = settings.jwt_leeway
        self._max_bytes = settings.max_token_bytes

    @property
    def jwks(self) -> JwksCache | None:
        return self._jwks

    async def verify(self, token: str) -> Principal:
        if len(token) > self._max_bytes:
            raise AuthError(f"token longer than {self._max_bytes} bytes", "too_large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise AuthError(
                f"algorithm {algorithm!r} is not accepted; use one of {', '.join(ALLOWED_ALGORITHMS)}", "algorithm"
            )
        key = await self._key(algorithm, header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired", "expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not valid yet (nbf)", "not_yet_valid") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        return principal_from_claims(claims)

    async def _key(self, algorithm: str, kid: Any) -> Any:
        if algorithm == "HS256":
            if self._secret is None:
                raise AuthError("HS256 tokens are not accepted here", "algorithm")
            return self._secret
        if kid is not None and not isinstance(kid, str):
            raise AuthError("invalid token: kid must be a string")
        if self._jwks is not None:
            try:
                return await self._jwks.key(kid, algorithm)
            except KeyUnavailable as exc:
                if self._pem is None or self._pem[1] != algorithm:
                    raise AuthError(f"no key for this token: {exc}", "key") from None
        if self._pem is not None and self._pem[1] == algorithm:
            return self._pem[0]
        raise AuthError(f"{algorithm} tokens are not accepted here", "algorithm")


def expand_patterns(texts: list[str], sub: str) -> list[str]:
    """Put the subject into `{sub}` placeholders; a subject that is not a plain
    room segment grants nothing through them (it could otherwise add dots or
    wildcards and widen the right)."""
    if not any(SUB_PLACEHOLDER in text for text in texts):
        return texts
    plain = _SEGMENT.match(sub) is not None
    return [text.replace(SUB_PLACEHOLDER, sub) for text in texts if plain or SUB_PLACEHOLDER not in text]


@functools.lru_cache(maxsize=1024)
def _shared_rights(texts: tuple[str, ...]) -> RoomRights:
    """Rights parsed once per distinct pattern list and shared (they are immutable):
    thousands of connections holding tokens with the same rooms then hold one
    RoomRights, not ~650 bytes of patterns each. Invalid patterns raise and are
    not cached."""
    return RoomRights.parse(texts)


def _patterns(rooms: dict[str, Any], right: str, sub: str) -> RoomRights:
    texts = rooms.get(right, [])
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise AuthError(f"claim rooms.{right} must be a list of room patterns", "claims")
    try:
        return _shared_rights(tuple(expand_patterns(texts, sub)))
    except InvalidRoom as exc:
        raise AuthError(f"claim rooms.{right}: {exc}", "claims") from None


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthError("claim sub must be a non-empty string", "claims")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise AuthError("claim exp must be a number", "claims")
    rooms = claims.get("rooms")
    if rooms is None:
        rooms = {}  # no rooms claim: no rights
    if not isinstance(rooms, dict):
        raise AuthError("claim rooms must be an object", "claims")
    admin = claims.get("admin") is True
    return Principal(
        sub,
        int(exp),
        _patterns(rooms, "join", sub),
        _patterns(rooms, "publish", sub),
        admin,
        _patterns(rooms, "presence", sub),
        _info(claims.get("info")),
    )


MAX_INFO_BYTES = 1024
"""Largest `info` claim, as compact JSON (PROTOCOL.md section 10)."""
MAX_INFO_DEPTH = 8
"""Deepest nesting of objects and arrays in `info`: presence copies it to every watcher."""


def _info(value: Any) -> bytes | None:
    """The `info` claim as compact JSON, or an AuthError saying what is wrong with it."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise AuthError("claim info must be a JSON object", "claims")
    if _depth(value) > MAX_INFO_DEPTH:
        raise AuthError(f"claim info is nested deeper than {MAX_INFO_DEPTH} levels", "claims")
    encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    if len(encoded) > MAX_INFO_BYTES:
        raise AuthError(f"claim info is {len(encoded)} bytes as JSON; at most {MAX_INFO_BYTES}", "claims")
    return encoded


def _depth(value: Any, level: int = 1) -> int:
    if level > MAX_INFO_DEPTH:
        return level
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return max((_depth(child, level + 1) for child in children if isinstance(child, dict | list)), default=level)


def make_token(
    secret: str,
    sub: str,
    join: list[str],
    publish: list[str],
    ttl: float = 3600.0,
    presence: list[str] | None = None,
    **claims: Any,
) -> str:
    """An HS256 token with room rights, for development and tests."""
    now = int(time.time())
    rooms: dict[str, list[str]] = {"join": join, "publish": publish}
    if presence is not None:
        rooms["presence"] = presence
    payload = {"sub": sub, "iat": now, "exp": now + int(ttl), "rooms": rooms}
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")
