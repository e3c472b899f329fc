"""Settings: flags beat variables beat defaults; names fixed by PROTOCOL.md section 8."""

from __future__ import annotations

import argparse

import msgspec
import pytest

from core.settings import Settings, add_flags, env_name, field_docs, flag_name, load_settings, parse_settings

FIXED_DEFAULTS = {
    "host": "127.0.0.1",
    "port": 8080,
    "stream": "ROOMS",
    "replicas": 1,
    "heartbeat": 25,
    "max_pending_bytes": 1048576,
}
FIXED_NAMES = [
    "JETSOCK_HOST",
    "JETSOCK_PORT",
    "JETSOCK_NATS_URL",
    "JETSOCK_STREAM",
    "JETSOCK_REPLICAS",
    "JETSOCK_JWT_SECRET",
    "JETSOCK_JWT_PUBLIC_KEY",
    "JETSOCK_JWKS_URL",
    "JETSOCK_JWT_AUDIENCE",
    "JETSOCK_JWT_ISSUER",
    "JETSOCK_ALLOWED_ORIGINS",
    "JETSOCK_HEARTBEAT",
    "JETSOCK_MAX_PENDING_BYTES",
    "JETSOCK_DRAIN_SECONDS",
]
SAMPLE = {str: ("sample-text", "sample-text"), int: ("7", 7), float: ("2.5", 2.5), bool: ("true", True)}


def test_flag_beats_env_beats_default() -> None:
    assert parse_settings([], environ={}).port == 8080
    assert parse_settings([], environ={"JETSOCK_PORT": "9001"}).port == 9001
    assert parse_settings(["--port", "9002"], environ={"JETSOCK_PORT": "9001"}).port == 9002
    assert parse_settings(["--port", "9002"], environ={}).port == 9002

    assert parse_settings([], environ={}).stream == "ROOMS"
    assert parse_settings([], environ={"JETSOCK_STREAM": "ENV"}).stream == "ENV"
    assert parse_settings(["--stream", "FLAG"], environ={"JETSOCK_STREAM": "ENV"}).stream == "FLAG"

    assert parse_settings([], environ={"JETSOCK_HEARTBEAT": "3.5"}).heartbeat == 3.5
    assert parse_settings(["--heartbeat", "1.25"], environ={"JETSOCK_HEARTBEAT": "3.5"}).heartbeat == 1.25


def test_boolean_flag_beats_env_both_ways() -> None:
    assert parse_settings([], environ={}).dev is False
    assert parse_settings([], environ={"JETSOCK_DEV": "true"}).dev is True
    assert parse_settings(["--no-dev"], environ={"JETSOCK_DEV": "true"}).dev is False
    assert parse_settings(["--dev"], environ={"JETSOCK_DEV": "false"}).dev is True


def test_unrelated_environment_is_ignored() -> None:
    settings = load_settings(environ={"PORT": "1", "JETSOCK_UNKNOWN": "x", "jetsock_port": "2"})
    assert settings.port == 8080


def test_keyword_overrides_beat_everything() -> None:
    args = argparse.Namespace(port=9002)
    assert load_settings(args, environ={"JETSOCK_PORT": "9001"}, port=9003).port == 9003


def test_every_field_has_a_description_flag_and_env_name() -> None:
    docs = field_docs()
    assert set(docs) == set(Settings.__struct_fields__)
    parser = argparse.ArgumentParser()
    add_flags(parser)
    help_text = parser.format_help()
    for name, (python_type, default, description) in docs.items():
        assert description.strip(), f"{name} has no description"
        assert env_name(name) == "JETSOCK_" + name.upper()
        assert flag_name(name) == "--" + name.replace("_", "-")
        assert flag_name(name) in help_text
        assert python_type in SAMPLE, name
        assert getattr(Settings(), name) == default


@pytest.mark.parametrize("name", list(Settings.__struct_fields__))
def test_every_field_is_read_from_its_variable(name: str) -> None:
    python_type = field_docs()[name][0]
    text, value = SAMPLE[python_type]
    settings = load_settings(environ={"JETSOCK_" + name.upper(): text})
    assert getattr(settings, name) == value
    assert type(getattr(settings, name)) is python_type


@pytest.mark.parametrize("name", list(Settings.__struct_fields__))
def test_every_field_is_read_from_its_flag(name: str) -> None:
    python_type = field_docs()[name][0]
    text, value = SAMPLE[python_type]
    argv = [flag_name(name)] if python_type is bool else [flag_name(name), text]
    settings = parse_settings(argv, environ={})
    assert getattr(settings, name) == value


def test_fixed_names_exist_with_their_defaults() -> None:
    names = {env_name(field) for field in field_docs()}
    for fixed in FIXED_NAMES:
        assert fixed in names, fixed
    defaults = load_settings(environ={})
    for field, value in FIXED_DEFAULTS.items():
        assert getattr(defaults, field) == value, field
    assert defaults.nats_url == ""
    assert defaults.nats_servers == []


def test_nats_url_is_comma_separated() -> None:
    settings = load_settings(environ={"JETSOCK_NATS_URL": " nats://a:4222, nats://b:4222 ,,"})
    assert settings.nats_servers == ["nats://a:4222", "nats://b:4222"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("JETSOCK_PORT", "abc"),
        ("JETSOCK_PORT", ""),
        ("JETSOCK_PORT", "80.5"),
        ("JETSOCK_DEV", "maybe"),
        ("JETSOCK_DEV", "2"),
        ("JETSOCK_HEARTBEAT", "fast"),
        ("JETSOCK_MAX_PENDING_BYTES", "1MB"),
    ],
)
def test_bad_env_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable):
        load_settings(environ={variable: value})


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "True", "yes", "on", " On "])
def test_true_booleans(text: str) -> None:
    assert load_settings(environ={"JETSOCK_DEV": text}).dev is True


@pytest.mark.parametrize("text", ["0", "false", "FALSE", "no", "off", "", " Off "])
def test_false_booleans(text: str) -> None:
    assert load_settings(environ={"JETSOCK_DEV": text}).dev is False


def test_settings_are_frozen() -> None:
    settings = load_settings(environ={})
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]
    assert msgspec.structs.replace(settings, port=1).port == 1


def test_protocol_document_lists_the_current_settings() -> None:
    from pathlib import Path

    from core.settings import with_settings_table

    document = (Path(__file__).parents[2] / "schemas" / "PROTOCOL.md").read_text()
    assert with_settings_table(document) == document, "the settings table is stale: run `make settings-doc`"
