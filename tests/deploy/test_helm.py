"""helm/jetsock: renders and lints offline (helm-python-sdk), every manifest validates
strictly (kubernetes-validate), and the chart maps onto core/settings.py name for name."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from core.embedded import nats_server_binary
from core.settings import env_name, field_docs, load_settings

CHART = Path(__file__).resolve().parents[2] / "helm" / "jetsock"
DEPLOY_NATS_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats-server.conf"
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "jetsock.json"
RELEASE, NAMESPACE = "demo", "chat"
# The chart's minimum (Chart.yaml kubeVersion) and the newest kubernetes-validate ships.
KUBE_VERSIONS = ("1.27", "1.37")
LINT_KUBE_VERSION = "v1.37.0"

SETTINGS = field_docs()
SETTING_ENV_NAMES = {env_name(name) for name in SETTINGS}
# Settings that values.config does not accept, because the chart sets them itself
# (or they hold secrets, which belong in the Secret, or make no sense in a cluster).
MANAGED = {
    "host": "0.0.0.0, fixed: the container listens on all addresses",
    "port": "8080, fixed: the container port the probes and the Service use",
    "nats_url": "the chart's NATS pods, or nats.url",
    "nats_user": "nats.auth.user",
    "nats_password": "a secret: nats.auth.password or nats.auth.existingSecret",
    "nats_token": "a secret: extraEnv from a Secret of yours",
    "jwt_secret": "a secret: auth.jwtSecret or auth.existingSecret",
    "jwt_public_key": "auth.jwtPublicKey or auth.existingSecret",
    "jwks_url": "auth.jwksUrl",
    "drain_seconds": "drainSeconds, which also sets terminationGracePeriodSeconds",
    "node": "one name for every pod would be wrong; the default <host>-<pid> is the pod's name",
    "dev": "development mode (prints tokens, serves /dev/token): never in a cluster",
    "data_dir": "only for the embedded nats-server, which the chart never starts",
    "embedded_nats_port": "only for the embedded nats-server, which the chart never starts",
}
SCHEMA_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
JETSOCK_NAME = re.compile(r"\bJETSOCK_[A-Z0-9_]+")

EXTERNAL = {"nats": {"enabled": False, "url": "nats://nats-a.example:4222,nats://nats-b.example:4222"}}
EVERYTHING = {
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "hosts": [{"host": "chat.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
        "tls": [{"secretName": "chat-tls", "hosts": ["chat.example.com"]}],
    },
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "jetsock"}},
    "auth": {"existingSecret": "my-jwt-keys", "jwksUrl": "https://auth.example.com/.well-known/jwks.json"},
    "nats": {"auth": {"existingSecret": "my-nats-passwords"}},
    "config": {
        "allowed_origins": "https://chat.example.com",
        "max_pending_bytes": 2097152,
        "close_timeout": 12.5,
        "jwt_leeway": 2.5,
        "demo": True,
        "log_level": "debug",
    },
    "drainSeconds": 45,
    "extraEnv": [{"name": "JETSOCK_JWT_ISSUER", "value": "https://auth.example.com/"}],
}
CASES = {"default": None, "external-nats": EXTERNAL, "ingress-monitor-existing-secrets": EVERYTHING}


class Rendered:
    """One render of the chart: its objects by (kind, name), and NOTES.txt."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files
        self.notes = files.get("jetsock/templates/NOTES.txt", "")
        self.objects: list[dict[str, Any]] = []
        for path, text in files.items():
            if path.endswith(".yaml"):
                self.objects += [doc for doc in yaml.safe_load_all(text) if doc]

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.kinds(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"{len(found)} {kind} named {name}: {[o['metadata']['name'] for o in found]}"
        return found[0]

    @property
    def edge_config(self) -> dict[str, str]:
        data: dict[str, str] = self.one("ConfigMap", f"{RELEASE}-jetsock")["data"]
        return data

    @property
    def edge_container(self) -> dict[str, Any]:
        (container,) = self.one("Deployment")["spec"]["template"]["spec"]["containers"]
        return container

    def secret_value(self, name: str, key: str) -> str:
        return base64.b64decode(self.one("Secret", name)["data"][key]).decode()


@pytest.fixture(scope="module")
def chart() -> Any:
    loaded = helm.Chart.load(CHART)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def render(chart: Any) -> Callable[[dict[str, Any] | None], Rendered]:
    def render(values: dict[str, Any] | None = None) -> Rendered:
        return Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE))

    return render


# --- renders, lints, validates ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_lints_clean(case: str) -> None:
    report = helm.lint(CHART, CASES[case], strict=True, namespace=NAMESPACE, kube_version=LINT_KUBE_VERSION)
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


@pytest.mark.parametrize("case", CASES)
def test_every_manifest_validates_strictly(case: str, render: Callable[..., Rendered]) -> None:
    rendered = render(CASES[case])
    assert rendered.objects
    for obj in rendered.objects:
        assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # a CRD: no schema in kubernetes-validate; checked by hand below
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_default_objects(render: Callable[..., Rendered]) -> None:
    kinds = sorted(o["kind"] for o in render().objects)
    expected = "ConfigMap ConfigMap Deployment HorizontalPodAutoscaler PodDisruptionBudget PodDisruptionBudget"
    expected += " Secret Service Service Service ServiceAccount StatefulSet"
    assert kinds == sorted(expected.split())


# --- the chart and the settings ---------------------------------------------------------------------------


def test_schema_config_keys_are_the_settings_the_chart_does_not_manage(chart: Any) -> None:
    config = chart.schema["properties"]["config"]
    assert config["additionalProperties"] is False
    allowed = set(config["properties"])
    assert not allowed - set(SETTINGS), f"not settings: {sorted(allowed - set(SETTINGS))}"
    assert not allowed & set(MANAGED), f"managed by the chart: {sorted(allowed & set(MANAGED))}"
    missing = set(SETTINGS) - set(MANAGED) - allowed
    assert not missing, f"settings neither in values.schema.json's config nor managed by the chart: {sorted(missing)}"
    for name, spec in config["properties"].items():
        assert spec["type"] == SCHEMA_TYPES[SETTINGS[name][0]], name


def test_managed_settings_are_settings() -> None:
    assert set(MANAGED) <= set(SETTINGS)


@pytest.mark.parametrize("case", CASES)
def test_every_jetsock_name_is_a_setting(case: str, render: Callable[..., Rendered]) -> None:
    rendered = render(CASES[case])
    names = set().union(*(JETSOCK_NAME.findall(text) for text in rendered.files.values()))
    assert names, "no JETSOCK_ variable rendered"
    assert names <= SETTING_ENV_NAMES, sorted(names - SETTING_ENV_NAMES)
    env = {e["name"] for e in rendered.edge_container.get("env", [])}
    assert set(rendered.edge_config) | env <= SETTING_ENV_NAMES


def test_chart_sources_name_only_settings() -> None:
    for path in sorted(CHART.rglob("*")):
        if path.is_file():
            names = set(JETSOCK_NAME.findall(path.read_text()))
            assert names <= SETTING_ENV_NAMES, f"{path.name}: {sorted(names - SETTING_ENV_NAMES)}"


@pytest.mark.parametrize("case", CASES)
def test_rendered_environment_loads_as_settings(case: str, render: Callable[..., Rendered]) -> None:
    """The ConfigMap and the Secret, as the container sees them, parse with core.settings."""
    rendered = render(CASES[case])
    environ = dict(rendered.edge_config)
    for var in rendered.edge_container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref and rendered.kinds("Secret") and ref["name"] == f"{RELEASE}-jetsock":
            environ[var["name"]] = rendered.secret_value(ref["name"], ref["key"])
        elif ref:
            environ[var["name"]] = "from-an-existing-secret"
        else:
            environ[var["name"]] = var["value"]
    settings = load_settings(environ=environ)
    assert settings.host == "0.0.0.0"
    assert settings.port == 8080
    assert settings.jwt_secret or settings.jwt_public_key or settings.jwks_url
    assert settings.nats_servers
    if case == "ingress-monitor-existing-secrets":
        assert settings.max_pending_bytes == 2097152  # not 2.097152e+06
        assert settings.close_timeout == 12.5
        assert settings.demo is True
        assert settings.drain_seconds == 45
        assert settings.jwt_issuer == "https://auth.example.com/"


@pytest.mark.parametrize(
    "config",
    [{"no_such_setting": 1}, {"jwt_secret": "in-a-configmap"}, {"nats_password": "x"}, {"dev": True}, {"port": 1}],
)
def test_schema_refuses_unknown_and_managed_settings(chart: Any, config: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.render({"config": config}, name=RELEASE, namespace=NAMESPACE)


def test_schema_refuses_wrong_types_and_unknown_values(chart: Any) -> None:
    for values in (
        {"config": {"max_connections": "many"}},
        {"config": {"demo": "yes"}},
        {"drainSeconds": -1},
        {"replicaCount": 1, "surprise": True},
        {"nats": {"replicas": 2}},
    ):
        with pytest.raises(helm.HelmValuesError):
            chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_external_nats_needs_its_url(chart: Any) -> None:
    with pytest.raises(helm.HelmError):
        chart.render({"nats": {"enabled": False}}, name=RELEASE, namespace=NAMESPACE)


def test_stream_replicas_cannot_exceed_the_chart_cluster(chart: Any) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"config\.replicas"):
        chart.render({"config": {"replicas": 5}}, name=RELEASE, namespace=NAMESPACE)


# --- the edge ---------------------------------------------------------------------------------------------


def test_edge_deployment(chart: Any, render: Callable[..., Rendered]) -> None:
    rendered = render()
    deployment = rendered.one("Deployment", f"{RELEASE}-jetsock")
    pod = deployment["spec"]["template"]
    spec, container = pod["spec"], rendered.edge_container
    config = rendered.edge_config

    assert container["image"] == f"ghcr.io/jetsock/jetsock:{chart.metadata['appVersion']}"
    assert "command" not in container and "args" not in container  # the image runs `jetsock serve`
    assert config["JETSOCK_HOST"] == "0.0.0.0"
    assert container["ports"] == [{"name": "http", "containerPort": int(config["JETSOCK_PORT"]), "protocol": "TCP"}]

    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}

    drain = float(config["JETSOCK_DRAIN_SECONDS"])
    assert drain == 20
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    sleep = int(command[1])
    assert sleep > 0
    # preStop, then the drain, then the last closes (close_timeout, 5 s) must fit before SIGKILL.
    assert spec["terminationGracePeriodSeconds"] >= drain + sleep + 5 + 5

    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False  # a Service "jetsock" would set JETSOCK_PORT=tcp://...

    assert set(container["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]

    labels = pod["metadata"]["labels"]
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("case", CASES)
def test_edges_behind_the_ingress_leave_per_source_limits_to_it(case: str, render: Callable[..., Rendered]) -> None:
    """Behind the Service and ingress every socket has the proxy's address: per-source limits are off on the edges
    (in every case: values given under `config` merge with the chart's)."""
    config = render(CASES[case]).edge_config
    for name in ("max_unauthenticated_per_source", "max_connections_per_source"):
        assert config[env_name(name)] == "0", (case, name)
    assert load_settings(environ=dict(config)).max_connections_per_source == 0


def test_grace_period_follows_drain_and_close_timeout(render: Callable[..., Rendered]) -> None:
    rendered = render(EVERYTHING)
    spec = rendered.one("Deployment")["spec"]["template"]["spec"]
    assert rendered.edge_config["JETSOCK_DRAIN_SECONDS"] == "45"
    sleep = int(rendered.edge_container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] >= 45 + sleep + 12.5


def test_edge_service_hpa_and_pdb_select_the_edge(render: Callable[..., Rendered]) -> None:
    rendered = render()
    pod_labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = rendered.one("Service", f"{RELEASE}-jetsock")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert "sessionAffinity" not in service["spec"]  # no stickiness: clients resume on any node
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = rendered.one("PodDisruptionBudget", f"{RELEASE}-jetsock")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{RELEASE}-jetsock",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_fixed_replicas_without_autoscaling(render: Callable[..., Rendered]) -> None:
    rendered = render({"autoscaling": {"enabled": False}, "replicaCount": 1})
    assert rendered.one("Deployment")["spec"]["replicas"] == 1
    assert not rendered.kinds("HorizontalPodAutoscaler")
    # minAvailable 1 of 1 would block every node drain.
    assert [p["metadata"]["name"] for p in rendered.kinds("PodDisruptionBudget")] == [f"{RELEASE}-nats"]


def test_generated_keys_and_the_secret(render: Callable[..., Rendered]) -> None:
    rendered = render()
    secret = f"{RELEASE}-jetsock"
    assert len(rendered.secret_value(secret, "jwt-secret")) >= 32
    assert len(rendered.secret_value(secret, "nats-password")) >= 32
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in rendered.edge_container["env"]}
    assert env["JETSOCK_JWT_SECRET"] == {"name": secret, "key": "jwt-secret"}
    assert env["JETSOCK_NATS_PASSWORD"] == {"name": secret, "key": "nats-password"}
    assert not {"JETSOCK_JWT_SECRET", "JETSOCK_NATS_PASSWORD"} & set(rendered.edge_config)
    assert f"get secret {secret}" in rendered.notes and "jwt-secret" in rendered.notes

    given = render({"auth": {"jwtSecret": "s3cret-given-in-values"}})
    assert given.secret_value(secret, "jwt-secret") == "s3cret-given-in-values"
    jwks_only = render({"auth": {"jwksUrl": "https://auth.example.com/jwks.json"}})
    assert "jwt-secret" not in jwks_only.one("Secret")["data"]  # no HS256 key nobody asked for
    assert jwks_only.edge_config["JETSOCK_JWKS_URL"] == "https://auth.example.com/jwks.json"


def test_existing_secrets_ingress_and_service_monitor(render: Callable[..., Rendered]) -> None:
    rendered = render(EVERYTHING)
    assert not rendered.kinds("Secret")  # every key comes from the user's Secrets
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in rendered.edge_container["env"] if "valueFrom" in e}
    assert {"name": "JETSOCK_JWT_ISSUER", "value": "https://auth.example.com/"} in rendered.edge_container["env"]
    assert env["JETSOCK_JWT_SECRET"]["name"] == env["JETSOCK_JWT_PUBLIC_KEY"]["name"] == "my-jwt-keys"
    assert env["JETSOCK_NATS_PASSWORD"]["name"] == "my-nats-passwords"
    sts_env = {e["name"]: e for e in rendered.one("StatefulSet")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert sts_env["EDGE_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "my-nats-passwords"

    ingress = rendered.one("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    # HTTP streams (PROTOCOL.md 11): each event passes at once, bodies are not held back either.
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-http-version"] == "1.1"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{RELEASE}-jetsock", "port": {"number": 80}}
    assert "wss://chat.example.com/ws" in rendered.notes

    monitor = rendered.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics" and endpoint["port"] == "http"
    service = rendered.one("Service", f"{RELEASE}-jetsock")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def test_grafana_dashboard_configmap(render: Callable[..., Rendered]) -> None:
    name = f"{RELEASE}-jetsock-dashboard"
    assert not [o for o in render().kinds("ConfigMap") if o["metadata"]["name"] == name], "off by default"

    rendered = render(EVERYTHING)
    configmap = rendered.one("ConfigMap", name)
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(configmap, version, strict=True)
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"  # the sidecar's default label
    assert configmap["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "jetsock"}
    assert list(configmap["data"]) == ["jetsock.json"]
    assert configmap["data"]["jetsock.json"] == DASHBOARD.read_text(), "the chart ships deploy/'s dashboard as is"
    assert json.loads(configmap["data"]["jetsock.json"])["uid"] == "jetsock"
    assert f"ConfigMap {name}" in rendered.notes

    relabelled = render({"grafanaDashboard": {"enabled": True, "labels": {"grafana_dashboard": None, "dash": "yes"}}})
    labels = relabelled.one("ConfigMap", name)["metadata"]["labels"]
    assert labels["dash"] == "yes" and "grafana_dashboard" not in labels
    assert "annotations" not in relabelled.one("ConfigMap", name)["metadata"]


def test_schema_refuses_unknown_grafana_dashboard_values(chart: Any) -> None:
    for values in (
        {"grafanaDashboard": {"enabled": "yes"}},
        {"grafanaDashboard": {"enabled": True, "folder": "jetsock"}},
        {"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}},
    ):
        with pytest.raises(helm.HelmValuesError):
            chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_notes_say_how_to_connect(render: Callable[..., Rendered]) -> None:
    notes = render().notes
    assert f"kubectl -n {NAMESPACE} port-forward svc/{RELEASE}-jetsock" in notes
    assert "ws://localhost:8080/ws" in notes
    assert "jetsock.v1" in notes and "bearer." in notes


# --- NATS -------------------------------------------------------------------------------------------------


def test_chart_nats_cluster(render: Callable[..., Rendered]) -> None:
    rendered = render()
    name, headless = f"{RELEASE}-nats", f"{RELEASE}-nats-headless"
    sts = rendered.one("StatefulSet", name)
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == headless
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    service = rendered.one("Service", headless)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert {p["port"] for p in service["spec"]["ports"]} == {4222, 6222, 8222}
    assert service["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()

    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "nats:2.15-alpine"
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}[claim["metadata"]["name"]] == "/data"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz?js-enabled-only=true"
    assert container["readinessProbe"]["httpGet"]["port"] == "monitor"
    pod_name = {e["name"]: e for e in container["env"]}["POD_NAME"]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert rendered.one("PodDisruptionBudget", name)["spec"]["maxUnavailable"] == 1
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True

    conf = rendered.one("ConfigMap", f"{name}-config")["data"]["nats.conf"]
    assert re.search(r"^server_name: \$POD_NAME$", conf, re.M)
    assert re.search(r"store_dir: /data/", conf)
    routes = re.findall(r"nats://([\w.-]+):6222", conf)
    assert routes == [f"{name}-{i}.{headless}" for i in range(3)]

    assert rendered.edge_config["JETSOCK_REPLICAS"] == "3"
    urls = rendered.edge_config["JETSOCK_NATS_URL"].split(",")
    assert urls == [f"nats://{name}-{i}.{headless}:4222" for i in range(3)]
    assert rendered.edge_config["JETSOCK_NATS_USER"] == "edge"


def _subjects(conf: str) -> set[str]:
    """The quoted subjects of a nats-server configuration's permissions."""
    return {s for s in re.findall(r'"([^"\s]+)"', conf) if "." in s and "/" not in s}


def test_chart_nats_permissions_are_deploys(render: Callable[..., Rendered]) -> None:
    conf = render().one("ConfigMap", f"{RELEASE}-nats-config")["data"]["nats.conf"]
    assert _subjects(conf) == _subjects(DEPLOY_NATS_CONF.read_text())
    other = render({"config": {"stream": "CHAT"}}).one("ConfigMap", f"{RELEASE}-nats-config")["data"]["nats.conf"]
    assert "$JS.API.DIRECT.GET.CHAT" in _subjects(other) and "$JS.API.DIRECT.GET.ROOMS" not in _subjects(other)


@pytest.mark.parametrize("values", [None, {"nats": {"replicas": 1, "auth": {"enabled": False}}}])
def test_nats_conf_is_valid_for_nats_server(
    values: dict[str, Any] | None, render: Callable[..., Rendered], tmp_path: Path
) -> None:
    conf = render(values).one("ConfigMap", f"{RELEASE}-nats-config")["data"]["nats.conf"]
    if values:
        assert "cluster {" not in conf and "accounts {" not in conf
    env = {"POD_NAME": f"{RELEASE}-nats-0", "EDGE_PASSWORD": "e" * 24, "BACKEND_PASSWORD": "b" * 24}
    (tmp_path / "nats.conf").write_text(conf)
    checked = subprocess.run(
        [nats_server_binary(), "-c", str(tmp_path / "nats.conf"), "-t"],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_external_nats(render: Callable[..., Rendered]) -> None:
    rendered = render(EXTERNAL)
    assert not rendered.kinds("StatefulSet")
    assert not any(o["metadata"]["name"].startswith(f"{RELEASE}-nats") for o in rendered.objects)
    config = rendered.edge_config
    assert config["JETSOCK_NATS_URL"] == EXTERNAL["nats"]["url"]
    assert config.get("JETSOCK_REPLICAS", "1") == "1"
    assert "JETSOCK_NATS_USER" not in config
    assert "JETSOCK_NATS_PASSWORD" not in {e["name"] for e in rendered.edge_container["env"]}

    with_password = render({"nats": {**EXTERNAL["nats"], "auth": {"user": "edge", "password": "pw-from-values"}}})
    assert with_password.edge_config["JETSOCK_NATS_USER"] == "edge"
    assert with_password.secret_value(f"{RELEASE}-jetsock", "nats-password") == "pw-from-values"
    three = render({"nats": EXTERNAL["nats"], "config": {"replicas": 3}})
    assert three.edge_config["JETSOCK_REPLICAS"] == "3"
