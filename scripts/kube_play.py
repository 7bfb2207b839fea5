"""CI's kube-play smoke test: the Helm chart's pod, run with `podman kube play` against the RabbitMQ
and Mosquitto on this machine, and used as a client would.

    .venv/bin/python scripts/kube_play.py --image REF          # REF: from scripts/image-smoke.sh
    .venv/bin/python scripts/kube_play.py --image REF --print  # the manifests it would play
                                     # (stdout), its address and credentials (stderr)

1. The chart is rendered by Helm's own engine (helm-python-sdk, as tests/test_chart.py does) with
   values for this run: the image, an exchange, an MQTT prefix and a port of its own, the brokers'
   URLs and a principal in the chart's Secret.
2. Of the manifests, the Deployment, its ConfigMap and its Secret are played; `for_kube_play`
   changes only what podman runs differently from a Kubernetes node, each change with its reason.
   The chart itself is written so that the rest plays as it is (a ConfigMap named apart from the
   Secret, `optional` on every secret volume, numeric probe ports).
3. `podman kube play`, then from the host: /readyz answers 200 (RabbitMQ connected), the daemon
   runs as uid 10001 on a read-only root, an HTTP long-poll wait is bound, a vRO REST send is
   answered 200 and the wait answers the event. Probes are not run by kube play (they become
   podman healthchecks, which need systemd): the script polls /readyz as the readiness probe would.
4. The pod stopped (SIGTERM: the daemon must exit 0), then `podman kube down`, the volumes podman
   made removed and the exchange deleted, however the run ends (an error, Ctrl-C, SIGTERM).

Podman reads config/podman/containers.conf unless CONTAINERS_CONF is set (as
scripts/container-runtime.sh does). Environment: CUSTOMEVENT_TEST_AMQP_URL (default
amqp://guest:guest@127.0.0.1:5672/), CUSTOMEVENT_TEST_MQTT_URL (default mqtt://127.0.0.1:1883).
Exits 0 when every check passed, 1 with what failed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import aio_pika
import helm_python as helm
import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = ROOT / "charts" / "customevent-bridge"
PODMAN_CONF = ROOT / "config" / "podman" / "containers.conf"
# The kinds `podman kube play` runs a pod from; the Service, ServiceAccount and the rest are the
# cluster's business and podman 4.3 would only warn about them.
PLAYED_KINDS = ("ConfigMap", "Secret", "Deployment")
READY_SECONDS = 60
WAIT_SECONDS = 30


class SmokeError(Exception):
    """A check of the run failed; the message says which and what was seen."""


def say(message: str) -> None:
    print(f"kube-play: {message}", flush=True)


# -- the manifests -----------------------------------------------------------------------------


def chart_values(
    image: str, *, run_id: str, port: int, amqp_url: str, mqtt_url: str, principals: str
) -> dict[str, Any]:
    """The chart's values for one run: everything this run needs of its own is a value."""
    repository, tag = split_image(image)
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"},
        "config": {
            "amqp": {"exchange": f"customevents.{run_id}"},
            "mqtt": {"prefix": run_id, "client_id": run_id, "session_expiry": 0},
            "http": {"port": port, "drain_seconds": 3},
        },
        "secrets": {"amqp__url": amqp_url, "mqtt__url": mqtt_url, "auth__principals": principals},
    }


def split_image(image: str) -> tuple[str, str]:
    """``repository:tag`` of an image reference; a reference with no tag is refused."""
    repository, colon, tag = image.rpartition(":")
    if not colon or not repository or "/" in tag:
        raise SmokeError(f"the image {image!r} has no tag (expected repository:tag)")
    return repository, tag


def render(values: dict[str, Any], release: str) -> list[dict[str, Any]]:
    """The chart's manifests, rendered by Helm's engine, in the order Helm wrote them."""
    with helm.Chart.load(CHART_DIR) as chart:
        files = chart.render(values, name=release, namespace="default")
    docs: list[dict[str, Any]] = []
    for path in sorted(files):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(files[path]) if doc)
    return docs


def for_kube_play(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The manifests `podman kube play` is given: the Deployment with its ConfigMap and Secret,
    changed only where podman runs a pod differently from a Kubernetes node.

    The input is not changed; what Kubernetes would run stays exactly as the chart renders it.
    """
    # The ConfigMap and the Secret first: podman looks them up as it makes the pod's volumes.
    played = [
        copy.deepcopy(doc) for kind in PLAYED_KINDS for doc in docs if doc.get("kind") == kind
    ]
    deployments = [doc for doc in played if doc["kind"] == "Deployment"]
    if len(deployments) != 1:
        raise SmokeError(
            f"expected one Deployment in the chart's manifests, got {len(deployments)}"
        )
    spec = deployments[0]["spec"]
    if spec.get("replicas", 1) != 1:
        raise SmokeError(f"kube play runs one pod; the values ask for {spec['replicas']} replicas")
    pod = spec["template"]["spec"]
    # The brokers listen on the host's 127.0.0.1, where a cluster would reach them through a
    # Service; a pod network of its own could not.
    pod["hostNetwork"] = True
    for container in pod["containers"]:
        # kube play publishes every containerPort as a host port, which podman refuses on the
        # host's network (where the port is the host's already).
        container.pop("ports", None)
    # podman 4.3 writes each `data` value of a Secret to its file still base64-encoded, and
    # ignores `stringData`; a ConfigMap's values it writes as they are. So the chart's Secret is
    # played as a ConfigMap of its decoded values, mounted where the Secret would be.
    chart_secrets = {doc["metadata"]["name"]: doc for doc in played if doc["kind"] == "Secret"}
    played = [as_config_map(doc) if doc["kind"] == "Secret" else doc for doc in played]
    for volume in pod.get("volumes", []):
        if "secret" not in volume:
            if "projected" in volume:
                raise SmokeError(f"the volume {volume['name']!r} is projected: kube play has none")
            continue
        source = volume.pop("secret")
        if source.get("secretName") not in chart_secrets:
            raise SmokeError(
                f"the volume {volume['name']!r} mounts the Secret {source.get('secretName')!r}, "
                "which the chart did not render (kube play gets only the chart's own)"
            )
        volume["configMap"] = {
            "name": source["secretName"],
            **{key: value for key, value in source.items() if key != "secretName"},
        }
    return played


def as_config_map(secret: dict[str, Any]) -> dict[str, Any]:
    """A ConfigMap of the Secret's name holding its values, decoded."""
    name = secret["metadata"]["name"]
    data: dict[str, str] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            data[key] = base64.b64decode(value, validate=True).decode()
        except (ValueError, UnicodeDecodeError) as error:
            raise SmokeError(f"the Secret {name!r}: {key!r} is not base64 of UTF-8 text") from error
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": secret["metadata"], "data": data}


# -- podman ------------------------------------------------------------------------------------


def podman(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise SmokeError(f"podman {' '.join(args)} did not finish within {timeout} s") from error
    if check and result.returncode != 0:
        raise SmokeError(
            f"podman {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
        )
    return result


class Pod:
    """The pod `podman kube play` started: its id and its one container's."""

    def __init__(self, played: str) -> None:
        # kube play prints "Pod:\n<id>\nContainer:\n<id>"; podman 4.3 names a Deployment's pod
        # <name>-pod-0, newer ones <name>-pod: the ids are what stays.
        found = re.search(r"^Pod:\n(\w+)\n+Container:\n(\w+)$", played, re.MULTILINE)
        if not found:
            raise SmokeError(f"podman kube play printed no pod and container: {played!r}")
        self.id, self.container = found.group(1), found.group(2)

    def failed(self) -> str | None:
        """Why the daemon is not running (it exited, or was restarted), or None while it runs."""
        state = podman(
            "container",
            "inspect",
            "--format",
            "{{.State.Status}} {{.RestartCount}}",
            self.container,
            check=False,
        )
        status, _, restarts = state.stdout.strip().partition(" ")
        if state.returncode != 0 or status != "running" or restarts not in ("", "0"):
            return f"the daemon's container is {status or 'gone'} ({restarts or '?'} restarts)"
        return None

    def run_as(self) -> None:
        """The chart's securityContext held: uid 10001, a root filesystem it cannot write."""
        uid = podman("exec", self.container, "id", "-u").stdout.strip()
        if uid != "10001":
            raise SmokeError(f"the daemon runs as uid {uid}, not 10001")
        wrote = podman(
            "exec", self.container, "sh", "-c", "echo x > /opt/customevent/x", check=False
        )
        if wrote.returncode == 0:
            raise SmokeError("the pod's root filesystem is writable")

    def stop(self) -> None:
        """SIGTERM, as a node sends it: the daemon drains and exits 0, with no traceback."""
        podman("pod", "stop", self.id, timeout=60)
        code = podman("container", "inspect", "--format", "{{.State.ExitCode}}", self.container)
        if code.stdout.strip() != "0":
            raise SmokeError(f"the daemon exited {code.stdout.strip()} on SIGTERM:\n{self.logs()}")
        if "Traceback" in self.logs():
            raise SmokeError(f"a traceback in the daemon's log:\n{self.logs()}")

    def logs(self) -> str:
        result = podman("logs", "--tail", "20", self.container, check=False)
        return (result.stdout + result.stderr).strip()


@contextmanager
def played(manifest: Path, manifests: list[dict[str, Any]]) -> Iterator[Pod]:
    """The pod of ``manifest`` running; taken down on the way out, however it is left."""
    try:
        yield Pod(podman("kube", "play", str(manifest), timeout=120).stdout)
    finally:
        with shielded():
            take_down(manifest, manifests)


def take_down(manifest: Path, manifests: list[dict[str, Any]]) -> None:
    try:
        down = podman("kube", "down", str(manifest), check=False, timeout=120)
        if down.returncode != 0:
            say(f"podman kube down exited {down.returncode}: {down.stderr.strip()}")
    except SmokeError as error:
        say(str(error))
    # podman 4.3's kube down removes the pod only: the volume it made of each ConfigMap stays
    # behind unless removed here.
    for doc in manifests:
        if doc["kind"] == "ConfigMap":
            podman("volume", "rm", "--force", doc["metadata"]["name"], check=False)


@contextmanager
def shielded() -> Iterator[None]:
    """Clean-up that a second Ctrl-C or SIGTERM cannot cut short."""
    signums = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# -- the checks --------------------------------------------------------------------------------


async def active_waits(http: httpx.AsyncClient) -> int:
    text = (await http.get("/metrics")).text
    match = re.search(r"^customevent_http_waits_active(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    return int(float(match.group(1))) if match else 0


async def until_ready(http: httpx.AsyncClient, pod: Pod) -> float:
    """Seconds until /readyz answered 200, polled as the chart's readiness probe would be."""
    started = time.monotonic()
    while time.monotonic() - started < READY_SECONDS:
        try:
            if (await http.get("/readyz")).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        if (failed := pod.failed()) is not None:
            raise SmokeError(f"{failed} before /readyz answered 200; its log:\n{pod.logs()}")
        await asyncio.sleep(0.5)
    raise SmokeError(f"/readyz did not answer 200 within {READY_SECONDS} s; log:\n{pod.logs()}")


async def send_and_wait(http: httpx.AsyncClient, name: str) -> None:
    """An HTTP long-poll wait on ``name``, bound, answered by a vRO REST send of answer=42."""
    before = await active_waits(http)
    wait = asyncio.create_task(
        http.get(f"/api/v1/events/{name}/wait", params={"timeout": f"{WAIT_SECONDS}s"})
    )
    try:
        for _ in range(100):
            if await active_waits(http) > before:
                break
            if wait.done():
                raise SmokeError(f"the wait on {name} ended before it was bound: {wait.result()}")
            await asyncio.sleep(0.1)
        else:
            raise SmokeError(f"the wait on {name} was never bound")
        sent = await http.post(
            f"/vco/api/customevent/{name}", params={"properties": "answer=42\nvia=kube-play"}
        )
        if sent.status_code != 200:
            raise SmokeError(f"the vRO REST send answered {sent.status_code}: {sent.text}")
        say("vRO REST send: 200")
        answer = await asyncio.wait_for(wait, WAIT_SECONDS + 5)
    finally:
        wait.cancel()
    if answer.status_code != 200:
        raise SmokeError(f"the wait on {name} answered {answer.status_code}: {answer.text}")
    try:
        properties = answer.json()["properties"]
    except (ValueError, TypeError, KeyError):
        properties = None
    if properties != {"answer": "42", "via": "kube-play"}:
        raise SmokeError(f"the wait on {name} answered {answer.text}, not answer=42")
    say(f"HTTP long-poll wait on {name}: 200 answer=42")


async def check(base_url: str, pod: Pod, user: str, password: str) -> None:
    async with httpx.AsyncClient(
        base_url=base_url, auth=(user, password), timeout=WAIT_SECONDS + 10
    ) as http:
        took = await until_ready(http, pod)
        say(f"/readyz: 200 (RabbitMQ connected) {took:.1f} s after kube play")
        pod.run_as()
        say("runs as uid 10001 on a read-only root filesystem")
        try:
            await send_and_wait(http, f"kubeplay.{secrets.token_hex(4)}")
        except httpx.HTTPError as error:
            raise SmokeError(f"HTTP to the pod failed: {error!r}\n{pod.logs()}") from error


async def delete_exchange(amqp_url: str, exchange: str) -> None:
    async with await aio_pika.connect(amqp_url) as connection:
        await (await connection.channel()).exchange_delete(exchange)


# -- the run -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def hash_password(password: str) -> str:
    # The project's own CLI, as a user of the chart makes the hash for auth__principals.
    cli = Path(sys.executable).with_name("customevent")
    result = subprocess.run(
        [str(cli), "hash-secret"], input=password, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SmokeError(f"{cli} hash-secret exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout.strip()


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP end the run as Ctrl-C does: through the ``finally`` blocks."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)


def run(image: str, *, print_only: bool) -> None:
    amqp_url = os.environ.get("CUSTOMEVENT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    mqtt_url = os.environ.get("CUSTOMEVENT_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")
    run_id = f"kubeplay-{os.getpid()}-{secrets.token_hex(3)}"
    user, password = "kubeplay", secrets.token_urlsafe(16)
    principals = json.dumps(
        [{"name": user, "password_hash": hash_password(password), "allow": ["kubeplay.#"]}]
    )
    port = free_port()
    values = chart_values(
        image, run_id=run_id, port=port, amqp_url=amqp_url, mqtt_url=mqtt_url, principals=principals
    )
    manifests = for_kube_play(render(values, release=run_id))
    text = yaml.safe_dump_all(manifests, sort_keys=False)
    if print_only:
        print(text, end="")
        # For a pod played by hand: who may send and wait on it, and where (on stderr, so that
        # stdout stays the manifests).
        print(
            f"kube-play: http://127.0.0.1:{port}, user {user}, password {password}, "
            f"event names kubeplay.#, exchange {values['config']['amqp']['exchange']}",
            file=sys.stderr,
        )
        return
    os.environ.setdefault("CONTAINERS_CONF", str(PODMAN_CONF))
    if podman("image", "exists", image, check=False).returncode != 0:
        raise SmokeError(f"no image {image} here (scripts/image-smoke.sh --keep {image} builds it)")
    exchange = values["config"]["amqp"]["exchange"]
    with tempfile.TemporaryDirectory(prefix="kube-play-") as work:
        manifest = Path(work) / "manifests.yaml"
        manifest.write_text(text)
        started = time.monotonic()
        try:
            with played(manifest, manifests) as pod:
                say(f"podman kube play: pod {pod.id[:12]}, image {image}, port {port}")
                asyncio.run(check(f"http://127.0.0.1:{port}", pod, user, password))
                pod.stop()
                say("podman pod stop: SIGTERM, the daemon exited 0")
        finally:
            with shielded():
                try:
                    asyncio.run(delete_exchange(amqp_url, exchange))
                except Exception as error:  # the run's own result matters more than this
                    say(f"could not delete the exchange {exchange}: {error}")
        say(f"podman kube down: done; {time.monotonic() - started:.1f} s from kube play")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--image", required=True, help="the image to run, repository:tag")
    parser.add_argument("--print", action="store_true", help="print the manifests and stop")
    args = parser.parse_args(argv)
    stop_on_signals()
    try:
        run(args.image, print_only=args.print)
    except SmokeError as error:
        print(f"kube-play: FAILED: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupted:
        print(f"kube-play: interrupted ({interrupted or 'SIGINT'}); cleaned up", file=sys.stderr)
        return 130
    if not args.print:
        say("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
