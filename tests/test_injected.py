"""What the parts are given instead of reading process state (issue 20, item 5): each daemon
counts on metrics of its own, and a client given its bus reads no environment."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from adapter import Client, ConfigurationError, MemoryBus, load_settings
from adapter._settings import Settings
from adapter.testing import BridgeDaemon
from tests.support.metrics import sample

SENT = "customevent_sends_total"


def _scraped(url: str, name: str, **labels: str) -> float | None:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return found.value
    return None


def test_two_daemons_in_one_process_count_apart(unique_name: str) -> None:
    process_before = REGISTRY.get_sample_value(SENT, {"ingress": "json", "outcome": "ok"})
    with BridgeDaemon() as one, BridgeDaemon() as other:
        for _ in range(3):
            sent = httpx.post(f"{one.url}/api/v1/events/{unique_name}", json={}, timeout=10)
            assert sent.status_code == 202, sent.text
        refused = httpx.post(f"{other.url}/api/v1/events/{unique_name}", json=[], timeout=10)
        assert refused.status_code == 400
        assert sample(one.metrics, SENT, ingress="json", outcome="ok") == 3
        assert sample(other.metrics, SENT, ingress="json", outcome="ok") == 0
        assert sample(other.metrics, SENT, ingress="json", outcome="invalid") == 1
        # What each serves on /metrics is its own registry.
        assert _scraped(one.url, SENT, ingress="json", outcome="ok") == 3.0
        assert _scraped(other.url, SENT, ingress="json", outcome="ok") is None
        assert _scraped(other.url, SENT, ingress="json", outcome="invalid") == 1.0
    # Nor did either count on the process's default registry.
    after = REGISTRY.get_sample_value(SENT, {"ingress": "json", "outcome": "ok"})
    assert after == process_before


GARBAGE = {
    "CUSTOMEVENT_AMQP__URL": "not a url at all",
    "CUSTOMEVENT_LIMITS__MAX_BYTES": "lots",
    "CUSTOMEVENT_CONFIG": "/nonexistent/customevent.toml",
    "CUSTOMEVENT_SECRETS_DIR": "/nonexistent/secrets",
    "CUSTOMEVENT_TOKEN": "garbage",
}


async def test_a_client_given_its_bus_reads_no_environment(
    monkeypatch: pytest.MonkeyPatch, unique_name: str
) -> None:
    for key, value in GARBAGE.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigurationError):
        load_settings()  # the environment is garbage indeed
    with pytest.raises(ConfigurationError):
        Client()
    bus = MemoryBus()
    async with Client(bus=bus) as client:
        assert client.bus is bus
        # Every key at its default, none of the environment's.
        assert client.settings.model_dump() == Settings.model_construct().model_dump()
        assert client.settings.amqp.url is None
        async with client.expect("internal", unique_name, until=timedelta(seconds=5)) as waiter:
            assert (await client.send_custom_event(unique_name, {"a": "1"})).routed
            event = await waiter
    assert event is not None and event.properties == {"a": "1"}
