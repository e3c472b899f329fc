"""JWT verification into a principal: who the client is and which rooms it may use.

This issue's scope is HS256 with `JETSOCK_JWT_SECRET`; the verifier is the one
place that grows the other key sources (PEM, JWKS) later.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

from core.rooms import InvalidRoom, RoomRights
from core.settings import Settings

ALLOWED_ALGORITHMS = ["HS256"]


class AuthError(Exception):
    """A token that does not authenticate; the message is safe to show the client."""


class Principal:
    """An authenticated client: its subject, token expiry and room rights."""

    __slots__ = ("claims", "exp", "join", "publish", "sub")

    def __init__(self, sub: str, exp: int, join: RoomRights, publish: RoomRights, claims: dict[str, Any]) -> None:
        self.sub = sub
        self.exp = exp
        self.join = join
        self.publish = publish
        self.claims = claims

    def can_join(self, room: str) -> bool:
        return self.join.allows(room)

    def can_publish(self, room: str) -> bool:
        return self.publish.allows(room)


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        if not settings.jwt_secret:
            raise ValueError("JETSOCK_JWT_SECRET is required to verify client tokens")
        self._key = settings.jwt_secret
        self._audience = settings.jwt_audience or None
        self._issuer = settings.jwt_issuer or None
        self._leeway = settings.jwt_leeway

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=ALLOWED_ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        return principal_from_claims(claims)


def _patterns(rooms: dict[str, Any], right: str) -> RoomRights:
    texts = rooms.get(right, [])
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise AuthError(f"claim rooms.{right} must be a list of room patterns")
    try:
        return RoomRights.parse(texts)
    except InvalidRoom as exc:
        raise AuthError(f"claim rooms.{right}: {exc}") from None


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthError("claim sub must be a non-empty string")
    exp = claims.get("exp")
    if not isinstance(exp, int | float):
        raise AuthError("claim exp must be a number")
    rooms = claims.get("rooms") or {}
    if not isinstance(rooms, dict):
        raise AuthError("claim rooms must be an object")
    return Principal(sub, int(exp), _patterns(rooms, "join"), _patterns(rooms, "publish"), claims)


def make_token(
    secret: str,
    sub: str,
    join: list[str],
    publish: list[str],
    ttl: float = 3600.0,
    **claims: Any,
) -> str:
    """An HS256 token with room rights, for development and tests."""
    now = int(time.time())
    payload = {"sub": sub, "iat": now, "exp": now + int(ttl), "rooms": {"join": join, "publish": publish}}
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")
