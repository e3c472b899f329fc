"""Where token verification keys come from: a secret, a PEM public key, a JWKS.

Each key is bound to the algorithms it may verify, so that no token can pick
how its own key is used: the HS256 secret verifies only HS256, a PEM or JWKS
public key only the one asymmetric algorithm of its type. A PEM public key can
therefore never serve as an HMAC secret (the classic HS/RS confusion).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt import PyJWK, PyJWKSet
from jwt.exceptions import PyJWKError, PyJWKSetError

log = logging.getLogger(__name__)

ASYMMETRIC = ("RS256", "ES256", "EdDSA")
MAX_JWKS_BYTES = 1 << 20


class KeyUnavailable(Exception):
    """No key can verify this token (unknown kid, algorithm without a key, JWKS down)."""


def pem_algorithm(pem: str) -> tuple[Any, str]:
    """The public key in `pem` and the one algorithm it verifies."""
    key = serialization.load_pem_public_key(pem.encode())
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key, "EdDSA"
    raise ValueError("JETSOCK_JWT_PUBLIC_KEY must be an RSA, P-256 or Ed25519 public key")


class JwksCache:
    """Keys of a JWKS address, by `kid`; fetched in a thread with a timeout.

    The set is fetched again after `cache_seconds`, and at most once per
    `min_refresh` seconds when a token names a `kid` it does not hold (a key
    rotation), so a flood of tokens with made-up kids costs one fetch per
    interval, not one per token. Concurrent callers share one fetch. When a
    fetch fails, the keys already held stay in use.
    """

    def __init__(self, url: str, cache_seconds: float, min_refresh: float, timeout: float) -> None:
        self.url = url
        self._cache_seconds = cache_seconds
        self._min_refresh = min_refresh
        self._timeout = timeout
        self._keys: dict[str | None, PyJWK] = {}
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._fetching: asyncio.Future[None] | None = None
        self.fetches = 0

    async def key(self, kid: str | None, algorithm: str) -> Any:
        now = time.monotonic()
        stale = now - self._fetched_at > self._cache_seconds
        unknown = kid not in self._keys
        if stale or (unknown and now - self._attempted_at >= self._min_refresh):
            await self._refresh()
        jwk = self._keys.get(kid)
        if jwk is None and kid is None:
            matching = [k for k in self._keys.values() if k.algorithm_name == algorithm]
            jwk = matching[0] if len(matching) == 1 else None
        if jwk is None:
            raise KeyUnavailable(f"no key with kid {kid!r} in the JWKS")
        if jwk.algorithm_name != algorithm:
            raise KeyUnavailable(f"key {kid!r} is for {jwk.algorithm_name}, not {algorithm}")
        return jwk.key

    async def _refresh(self) -> None:
        if self._fetching is None:
            self._fetching = asyncio.ensure_future(self._fetch())
        fetching = self._fetching
        try:
            await asyncio.shield(fetching)
        except Exception as exc:  # keep serving the keys we hold
            log.warning("JWKS fetch from %s failed: %s", self.url, exc)
        finally:
            if self._fetching is fetching and fetching.done():
                self._fetching = None

    async def _fetch(self) -> None:
        self._attempted_at = time.monotonic()
        self.fetches += 1
        document = await asyncio.to_thread(self._download)
        keys: dict[str | None, PyJWK] = {}
        try:
            jwks = PyJWKSet.from_dict(document)
        except (PyJWKSetError, PyJWKError) as exc:
            raise ValueError(f"JWKS is not usable: {exc}") from None
        for jwk in jwks.keys:
            # Symmetric keys in a JWKS would let anyone who reads it sign tokens.
            if jwk.algorithm_name in ASYMMETRIC:
                keys[jwk.key_id] = jwk
        self._keys = keys
        self._fetched_at = time.monotonic()

    def _download(self) -> dict[str, Any]:
        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=self._timeout) as response:
            body = response.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError("JWKS larger than 1 MiB")
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError("JWKS is not a JSON object")
        return document
