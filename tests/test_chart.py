"""Deployment artefacts: the Helm chart, the Dockerfile and its lock, RabbitMQ definitions, config.

The chart is rendered by Helm's own template engine (helm-python-sdk binds Helm's Go SDK; no helm
binary and no cluster are involved) and every manifest is checked against the Kubernetes OpenAPI
schemas that kubernetes-validate ships. No broker is needed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from adapter._bus._failover import Nodes
from adapter._bus.amqp._queues import dead_queue, group_queue
from adapter._cli import _build_parser
from adapter._settings import Settings, load_settings, section_models

ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = ROOT / "charts" / "customevent-bridge"
PRODUCTION_VALUES = CHART_DIR / "ci" / "production-values.yaml"
DEFINITIONS = ROOT / "config" / "rabbitmq" / "definitions.json"
PRODUCTION_TOML = ROOT / "config" / "customevent.production.toml"
DASHBOARD = CHART_DIR / "dashboards" / "customevent-bridge.json"
# The JSON Schemas of the custom resources the chart renders (see the README beside them).
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication.json",
}
CRD_SCHEMA_DIR = ROOT / "tests" / "fixtures" / "crd-schemas"

KUBE_VERSION = "1.30"
RELEASE = "ce"
NAMESPACE = "events"
FULLNAME = "ce-customevent-bridge"
CONFIG_PATH = "/etc/customevent/customevent.toml"
SECRETS_DIR = "/run/secrets/customevent"
AMQP_URL = "amqps://bridge:pw@rabbitmq.messaging.svc:5671/"


# -- rendering ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def production_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(PRODUCTION_VALUES.read_text())
    return values


class Rendered:
    """The manifests of one render, by kind."""

    def __init__(self, files: dict[str, str]) -> None:
        self.notes = ""
        self.docs: list[dict[str, Any]] = []
        for path, text in files.items():
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            self.docs.extend(doc for doc in yaml.safe_load_all(text) if doc)

    def kinds(self) -> set[str]:
        return {doc["kind"] for doc in self.docs}

    def one(self, kind: str) -> dict[str, Any]:
        found = [doc for doc in self.docs if doc["kind"] == kind]
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    def container(self) -> dict[str, Any]:
        containers = self.pod_spec()["containers"]
        assert len(containers) == 1
        container: dict[str, Any] = containers[0]
        return container

    def env(self) -> dict[str, Any]:
        return {item["name"]: item for item in self.container()["env"]}

    def toml_text(self) -> str:
        text: str = self.one("ConfigMap")["data"]["customevent.toml"]
        return text

    def config(self) -> dict[str, Any]:
        return tomllib.loads(self.toml_text())


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> Rendered:
    return Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE))


def with_amqp(values: dict[str, Any]) -> dict[str, Any]:
    """Values for several pods, which the chart only accepts with RabbitMQ configured."""
    return {"secrets": {"amqp__url": AMQP_URL}, **values}


@pytest.fixture(scope="module")
def default(chart: helm.Chart) -> Rendered:
    return render(chart)


@pytest.fixture(scope="module")
def production(chart: helm.Chart, production_values: dict[str, Any]) -> Rendered:
    return render(chart, production_values)


@pytest.fixture(params=["default", "production"])
def rendered(request: pytest.FixtureRequest) -> Rendered:
    result: Rendered = request.getfixturevalue(request.param)
    return result


def check_service_monitor(doc: dict[str, Any]) -> None:
    # A CRD: kubernetes-validate has no schema for it, so its fields are checked here.
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["metadata"]["name"]
    spec = doc["spec"]
    assert spec["selector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == "http"
    assert endpoint["path"] == "/metrics"
    for key in ("interval", "scrapeTimeout"):
        assert re.fullmatch(r"[0-9]+(ms|s|m|h)", endpoint[key]), key


def crd_problems(doc: dict[str, Any]) -> list[str]:
    """What the CRD's schema says is wrong with a custom resource (empty: nothing)."""
    schema = json.loads((CRD_SCHEMA_DIR / CRD_SCHEMAS[doc["apiVersion"], doc["kind"]]).read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(doc)
    ]


def validate_all(result: Rendered) -> None:
    for doc in result.docs:
        if doc["kind"] == "ServiceMonitor":
            check_service_monitor(doc)
            continue
        if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS:
            problems = crd_problems(doc)
            assert not problems, f"{doc['kind']} {doc['metadata']['name']}: {problems}"
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {where}: {exc.message}")


# -- the chart ---------------------------------------------------------------------------------


def test_default_render_is_valid_kubernetes(default: Rendered) -> None:
    validate_all(default)
    assert default.kinds() == {"ConfigMap", "Deployment", "Secret", "Service", "ServiceAccount"}
    assert default.one("Deployment")["spec"]["replicas"] == 1


def test_production_render_is_valid_kubernetes(production: Rendered) -> None:
    validate_all(production)
    assert production.kinds() == {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    }
    # The HPA owns the replica count.
    assert "replicas" not in production.one("Deployment")["spec"]
    hpa = production.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == production.one("Deployment")["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    pdb = production.one("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1


def test_rolling_update_never_drops_below_the_wanted_pods(rendered: Rendered) -> None:
    strategy = rendered.one("Deployment")["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }


def test_probes_use_the_daemon_endpoints(rendered: Rendered) -> None:
    container = rendered.container()
    # By number, not by the port's name, which podman kube play 4.3 turns into port 0.
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8280}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8280}
    (port,) = container["ports"]
    assert port["name"] == "http"
    assert port["containerPort"] == rendered.config()["http"]["port"] == 8280
    (service_port,) = rendered.one("Service")["spec"]["ports"]
    assert service_port == {
        "name": "http",
        "port": 8280,
        "targetPort": "http",
        "protocol": "TCP",
        "appProtocol": "http",
    }
    assert rendered.one("Service")["spec"]["type"] == "ClusterIP"


def test_pod_runs_locked_down_as_the_image_user(rendered: Rendered) -> None:
    pod = rendered.pod_spec()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["fsGroup"] == 10001
    assert pod["automountServiceAccountToken"] is False
    context = rendered.container()["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in rendered.container()["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


@pytest.mark.parametrize(
    ("drain", "grace", "in_toml"),
    [(None, 15, 10), (0, 5, 0), (2.5, 8, 2.5), (30, 35, 30)],
)
def test_termination_grace_is_drain_plus_five(
    chart: helm.Chart, drain: float | None, grace: int, in_toml: float
) -> None:
    values = {} if drain is None else {"config": {"http": {"drain_seconds": drain}}}
    result = render(chart, values)
    assert result.pod_spec()["terminationGracePeriodSeconds"] == grace
    assert result.config()["http"]["drain_seconds"] == in_toml
    sleep = result.container()["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and int(sleep[1]) < 5  # the 5 s covers it


def test_production_grace_follows_its_drain(production: Rendered) -> None:
    drain = production.config()["http"]["drain_seconds"]
    assert production.pod_spec()["terminationGracePeriodSeconds"] == math.ceil(drain) + 5 == 25


def test_config_file_loads_into_the_settings_model(rendered: Rendered) -> None:
    settings = Settings.model_validate(rendered.config())
    assert settings.http.host == "0.0.0.0"
    assert settings.http.port == 8280
    assert settings.amqp.url is None  # URLs come from the secrets directory, never the ConfigMap
    assert settings.auth.anonymous is False


def test_config_and_secrets_mounted_where_the_daemon_reads_them(rendered: Rendered) -> None:
    env = rendered.env()
    assert env["CUSTOMEVENT_CONFIG"]["value"] == CONFIG_PATH
    assert env["CUSTOMEVENT_SECRETS_DIR"]["value"] == SECRETS_DIR
    mounts = {mount["mountPath"]: mount for mount in rendered.container()["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in rendered.pod_spec()["volumes"]}
    config_volume = volumes[mounts[str(Path(CONFIG_PATH).parent)]["name"]]
    assert config_volume["configMap"]["name"] == rendered.one("ConfigMap")["metadata"]["name"]
    secret_mount = mounts[SECRETS_DIR]
    assert secret_mount["readOnly"] is True
    assert mounts[str(Path(CONFIG_PATH).parent)]["readOnly"] is True
    assert "secretName" in volumes[secret_mount["name"]]["secret"]


def _secret_volume_sources(result: Rendered) -> Iterator[dict[str, Any]]:
    for volume in result.pod_spec()["volumes"]:
        if "secret" in volume:
            yield volume["secret"]
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                yield source["secret"]


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"existingSecret": FULLNAME},
        {"rabbitmqCluster": {"name": "rabbit"}},
        {
            "triggers": [
                {"name": "t", "pattern": "a.*", "url": "https://x", "secretRef": {"name": "k"}}
            ]
        },
    ],
    ids=["default", "existing-secret-named-like-the-release", "rabbitmq-cluster", "trigger"],
)
def test_config_map_and_secrets_have_distinct_names_and_say_optional(
    chart: helm.Chart, values: dict[str, Any]
) -> None:
    # Volumes of one name would be one volume where the pod runs under podman kube play; a secret
    # volume without `optional` crashes it. Kubernetes reads both the same way.
    result = render(chart, values)
    config_map = result.one("ConfigMap")["metadata"]["name"]
    assert config_map == f"{FULLNAME}-config"
    sources = list(_secret_volume_sources(result))
    assert sources
    for source in sources:
        assert source["optional"] is False
        assert source.get("secretName", source.get("name")) != config_map


def test_secret_holds_the_secrets_values(chart: helm.Chart) -> None:
    principals = json.dumps([{"name": "ops", "password_hash": "scrypt$h", "allow": ["vm.*"]}])
    result = render(chart, {"secrets": {"amqp__url": AMQP_URL, "auth__principals": principals}})
    secret = result.one("Secret")
    decoded = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert decoded == {"amqp__url": AMQP_URL, "auth__principals": principals}
    (volume,) = (v for v in result.pod_spec()["volumes"] if "secret" in v)
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    annotations = result.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" in annotations


def test_existing_secret_is_mounted_and_none_is_created(production: Rendered) -> None:
    assert "Secret" not in production.kinds()
    (volume,) = (v for v in production.pod_spec()["volumes"] if "secret" in v)
    assert volume["secret"]["secretName"] == "customevent-bridge"


def test_pod_loads_settings_like_the_daemon(
    chart: helm.Chart, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a pod of a 2-replica release sees: the image's and the Deployment's environment, the
    # ConfigMap's file and one file per Secret key (the mount paths moved under tmp_path).
    for name in list(os.environ):
        if name.startswith("CUSTOMEVENT_"):
            monkeypatch.delenv(name)
    principals = [{"name": "ops", "password_hash": "scrypt$h", "allow": ["vm.*"]}]
    secrets = {"amqp__url": AMQP_URL, "auth__principals": json.dumps(principals)}
    result = render(chart, {"replicaCount": 2, "secrets": secrets})
    config_file = tmp_path / "customevent.toml"
    config_file.write_text(result.toml_text())
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for key, value in result.one("Secret")["data"].items():
        (secrets_dir / key).write_bytes(base64.b64decode(value))
    pod_name = f"{FULLNAME}-7d9c8b6f5-x2x4q"
    environment = {
        "CUSTOMEVENT_HTTP__HOST": "0.0.0.0",  # from the Dockerfile
        "CUSTOMEVENT_CONFIG": str(config_file),
        "CUSTOMEVENT_SECRETS_DIR": str(secrets_dir),
        "POD_NAME": pod_name,
    }
    for name, item in result.env().items():
        if name not in environment:
            environment[name] = item["value"].replace("$(POD_NAME)", pod_name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    settings = load_settings()
    assert settings.amqp.url == AMQP_URL
    assert [p.name for p in settings.auth.principals] == ["ops"]
    assert settings.http.host == "0.0.0.0"
    assert settings.mqtt.client_id == pod_name
    assert settings.mqtt.shared_group == FULLNAME


def test_triggers_take_their_signing_keys_from_secrets_by_reference(
    chart: helm.Chart, tmp_path: Path
) -> None:
    triggers = [
        {
            "name": "reload",
            "pattern": "vm.*",
            "url": "https://reloader.example.com/events",
            "secretRef": {"name": "reloader-webhook", "key": "hmac"},
            "mode": "structured",
            "maxInFlight": 4,
        }
    ]
    result = render(chart, with_amqp({"triggers": triggers}))
    (trigger,) = result.config()["triggers"]
    assert trigger == {
        "name": "reload",
        "pattern": "vm.*",
        "url": "https://reloader.example.com/events",
        "secret_file": "/etc/customevent/triggers/reload/secret",
        "mode": "structured",
        "max_in_flight": 4,
    }
    volumes = {volume["name"]: volume for volume in result.pod_spec()["volumes"]}
    assert volumes["trigger-reload"]["secret"] == {
        "secretName": "reloader-webhook",
        "optional": False,
        "defaultMode": 288,
        "items": [{"key": "hmac", "path": "secret"}],
    }
    mounts = {m["name"]: m for m in result.container()["volumeMounts"]}
    assert mounts["trigger-reload"]["mountPath"] == "/etc/customevent/triggers/reload"
    # The daemon reads the rendered file, the key where the Secret is mounted.
    secret = tmp_path / "secret"
    secret.write_text("whsec_YS1zaWduaW5nLWtleS1mcm9tLWEtc2VjcmV0\n")  # a whsec_ secret
    settings = Settings.model_validate(result.config())
    moved = settings.triggers[0].model_copy(update={"secret_file": secret})
    assert moved.signing_keys() == [b"a-signing-key-from-a-secret"]
    validate_all(result)


def test_a_triggers_filters_reach_the_daemons_settings(chart: helm.Chart) -> None:
    filters = [{"prefix": {"name": "vm."}}, {"exact": {"env": "prod"}}]
    triggers = [
        {
            "name": "reload",
            "pattern": "vm.#",
            "url": "https://reloader.example.com/events",
            "secretRef": {"name": "reloader-webhook"},
            "filters": filters,
        }
    ]
    result = render(chart, with_amqp({"triggers": triggers}))
    (trigger,) = result.config()["triggers"]
    assert trigger["filters"] == filters
    settings = Settings.model_validate(result.config())
    assert settings.triggers[0].filters is not None
    validate_all(result)


def test_chart_lints_clean() -> None:
    for values in (None, yaml.safe_load(PRODUCTION_VALUES.read_text()), with_amqp(OPERATED)):
        report = helm.lint(CHART_DIR, values, strict=True, kube_version=f"v{KUBE_VERSION}.0")
        assert report["errors"] == []
        # Severity 1 is "info" (e.g. "icon is recommended"); warnings and errors fail.
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_checksum_annotation_follows_the_config(chart: helm.Chart, default: Rendered) -> None:
    changed = render(chart, {"config": {"log": {"level": "DEBUG"}}})
    assert changed.config()["log"]["level"] == "DEBUG"

    def checksum(result: Rendered) -> str:
        annotations = result.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
        value: str = annotations["checksum/config"]
        return value

    assert re.fullmatch(r"[0-9a-f]{64}", checksum(default))
    assert checksum(changed) != checksum(default)


def test_single_replica_leaves_mqtt_subscription_unshared(default: Rendered) -> None:
    assert "shared_group" not in default.config()["mqtt"]
    assert "CUSTOMEVENT_MQTT__CLIENT_ID" not in default.env()
    assert "PodDisruptionBudget" not in default.kinds()


@pytest.mark.parametrize(
    "values",
    [{"replicaCount": 2}, {"autoscaling": {"enabled": True}}],
    ids=["replicas", "hpa"],
)
def test_several_replicas_share_the_mqtt_subscription(
    chart: helm.Chart, values: dict[str, Any]
) -> None:
    result = render(chart, with_amqp(values))
    validate_all(result)
    assert result.config()["mqtt"]["shared_group"] == FULLNAME
    Settings.model_validate(result.config())
    # Every replica needs its own MQTT client id, or they disconnect each other.
    client_id = result.env()["CUSTOMEVENT_MQTT__CLIENT_ID"]
    assert client_id["value"] == "$(POD_NAME)"
    assert result.env()["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert result.one("PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_production_shares_the_subscription(production: Rendered) -> None:
    assert production.config()["mqtt"]["shared_group"] == FULLNAME


def test_an_explicit_shared_group_is_kept(chart: helm.Chart) -> None:
    values = with_amqp({"replicaCount": 3, "config": {"mqtt": {"shared_group": "bridges"}}})
    assert render(chart, values).config()["mqtt"]["shared_group"] == "bridges"


def test_several_replicas_without_rabbitmq_are_refused(chart: helm.Chart) -> None:
    # The in-process bus is per pod: an event sent to one pod would never reach a waiter on another.
    with pytest.raises(helm.HelmRenderError, match="needs RabbitMQ"):
        render(chart, {"replicaCount": 2})


# -- a RabbitMQ cluster from the RabbitMQ Cluster Operator ------------------------------------


def _pod_settings(result: Rendered, tmp_path: Path, secret_files: dict[str, str]) -> Settings:
    """The settings a pod loads: the ConfigMap's file, and ``secret_files`` as the files the
    projected secrets volume shows."""
    config_file = tmp_path / "customevent.toml"
    config_file.write_text(result.toml_text())
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for key, value in secret_files.items():
        (secrets_dir / key).write_text(value)
    return load_settings(config_file, secrets_dir=secrets_dir)


def test_a_rabbitmq_cluster_gives_the_url_and_the_mounted_credentials(
    chart: helm.Chart, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("CUSTOMEVENT_"):
            monkeypatch.delenv(name)
    result = render(chart, {"replicaCount": 2, "rabbitmqCluster": {"name": "rabbit"}})
    validate_all(result)
    # The Service of the RabbitmqCluster, without credentials: the ConfigMap holds no secret.
    assert result.config()["amqp"]["url"] == f"amqp://rabbit.{NAMESPACE}.svc:5672/"
    (volume,) = (v for v in result.pod_spec()["volumes"] if v["name"] == "secrets")
    own, operator = volume["projected"]["sources"]
    assert own["secret"]["name"] == result.one("Secret")["metadata"]["name"]
    assert operator["secret"] == {
        "name": "rabbit-default-user",
        "optional": False,
        "items": [
            {"key": "username", "path": "amqp__username"},
            {"key": "password", "path": "amqp__password"},
        ],
    }
    assert volume["projected"]["defaultMode"] == 0o440
    # A password the operator's Secret may hold, which could not be written into a URL as is.
    files = {"amqp__username": "default_user_x", "amqp__password": "p@ss/w:rd%,"}
    settings = _pod_settings(result, tmp_path, files)
    (node,) = Nodes.from_settings(settings.amqp)
    assert (node.user, node.password, node.host) == (
        "default_user_x",
        "p@ss/w:rd%,",
        f"rabbit.{NAMESPACE}.svc",
    )
    assert "p@ss" not in result.toml_text()
    assert "in-process bus" not in result.notes
    assert "Secret/rabbit-default-user" in result.notes


def test_a_rabbitmq_cluster_may_list_its_pods(chart: helm.Chart, tmp_path: Path) -> None:
    values = {"name": "rabbit", "nodes": 3, "vhost": "events", "tls": True, "secret": "s"}
    result = render(chart, {"rabbitmqCluster": values})
    validate_all(result)
    urls = result.config()["amqp"]["url"]
    assert urls == [
        f"amqps://rabbit-server-{i}.rabbit-nodes.{NAMESPACE}.svc:5671/events" for i in range(3)
    ]
    settings = _pod_settings(result, tmp_path, {"amqp__username": "u", "amqp__password": "p"})
    assert {(url.user, url.port) for url in Nodes.from_settings(settings.amqp)} == {("u", 5671)}
    assert len(list(Nodes.from_settings(settings.amqp))) == 3
    (volume,) = (v for v in result.pod_spec()["volumes"] if v["name"] == "secrets")
    assert volume["projected"]["sources"][1]["secret"]["name"] == "s"


@pytest.mark.parametrize(
    "values",
    [
        {"secrets": {"amqp__url": AMQP_URL}},
        {"config": {"amqp": {"url": AMQP_URL}}},
    ],
    ids=["secret", "config"],
)
def test_a_rabbitmq_cluster_and_another_url_are_refused(
    chart: helm.Chart, values: dict[str, Any]
) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"rabbitmqCluster\.name gives amqp\.url"):
        render(chart, {"rabbitmqCluster": {"name": "rabbit"}, **values})


def test_without_a_rabbitmq_cluster_the_secret_is_mounted_alone(default: Rendered) -> None:
    (volume,) = (v for v in default.pod_spec()["volumes"] if v["name"] == "secrets")
    assert "projected" not in volume and "secret" in volume


def test_http_host_is_always_all_interfaces(chart: helm.Chart) -> None:
    result = render(chart, {"config": {"http": {"port": 9000}}})
    assert result.config()["http"]["host"] == "0.0.0.0"
    assert result.container()["ports"][0]["containerPort"] == 9000
    assert result.container()["readinessProbe"]["httpGet"]["port"] == 9000
    assert result.container()["livenessProbe"]["httpGet"]["port"] == 9000


def test_toml_rendering_keeps_every_value_type(chart: helm.Chart) -> None:
    config = {
        "amqp": {"connection_name": 'ev "quoted" \\ back', "publish_timeout": 2.5, "heartbeat": 0},
        "mqtt": {"egress": ["vm.*", "backup.#"], "protocol": "3.1.1", "session_expiry": 86400},
        "http": {
            "max_body_bytes": 10_000_000,
            "public_url": "https://e.example/ä",
            "rate_limit": 0,
        },
        "auth": {
            "anonymous": True,
            "anonymous_allow": ["public.#"],
            "principals": [{"name": "ops", "token_hash": "t", "allow": ["vm.*"]}],
        },
        "limits": {"max_bytes": 1, "max_properties": 1},
        "log": {"level": "DEBUG", "format": "text"},
    }
    rendered = render(chart, {"config": config}).config()
    expected = chart.merge_values({"config": config})["config"]  # with the chart's defaults
    expected["http"].update(host="0.0.0.0")
    assert rendered == expected
    assert isinstance(rendered["http"]["max_body_bytes"], int)
    Settings.model_validate(rendered)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": "three"}, "/replicaCount"),
        ({"replicaCount": 0}, "/replicaCount"),
        ({"service": {"port": 70000}}, "/service/port"),
        ({"service": {"port": 0}}, "/service/port"),
        ({"image": {"tag": 1}}, "/image/tag"),
        ({"config": {"amqp": "amqp://x"}}, "/config/amqp"),
        ({"config": {"auth": {"anonymous": "yes"}}}, "/config/auth/anonymous"),
        ({"config": {"http": {"prot": 8280}}}, "/config/http"),
        ({"config": {"log": {"level": "LOUD"}}}, "/config/log/level"),
        ({"config": {"http": {"host": "127.0.0.1"}}}, "/config/http/host"),
        ({"secrets": {"amqp_url": "x"}}, "amqp_url"),
        ({"preStopSleepSeconds": 5}, "/preStopSleepSeconds"),
        ({"replicas": 3}, "replicas"),
        ({"rabbitmqCluster": {"name": "Rabbit"}}, "/rabbitmqCluster/name"),
        ({"rabbitmqCluster": {"nodes": -1}}, "/rabbitmqCluster/nodes"),
        ({"rabbitmqCluster": {"vhost": "a/b"}}, "/rabbitmqCluster/vhost"),
        ({"config": {"amqp": {"url": ["http://x"]}}}, "/config/amqp/url"),
        ({"keda": {"target": "triggers"}}, "/keda/target"),
        ({"keda": {"queueLength": 0}}, "/keda/queueLength"),
        ({"groupConsumer": {"group": "a/b"}}, "/groupConsumer/group"),
        ({"groupConsumer": {"command": "handle.sh"}}, "/groupConsumer/command"),
        ({"prometheusRule": {"webhookFailureRatio": 2}}, "/prometheusRule/webhookFailureRatio"),
        ({"dashboard": {"label": "grafana dashboard"}}, "/dashboard/label"),
        ({"dashboard": {"enable": True}}, "enable"),
    ],
)
def test_schema_rejects_bad_values(
    chart: helm.Chart, values: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        render(chart, values)
    assert complaint in str(caught.value)


def test_schema_accepts_both_shipped_value_files(
    chart: helm.Chart, production_values: dict[str, Any]
) -> None:
    chart.validate_schema(yaml.safe_load((CHART_DIR / "values.yaml").read_text()))
    chart.validate_schema(production_values)


def test_schema_config_sections_mirror_the_settings_model() -> None:
    # Settings forbid unknown keys: the schema must allow exactly what the daemon accepts.
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    sections = schema["properties"]["config"]["properties"]
    models = section_models()
    assert set(sections) == set(models)
    for name, section in sections.items():
        model, is_list = models[name]
        if is_list:
            assert section["type"] == "array", name
            section = section["items"]
        assert set(section["properties"]) == set(model.model_fields), name
        assert section["additionalProperties"] is False


def leaf_keys(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        path = f"{prefix}{key}"
        if (
            isinstance(value, dict)
            and value
            and key not in {"resources", "podSecurityContext", "securityContext"}
        ):
            yield from leaf_keys(value, f"{path}.")
        else:
            yield path


def test_chart_readme_documents_every_value() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.MULTILINE))
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    missing = [key for key in leaf_keys(values) if key not in documented]
    assert not missing, f"values missing from the README's table: {missing}"
    config_keys = {
        f"config.{section}" if is_list else f"config.{section}.{key}"
        for section, (model, is_list) in section_models().items()
        for key in model.model_fields
    }
    assert not config_keys - documented, "config keys missing from the README"


def test_notes_warn_about_missing_broker_and_principals(
    default: Rendered, production: Rendered
) -> None:
    assert "in-process bus" in default.notes
    assert "401" in default.notes
    assert "in-process bus" not in production.notes
    assert f"port-forward service/{FULLNAME}" in default.notes


def test_network_policy_opens_http_dns_and_the_brokers(production: Rendered) -> None:
    policy = production.one("NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    egress_ports = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {
        (53, "UDP"),
        (53, "TCP"),
        (5671, "TCP"),
        (5672, "TCP"),
        (1883, "TCP"),
        (8883, "TCP"),
    }


# -- the image ---------------------------------------------------------------------------------


def test_dockerfile_builds_from_the_lock_on_either_base() -> None:
    # The image itself is built and run by scripts/image-smoke.sh in CI; these are the facts the
    # chart and the docs rely on.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert not dockerfile.startswith("# syntax="), "BuildKit would fetch that frontend"
    copied = set()
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            copied.update(part.rstrip("/") for part in line.split()[1:-1])
    assert copied == {"requirements/image.txt", "pyproject.toml", "README.md", "adapter"}
    # python3, not python: a Debian-python base has no `python`.
    assert "python3 -m venv /opt/customevent" in dockerfile
    assert not re.search(r"(^|\s)python -m", dockerfile)
    assert "--require-hashes --no-deps -r requirements/image.txt" in dockerfile
    assert "--no-deps --no-build-isolation --no-index /src" in dockerfile
    assert "--mount=type=secret,id=ca,required=false" in dockerfile
    stages = re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE)
    assert stages == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^USER 10001:10001$", dockerfile, flags=re.MULTILINE)
    assert 'ENTRYPOINT ["customevent"]' in dockerfile and 'CMD ["serve"]' in dockerfile
    assert "CUSTOMEVENT_HTTP__HOST=0.0.0.0" in dockerfile and "EXPOSE 8280" in dockerfile
    # The build context is an allow-list of exactly what the COPY lines need.
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert allowed == copied


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lock = (ROOT / "requirements" / "image.txt").read_text()
    pinned = {
        re.sub(r"[-_.]+", "-", name).lower(): version
        for name, version in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$", lock, re.M)
    }
    for requirement in pyproject["project"]["dependencies"]:
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        assert name is not None
        assert re.sub(r"[-_.]+", "-", name.group()).lower() in pinned, requirement
    assert "setuptools" in pinned  # the project's build backend: installed with no index
    # Every pin carries its hashes (pip --require-hashes refuses a lock without them).
    blocks = re.split(r"\n(?=[a-z0-9])", lock.split("\n", 6)[-1])
    assert all("--hash=sha256:" in block for block in blocks if "==" in block)
    assert "make lock" in lock


# -- RabbitMQ definitions and the bridge config -------------------------------------------------


def test_rabbitmq_definitions() -> None:
    definitions = json.loads(DEFINITIONS.read_text())
    (exchange,) = definitions["exchanges"]
    assert exchange["name"] == "customevents"
    assert exchange["vhost"] == "/"
    assert exchange["type"] == "topic"
    assert exchange["durable"] is True
    assert exchange["auto_delete"] is False
    assert {"name": "/"} in definitions["vhosts"]
    users = {user["name"]: user for user in definitions["users"]}
    assert set(users) == {"bridge", "backend", "edge"}
    for user in users.values():
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        raw = base64.b64decode(user["password_hash"])
        assert len(raw) == 4 + 32  # salt + SHA-256
    assert "PLACEHOLDER" in " ".join(definitions["_comment"])

    topic = {(p["user"], p["exchange"]): p for p in definitions["topic_permissions"]}
    edge_write = re.compile(topic["edge", "customevents"]["write"])
    assert edge_write.search("external.x")
    assert not edge_write.search("internal.x")
    bridge_write = re.compile(topic["bridge", "customevents"]["write"])
    assert bridge_write.search("external.x") and bridge_write.search("internal.x")
    assert not bridge_write.search("other.x")

    permissions = {p["user"]: p for p in definitions["permissions"]}
    bridge = permissions["bridge"]
    for key in ("configure", "write", "read"):
        assert re.search(bridge[key], "customevents"), key
        assert re.search(bridge[key], "customevent.wait.host-1.17.0"), key
        assert not re.search(bridge[key], "amq.topic"), key
    # The edge user can publish but never declare, delete or consume anything.
    assert permissions["edge"]["configure"] == "^$"
    assert permissions["edge"]["read"] == "^$"


@pytest.mark.parametrize("user", ["bridge", "backend", "edge"])
def test_placeholder_hashes_are_of_change_me(user: str) -> None:
    definitions = json.loads(DEFINITIONS.read_text())
    (entry,) = (u for u in definitions["users"] if u["name"] == user)
    raw = base64.b64decode(entry["password_hash"])
    salt, digest = raw[:4], raw[4:]
    assert hashlib.sha256(salt + b"change-me").digest() == digest


def test_production_config_loads_and_holds_no_secrets() -> None:
    text = PRODUCTION_TOML.read_text()
    settings = Settings.model_validate(tomllib.loads(text))
    assert settings.amqp.url is None and settings.mqtt.url is None
    assert settings.auth.principals == [] and settings.auth.anonymous is False
    assert settings.http.host == "0.0.0.0"
    assert settings.mqtt.shared_group
    assert not re.search(r"^\s*(url|password_hash|token_hash)\s*=", text, flags=re.MULTILINE)


# -- what operators install next to it: dashboard, alerts, KEDA --------------------------------

GROUP = "provision"
EXCHANGE = "plant-events"
OPERATED = {
    "config": {"amqp": {"exchange": EXCHANGE}},
    "dashboard": {"enabled": True, "folder": "Events"},
    "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
    "groupConsumer": {
        "enabled": True,
        "group": GROUP,
        "pattern": "vm.*.provision",
        "command": ["/opt/handlers/provision", "--dry-run"],
    },
    "keda": {"enabled": True, "maxReplicaCount": 6},
}
# The RabbitMQ metrics the dashboard and the alerts read: queue metrics of the rabbitmq_prometheus
# plugin, with a `queue` label only from its per-object metrics (docs/operate.md).
RABBITMQ_PLUGIN_METRICS = {
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_consumers",
}


@pytest.fixture(scope="module")
def operated(chart: helm.Chart) -> Rendered:
    return render(chart, with_amqp(OPERATED))


def _dashboard(result: Rendered) -> dict[str, Any]:
    (config_map,) = (d for d in result.docs if d["metadata"]["name"].endswith("-dashboard"))
    (text,) = config_map["data"].values()
    dashboard: dict[str, Any] = json.loads(text)
    return dashboard


def _exprs(result: Rendered) -> list[str]:
    """Every PromQL expression of the dashboard and the alerts."""
    panels = _dashboard(result)["panels"]
    exprs = [target["expr"] for panel in panels for target in panel["targets"]]
    rules = result.one("PrometheusRule")["spec"]["groups"][0]["rules"]
    return exprs + [rule["expr"] for rule in rules]


def test_nothing_operational_is_rendered_by_default(
    default: Rendered, production: Rendered
) -> None:
    for result in (default, production):
        assert not {"PrometheusRule", "ScaledObject", "TriggerAuthentication"} & result.kinds()
        assert [d for d in result.docs if d["kind"] == "Deployment"] == [result.one("Deployment")]
        assert not [d for d in result.docs if d["metadata"]["name"].endswith("-dashboard")]


def test_everything_operational_is_valid(operated: Rendered) -> None:
    validate_all(operated)  # kubernetes-validate, and the CRDs' schemas for the custom resources
    assert {"PrometheusRule", "ScaledObject", "TriggerAuthentication"} <= operated.kinds()


def test_the_crd_schemas_catch_mistakes(operated: Rendered) -> None:
    # The vendored schemas are strict, not stand-ins that take anything.
    scaled = json.loads(json.dumps(operated.one("ScaledObject")))
    scaled["spec"]["maxReplicas"] = 6  # the HPA's word, not KEDA's
    scaled["spec"]["triggers"][0]["metadata"]["value"] = 20  # metadata values are strings
    assert len(crd_problems(scaled)) == 2
    rule = json.loads(json.dumps(operated.one("PrometheusRule")))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "two minutes"
    del rule["spec"]["groups"][0]["name"]
    assert len(crd_problems(rule)) == 2
    auth = json.loads(json.dumps(operated.one("TriggerAuthentication")))
    del auth["spec"]["secretTargetRef"][0]["key"]
    assert crd_problems(auth)


def test_the_dashboard_is_a_configmap_for_the_grafana_sidecar(operated: Rendered) -> None:
    (config_map,) = (d for d in operated.docs if d["metadata"]["name"].endswith("-dashboard"))
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Events"}
    dashboard = _dashboard(operated)
    assert dashboard["uid"] == "customevent-bridge"
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert titles == {
        "Sends by edge",
        "Waits by outcome",
        "Confirm latency",
        "Waits open",
        "MQTT link and in-flight",
        "Group depth",
        "Dead letters",
        "Trigger outcomes",
        "HTTP 4xx and 5xx",
    }
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["exchange"]["query"] == EXCHANGE  # the release's exchange, not a default
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_the_dashboard_label_is_configurable(chart: helm.Chart) -> None:
    values = {"dashboard": {"enabled": True, "label": "grafana.io/dashboard", "labelValue": "on"}}
    result = render(chart, values)
    (config_map,) = (d for d in result.docs if d["metadata"]["name"].endswith("-dashboard"))
    assert config_map["metadata"]["labels"]["grafana.io/dashboard"] == "on"
    assert "grafana_dashboard" not in config_map["metadata"]["labels"]
    assert "annotations" not in config_map["metadata"]
    # The default exchange where the config names none other.
    assert {v["name"]: v for v in _dashboard(result)["templating"]["list"]}["exchange"][
        "query"
    ] == "customevents"
    validate_all(result)


def test_the_group_queries_read_the_groups_own_queues(operated: Rendered) -> None:
    # A group's queue and its dead letters, as the RabbitMQ bus names them; never its retry
    # queues (customevent/<exchange>/group/<G>/retry/<ms>).
    group_pattern = re.compile(r'queue=~"([^"]+)"')
    found = set()
    for expr in _exprs(operated):
        for pattern in group_pattern.findall(expr.replace("$exchange", EXCHANGE)):
            regex = re.compile(pattern)
            found.add(pattern)
            wanted = "dead" if pattern.endswith("/dead") else "group"
            name = {"group": group_queue, "dead": dead_queue}[wanted](EXCHANGE, GROUP)
            assert regex.fullmatch(name), (pattern, name)
            assert not regex.fullmatch(f"{group_queue(EXCHANGE, GROUP)}/retry/1000"), pattern
            assert not regex.fullmatch(group_queue("other", GROUP)), pattern
    assert len(found) == 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _scrape_the_daemon(tmp_path: Path, *, features: bool) -> str:
    """``/metrics`` of ``customevent serve`` on the in-process bus, scraped as Prometheus would;
    with ``features``, also with MQTT (a broker that does not answer: the link stays down) and a
    webhook trigger, whose metrics come with them."""
    port = _free_port()
    key = base64.b64encode(b"a-signing-key-of-32-bytes-long!!").decode()
    config = tmp_path / "customevent.toml"
    text = f"[http]\nport = {port}\n[auth]\nanonymous = true\n"
    if features:
        text += (
            f'[mqtt]\nurl = "mqtt://127.0.0.1:{_free_port()}"\n'
            f'[[triggers]]\nname = "t"\npattern = "t.#"\nurl = "http://127.0.0.1:9/"\n'
            f'secret = "whsec_{key}"\n'
        )
    config.write_text(text)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMEVENT_")}
    command = [str(Path(sys.executable).parent / "customevent"), "serve", "--config", str(config)]
    with subprocess.Popen(
        command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as daemon:
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                except httpx.TransportError:
                    if daemon.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        finally:
            daemon.terminate()
            daemon.wait(30)


def test_every_metric_the_dashboard_and_alerts_read_is_exported(
    operated: Rendered, tmp_path: Path
) -> None:
    text = _scrape_the_daemon(tmp_path, features=True)
    exported = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        exported.update(family.name + s for s in suffixes.get(family.type, ("",)))
    named = set()
    for expr in _exprs(operated):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        named.update(re.findall(r"\b((?:customevent|rabbitmq)_[a-z0-9_]+)", expr))
    ours = {name for name in named if name.startswith("customevent_")}
    assert ours, "no metric of the daemon's is read"
    assert ours - exported == set(), f"read but never exported: {sorted(ours - exported)}"
    assert named - ours <= RABBITMQ_PLUGIN_METRICS
    assert "customevent_bus_connected 1.0" in text  # the broker-unreachable alert's gauge
    # The MQTT link alert's gauge, with the broker unreachable: what the alert fires on.
    assert "customevent_mqtt_connected 0.0" in text


def test_a_daemon_without_mqtt_exports_no_mqtt_link_to_alert_on(tmp_path: Path) -> None:
    text = _scrape_the_daemon(tmp_path, features=False)
    assert "customevent_bus_connected 1.0" in text
    assert "customevent_mqtt_connected" not in text
    assert "customevent_trigger_deliveries" not in text


def test_the_alerts(operated: Rendered, chart: helm.Chart) -> None:
    rule = operated.one("PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    rules = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert set(rules) == {
        "CustomEventBrokerUnreachable",
        "CustomEventMqttLinkDown",
        "CustomEventDeadLettersGrowing",
        "CustomEventGroupDepthGrowing",
        "CustomEventWaitsAnsweredLate",
        "CustomEventWebhookReceiverFailing",
    }
    for alert in rules.values():
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        # Scoped to this release's scrape job (the ServiceMonitor's Service), or to RabbitMQ's.
        assert f'job="{FULLNAME}"' in alert["expr"] or "rabbitmq_" in alert["expr"]
    assert "> 1000" in rules["CustomEventGroupDepthGrowing"]["expr"]
    # The thresholds follow the values; the MQTT alert can be left out.
    values = with_amqp(
        {
            "prometheusRule": {
                "enabled": True,
                "mqtt": False,
                "groupDepth": 50,
                "confirmSeconds": 0.25,
                "webhookFailureRatio": 0.5,
                "alertLabels": {"team": "events"},
            }
        }
    )
    tuned = render(chart, values)
    validate_all(tuned)
    tuned_rules = {r["alert"]: r for r in tuned.one("PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert "CustomEventMqttLinkDown" not in tuned_rules
    assert "> 50" in tuned_rules["CustomEventGroupDepthGrowing"]["expr"]
    assert tuned_rules["CustomEventWaitsAnsweredLate"]["expr"].endswith("> 0.25")
    assert tuned_rules["CustomEventWebhookReceiverFailing"]["expr"].endswith("> 0.5")
    assert "50%" in tuned_rules["CustomEventWebhookReceiverFailing"]["annotations"]["description"]
    assert all(r["labels"]["team"] == "events" for r in tuned_rules.values())


def _deployments(result: Rendered) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in result.docs if d["kind"] == "Deployment"}


def test_the_group_consumer_runs_listen_with_the_daemons_settings(operated: Rendered) -> None:
    deployments = _deployments(operated)
    consumer = deployments[f"{FULLNAME}-listen"]
    (container,) = consumer["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    # What the CLI makes of them.
    separator = args.index("--")
    parsed = _build_parser().parse_args(args[:separator])
    assert (parsed.command, parsed.pattern, parsed.group, parsed.kind, parsed.timeout) == (
        "listen",
        "vm.*.provision",
        GROUP,
        "internal",
        "5m",
    )
    assert args[separator + 1 :] == ["/opt/handlers/provision", "--dry-run"]
    # The same settings files as the daemon's pod, so the same RabbitMQ and exchange.
    daemon_pod = deployments[FULLNAME]["spec"]["template"]["spec"]
    pod = consumer["spec"]["template"]["spec"]
    assert pod["volumes"][:2] == daemon_pod["volumes"][:2]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["CUSTOMEVENT_CONFIG"] == CONFIG_PATH
    assert env["CUSTOMEVENT_SECRETS_DIR"] == SECRETS_DIR
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # KEDA owns its replica count.
    assert "replicas" not in consumer["spec"]
    # None of the daemon's selectors takes its pods for the daemon's.
    labels = consumer["spec"]["template"]["metadata"]["labels"]
    for selector in (
        operated.one("Service")["spec"]["selector"],
        deployments[FULLNAME]["spec"]["selector"]["matchLabels"],
    ):
        assert not selector.items() <= labels.items(), selector


def test_keda_scales_the_consumer_on_its_groups_queue(operated: Rendered) -> None:
    scaled = operated.one("ScaledObject")["spec"]
    assert scaled["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{FULLNAME}-listen",
    }
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (1, 6)
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"] == {
        "protocol": "amqp",
        "queueName": group_queue(EXCHANGE, GROUP),  # the quorum queue the bus declares
        "mode": "QueueLength",
        "value": "20",
    }
    auth = operated.one("TriggerAuthentication")
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert auth["spec"]["secretTargetRef"] == [
        {
            "parameter": "host",
            "name": operated.one("Secret")["metadata"]["name"],
            "key": "amqp__url",
        }
    ]
    assert "HorizontalPodAutoscaler" not in operated.kinds()


def test_keda_may_scale_the_daemon_on_a_triggers_group(chart: helm.Chart) -> None:
    values = {
        "existingSecret": "bridge-settings",
        "keda": {
            "enabled": True,
            "target": "daemon",
            "group": "reload",
            "hostSecret": {"name": "keda-rabbitmq", "key": "host"},
        },
    }
    result = render(chart, values)
    validate_all(result)
    scaled = result.one("ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == FULLNAME
    assert scaled["triggers"][0]["metadata"]["queueName"] == group_queue("customevents", "reload")
    daemon = result.one("Deployment")
    assert "replicas" not in daemon["spec"]  # KEDA's HPA owns it
    # Several pods may run: they share the MQTT subscription, each with its own client id.
    assert result.config()["mqtt"]["shared_group"] == FULLNAME
    assert result.env()["CUSTOMEVENT_MQTT__CLIENT_ID"]["value"] == "$(POD_NAME)"
    assert result.one("PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert result.one("TriggerAuthentication")["spec"]["secretTargetRef"][0] == {
        "parameter": "host",
        "name": "keda-rabbitmq",
        "key": "host",
    }


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"groupConsumer": {"enabled": True, "pattern": "a.*"}}, "needs groupConsumer.group"),
        ({"groupConsumer": {"enabled": True, "group": "g"}}, "needs groupConsumer.pattern"),
        ({"keda": {"enabled": True}}, "needs groupConsumer.enabled"),
        ({"keda": {"enabled": True, "target": "daemon"}}, "the group to scale on"),
        (
            {
                "keda": {"enabled": True, "target": "daemon", "group": "g"},
                "autoscaling": {"enabled": True},
            },
            "two HPAs",
        ),
        (
            {
                "groupConsumer": {"enabled": True, "group": "g", "pattern": "a"},
                "keda": {"enabled": True, "minReplicaCount": 5, "maxReplicaCount": 2},
            },
            "below keda.minReplicaCount",
        ),
    ],
)
def test_operational_values_that_cannot_work_are_refused(
    chart: helm.Chart, values: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(complaint)):
        render(chart, with_amqp(values))


def test_a_group_consumer_without_rabbitmq_is_refused(chart: helm.Chart) -> None:
    # A group is a quorum queue: the in-process bus has none to share between pods.
    values = {"groupConsumer": {"enabled": True, "group": "g", "pattern": "a.*"}}
    with pytest.raises(helm.HelmRenderError, match="groupConsumer needs RabbitMQ"):
        render(chart, values)


def test_the_dashboard_file_is_the_one_the_chart_ships(operated: Rendered) -> None:
    shipped = json.loads(DASHBOARD.read_text())
    rendered = _dashboard(operated)
    assert [p["title"] for p in shipped["panels"]] == [p["title"] for p in rendered["panels"]]
    assert "__CUSTOMEVENT_EXCHANGE__" in DASHBOARD.read_text()
    assert "__CUSTOMEVENT_EXCHANGE__" not in json.dumps(rendered)


def test_hostile_consumer_values_stay_one_argument_each(chart: helm.Chart) -> None:
    # Quotes, newlines, YAML and template syntax in the values the container's args come from.
    command = ["sh", "-c", 'echo "$(cat)" \n{{ .Release.Name }}: [x]', "--", "#comment"]
    values = with_amqp(
        {"groupConsumer": {"enabled": True, "group": "g", "pattern": "a.*", "command": command}}
    )
    result = render(chart, values)
    validate_all(result)
    consumer = _deployments(result)[f"{FULLNAME}-listen"]
    args = consumer["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--") + 1 :] == command
