"""How an edge authenticates to NATS: keyword arguments for `nats.connect` from the settings.

One credential kind at most: user and password (`JETSOCK_NATS_USER`,
`JETSOCK_NATS_PASSWORD`, or `user:password@` in `JETSOCK_NATS_URL`), a token
(`JETSOCK_NATS_TOKEN`), or a `.creds` file holding a user JWT and its nkey seed
(`JETSOCK_NATS_CREDS`). TLS is used for `tls://` URLs and whenever a CA or a
client certificate is configured; the server's certificate is then verified
against `JETSOCK_NATS_TLS_CA` (or the system's CAs when it is empty).

Configuration mistakes raise ValueError with the variable to fix, before any
connection is tried.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nats.aio.client import Client as NATS

from core.settings import Settings, env_name

CREDS_JWT_MARKER = "BEGIN NATS USER JWT"
CREDS_SEED_MARKER = "BEGIN USER NKEY SEED"


def connect_options(settings: Settings) -> dict[str, Any]:
    """`nats.connect` keyword arguments for the settings' credentials and TLS."""
    options: dict[str, Any] = {}
    servers = settings.nats_servers
    url_credentials = any(_has_userinfo(url) for url in servers)
    kinds = [
        name
        for name, present in (
            ("user and password", bool(settings.nats_user or settings.nats_password)),
            ("token", bool(settings.nats_token)),
            ("creds file", bool(settings.nats_creds)),
            ("credentials in the URL", url_credentials),
        )
        if present
    ]
    if len(kinds) > 1:
        raise ValueError(f"NATS credentials given more than once ({', '.join(kinds)}): choose one")

    if settings.nats_user or settings.nats_password:
        if not settings.nats_user:
            raise ValueError(f"{env_name('nats_password')} is set but {env_name('nats_user')} is not")
        if not settings.nats_password:
            raise ValueError(f"{env_name('nats_user')} is set but {env_name('nats_password')} is not")
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password
    if settings.nats_token:
        options["token"] = settings.nats_token
    if settings.nats_creds:
        options["user_credentials"] = _creds_file(settings.nats_creds)

    context = tls_context(settings)
    if context is not None:
        options["tls"] = context
    return options


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for NATS, or None when neither the URLs nor the settings ask for TLS."""
    cert, key, ca = settings.nats_tls_cert, settings.nats_tls_key, settings.nats_tls_ca
    if bool(cert) != bool(key):
        have, missing = ("nats_tls_cert", "nats_tls_key") if cert else ("nats_tls_key", "nats_tls_cert")
        raise ValueError(
            f"{env_name(have)} is set but {env_name(missing)} is not: mutual TLS needs both the certificate and its key"
        )
    wants_tls = any(urlsplit(url).scheme == "tls" for url in settings.nats_servers)
    if not (wants_tls or ca or cert):
        return None
    if ca:
        _readable(ca, "nats_tls_ca")
    try:
        context = ssl.create_default_context(cafile=ca or None)
    except ssl.SSLError as exc:
        raise ValueError(f"{env_name('nats_tls_ca')}={ca!r} holds no usable CA certificate: {exc}") from None
    if cert:
        _readable(cert, "nats_tls_cert")
        _readable(key, "nats_tls_key")
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise ValueError(
                f"cannot load the NATS client certificate {cert!r} with key {key!r}: {exc} "
                f"(check {env_name('nats_tls_cert')} and {env_name('nats_tls_key')})"
            ) from None
    return context


def _has_userinfo(url: str) -> bool:
    try:
        parts = urlsplit(url if "://" in url else "nats://" + url)
    except ValueError:
        return False
    return parts.username is not None


def _readable(path: str, setting: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{env_name(setting)}={path!r}: no such file")
    try:
        with file.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"{env_name(setting)}={path!r} cannot be read: {exc.strerror}") from None
    return file


def _creds_file(path: str) -> str:
    """The creds file's path, once it is known to hold a user JWT and a seed.

    nats-py reads the file at every (re)connect and, given a file without the
    JWT marker, would loop forever looking for it; so the shape is checked here.
    """
    file = _readable(path, "nats_creds")
    text = file.read_text(encoding="utf-8", errors="replace")
    missing = [marker for marker in (CREDS_JWT_MARKER, CREDS_SEED_MARKER) if marker not in text]
    if missing:
        raise ValueError(
            f"{env_name('nats_creds')}={path!r} is not a NATS .creds file (no {' and no '.join(missing)} section)"
        )
    return str(file)


class PlainTextRefused(ConnectionError):
    """A tls:// server did not ask for TLS: CONNECT (with credentials) was not sent."""


class StrictTlsClient(NATS):
    """A nats-py client that never sends CONNECT in plain text to a tls:// URL, and
    survives a flush that timed out.

    nats-py upgrades to TLS only when the server's INFO says `tls_required`;
    otherwise it would send CONNECT, with the user's password or token, in the
    clear. This check runs on every connect and reconnect, at the last moment
    before CONNECT is written.

    nats-py 2.16 leaves the future of a `flush()` that timed out or was
    cancelled in its list of pending PONGs; when that PONG arrives,
    `set_result` on the cancelled future raises inside the read loop and
    stops it, and every request then times out with the client still
    "connected". A hung server makes flushes time out, and a join cancelled
    while its feed flushes cancels one, so `_process_pong` here takes each
    PONG's future in order and resolves it only if it still waits.
    """

    refused_plain_text = False
    on_pong: Callable[[], None] | None = None
    """Called at every PONG (its own pings count as the server answering: core/health.py)."""

    async def _process_pong(self) -> None:
        if self.on_pong is not None:
            self.on_pong()
        pongs = self._pongs
        if pongs:
            future = pongs.pop(0)
            if not future.done():
                future.set_result(True)
            self._pongs_received += 1
            self._pings_outstanding = 0

    def _connect_command(self) -> bytes:
        server = self._current_server
        if server is not None and server.uri.scheme == "tls" and not self._server_info.get("tls_required"):
            self.refused_plain_text = True
            raise PlainTextRefused(f"{server.uri.hostname}:{server.uri.port} does not require TLS")
        command: bytes = super()._connect_command()
        return command
