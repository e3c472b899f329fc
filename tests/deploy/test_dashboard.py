"""The Grafana dashboard (deploy/grafana/dashboards/jetsock.json), its provisioning for
`docker compose --profile observability up`, and its copy in the Helm chart.

The dashboard may only query the metrics of METRICS, the names jetsock exposes
at /metrics; tests/edge checks METRICS against a real scrape of an edge, so a
renamed metric fails there or here, not silently as an empty panel.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

REPO = Path(__file__).parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "jetsock.json"
# The chart's copy (Helm reads no file outside the chart); DASHBOARD is the source.
CHART_DASHBOARD = REPO / "helm" / "jetsock" / "dashboards" / "jetsock.json"
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"
COMPOSE = REPO / "compose.yaml"

# What jetsock exposes at /metrics (OpenTelemetry's Prometheus exporter): family name,
# kind, and the family's own labels. Every series also carries otel_scope_* labels, and
# Prometheus adds job and instance. Counters carry the _total suffix; a histogram's
# series are <name>_bucket (with le), <name>_sum and <name>_count.
METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "jetsock_connections": ("gauge", frozenset({"jetsock_auth_state"})),
    "jetsock_joins_total": ("counter", frozenset()),
    "jetsock_leaves_total": ("counter", frozenset()),
    "jetsock_rooms_active": ("gauge", frozenset()),
    "jetsock_messages_in_total": ("counter", frozenset({"jetsock_source"})),
    "jetsock_messages_out_total": ("counter", frozenset()),
    "jetsock_bytes_out_bytes_total": ("counter", frozenset()),
    "jetsock_replays_total": ("counter", frozenset({"jetsock_recovered"})),
    "jetsock_replay_messages_total": ("counter", frozenset()),
    "jetsock_history_requests_total": ("counter", frozenset({"jetsock_transport"})),
    "jetsock_history_messages_total": ("counter", frozenset({"jetsock_transport"})),
    "jetsock_history_duration_seconds": ("histogram", frozenset({"jetsock_transport"})),
    "jetsock_history_cache_messages": ("gauge", frozenset()),
    "jetsock_history_cache_reads_total": ("counter", frozenset({"jetsock_answer"})),
    "jetsock_presence_users": ("gauge", frozenset()),
    "jetsock_presence_connections": ("gauge", frozenset()),
    "jetsock_presence_events_total": ("counter", frozenset()),
    "jetsock_presence_messages_total": ("counter", frozenset({"jetsock_direction"})),
    "jetsock_deflate_messages_total": ("counter", frozenset()),
    "jetsock_deflate_raw_bytes_total": ("counter", frozenset()),
    "jetsock_deflate_compressed_bytes_total": ("counter", frozenset()),
    "jetsock_gap_repairs_total": ("counter", frozenset()),
    "jetsock_gap_repair_messages_total": ("counter", frozenset()),
    "jetsock_closes_total": ("counter", frozenset({"websocket_close_code"})),
    "jetsock_auth_failures_total": ("counter", frozenset({"jetsock_reason"})),
    "jetsock_rate_limit_hits_total": ("counter", frozenset()),
    "messaging_client_operation_duration_seconds": (
        "histogram",
        frozenset({"messaging_system", "messaging_operation_name"}),
    ),
    "jetsock_delivery_duration_seconds": ("histogram", frozenset()),
    "jetsock_outbox_size_bytes": ("histogram", frozenset()),
    "jetsock_nats_connected": ("gauge", frozenset()),
    "jetsock_nats_reconnects_total": ("counter", frozenset()),
}
LABEL_VALUES = {
    "jetsock_auth_state": {"authenticated", "pending"},
    "jetsock_source": {"client", "http", "backend"},
    "jetsock_recovered": {"true", "false"},
    "messaging_system": {"nats"},
    "messaging_operation_name": {"publish"},
}
PROMETHEUS_LABELS = frozenset({"job", "instance"})
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
INSTANCE_MATCHER = 'instance=~"$instance"'

# PromQL words that are not metric names (functions and aggregations are told by their "(").
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
PROMQL_KEYWORDS |= {"offset", "inf", "nan", "Inf", "NaN"}
IDENTIFIER = re.compile(r"(?<![\w.:$])[A-Za-z_:][A-Za-z0-9_:]*")
SELECTOR = re.compile(r"(?<![\w:$])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def series_family() -> dict[str, str]:
    """Each series name the exporter writes -> its family in METRICS."""
    names: dict[str, str] = {}
    for family, (kind, _) in METRICS.items():
        suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
        for suffix in suffixes:
            names[family + suffix] = family
    return names


def _strip(expr: str) -> str:
    """The expression without strings, label matchers, ranges and grouping clauses."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    return GROUPING.sub(" ", expr)


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects."""
    stripped = _strip(expr)
    names = set()
    for match in IDENTIFIER.finditer(stripped):
        word = match.group()
        if word in PROMQL_KEYWORDS or stripped[match.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """(series name, {label: (operator, value)}) for each metric selector of the expression."""
    found = []
    names = metric_names(expr)
    for match in SELECTOR.finditer(expr):
        if match.group(1) in names:
            matchers = {m[0]: (m[1], m[2]) for m in MATCHER.findall(match.group(2) or "")}
            found.append((match.group(1), matchers))
    return found


def test_promql_helpers() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="b{c}", instance=~"$instance"}[5m])))'
        " / on (job) group_left sum without (d) (increase(b_total[$__rate_interval] offset 1h))"
        " or vector(0) + count(c == 1e3) and d"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d"}
    assert selectors('rate(x_total{a="1",b=~"2"}[1m]) + y') == [
        ("x_total", {"a": ("=", "1"), "b": ("=~", "2")}),
        ("y", {}),
    ]
    assert series_family()["messaging_client_operation_duration_seconds_bucket"] == (
        "messaging_client_operation_duration_seconds"
    )


@cache
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included, rows left out."""
    found = []
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


def targets() -> list[tuple[str, dict[str, Any]]]:
    return [(panel["title"], target) for panel in panels() for target in panel["targets"]]


def _yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


@cache
def grafana_service() -> dict[str, Any]:
    service: dict[str, Any] = _yaml(COMPOSE)["services"]["grafana"]
    return service


def grafana_mounts() -> dict[str, Path]:
    """Grafana's container paths -> the repository folders compose mounts there (read-only)."""
    mounts = {}
    for volume in grafana_service()["volumes"]:
        source, target, *options = str(volume).split(":")
        assert source.startswith("./"), volume
        assert options == ["ro"], f"{volume}: mount Grafana's files read-only"
        mounts[target] = (REPO / source).resolve()
    return mounts


def container_path(path: str) -> Path:
    """The repository file behind a path inside the Grafana container."""
    for target, source in grafana_mounts().items():
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return source / path[len(target) :].lstrip("/")
    raise AssertionError(f"{path} is in no folder compose mounts into Grafana: {sorted(grafana_mounts())}")


# --- the dashboard -------------------------------------------------------------------------------------


def test_dashboard_identity_and_variables() -> None:
    board = dashboard()
    assert board["uid"] == "jetsock" and board["title"] == "jetsock"
    assert 36 <= board["schemaVersion"] <= 41
    assert "id" not in board or board["id"] is None, "a provisioned dashboard carries no database id"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "instance"}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["type"] == "query"
    assert instance["datasource"] == DATASOURCE
    query = instance["query"]["query"] if isinstance(instance["query"], dict) else instance["query"]
    assert query == "label_values(jetsock_connections, instance)"
    assert "jetsock_connections" in METRICS
    if instance.get("includeAll"):
        assert instance.get("allValue") == ".*", "All must match every instance, also ones not listed yet"


def test_panels_have_prometheus_targets_on_the_datasource_variable() -> None:
    assert len(panels()) >= 15
    nested = [p for row in dashboard()["panels"] if row["type"] == "row" for p in row.get("panels", [])]
    ids = [panel["id"] for panel in dashboard()["panels"] + nested]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']}: no targets"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] >= 1 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_metric_queried_is_one_jetsock_exposes() -> None:
    families = series_family()
    for title, target in targets():
        names = metric_names(target["expr"])
        assert names, f"{title}: no metric in {target['expr']}"
        unknown = names - set(families)
        assert not unknown, f"{title}: {sorted(unknown)} is not in METRICS (a renamed metric?)"


def test_every_metric_jetsock_exposes_is_on_the_dashboard() -> None:
    families = series_family()
    used = {families[name] for _, target in targets() for name in metric_names(target["expr"])}
    assert used == set(METRICS), f"not on the dashboard: {sorted(set(METRICS) - used)}"


def test_selectors_filter_the_instance_and_use_existing_labels() -> None:
    families = series_family()
    for title, target in targets():
        expr = target["expr"]
        for name, matchers in selectors(expr):
            family = families[name]
            labels = METRICS[family][1]
            allowed = labels | PROMETHEUS_LABELS | ({"le"} if name.endswith("_bucket") else set())
            assert matchers.get("instance") == ("=~", "$instance"), f"{title}: {name} without {INSTANCE_MATCHER}"
            assert set(matchers) <= allowed, f"{title}: {name} has no label {sorted(set(matchers) - allowed)}"
            for label, (operator, value) in matchers.items():
                if label in LABEL_VALUES and operator == "=":
                    assert value in LABEL_VALUES[label], f"{title}: {label}={value!r}"
            if family == "messaging_client_operation_duration_seconds":
                # The name is OpenTelemetry's semantic convention: other clients in the process may use it too.
                assert matchers.get("messaging_system") == ("=", "nats"), title
                assert matchers.get("messaging_operation_name") == ("=", "publish"), title
        labels_here = set().union(*(METRICS[families[n]][1] for n in metric_names(expr))) | PROMETHEUS_LABELS
        for group in GROUPING.findall(expr):
            grouped = {label.strip() for label in group.split(",") if label.strip()}
            assert grouped <= labels_here | {"le"}, f"{title}: grouping by {sorted(grouped - labels_here)}"
        legend = set(LEGEND_LABEL.findall(target.get("legendFormat", "")))
        assert legend <= labels_here, f"{title}: legend names {sorted(legend - labels_here)}"


def test_functions_fit_the_metric_kinds() -> None:
    families = series_family()
    for title, target in targets():
        expr = target["expr"]
        for name in re.findall(r"\b(?:rate|irate|increase)\s*\(\s*([A-Za-z_:][\w:]*)", expr):
            kind = METRICS[families[name]][0]
            assert kind == "counter" or (kind == "histogram" and name != families[name]), f"{title}: rate of {name}"
        for quantile in re.finditer(r"histogram_quantile\s*\(\s*([0-9.]+)\s*,", expr):
            assert 0 < float(quantile.group(1)) < 1, title
            inner = expr[quantile.end() :]
            assert re.search(r"by\s*\([^)]*\ble\b", inner), f"{title}: histogram_quantile needs sum by (le)"
            assert re.search(r"rate\(\s*\w+_bucket\{[^}]*\}\[5m\]\)", inner), f"{title}: rate(..._bucket[5m])"
        for name in metric_names(expr):
            family = families[name]
            if METRICS[family][0] == "histogram":
                assert name.endswith("_bucket") and "histogram_quantile" in expr, f"{title}: {name}"


def test_latency_panels_show_p50_and_p99() -> None:
    by_metric: dict[str, set[str]] = {}
    for _, target in targets():
        for match in re.finditer(r"histogram_quantile\(([0-9.]+),.*?rate\((\w+)_bucket", target["expr"]):
            by_metric.setdefault(match.group(2), set()).add(match.group(1))
    assert {"0.5", "0.99"} <= by_metric["messaging_client_operation_duration_seconds"]
    assert {"0.5", "0.99"} <= by_metric["jetsock_delivery_duration_seconds"]
    assert "0.99" in by_metric["jetsock_outbox_size_bytes"]


def test_chart_ships_the_same_dashboard() -> None:
    assert CHART_DASHBOARD.read_bytes() == DASHBOARD.read_bytes(), (
        "deploy/grafana/dashboards/jetsock.json is the source: "
        "cp deploy/grafana/dashboards/jetsock.json helm/jetsock/dashboards/jetsock.json"
    )


# --- provisioning and compose ------------------------------------------------------------------------------


def test_compose_grafana_service() -> None:
    grafana = grafana_service()
    assert grafana["profiles"] == ["observability"]
    image, _, tag = grafana["image"].partition(":")
    assert image == "grafana/grafana"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"pin Grafana's version, not {tag!r}"
    # On this host only unless BIND_ADDRESS opens it (anonymous viewers see the dashboards).
    assert [str(port) for port in grafana["ports"]] == ["${BIND_ADDRESS:-127.0.0.1}:3000:3000"]
    env = {key: str(value) for key, value in grafana["environment"].items()}
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer", "anonymous visitors must not edit"
    assert container_path(env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]) == DASHBOARD
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    for source in grafana_mounts().values():
        assert source.is_dir(), source


def test_datasource_is_the_compose_prometheus() -> None:
    path = PROVISIONING / "datasources" / "prometheus.yaml"
    assert container_path("/etc/grafana/provisioning/datasources/prometheus.yaml") == path
    config = _yaml(path)
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    assert source["type"] == DATASOURCE["type"]
    assert source["access"] == "proxy"
    assert source["isDefault"] is True, "the dashboard's datasource variable starts on the default"
    services = _yaml(COMPOSE)["services"]
    match = re.fullmatch(r"http://([\w-]+):(\d+)", source["url"])
    assert match, source["url"]
    assert match.group(1) == "prometheus" and "profiles" in services["prometheus"]
    # The URL's port is the container's side of the published one.
    assert match.group(2) in [str(p).rsplit(":", 1)[-1] for p in services["prometheus"]["ports"]]
    scrape = _yaml(REPO / "deploy" / "compose" / "prometheus.yml")["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape, "$__rate_interval needs the scrape interval"


def test_dashboard_provider_reads_the_mounted_dashboards() -> None:
    path = PROVISIONING / "dashboards" / "jetsock.yaml"
    assert container_path("/etc/grafana/provisioning/dashboards/jetsock.yaml") == path
    config = _yaml(path)
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    folder = container_path(provider["options"]["path"])
    assert folder == DASHBOARD.parent
    assert sorted(p.name for p in folder.glob("*.json")) == ["jetsock.json"]


@pytest.mark.parametrize("path", sorted(PROVISIONING.rglob("*.yaml")), ids=lambda p: p.name)
def test_provisioning_files_are_yaml_objects(path: Path) -> None:
    assert isinstance(_yaml(path), dict)
