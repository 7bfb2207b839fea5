"""What the parts are given instead of reading process state (issue 20, item 5): each daemon
counts on metrics of its own, a client given its bus reads no environment, and the time-bound
parts read the clock they are given."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

import adapter._http._auth as auth_module
from adapter import Client, ConfigurationError, LimitExceeded, MemoryBus, load_settings
from adapter._groups import SeenIds
from adapter._http._auth import Authenticator, NotAuthenticated
from adapter._http._ratelimit import RateLimiter
from adapter._http._shares import Shares
from adapter._settings import Settings
from adapter.testing import BridgeDaemon
from tests.support.clock import FakeClock
from tests.support.groups import nothing, take
from tests.support.http import basic, make_settings
from tests.support.metrics import sample

SENT = "customevent_sends_total"
_BRIEF = timedelta(milliseconds=100)


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


# -- the clock: windows pass by hand, not by sleeping ---------------------------------------------


def test_the_dedup_window_and_its_limit_follow_the_clock() -> None:
    clock = FakeClock()
    seen = SeenIds(0.5, 2, clock)
    seen.add("a")
    clock.advance(0.4)
    assert "a" in seen
    clock.advance(0.2)
    assert "a" not in seen  # past the window
    seen.add("b")
    seen.add("c")
    seen.add("d")
    assert "b" not in seen and "c" in seen and "d" in seen and len(seen) == 2  # past the limit


def test_a_rate_limit_refills_on_the_clock() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2.0, 3, clock)
    assert [limiter.acquire("ops") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("ops") == pytest.approx(0.5)  # a token every half second
    assert limiter.acquire("other") == 0.0  # a bucket per caller
    clock.advance(0.5)
    assert limiter.acquire("ops") == 0.0
    clock.advance(3600)  # refilled to the burst, never past it
    assert limiter.acquire("ops", 3) == 0.0
    assert limiter.acquire("ops") == pytest.approx(0.5)


def test_a_callers_share_is_given_back_when_the_clock_passes_its_end() -> None:
    clock = FakeClock()
    shares = Shares(resumable_waits=1, retained_names=1, clock=clock)
    shares.hold_retained("ops", "internal.a", clock.time() + 10)
    with pytest.raises(LimitExceeded) as refused:
        shares.hold_retained("ops", "internal.b", clock.time() + 10)
    assert refused.value.retry_after == 10
    clock.advance(10)
    shares.hold_retained("ops", "internal.b", clock.time() + 10)


async def test_retained_events_expire_on_the_in_process_bus_clock(unique_name: str) -> None:
    clock = FakeClock()
    async with Client(bus=MemoryBus(clock=clock, max_retained_names=1)) as client:
        await client.send_custom_event(unique_name, {"n": "1"}, retain=timedelta(seconds=30))
        with pytest.raises(LimitExceeded, match=r"amqp\.max_retained_names") as refused:
            await client.send_custom_event(f"{unique_name}.b", retain=timedelta(seconds=30))
        assert refused.value.retry_after == 30
        clock.advance(29)
        event = await client.wait_custom_event_until("internal", unique_name, _BRIEF)
        assert event is not None and event.properties == {"n": "1"}
        clock.advance(1)
        assert await client.wait_custom_event_until("internal", unique_name, _BRIEF) is None
        # Expired, it makes room for another name.
        await client.send_custom_event(f"{unique_name}.b", retain=timedelta(seconds=30))


async def test_the_dedup_window_of_an_in_process_group_follows_the_bus_clock(
    unique_name: str,
) -> None:
    clock = FakeClock()
    async with (
        Client(bus=MemoryBus(clock=clock)) as client,
        client.subscribe(unique_name, group="g-window", dedup_window=60) as deliveries,
    ):
        await client.send_custom_event(unique_name, event_id="once")
        await (await take(deliveries)).ack()
        await client.send_custom_event(unique_name, event_id="once")
        await nothing(deliveries, 0.2)  # within the window: a copy, dropped
        clock.advance(61)
        await client.send_custom_event(unique_name, event_id="once")
        again = await take(deliveries)  # past it: handed out again
        assert again.event.event_id == "once"
        await again.ack()


async def test_a_refused_credential_is_remembered_until_the_clock_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checks: list[str] = []
    real = auth_module.verify_secret

    def counting(secret: str, hashed: str) -> bool:
        checks.append(secret)
        return real(secret, hashed)

    monkeypatch.setattr(auth_module, "verify_secret", counting)
    clock = FakeClock()
    authenticator = Authenticator(make_settings().auth, clock)
    bad = basic("ops", "guess")["Authorization"]
    for seconds in (0.0, 4.9):
        clock.advance(seconds)
        with pytest.raises(NotAuthenticated):
            await authenticator.authenticate(bad)
    assert len(checks) == 1  # remembered: not checked again within 5 s
    clock.advance(0.2)
    with pytest.raises(NotAuthenticated):
        await authenticator.authenticate(bad)
    assert len(checks) == 2  # forgotten: checked again
    authenticator.close()
