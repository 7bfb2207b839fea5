"""Shared fixtures: broker URLs (required, never skipped), unique names, and a client per bus."""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, settings

from adapter import Client, load_settings
from adapter.testing import BridgeDaemon, memory_client

settings.register_profile("default", max_examples=300, deadline=None)
# CI runs the property tests at least 10,000 examples; `HYPOTHESIS_PROFILE=long` is for campaigns.
settings.register_profile(
    "ci", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=200_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

AMQP_URL = os.environ.get("CUSTOMEVENT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
MQTT_URL = os.environ.get("CUSTOMEVENT_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")


def _require_tcp(url: str, what: str) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        # Broker tests are required: a missing broker is a failure, never a skip.
        pytest.fail(f"{what} is not reachable at {host}:{port} ({exc}); start it (see README)")


@pytest.fixture(scope="session")
def amqp_url() -> str:
    _require_tcp(AMQP_URL, "RabbitMQ")
    return AMQP_URL


@pytest.fixture(scope="session")
def mqtt_url() -> str:
    _require_tcp(MQTT_URL, "Mosquitto")
    return MQTT_URL


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """An event name no other test (or run) uses."""
    base = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:60] or "test"
    return f"t.{base}.{uuid.uuid4().hex[:10]}"


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def bus_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def kind(bus_kind: str) -> str:
    """The kind a behaviour test sends and waits on: through a bridge daemon (``http``) only
    external events travel; elsewhere the library's default, internal."""
    return "external" if bus_kind == "http" else "internal"


@pytest.fixture
async def client(bus_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    """A client on the in-process bus or on the real RabbitMQ: one behaviour suite for both.
    A test that also holds through a bridge daemon parametrizes ``bus_kind`` with ``http``: the
    client is then ``Client("http://ops:...@daemon")`` against a daemon on the in-process bus."""
    if bus_kind == "http":
        from tests.support.http import make_settings, url_with_credentials

        # Up to 200 waits at once from one test: room beyond the per-caller default of 100.
        http = {"max_wait": 600.0, "max_waits_per_caller": 1000}
        with BridgeDaemon(make_settings(None, http=http)) as daemon:
            async with Client(url_with_credentials(daemon)) as opened:
                yield opened
    elif bus_kind == "rabbitmq":
        url = request.getfixturevalue("amqp_url")
        async with Client(load_settings(amqp={"url": url, "wait_grace": 2.0})) as opened:
            yield opened
    else:
        async with memory_client(load_settings(amqp={"url": None, "wait_grace": 2.0})) as opened:
            yield opened


# What a test needs beyond Python, for running the suite in pieces (`make test-fast` runs none of
# these): a broker by the fixture it takes; a browser, the Helm SDK or image tooling by its file.
_NEEDS_BY_FIXTURE = {"amqp_url": "rabbitmq", "mqtt_url": "mosquitto"}
_NEEDS_BY_FILE = {
    "test_docs_rendered.py": "chromium",
    "test_docs.py": "docs",
    "test_chart.py": "helm",
    "test_kube_play.py": "helm",
    "test_image.py": "image",
    "test_cluster.py": "cluster",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in _NEEDS_BY_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(getattr(pytest.mark, marker))
        marker = _NEEDS_BY_FILE.get(item.path.name)
        if marker is not None:
            item.add_marker(getattr(pytest.mark, marker))
