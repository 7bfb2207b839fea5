"""scripts/kube_play.py: what it gives `podman kube play` of the chart, and what it refuses.

The chart is rendered by Helm's engine (helm-python-sdk), as the script does in CI; the pod itself
runs in CI only (.ci/run, after scripts/image-smoke.sh), where podman and the image are.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/customevent-bridge:ci-1"
PRINCIPALS = json.dumps([{"name": "kp", "password_hash": "scrypt$x", "allow": ["kubeplay.#"]}])


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kube_play", ROOT / "scripts" / "kube_play.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


kube_play = _load_script()


def values(**more: Any) -> dict[str, Any]:
    base: dict[str, Any] = kube_play.chart_values(
        IMAGE,
        run_id="kp-1",
        port=41234,
        amqp_url="amqp://guest:guest@127.0.0.1:5672/",
        mqtt_url="mqtt://127.0.0.1:1883",
        principals=PRINCIPALS,
    )
    base.update(more)
    return base


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = kube_play.render(values(), release="kp-1")
    return docs


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = (d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"]))
    return found


def test_plays_the_deployment_with_its_config_map_and_secret_first(
    rendered: list[dict[str, Any]],
) -> None:
    played = kube_play.for_kube_play(rendered)
    # The Service, ServiceAccount and the rest are left to a cluster.
    assert {d["kind"] for d in rendered} > {"Service", "ServiceAccount", "Deployment"}
    assert [(d["kind"], d["metadata"]["name"]) for d in played] == [
        ("ConfigMap", "kp-1-customevent-bridge-config"),
        ("ConfigMap", "kp-1-customevent-bridge"),  # the Secret, decoded (below)
        ("Deployment", "kp-1-customevent-bridge"),
    ]


def test_changes_only_what_podman_runs_differently(rendered: list[dict[str, Any]]) -> None:
    before = copy.deepcopy(rendered)
    played = kube_play.for_kube_play(rendered)
    assert rendered == before, "the chart's own manifests are left as they are"

    original = one(rendered, "Deployment")
    deployment = one(played, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod.pop("hostNetwork") is True
    (container,) = pod["containers"]
    assert "ports" not in container
    (original_container,) = original["spec"]["template"]["spec"]["containers"]
    container["ports"] = original_container["ports"]
    (volume,) = (v for v in pod["volumes"] if v["name"] == "secrets")
    source = volume.pop("configMap")
    volume["secret"] = {"secretName": source.pop("name"), **source}
    # With those three changes undone, the Deployment is the chart's, to the byte.
    assert deployment == original
    assert volume["secret"]["optional"] is False


def test_the_secret_is_played_as_its_decoded_values(rendered: list[dict[str, Any]]) -> None:
    secret = one(rendered, "Secret")
    played = one(kube_play.for_kube_play(rendered), "ConfigMap", secret["metadata"]["name"])
    assert played["metadata"] == secret["metadata"]
    assert played["data"] == {
        "amqp__url": "amqp://guest:guest@127.0.0.1:5672/",
        "mqtt__url": "mqtt://127.0.0.1:1883",
        "auth__principals": PRINCIPALS,
    }
    # The chart itself keeps Kubernetes' encoding.
    assert base64.b64decode(secret["data"]["auth__principals"]).decode() == PRINCIPALS


def test_the_run_has_a_port_exchange_and_prefix_of_its_own(
    rendered: list[dict[str, Any]],
) -> None:
    config = one(rendered, "ConfigMap")["data"]["customevent.toml"]
    assert 'exchange = "customevents.kp-1"' in config
    assert 'prefix = "kp-1"' in config
    assert "port = 41234" in config
    (container,) = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == IMAGE
    assert container["readinessProbe"]["httpGet"]["port"] == 41234


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        (
            lambda docs: one(docs, "Secret")["data"].update(amqp__url="not base64!"),
            "the Secret 'kp-1-customevent-bridge': 'amqp__url' is not base64 of UTF-8 text",
        ),
        (
            lambda docs: one(docs, "Secret")["data"].update(
                amqp__url=base64.b64encode(b"\xff\xfe").decode()
            ),
            "'amqp__url' is not base64 of UTF-8 text",
        ),
        (
            lambda docs: docs.remove(one(docs, "Deployment")),
            "expected one Deployment in the chart's manifests, got 0",
        ),
        (
            lambda docs: docs.append(copy.deepcopy(one(docs, "Deployment"))),
            "expected one Deployment in the chart's manifests, got 2",
        ),
        (
            lambda docs: one(docs, "Deployment")["spec"].update(replicas=3),
            "kube play runs one pod; the values ask for 3 replicas",
        ),
    ],
)
def test_manifests_it_cannot_play_are_refused_by_name(
    rendered: list[dict[str, Any]], change: Any, refusal: str
) -> None:
    docs = copy.deepcopy(rendered)
    change(docs)
    with pytest.raises(kube_play.SmokeError, match=refusal.replace("(", r"\(")):
        kube_play.for_kube_play(docs)


def test_a_secret_the_chart_did_not_render_is_refused() -> None:
    docs = kube_play.render(values(existingSecret="mine"), release="kp-1")
    with pytest.raises(kube_play.SmokeError, match="mounts the Secret 'mine', which the chart"):
        kube_play.for_kube_play(docs)


def test_a_projected_secret_volume_is_refused() -> None:
    more = {"rabbitmqCluster": {"name": "rabbit"}, "secrets": {"mqtt__url": "mqtt://h:1883"}}
    docs = kube_play.render(values(**more), release="kp-1")
    with pytest.raises(kube_play.SmokeError, match="'secrets' is projected"):
        kube_play.for_kube_play(docs)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("localhost/customevent-bridge:ci-1", ("localhost/customevent-bridge", "ci-1")),
        ("registry:5000/a/b:1.0", ("registry:5000/a/b", "1.0")),
        ("localhost:5000/customevent-bridge", None),
        ("customevent-bridge", None),
        (":tag", None),
    ],
)
def test_the_image_needs_a_tag(image: str, expected: tuple[str, str] | None) -> None:
    if expected is None:
        with pytest.raises(kube_play.SmokeError, match="has no tag"):
            kube_play.split_image(image)
    else:
        assert kube_play.split_image(image) == expected


def test_ci_plays_the_image_the_smoke_test_kept() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    smoke = ci.index('scripts/image-smoke.sh --keep "$image_ref"')
    play = ci.index('scripts/kube_play.py --image "$image_ref"')
    assert smoke < play < ci.index("\nmake docs\n")
