"""NATS credentials and TLS: connect_options, and the deploy/ config against a real nats-server."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import ipaddress
import json
import logging
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from nats.aio.client import Client as NATS

from core.broker import Broker, Unavailable
from core.embedded import EmbeddedNats
from core.natsconn import connect_options
from core.settings import Settings, load_settings
from core.stored import StoredMessage
from core.stream import desired_config
from tests.conftest import Edge, connect, edge_settings, refused_connect

DEPLOY_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats-server.conf"
EDGE_PASSWORD = "edge-" + secrets.token_hex(8)
BACKEND_PASSWORD = "backend-" + secrets.token_hex(8)

# The edge's permissions, as in deploy/nats-server.conf, for the .creds user JWT.
EDGE_PUB = [
    "rooms.>",
    "$JS.API.STREAM.INFO.ROOMS",
    "$JS.API.STREAM.CREATE.ROOMS",
    "$JS.API.STREAM.UPDATE.ROOMS",
    "$JS.API.DIRECT.GET.ROOMS",
    "jetsock.presence.>",
    "jetsock.stream.>",
]
EDGE_SUB = ["live.rooms.>", "_INBOX.>", "jetsock.presence.>", "jetsock.stream.>"]
EDGE_RESP = {"max": 1, "ttl": 0}
"""allow_responses: true, as a user JWT says it (an edge answers stream posts forwarded to it)."""
# deploy/nats-server.conf lets the backend user subscribe only to _INBOX_backend.>.
BACKEND_INBOX = "_INBOX_backend"


def settings(**overrides: Any) -> Settings:
    return load_settings(environ={}, jwt_secret="x", **overrides)


# --- certificates -----------------------------------------------------------


class Pki:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        now = datetime.datetime.now(datetime.UTC)
        self._valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jetsock test CA")])
        ca_cert = (
            self._builder(ca_name, ca_name, ca_key.public_key(), ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca = self._write("ca.pem", ca_cert)
        self.server_cert, self.server_key = self._leaf("server", ca_cert, ca_key, ExtendedKeyUsageOID.SERVER_AUTH)
        self.client_cert, self.client_key = self._leaf("client", ca_cert, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH)

    def _builder(
        self,
        subject: x509.Name,
        issuer: x509.Name,
        key: ec.EllipticCurvePublicKey,
        issuer_key: ec.EllipticCurvePublicKey,
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._valid[0])
            .not_valid_after(self._valid[1])
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False)
        )

    def _leaf(
        self, name: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, usage: x509.ObjectIdentifier
    ) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"jetsock test {name}")])
        san = x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        )
        cert = (
            self._builder(subject, ca_cert.subject, key.public_key(), ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(san, critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key_path = self.folder / f"{name}-key.pem"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return self._write(f"{name}.pem", cert), str(key_path)

    def _write(self, name: str, cert: x509.Certificate) -> str:
        path = self.folder / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


# --- NATS JWTs and .creds, without nsc ----------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _keypair(prefix: int) -> tuple[nkeys.KeyPair, bytes]:
    seed = nkeys.encode_seed(secrets.token_bytes(32), prefix)
    return nkeys.from_seed(bytearray(seed)), seed


def _public(kp: nkeys.KeyPair) -> str:
    return str(kp.public_key.decode())


def _jwt(claims: dict[str, Any], signer: nkeys.KeyPair) -> str:
    """A NATS JWT (v2): ed25519-nkey signed, jti the hash of the claims."""
    claims = {"iat": int(time.time()), **claims}
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{header}.{body}.{_b64(signer.sign(f'{header}.{body}'.encode()))}"


def operator_setup(folder: Path) -> tuple[str, str]:
    """A nats-server config in operator mode (resolver MEMORY) and a .creds file for an edge user."""
    operator, _ = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    account, _ = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    system, _ = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user, user_seed = _keypair(nkeys.PREFIX_BYTE_USER)
    unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True, "conn": -1}
    jetstream = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    op_pub, acc_pub, sys_pub = _public(operator), _public(account), _public(system)
    operator_jwt = _jwt(
        {"iss": op_pub, "sub": op_pub, "name": "test-operator", "nats": {"type": "operator", "version": 2}}, operator
    )
    account_jwt = _jwt(
        {
            "iss": op_pub,
            "sub": acc_pub,
            "name": "JETSOCK",
            "nats": {"type": "account", "version": 2, "limits": {**unlimited, **jetstream}},
        },
        operator,
    )
    system_jwt = _jwt(
        {"iss": op_pub, "sub": sys_pub, "name": "SYS", "nats": {"type": "account", "version": 2, "limits": unlimited}},
        operator,
    )
    user_jwt = _jwt(
        {
            "iss": acc_pub,
            "sub": _public(user),
            "name": "edge",
            "nats": {
                "type": "user",
                "version": 2,
                "subs": -1,
                "data": -1,
                "payload": -1,
                "pub": {"allow": EDGE_PUB},
                "sub": {"allow": EDGE_SUB},
                "resp": EDGE_RESP,
            },
        },
        account,
    )
    conf = folder / "operator.conf"
    conf.write_text(
        f"operator: {operator_jwt}\n"
        f"system_account: {sys_pub}\n"
        "resolver: MEMORY\n"
        f"resolver_preload: {{\n  {acc_pub}: {account_jwt}\n  {sys_pub}: {system_jwt}\n}}\n"
    )
    creds = folder / "edge.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n------END USER NKEY SEED------\n"
    )
    return str(conf), str(creds)


# --- connect_options, without a server ----------------------------------------


def test_no_credentials_no_tls() -> None:
    assert connect_options(settings(nats_url="nats://127.0.0.1:4222")) == {}
    assert connect_options(settings()) == {}


def test_user_and_password() -> None:
    options = connect_options(settings(nats_url="nats://n1:4222,nats://n2:4222", nats_user="edge", nats_password="pw"))
    assert options == {"user": "edge", "password": "pw"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nats_user": "edge"}, "JETSOCK_NATS_USER is set but JETSOCK_NATS_PASSWORD is not"),
        ({"nats_password": "pw"}, "JETSOCK_NATS_PASSWORD is set but JETSOCK_NATS_USER is not"),
        ({"nats_user": "u", "nats_password": "p", "nats_token": "t"}, "more than once (user and password, token)"),
        ({"nats_token": "t", "nats_creds": "/x.creds"}, "more than once (token, creds file)"),
        ({"nats_url": "nats://u:p@127.0.0.1:4222", "nats_token": "t"}, "(token, credentials in the URL)"),
    ],
)
def test_bad_credential_combinations(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        connect_options(settings(**overrides))
    assert message in str(caught.value)


def test_credentials_in_the_url_alone_are_left_to_nats_py() -> None:
    assert connect_options(settings(nats_url="nats://edge:pw@127.0.0.1:4222")) == {}


def test_token() -> None:
    assert connect_options(settings(nats_token="s3cret")) == {"token": "s3cret"}


def test_creds_file(tmp_path: Path) -> None:
    _conf, creds = operator_setup(tmp_path)
    assert connect_options(settings(nats_creds=creds)) == {"user_credentials": creds}


def test_creds_file_missing_or_malformed(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.creds")
    with pytest.raises(ValueError, match=r"JETSOCK_NATS_CREDS='.*nope.creds': no such file"):
        connect_options(settings(nats_creds=missing))
    seed_only = tmp_path / "seed.creds"
    seed_only.write_text("-----BEGIN USER NKEY SEED-----\nSUAXXX\n------END USER NKEY SEED------\n")
    with pytest.raises(ValueError, match=r"not a NATS \.creds file \(no BEGIN NATS USER JWT section\)"):
        connect_options(settings(nats_creds=str(seed_only)))


def test_tls_url_uses_the_system_cas_and_verifies() -> None:
    options = connect_options(settings(nats_url="tls://nats.example:4222"))
    context = options["tls"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname


def test_tls_ca_alone_turns_tls_on(pki: Pki) -> None:
    options = connect_options(settings(nats_url="nats://127.0.0.1:4222", nats_tls_ca=pki.ca))
    context = options["tls"]
    assert isinstance(context, ssl.SSLContext)
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "jetsock test CA"),),)]


def test_mutual_tls_with_credentials(pki: Pki) -> None:
    options = connect_options(
        settings(
            nats_url="tls://127.0.0.1:4222",
            nats_tls_ca=pki.ca,
            nats_tls_cert=pki.client_cert,
            nats_tls_key=pki.client_key,
            nats_user="edge",
            nats_password="pw",
        )
    )
    assert isinstance(options.pop("tls"), ssl.SSLContext)
    assert options == {"user": "edge", "password": "pw"}


def test_bad_tls_settings(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="JETSOCK_NATS_TLS_CERT is set but JETSOCK_NATS_TLS_KEY is not"):
        connect_options(settings(nats_tls_cert=pki.client_cert))
    with pytest.raises(ValueError, match="JETSOCK_NATS_TLS_KEY is set but JETSOCK_NATS_TLS_CERT is not"):
        connect_options(settings(nats_tls_key=pki.client_key))
    with pytest.raises(ValueError, match=re.escape("JETSOCK_NATS_TLS_CA='/nonexistent/ca.pem': no such file")):
        connect_options(settings(nats_url="tls://127.0.0.1:4222", nats_tls_ca="/nonexistent/ca.pem"))
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="holds no usable CA certificate"):
        connect_options(settings(nats_tls_ca=str(not_pem)))
    with pytest.raises(ValueError, match="cannot load the NATS client certificate"):
        connect_options(settings(nats_tls_cert=pki.client_cert, nats_tls_key=pki.server_key))


# --- against nats-server --------------------------------------------------------


@pytest.fixture
def run_nats() -> Iterator[Callable[..., EmbeddedNats]]:
    """Start nats-servers that outlive the test's edges (those stop first, while NATS is up)."""
    servers: list[EmbeddedNats] = []

    def run(store_dir: Path, extra_args: list[str] | None = None) -> EmbeddedNats:
        server = EmbeddedNats(store_dir, extra_args=extra_args)
        servers.append(server)
        return server.start()

    yield run
    for server in servers:
        server.stop()


@pytest.fixture
async def start_edge(run_nats: Any) -> AsyncIterator[Callable[..., Awaitable[Edge]]]:
    edges: list[Edge] = []

    async def start(nats_url: str, **overrides: Any) -> Edge:
        s = edge_settings(nats_url, **overrides)
        edge = await Edge(s, s.nats_servers).start()
        edges.append(edge)
        return edge

    yield start
    for edge in edges:
        await edge.stop()


async def frames_until(client: Any, *kinds: str) -> dict[str, dict[str, Any]]:
    """Read frames until one of each kind has arrived (ack and msg may come in either order)."""
    seen: dict[str, dict[str, Any]] = {}
    while not set(kinds) <= set(seen):
        frame = await client.recv()
        seen.setdefault(frame["type"], frame)
    return seen


async def roundtrip(edge: Edge, room: str = "chat.a") -> None:
    """Join, publish and receive through the edge: proof that its NATS connection can do its job."""
    client = await connect(edge.url)
    try:
        joined = await client.request(type="join", room=room, since=0, ref=1)
        assert joined["type"] == "joined" and joined["recovered"] is True, joined
        await client.send(type="publish", room=room, data={"hello": room}, ref=2)
        got = await frames_until(client, "ack", "msg")
        assert got["msg"]["data"] == {"hello": room}
        assert got["msg"]["seq"] == got["ack"]["seq"]
    finally:
        await client.close()


class Errors:
    """A connection's error_cb: nats-py reports permission violations (the server's -ERR) here."""

    def __init__(self) -> None:
        self.seen: list[Exception] = []

    async def record(self, exc: Exception) -> None:
        self.seen.append(exc)

    async def wait(self, count: int, timeout: float = 5.0) -> list[str]:
        async with asyncio.timeout(timeout):
            while len(self.seen) < count:
                await asyncio.sleep(0.01)
        return [str(exc) for exc in self.seen]


def deploy_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """nats-server args for deploy/nats-server.conf; only the store dir and port come from the test."""
    monkeypatch.setenv("EDGE_PASSWORD", EDGE_PASSWORD)
    monkeypatch.setenv("BACKEND_PASSWORD", BACKEND_PASSWORD)
    text, replaced = re.subn(r"(?m)^\s*store_dir:.*$", "", DEPLOY_CONF.read_text())
    assert replaced == 1  # EmbeddedNats passes -sd (and -p, -a, which override `listen`)
    conf = tmp_path / "nats-server.conf"
    conf.write_text(text)
    return ["-c", str(conf)]


async def test_deploy_config_edge_works_and_users_are_fenced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_nats: Any, start_edge: Callable[..., Awaitable[Edge]]
) -> None:
    server = run_nats(tmp_path / "nats", deploy_args(tmp_path, monkeypatch))
    # With presence on, so its subjects (jetsock.presence.>) are used and checked too.
    edge = await start_edge(server.url, nats_user="edge", nats_password=EDGE_PASSWORD, presence_rooms="x")
    backend_errors = Errors()
    backend: NATS = await nats.connect(
        server.url,
        user="backend",
        password=BACKEND_PASSWORD,
        inbox_prefix=BACKEND_INBOX,
        error_cb=backend_errors.record,
        allow_reconnect=False,
    )
    client = await connect(edge.url)
    try:
        js = backend.jetstream()
        # A backend publishes with JetStream and gets its PubAck (on _INBOX_backend.<nuid>.*).
        first = await js.publish("rooms.x", b'{"n": 1}')
        assert first.stream == "ROOMS"

        # since=0: the stored message is replayed, then the room goes live.
        joined = await client.request(type="join", room="x", since=0)
        assert joined["recovered"] is True and joined["seq"] == first.seq
        replayed = await client.expect("msg")
        assert (replayed["seq"], replayed["data"]) == (first.seq, {"n": 1})

        await client.send(type="publish", room="x", data={"n": 2})
        got = await frames_until(client, "ack", "msg")
        assert got["msg"]["data"] == {"n": 2} and got["msg"]["from"] == "alice"

        ack = await js.publish("rooms.x", b'{"n": 3}', headers={"Nats-Msg-Id": "b-3", "Jetsock-From": "billing"})
        live = await client.expect("msg")
        assert (live["seq"], live["data"], live["from"]) == (ack.seq, {"n": 3}, "billing")

        # The backend is fenced in: no JetStream API, no live subjects, nothing outside rooms.>, and
        # none of the edges' replies (stream info, direct-get batches: room messages) on _INBOX.>.
        probes = ("$JS.API.>", "live.rooms.>", "_INBOX.>", "_INBOX.*.*", "jetsock.presence.>", ">")
        for subject in probes:
            await backend.subscribe(subject)
        await backend.publish("other.subject", b"x")
        await backend.publish("$JS.API.STREAM.DELETE.ROOMS", b"")
        await backend.publish("jetsock.presence.delta", b"{}")  # presence is the edges' alone
        await backend.flush()
        errors = await backend_errors.wait(len(probes) + 3)
        assert all("permissions violation" in e.lower() for e in errors), errors
        for subject in probes:
            assert any(f'subscription to "{subject.lower()}"' in e.lower() for e in errors), (subject, errors)
        for subject in ("other.subject", "$js.api.stream.delete.rooms", "jetsock.presence.delta"):
            assert any(f'publish to "{subject}"' in e.lower() for e in errors), (subject, errors)
        assert backend.is_connected  # violations are reported; the connection stays

        # The stream survived the delete attempt: the room still works end to end.
        await client.send(type="publish", room="x", data={"n": 4})
        assert (await frames_until(client, "ack", "msg"))["msg"]["data"] == {"n": 4}
    finally:
        await client.close()
        await backend.close()

    # The edge user cannot step outside its subjects either.
    edge_errors = Errors()
    as_edge = await nats.connect(
        server.url, user="edge", password=EDGE_PASSWORD, error_cb=edge_errors.record, allow_reconnect=False
    )
    try:
        await as_edge.publish("other.subject", b"x")
        await as_edge.publish("live.rooms.x", b"forged")
        await as_edge.publish("$JS.API.STREAM.DELETE.ROOMS", b"")
        await as_edge.subscribe("$JS.API.>")
        await as_edge.flush()
        errors = await edge_errors.wait(4)
        assert all("permissions violation" in e.lower() for e in errors), errors
    finally:
        await as_edge.close()

    refused = await refused_connect(server.url, user="backend", password="wrong")
    assert isinstance(refused, nats.errors.Error) and "authorization" in str(refused).lower()

    # Another edge with other stream limits updates the stream at start ($JS.API.STREAM.UPDATE.ROOMS).
    updating = await start_edge(
        server.url, nats_user="edge", nats_password=EDGE_PASSWORD, max_age=7200.0, presence_rooms="x"
    )
    await roundtrip(updating, "x2")
    # The two edges hear each other's presence (hello, beats) through the edge user's permissions.
    async with asyncio.timeout(10):
        while (
            edge.node.presence.bus.incarnation not in updating.node.presence.bus.view.nodes()
            or updating.node.presence.bus.incarnation not in edge.node.presence.bus.view.nodes()
        ):
            await asyncio.sleep(0.05)

    log = (tmp_path / "nats" / "nats-server.log").read_text()
    assert 'Publish Violation - Subject "$JS.API.STREAM.DELETE.ROOMS"' in log
    assert 'Subscription Violation - Subject "$JS.API.>"' in log
    # The edge node itself never needed a subject it is not allowed: every violation came from the probes.
    violations = [line for line in log.splitlines() if "Violation" in line]
    assert violations and not [line for line in violations if "jetsock-edge" in line], violations


async def test_deploy_config_backend_without_its_inbox_prefix_gets_no_pubacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_nats: Any
) -> None:
    """What a backend that forgets inbox_prefix sees: the message is stored, its PubAck never arrives."""
    server = run_nats(tmp_path / "nats", deploy_args(tmp_path, monkeypatch))
    errors = Errors()
    backend = await nats.connect(
        server.url, user="backend", password=BACKEND_PASSWORD, error_cb=errors.record, allow_reconnect=False
    )
    checker = await nats.connect(server.url, user="edge", password=EDGE_PASSWORD, allow_reconnect=False)
    try:
        await checker.jetstream().add_stream(desired_config(settings()))
        with pytest.raises(nats.errors.TimeoutError):
            await backend.jetstream(timeout=0.3).publish("rooms.y", b"1")
        assert 'permissions violation for subscription to "_inbox.' in (await errors.wait(1))[0].lower()
        assert (await checker.jetstream().stream_info("ROOMS")).state.messages == 1
    finally:
        await backend.close()
        await checker.close()


def test_deploy_config_needs_the_passwords(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = deploy_args(tmp_path, monkeypatch)
    monkeypatch.delenv("BACKEND_PASSWORD")
    with pytest.raises(RuntimeError, match="nats-server exited"):
        EmbeddedNats(tmp_path / "nats", extra_args=args).start()
    assert "BACKEND_PASSWORD" in (tmp_path / "nats" / "nats-server.log").read_text()


async def test_token_auth(tmp_path: Path, run_nats: Any, start_edge: Callable[..., Awaitable[Edge]]) -> None:
    server = run_nats(tmp_path / "nats", ["--auth", "s3cret-token"])
    edge = await start_edge(server.url, nats_token="s3cret-token")
    await roundtrip(edge)
    refused = await refused_connect(server.url, token="wrong")
    assert isinstance(refused, nats.errors.Error) and "authorization" in str(refused).lower()


async def test_creds_file_auth(tmp_path: Path, run_nats: Any, start_edge: Callable[..., Awaitable[Edge]]) -> None:
    conf, creds = operator_setup(tmp_path)
    server = run_nats(tmp_path / "nats", ["-c", conf])
    edge = await start_edge(server.url, nats_creds=creds)
    await roundtrip(edge)
    # The user JWT carries the edge's permissions, enforced like the config file's.
    errors = Errors()
    nc = await nats.connect(server.url, user_credentials=creds, error_cb=errors.record, allow_reconnect=False)
    try:
        await nc.publish("$JS.API.STREAM.DELETE.ROOMS", b"")
        await nc.flush()
        assert "permissions violation" in (await errors.wait(1))[0].lower()
    finally:
        await nc.close()


def tls_args(tmp_path: Path, pki: Pki, verify_clients: bool = False) -> list[str]:
    conf = tmp_path / "tls.conf"
    verify = f'  ca_file: "{pki.ca}"\n  verify: true\n' if verify_clients else ""
    conf.write_text(f'tls {{\n  cert_file: "{pki.server_cert}"\n  key_file: "{pki.server_key}"\n{verify}}}\n')
    return ["-c", str(conf)]


class _NoListener:
    def deliver(self, room: str, messages: list[StoredMessage]) -> None:
        pass

    def reset(self, room: str, epoch: str, seq: int) -> None:
        pass


async def test_tls_with_the_ca(
    tmp_path: Path, pki: Pki, run_nats: Any, start_edge: Callable[..., Awaitable[Edge]]
) -> None:
    server = run_nats(tmp_path / "nats", tls_args(tmp_path, pki))
    edge = await start_edge(f"tls://127.0.0.1:{server.port}", nats_tls_ca=pki.ca)
    await roundtrip(edge)
    nc = edge.node.broker.nc
    assert nc is not None and nc._transport is not None
    assert nc._transport._io_writer.get_extra_info("ssl_object") is not None


async def test_tls_without_the_ca_fails_clearly(
    tmp_path: Path, pki: Pki, run_nats: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = run_nats(tmp_path / "nats", tls_args(tmp_path, pki))
    url = f"tls://127.0.0.1:{server.port}"
    s = settings(nats_url=url, nats_connect_timeout=2.0)
    # nats.connect on its own: the verification error, at once.
    refused = await refused_connect(s.nats_servers, **connect_options(s))
    assert isinstance(refused, ssl.SSLCertVerificationError) and "certificate verify failed" in str(refused)
    # The edge's broker logs why, and gives up after nats_connect_timeout (nats-py 2.16 would
    # otherwise hang closing the failed socket): the node does not start, rather than waiting forever.
    caplog.set_level(logging.WARNING, logger="core.broker")
    broker = Broker(s, _NoListener())
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        await asyncio.wait_for(broker.connect(s.nats_servers, name="tls-test"), 10)
    assert 1.9 < time.monotonic() - started < 6
    assert str(caught.value) == f"could not connect to NATS at {url} within 2 s"
    assert "certificate verify failed: unable to get local issuer certificate" in caplog.text


async def test_tls_url_to_a_plain_server_is_refused(tmp_path: Path, run_nats: Any) -> None:
    """A tls:// URL never runs over plain text: a server without tls {} stops the edge from starting."""
    server = run_nats(tmp_path / "nats")
    s = settings(nats_url=f"tls://127.0.0.1:{server.port}", nats_connect_timeout=2.0)
    broker = Broker(s, _NoListener())
    with pytest.raises(Unavailable) as caught:
        await asyncio.wait_for(broker.connect(s.nats_servers, "t"), 10)
    assert str(caught.value) == ("a tls:// NATS URL points at a server that does not require TLS; refusing plain text")
    assert broker.nc is not None and broker.nc.is_closed
    assert broker._js is None  # nothing was asked of the stream over the plain-text connection


async def test_tls_url_never_sends_credentials_in_plain_text() -> None:
    """A fake server that does not ask for TLS records what the edge sends before it refuses."""
    received: list[bytes] = []

    async def plain_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = {"server_id": "fake", "version": "2.15.0", "max_payload": 1048576, "auth_required": True}
        writer.write(b"INFO " + json.dumps(info).encode() + b"\r\n")
        await writer.drain()
        while line := await reader.readline():
            received.append(line)
            if line.startswith(b"PING"):
                writer.write(b"PONG\r\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    s = settings(
        nats_url=f"tls://127.0.0.1:{port}", nats_user="edge", nats_password="pw-in-clear", nats_connect_timeout=2.0
    )
    try:
        with pytest.raises(Unavailable):
            await asyncio.wait_for(Broker(s, _NoListener()).connect(s.nats_servers, "t"), 10)
    finally:
        server.close()
        await server.wait_closed()
    assert not [line for line in received if b"pw-in-clear" in line], received


async def test_mutual_tls(tmp_path: Path, pki: Pki, run_nats: Any, start_edge: Callable[..., Awaitable[Edge]]) -> None:
    server = run_nats(tmp_path / "nats", tls_args(tmp_path, pki, verify_clients=True))
    url = f"tls://127.0.0.1:{server.port}"
    edge = await start_edge(url, nats_tls_ca=pki.ca, nats_tls_cert=pki.client_cert, nats_tls_key=pki.client_key)
    await roundtrip(edge)
    # Without a client certificate the server ends the handshake (the client sees a broken pipe or an SSL alert).
    refused = await refused_connect(url, **connect_options(settings(nats_url=url, nats_tls_ca=pki.ca)))
    assert isinstance(refused, OSError), refused
    await wait_for_log(tmp_path / "nats", "client didn't provide a certificate")


async def wait_for_log(store_dir: Path, text: str, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while text not in (store_dir / "nats-server.log").read_text():
            await asyncio.sleep(0.02)
