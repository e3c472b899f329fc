"""The one settings object, read from `jetsock serve` flags and `JETSOCK_*` variables.

Each field's description gives its unit and meaning; the default is the
field's default. A flag beats a variable, a variable beats the default.
compose.yaml and the Helm values use the same names, upper-cased with the
`JETSOCK_` prefix.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import msgspec

ENV_PREFIX = "JETSOCK_"


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    host: Annotated[str, _doc("Address to listen on; container images set 0.0.0.0.")] = "127.0.0.1"
    port: Annotated[int, _doc("TCP port for WebSockets and HTTP.")] = 8080
    workers: Annotated[
        int, _doc("Edge processes sharing the port (SO_REUSEPORT), each with its own NATS connection.")
    ] = 1
    nats_url: Annotated[str, _doc("Comma-separated NATS servers; empty starts an embedded nats-server.")] = ""
    nats_user: Annotated[str, _doc("NATS user name (or put user:password in the URL).")] = ""
    nats_password: Annotated[str, _doc("NATS password.")] = ""
    nats_token: Annotated[str, _doc("NATS authentication token.")] = ""
    nats_creds: Annotated[str, _doc("Path of a NATS .creds file (user JWT and nkey seed).")] = ""
    nats_tls_ca: Annotated[str, _doc("CA bundle to verify NATS servers with, for tls:// URLs.")] = ""
    nats_tls_cert: Annotated[str, _doc("Client certificate for NATS mutual TLS.")] = ""
    nats_tls_key: Annotated[str, _doc("Client key for NATS mutual TLS.")] = ""
    nats_connect_timeout: Annotated[
        float, _doc("Seconds the first NATS connection may take before the node gives up starting.")
    ] = 20.0
    stream: Annotated[str, _doc("JetStream stream holding the rooms.")] = "ROOMS"
    replicas: Annotated[int, _doc("Stream replicas (3 on a 3-node NATS cluster).")] = 1
    duplicate_window: Annotated[float, _doc("Seconds during which a repeated publish id is stored once.")] = 120.0
    max_age: Annotated[float, _doc("Seconds a room message is kept in the stream; 0 keeps it forever.")] = 86400.0
    max_msgs_per_room: Annotated[
        int, _doc("Messages kept per room (stream max_msgs_per_subject); -1 for no limit.")
    ] = 10000
    audit_interval: Annotated[
        float,
        _doc("Seconds between checks of each active room's stored head against what the node delivered."),
    ] = 5.0
    max_replay: Annotated[int, _doc("Most messages a join with `since` replays before answering recovered=false.")] = (
        10000
    )
    jwt_secret: Annotated[str, _doc("HS256 key for client tokens.")] = ""
    jwt_public_key: Annotated[str, _doc("PEM public key for RS256/ES256/EdDSA tokens.")] = ""
    jwks_url: Annotated[str, _doc("JWKS address for token keys (RS256, ES256, EdDSA by `kid`).")] = ""
    jwks_cache_seconds: Annotated[float, _doc("Seconds a fetched JWKS is used before it is fetched again.")] = 300.0
    jwks_min_refresh: Annotated[float, _doc("Least seconds between two JWKS fetches caused by an unknown `kid`.")] = (
        30.0
    )
    jwks_timeout: Annotated[float, _doc("Seconds one JWKS fetch may take.")] = 5.0
    max_token_bytes: Annotated[int, _doc("Longest token accepted, in bytes; longer ones are refused.")] = 8192
    jwt_audience: Annotated[str, _doc("Required `aud` claim, when set.")] = ""
    jwt_issuer: Annotated[str, _doc("Required `iss` claim, when set.")] = ""
    jwt_leeway: Annotated[float, _doc("Seconds of clock skew allowed on exp and nbf.")] = 5.0
    allowed_origins: Annotated[
        str,
        _doc("Comma-separated origins allowed to open WebSockets; empty means the server's own."),
    ] = ""
    cookie_name: Annotated[str, _doc("Cookie that may carry the token.")] = "jetsock_token"
    auth_timeout: Annotated[float, _doc("Seconds a connection may take to send `auth`.")] = 5.0
    refresh_before: Annotated[float, _doc("Seconds before exp that `expiring` is sent.")] = 30.0
    heartbeat: Annotated[float, _doc("Seconds between server pings; silence for two closes with 4009.")] = 25.0
    max_pending_bytes: Annotated[int, _doc("Bytes a connection may leave unread before it is closed with 4008.")] = (
        1048576
    )
    max_write_delay: Annotated[
        float,
        _doc(
            "Seconds a busy node may hold frames so that more share one write: after a flush that took t"
            " (t >= 1 ms, hundreds of sockets), the next waits min(t, this). 0 writes every loop pass at once."
        ),
    ] = 0.05
    max_frame_bytes: Annotated[int, _doc("Largest frame accepted; larger closes with 1009.")] = 65536
    max_rooms_per_connection: Annotated[int, _doc("Rooms one connection may join.")] = 100
    max_connections: Annotated[int, _doc("Connections per node; past it upgrades are refused with 1013.")] = 18000
    max_connections_per_sub: Annotated[
        int, _doc("Open connections one token subject may hold on a node; past it, close 4029.")
    ] = 100
    max_data_bytes: Annotated[
        int, _doc("Largest `data` of a publish (WebSocket or HTTP), in bytes; larger gets too_large.")
    ] = 60000
    max_unauthenticated: Annotated[
        int,
        _doc(
            "Sockets per node not yet authenticated (HTTP request head not complete, or upgraded and waiting for"
            " a token); past it, new sockets are refused. They do not count against max_connections."
        ),
    ] = 2000
    max_unauthenticated_per_source: Annotated[
        int,
        _doc(
            "Sockets not yet authenticated from one source address; past it, that source's new sockets are"
            " refused. 0: no limit (behind a proxy every socket has the proxy's address: limit there)."
        ),
    ] = 100
    max_connections_per_source: Annotated[
        int,
        _doc("Open sockets from one source address, authenticated or not; 0: no limit (behind a proxy, limit there)."),
    ] = 1000
    handshake_timeout: Annotated[
        float, _doc("Seconds a new socket may take to send its HTTP request head (slowloris); then it is dropped.")
    ] = 10.0
    body_timeout: Annotated[
        float,
        _doc("Seconds an HTTP request body may take to arrive whole; past it, 408 (a slow body holds a socket)."),
    ] = 10.0
    write_timeout: Annotated[
        float,
        _doc(
            "Seconds a replay may wait for the client to read before the connection is closed with 4008 (a client"
            " that stops reading must not hold a replay, its batch and its held messages forever)."
        ),
    ] = 30.0
    join_rate: Annotated[float, _doc("Joins and leaves per second per connection (refill rate).")] = 10.0
    join_burst: Annotated[int, _doc("Joins and leaves a connection may send at once.")] = 200
    max_requests_in_flight: Annotated[
        int,
        _doc(
            "Requests of one connection running at once (publishes, joins, refreshes waiting on NATS); past it,"
            " the connection's reading pauses until one finishes."
        ),
    ] = 16
    room_grace: Annotated[
        float,
        _doc(
            "Seconds a room's NATS subscription is kept after its last member on the node leaves, so a page"
            " reload rejoins without churning NATS interest."
        ),
    ] = 5.0
    nats_ping_interval: Annotated[
        float, _doc("Seconds between the NATS client's pings to its server (nats-py's ping_interval).")
    ] = 5.0
    nats_max_outstanding_pings: Annotated[
        int, _doc("Unanswered NATS pings after which the NATS connection is dropped and reconnected.")
    ] = 2
    nats_request_timeout: Annotated[
        float, _doc("Seconds a JetStream request (publish, stream read) may take before it fails.")
    ] = 5.0
    nats_unready_after: Annotated[
        float,
        _doc(
            "Seconds without an answer from NATS (it is probed every second) after which /readyz answers 503;"
            " it answers 200 again at the next answer."
        ),
    ] = 3.0
    max_concurrent_replays: Annotated[
        int, _doc("Replay reads in flight per node; more joins with `since` wait, so live traffic goes on.")
    ] = 32
    max_history_page: Annotated[
        int, _doc("Largest `last` of a join and `limit` of a history page (at most 10000).")
    ] = 100
    history_page_bytes: Annotated[
        int,
        _doc(
            "Most bytes of messages in one history page; a page that would be larger is cut to its newest"
            " messages and says `more: true` (a join's `last` replay is paced like any replay instead)."
        ),
    ] = 262144
    history_cache_messages: Annotated[
        int,
        _doc(
            "Newest messages of the stream each node keeps in memory, by room, to answer history pages and"
            " joins with `last` without reading the stream by subject, from its first history read until 10"
            " minutes without one (0: none, every page is read from the stream)."
        ),
    ] = 100000
    history_cache_bytes: Annotated[
        int,
        _doc(
            "Most payload bytes the history cache holds (its oldest go first past it; the node's memory for the"
            " cache is about this plus 250 bytes a message); 0: bounded by history_cache_messages only."
        ),
    ] = 67108864
    history_rate: Annotated[float, _doc("History requests per second per connection (refill rate).")] = 10.0
    history_burst: Annotated[int, _doc("History requests a connection may send at once.")] = 20
    presence_rooms: Annotated[
        str,
        _doc(
            "Comma-separated room patterns whose presence is kept (NATS wildcards: `*` one segment, `>` the rest);"
            " empty: no room."
        ),
    ] = ""
    presence_ttl: Annotated[
        float, _doc("Seconds after which a node not heard from is taken out of presence with its connections.")
    ] = 30.0
    presence_interval: Annotated[
        float, _doc("Seconds over which presence events of a room are coalesced into one `presence` frame.")
    ] = 1.0
    max_presence_list: Annotated[int, _doc("Most members listed by `who` (then `truncated: true`).")] = 1000
    presence_events_max_members: Annotated[
        int,
        _doc(
            "Above this many present users a room sends no `presence` events (only `who` and counts answer):"
            " events to every member of a huge room cost more than they tell."
        ),
    ] = 1000
    presence_frame_bytes: Annotated[
        int, _doc("Most bytes of one `presence` frame; more changes in one interval are split over several frames.")
    ] = 65536
    who_rate: Annotated[float, _doc("`who` requests per second per connection (refill rate).")] = 10.0
    who_burst: Annotated[int, _doc("`who` requests a connection may send at once.")] = 20
    stream_post_bytes: Annotated[
        int, _doc("Largest body of a POST to /v1/stream or /v1/stream/<session> (a frame or an array of frames).")
    ] = 262144
    stream_post_frames: Annotated[int, _doc("Most frames in one POST to an HTTP stream session.")] = 100
    stream_post_timeout: Annotated[
        float,
        _doc(
            "Seconds a POST to a stream session may wait: while the session has max_requests_in_flight requests"
            " running (past it, 503 and nothing taken: send it again), and for the answer of the node holding"
            " the session over NATS (past it, 404: the client opens a new stream and resumes)."
        ),
    ] = 2.0
    compression: Annotated[
        bool,
        _doc(
            "Accept permessage-deflate (without context takeover) from clients that offer it; room messages"
            " are then compressed once per node."
        ),
    ] = True
    compress_min_bytes: Annotated[
        int, _doc("Room messages smaller than this are sent uncompressed even to compressing clients.")
    ] = 256
    compress_level: Annotated[int, _doc("zlib level of the compressor (1 fastest to 9 smallest).")] = 6
    publish_rate: Annotated[float, _doc("Publishes per second per connection (refill rate).")] = 20.0
    publish_burst: Annotated[int, _doc("Publishes a connection may send at once.")] = 40
    rate_limit_strikes: Annotated[
        int, _doc("Rejected publishes in a row before the connection is closed with 4029.")
    ] = 50
    drain_seconds: Annotated[float, _doc("Seconds over which SIGTERM spreads the 1012 closes.")] = 10.0
    close_timeout: Annotated[float, _doc("Seconds to wait for a client's close frame before dropping the socket.")] = (
        5.0
    )
    node: Annotated[str, _doc("This node's name in `welcome`; empty derives host-pid.")] = ""
    data_dir: Annotated[str, _doc("Directory for the embedded nats-server's store.")] = ".data"
    embedded_nats_port: Annotated[int, _doc("Port of the embedded nats-server; 0 picks a free one.")] = 4222
    dev: Annotated[
        bool, _doc("Development mode: print a dev token, serve the demo and /dev/token (never in production).")
    ] = False
    demo: Annotated[bool, _doc("Serve the demo chat page at / (on in development mode).")] = False
    log_level: Annotated[str, _doc("Log level: debug, info, warning, error.")] = "info"
    log_format: Annotated[str, _doc("Log lines as `json` (one object per line) or `text`.")] = "json"
    metrics: Annotated[bool, _doc("Collect metrics (/metrics, OTLP); off only to measure their cost.")] = True
    otlp_endpoint: Annotated[
        str, _doc("OTLP/HTTP collector base address (http://host:4318); empty sends no metrics or traces.")
    ] = ""
    trace_sample_ratio: Annotated[
        float, _doc("Fraction of messages whose delivery on this node gets a span (fan-out multiplies spans).")
    ] = 0.01
    admin: Annotated[bool, _doc("Serve the operator page at /admin (a JWT with `admin: true` to read it).")] = False

    @property
    def nats_servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    @property
    def origins(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()]


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


_PYTHON_TYPES: dict[type, type] = {
    msgspec.inspect.StrType: str,
    msgspec.inspect.IntType: int,
    msgspec.inspect.FloatType: float,
    msgspec.inspect.BoolType: bool,
}


def field_docs() -> dict[str, tuple[type, Any, str]]:
    """Each setting's type, default and description, for flags and documentation."""
    docs: dict[str, tuple[type, Any, str]] = {}
    struct_info = msgspec.inspect.type_info(Settings)
    assert isinstance(struct_info, msgspec.inspect.StructType)
    for field in struct_info.fields:
        hint = field.type
        description = ""
        if isinstance(hint, msgspec.inspect.Metadata):
            description = (hint.extra_json_schema or {}).get("description", "") or ""
            hint = hint.type
        python_type = _PYTHON_TYPES[type(hint)]
        docs[field.name] = (python_type, field.default, description)
    return docs


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; unset flags stay None so variables can fill them."""
    for name, (python_type, default, description) in field_docs().items():
        help_text = f"{description} [{env_name(name)}, default {default!r}]"
        if python_type is bool:
            parser.add_argument(
                flag_name(name),
                dest=name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        else:
            parser.add_argument(flag_name(name), dest=name, default=None, type=python_type, help=help_text)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _from_env(text: str, python_type: type, name: str) -> Any:
    if python_type is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"{env_name(name)}={text!r} is not a boolean")
    try:
        return python_type(text)
    except ValueError:
        raise ValueError(f"{env_name(name)}={text!r} is not a valid {python_type.__name__}") from None


def load_settings(
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Settings from flags, then `JETSOCK_*` variables, then keyword overrides."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, (python_type, _default, _doc_text) in field_docs().items():
        if env_name(name) in environ:
            values[name] = _from_env(environ[env_name(name)], python_type, name)
        flag_value = getattr(args, name, None) if args is not None else None
        if flag_value is not None:
            values[name] = flag_value
    values.update(overrides)
    return msgspec.convert(values, Settings, strict=False)


def parse_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="jetsock serve")
    add_flags(parser)
    return load_settings(parser.parse_args(list(argv)), environ)


def _default_text(value: Any) -> str:
    if value == "":
        return "(empty)"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def settings_table() -> str:
    """The Markdown table of every setting, as schemas/PROTOCOL.md section 11 shows it."""
    rows = ["| setting | variable | flag | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for name, (_type, default, description) in field_docs().items():
        rows.append(
            f"| `{name}` | `{env_name(name)}` | `{flag_name(name)}` | {_default_text(default)} | {description} |"
        )
    return "\n".join(rows) + "\n"


TABLE_BEGIN = "<!-- settings:begin (generated: make settings-doc) -->\n"
TABLE_END = "<!-- settings:end -->\n"


def with_settings_table(document: str) -> str:
    """`document` with the text between the settings markers replaced by the current table."""
    start = document.index(TABLE_BEGIN) + len(TABLE_BEGIN)
    end = document.index(TABLE_END, start)
    return document[:start] + settings_table() + document[end:]


if __name__ == "__main__":
    import sys
    from pathlib import Path

    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        path = Path(sys.argv[2])
        path.write_text(with_settings_table(path.read_text()))
    else:
        print(settings_table(), end="")
