"""compose.yaml, the Dockerfile and deploy/haproxy.cfg, checked without a Docker engine.

compose.yaml is validated against the Compose specification's JSON Schema
(check-jsonschema), the Dockerfile is read by a small parser, and HAProxy
checks haproxy.cfg (`haproxy -c`) in both of its modes: compose (edges found
through Docker's DNS) and local processes (`make cluster`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from core.settings import env_name, field_docs

REPO = Path(__file__).parents[2]
COMPOSE = REPO / "compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
HAPROXY_CFG = REPO / "deploy" / "haproxy.cfg"
NATS_CONF = REPO / "deploy" / "nats-server.conf"
PER_SOURCE = ("max_unauthenticated_per_source", "max_connections_per_source")
"""Edge limits per client address: 0 behind a proxy (every socket has its address), enforced by the proxy."""

NATS_SERVICES = ["nats-1", "nats-2", "nats-3"]
SETTING_NAME = re.compile(r"\bJETSOCK_[A-Z0-9_]+\b")
LOCAL_LB_ENV = {
    "LB_BIND": "127.0.0.1:8080",
    "LB_EDGE1": "127.0.0.1:8081",
    "LB_EDGE2": "127.0.0.1:8082",
    "LB_EDGE3": "127.0.0.1:8083",
}


def _yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


@cache
def compose() -> dict[str, Any]:
    data: dict[str, Any] = _yaml(COMPOSE)
    return data


def service(name: str) -> dict[str, Any]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services[name]


def environment(name: str) -> dict[str, str]:
    env = service(name).get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def seconds(value: str) -> float:
    """A duration as HAProxy or Compose write it (`30s`, `1h`, `1m30s`, `500ms`; HAProxy's bare number is ms)."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h|d)?", value.strip())
    assert parts and "".join(n + u for n, u in parts) == value.strip(), f"not a duration: {value!r}"
    return sum(float(number) * units[unit or "ms"] for number, unit in parts)


# --------------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON-array (exec) form's words, or None for the shell form."""
        try:
            words = json.loads(self.args)
        except ValueError:
            return None
        return words if isinstance(words, list) and all(isinstance(w, str) for w in words) else None


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order: comments dropped, `\\` continuations joined (no heredocs)."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment line inside a continued instruction is dropped
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        keyword, _, args = " ".join(part for part in pending if part).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


@cache
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def stages() -> list[list[Instruction]]:
    """Instructions grouped by build stage (each starts with its FROM)."""
    result: list[list[Instruction]] = []
    for instruction in dockerfile():
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def global_args() -> dict[str, str]:
    """ARGs declared before the first FROM, with their defaults."""
    args: dict[str, str] = {}
    for instruction in dockerfile():
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.args.partition("=")
            args[name.strip()] = default.strip().strip('"')
    return args


def from_image(instruction: Instruction) -> tuple[str, str]:
    """(image with ARGs substituted, stage name) of a FROM."""
    words = [w for w in shlex.split(instruction.args) if not w.startswith("--")]
    image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args().get(m.group(1), m.group(0)), words[0])
    name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
    return image, name


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for word in shlex.split(instruction.args):
                name, sep, value = word.partition("=")
                assert sep, f"line {instruction.line}: write ENV as NAME=value"
                env[name] = value
    return env


def test_dockerfile_parser_reads_continuations_and_forms() -> None:
    parsed = parse_dockerfile('# c\nFROM a AS b\nRUN x \\\n    # inner\n    && y\nCMD ["serve"]\nENTRYPOINT jetsock\n')
    assert [(i.keyword, i.args) for i in parsed] == [
        ("FROM", "a AS b"),
        ("RUN", "x && y"),
        ("CMD", '["serve"]'),
        ("ENTRYPOINT", "jetsock"),
    ]
    assert parsed[2].exec_form() == ["serve"]
    assert parsed[3].exec_form() is None


def test_dockerfile_is_multi_stage_on_one_slim_python() -> None:
    froms = [i for i in dockerfile() if i.keyword == "FROM"]
    assert len(froms) >= 2, "build the wheel in one stage, run from another"
    images = {from_image(i)[0] for i in froms}
    assert len(images) == 1, f"the venv built in one stage links to that stage's Python; use one image: {images}"
    (image,) = images
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", image), image
    build_name = from_image(froms[0])[1]
    copies_from = [i.args for i in stages()[-1] if i.keyword == "COPY" and i.args.startswith("--from=")]
    assert any(args.startswith(f"--from={build_name} ") for args in copies_from), "the final stage copies the build"


def test_dockerfile_runtime_user_port_health_and_exec_form() -> None:
    final = stages()[-1]
    keywords = [i.keyword for i in final]
    users = [i.args for i in final if i.keyword == "USER"]
    assert users, "the final stage sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric non-root id, not {users[-1]!r}"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")

    assert env_of(final).get("JETSOCK_HOST") == "0.0.0.0"
    exposed = {port for i in final if i.keyword == "EXPOSE" for port in i.args.split()}
    assert "8080" in exposed or "8080/tcp" in exposed

    (health,) = [i for i in final if i.keyword == "HEALTHCHECK"]
    options, _, command = health.args.partition("CMD ")
    assert "/healthz" in command
    check = Instruction("CMD", command.strip(), health.line).exec_form()
    assert check and check[0] == "python", "the slim image has no curl or wget: check with python"
    for option in re.findall(r"--(\w[\w-]*)=(\S+)", options):
        if option[0] in ("interval", "timeout", "start-period"):
            assert seconds(option[1]) > 0

    (entrypoint,) = [i for i in final if i.keyword == "ENTRYPOINT"]
    (cmd,) = [i for i in final if i.keyword == "CMD"]
    assert entrypoint.exec_form() == ["jetsock"], "exec form: SIGTERM reaches jetsock, not a shell"
    assert cmd.exec_form() == ["serve"]
    stop = [i.args for i in final if i.keyword == "STOPSIGNAL"]
    assert stop in ([], ["SIGTERM"])


def test_dockerfile_healthcheck_command_is_valid_python() -> None:
    (health,) = [i for i in stages()[-1] if i.keyword == "HEALTHCHECK"]
    check = Instruction("CMD", health.args.partition("CMD ")[2], health.line).exec_form()
    assert check and check[1] == "-c"
    compile(check[2], "HEALTHCHECK", "exec")


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last match wins; a
    pattern matching a parent directory matches everything below it)."""
    excluded = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if pattern.startswith("**/"):
            tail = pattern[3:]
            hit = any(fnmatchcase(part, tail) for part in parts) or fnmatchcase(path, tail)
        else:
            hit = any(fnmatchcase(prefix, pattern) and prefix.count("/") == pattern.count("/") for prefix in prefixes)
        if hit:
            excluded = not negate
    return excluded


def test_every_copied_path_is_in_the_build_context() -> None:
    assert dockerignore_excludes(".venv/bin/python")
    assert dockerignore_excludes(".data/nats/x")
    assert dockerignore_excludes("edge/__pycache__/app.cpython-311.pyc")
    sources: list[str] = []
    for instruction in dockerfile():
        if instruction.keyword in ("COPY", "ADD") and "--from=" not in instruction.args:
            words = [w for w in shlex.split(instruction.args) if not w.startswith("--")]
            sources += words[:-1]
    assert sources
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY {source}: no such path in the repository"
        if path.is_file():
            files = [path]
        else:
            files = [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        assert files, source
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            assert not dockerignore_excludes(relative), f"{relative} is copied but .dockerignore leaves it out"


def test_image_installs_the_server_wheel_with_the_js_client_inside() -> None:
    """The build installs the server's wheel (one top-level package, jetsock_server, which
    carries the browser client the edge serves) and fails if the JS files are not in it;
    `make test-containers` builds and runs the image for real."""
    build = " ".join(i.args for i in stages()[0] if i.keyword == "RUN")
    assert "pip wheel" in build and "pip install --no-deps /wheels/" in build
    assert "jetsock_server.code_root()" in build and "jetsock-stream.js" in build
    copied = [i.args.split() for i in stages()[0] if i.keyword == "COPY"]
    assert ["deploy/launcher", "deploy/launcher"] in copied, "the launcher is the package jetsock_server"
    assert any(
        "clients/js/jetsock.js" in words
        and "clients/js/jetsock-stream.js" in words
        and "clients/js/jetsock.d.ts" in words
        and words[-1] == "clients/js/"
        for words in copied
    ), "the module, its stream transport and its types are copied (not the package's node_modules)"


# ------------------------------------------------------------------------ compose


def test_compose_matches_the_compose_specification() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_jetsock_variable_is_a_setting() -> None:
    settings = {env_name(field) for field in field_docs()}
    for path in (COMPOSE, DOCKERFILE):
        names = set(SETTING_NAME.findall(path.read_text()))
        unknown = names - settings
        assert not unknown, f"{path.name} names variables that are no setting: {sorted(unknown)}"
    assert set(environment("edge")) <= settings


def mounts(name: str) -> dict[str, str]:
    """A service's volumes and bind mounts: container path -> source."""
    found = {}
    for volume in service(name).get("volumes", []):
        source, target = str(volume).split(":")[:2]
        found[target] = source
    return found


def nats_config_file(name: str) -> Path:
    """The file a NATS service reads with -c: the host side of its bind mount."""
    command = service(name)["command"]
    inside = command[command.index("-c") + 1]
    source = mounts(name)[inside]
    assert source.startswith("./"), f"{name} reads {inside}, which is no file of the repository"
    return REPO / source


def test_nats_cluster_of_three_with_jetstream() -> None:
    routes = {f"nats://{name}:6222" for name in NATS_SERVICES}
    for name in NATS_SERVICES:
        svc = service(name)
        assert svc["image"].startswith("nats:") and "alpine" in svc["image"], "the healthcheck uses the image's wget"
        command = svc["command"]
        assert command[0] == "nats-server"

        def flag(option: str, command: list[str] = command) -> str:
            return command[command.index(option) + 1]

        assert "-js" in command
        assert flag("-server_name") == name
        assert flag("-cluster_name") == "jetsock"
        assert flag("-cluster") == "nats://0.0.0.0:6222"
        assert set(flag("-routes").split(",")) == routes
        # The store is the config's (nats-server refuses -sd beside a store_dir in the file), on a volume.
        assert "-sd" not in command and "--store_dir" not in command
        (store,) = re.findall(r'(?m)^\s*store_dir:\s*"?([^"\s]+)"?', nats_config_file(name).read_text())
        assert any(store == target or store.startswith(target + "/") for target in mounts(name)), store
        monitor = flag("-m")
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD"
        assert f"127.0.0.1:{monitor}/healthz?js-enabled-only=true" in " ".join(test)
        assert str(svc["volumes"][0]).split(":")[0] in compose()["volumes"]


def test_nats_services_run_the_deploy_config_with_required_passwords() -> None:
    for name in NATS_SERVICES:
        assert nats_config_file(name).resolve() == NATS_CONF, "the file tests/core/test_natsconn.py checks"
        volume = next(str(v) for v in service(name)["volumes"] if str(v).startswith("./deploy/nats-server.conf:"))
        assert volume.endswith(":ro")
        env = environment(name)
        for variable in ("EDGE_PASSWORD", "BACKEND_PASSWORD"):
            assert env[variable].startswith(f"${{{variable}:?"), f"{name}: {variable} is required, never defaulted"
    text = NATS_CONF.read_text()
    assert "$EDGE_PASSWORD" in text and "$BACKEND_PASSWORD" in text
    assert "no_auth_user" not in text and "authorization" not in text, "no anonymous or shared access"


def test_edge_service() -> None:
    edge = service("edge")
    env = environment("edge")
    assert edge["build"] in (".", {"context": "."})
    assert edge["deploy"]["replicas"] == 3
    assert env["JETSOCK_REPLICAS"] == "3"
    assert env["JETSOCK_NATS_URL"].split(",") == [f"nats://{name}:4222" for name in NATS_SERVICES]
    assert env["JETSOCK_JWT_SECRET"].startswith("${JETSOCK_JWT_SECRET:?"), "the secret is required, never defaulted"
    assert env["JETSOCK_NATS_USER"] == "edge"
    assert env["JETSOCK_NATS_PASSWORD"].startswith("${EDGE_PASSWORD:?"), "the NATS password is required"
    assert "JETSOCK_HOST" not in env or env["JETSOCK_HOST"] == "0.0.0.0"
    assert {name: dep["condition"] for name, dep in edge["depends_on"].items()} == dict.fromkeys(
        NATS_SERVICES, "service_healthy"
    )
    (health,) = [i for i in stages()[-1] if i.keyword == "HEALTHCHECK"]
    image_check = Instruction("CMD", health.args.partition("CMD ")[2], health.line).exec_form()
    assert edge["healthcheck"]["test"] == ["CMD", *(image_check or [])], "the same check as the image's HEALTHCHECK"
    docs = field_docs()
    drain = float(env.get("JETSOCK_DRAIN_SECONDS", docs["drain_seconds"][1]))
    close = float(env.get("JETSOCK_CLOSE_TIMEOUT", docs["close_timeout"][1]))
    assert seconds(edge["stop_grace_period"]) > drain + close, "stop must outwait the drain"


def test_haproxy_service_uses_the_shared_config_in_compose_mode() -> None:
    haproxy = service("haproxy")
    assert haproxy["image"].startswith("haproxy:")
    # This host only unless BIND_ADDRESS opens it; HTTP_PORT moves the host's side.
    assert [str(p) for p in haproxy["ports"]] == ["${BIND_ADDRESS:-127.0.0.1}:${HTTP_PORT:-8080}:8080"]
    mounts = [str(v).split(":") for v in haproxy["volumes"] if str(v).split(":")[1].endswith("haproxy.cfg")]
    assert mounts == [["./deploy/haproxy.cfg", "/usr/local/etc/haproxy/haproxy.cfg", "ro"]]
    assert (REPO / mounts[0][0]).resolve() == HAPROXY_CFG, "the file make cluster runs HAProxy with"
    assert haproxy["depends_on"]["edge"]["condition"] == "service_healthy"
    env = environment("haproxy")
    host, _, port = env["LB_EDGE_DNS"].partition(":")
    assert host == "edge" and port == "8080"
    assert int(env["LB_EDGE_SLOTS"]) >= service("edge")["deploy"]["replicas"]
    assert not any(key.startswith("LB_EDGE") and key[7:].isdigit() for key in env), "compose mode only"


def test_observability_profile() -> None:
    services: dict[str, dict[str, Any]] = compose()["services"]
    observability = {name for name, svc in services.items() if "observability" in svc.get("profiles", [])}
    assert observability == {"otel-collector", "prometheus", "grafana"}
    for name, svc in services.items():
        if name not in observability:
            assert not svc.get("profiles"), f"{name} runs in the default `docker compose up`"
    assert "opentelemetry-collector" in services["otel-collector"]["image"]
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")  # tests/deploy/test_dashboard.py checks the rest
    for name in observability:
        for volume in services[name]["volumes"]:
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"


def test_prometheus_scrapes_every_edge_through_docker_dns() -> None:
    config = _yaml(REPO / "deploy" / "compose" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    edge = jobs["jetsock-edge"]
    assert edge.get("metrics_path", "/metrics") == "/metrics"
    (sd,) = edge["dns_sd_configs"]
    assert sd["names"] == ["edge"] and sd["type"] == "A" and sd["port"] == 8080
    targets = {t for job in jobs.values() for c in job.get("static_configs", []) for t in c["targets"]}
    assert f"haproxy:{environment('haproxy')['LB_METRICS_BIND'].rpartition(':')[2]}" in targets
    assert "otel-collector:8889" in targets


def test_otel_collector_pipelines_use_defined_components() -> None:
    config = _yaml(REPO / "deploy" / "compose" / "otel-collector.yaml")
    pipelines = config["service"]["pipelines"]
    assert pipelines
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{component} is used but not defined under {kind}"
    assert set(config["service"].get("extensions", [])) <= set(config.get("extensions", {}))
    assert config["exporters"]["prometheus"]["endpoint"].endswith(":8889")
    published = {str(p).split(":")[-1] for p in service("otel-collector")["ports"]}
    for protocol in config["receivers"]["otlp"]["protocols"].values():
        host, _, port = protocol["endpoint"].rpartition(":")
        assert host == "0.0.0.0" and port in published


# ---------------------------------------------------------------------- haproxy


def haproxy_lines() -> list[list[str]]:
    """Non-comment lines of haproxy.cfg, as words."""
    lines = []
    for raw in HAPROXY_CFG.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line.split())
    return lines


def test_haproxy_balances_round_robin_without_stickiness() -> None:
    lines = haproxy_lines()
    assert ["balance", "roundrobin"] in lines
    # A stick table may count connections per source (the frontend's limits); nothing may route by it.
    assert not [w for w in lines if w[0] in ("cookie", "appsession", "stick", "hash-type")], "no stickiness"
    assert "stick-table" not in [w[0] for w in haproxy_section("backend", "edges")], "no stick table in the backend"
    assert not [w for w in lines if "cookie" in w], "no cookie on a server line either"
    tunnel = [w[2] for w in lines if w[:2] == ["timeout", "tunnel"]]
    assert tunnel and seconds(tunnel[0]) >= 3600
    for kind in ("client", "server"):
        (value,) = [w[2] for w in lines if w[:2] == ["timeout", kind]]
        assert seconds(value) == 30
    assert ["option", "httpchk", "GET", "/readyz"] in lines
    assert ["http-check", "expect", "status", "200"] in lines
    default_server = next(w for w in lines if w[0] == "default-server")
    assert default_server[1:] == ["inter", "1s", "fall", "2", "rise", "2"]
    assert ["mode", "http"] in lines


def haproxy_section(kind: str, name: str) -> list[list[str]]:
    """The lines (as words) of one `frontend`/`backend` section of haproxy.cfg."""
    section: list[list[str]] | None = None
    found: list[list[str]] = []
    for words in haproxy_lines():
        if words[0] in ("global", "defaults", "frontend", "backend", "resolvers", "listen"):
            section = found if words[:2] == [kind, name] else None
            continue
        if section is not None and not words[0].startswith("."):
            section.append(words)
    assert found, f"no {kind} {name} in haproxy.cfg"
    return found


def test_haproxy_limits_each_source_as_the_edges_would() -> None:
    """The edges behind HAProxy run without per-source limits; HAProxy applies them, with the edges' defaults."""
    docs = field_docs()
    frontend = haproxy_section("frontend", "jetsock")
    (table,) = [w for w in frontend if w[0] == "stick-table"]
    stored = table[table.index("store") + 1].split(",")
    assert "conn_cur" in stored and any(s.startswith("conn_rate(") for s in stored), table
    assert ["tcp-request", "connection", "track-sc0", "src"] in frontend
    rejects = {" ".join(w[4:]) for w in frontend if w[:4] == ["tcp-request", "connection", "reject", "if"]}
    assert f"{{ sc0_conn_cur gt {docs['max_connections_per_source'][1]} }}" in rejects, rejects
    assert any(r.startswith("{ sc0_conn_rate gt ") for r in rejects), rejects
    (head,) = [w[2] for w in haproxy_lines() if w[:2] == ["timeout", "http-request"]]
    assert seconds(head) == docs["handshake_timeout"][1], "slowloris: the edge's own handshake_timeout"


def test_edges_behind_a_proxy_leave_per_source_limits_to_it() -> None:
    from edge.localcluster import LocalCluster

    compose_env = environment("edge")
    local_env = LocalCluster(REPO / ".data" / "unused").edge_env()
    for name in PER_SOURCE:
        assert compose_env[env_name(name)] == "0", f"compose.yaml: {env_name(name)}"
        assert local_env[env_name(name)] == "0", f"edge/localcluster.py: {env_name(name)}"


def haproxy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None
    )
    if binary is None:
        pytest.fail("haproxy is not installed: `make test` installs it as root (apt-get install haproxy)")
    return subprocess.run(
        [binary, "-c", "-f", str(HAPROXY_CFG)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_haproxy_config_checks_in_compose_mode() -> None:
    env = {key: value for key, value in environment("haproxy").items() if key.startswith("LB_")}
    result = haproxy(env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_haproxy_config_checks_in_local_mode() -> None:
    for env in (LOCAL_LB_ENV, {"LB_EDGE1": "127.0.0.1:8081", "LB_EDGE2": "127.0.0.1:8082"}):
        result = haproxy(env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "WARNING" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_haproxy_config_refuses_to_start_without_its_variables() -> None:
    for env in ({}, {"LB_EDGE_DNS": "edge:8080"}, {"LB_EDGE_DNS": "edge:8080", "LB_EDGE_SLOTS": "3", **LOCAL_LB_ENV}):
        result = haproxy(env)
        assert result.returncode != 0, env
        assert "LB_EDGE" in result.stdout + result.stderr


def test_compose_sets_only_variables_haproxy_cfg_reads() -> None:
    """Each LB_* variable compose sets is one haproxy.cfg reads."""
    used = set(re.findall(r"\$\{(LB_[A-Z0-9_]+)", HAPROXY_CFG.read_text()))
    used |= set(re.findall(r"defined\((LB_[A-Z0-9_]+)\)", HAPROXY_CFG.read_text()))
    assert set(environment("haproxy")) <= used
    assert set(LOCAL_LB_ENV) <= used
