"""``HttpBus``: the CLI's bus when its URL is http(s)://, against a real daemon."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from adapter import Client
from adapter._exceptions import BrokerAuthenticationError, BusUnavailable, InvalidInput
from adapter._remote import HttpBus
from tests.test_http_support import LIMITED, PASSWORD, TOKEN, ThreadedDaemon, daemon_settings


@pytest.fixture
def daemon(bus_kind: str, request: pytest.FixtureRequest) -> Iterator[ThreadedDaemon]:
    url = request.getfixturevalue("amqp_url") if bus_kind == "rabbitmq" else None
    with ThreadedDaemon(daemon_settings(bus_kind, url)) as running:
        yield running


def _url(daemon: ThreadedDaemon, user: str = "ops", password: str = PASSWORD) -> str:
    return daemon.url.replace("http://", f"http://{user}:{password.replace(' ', '%20')}@")


async def test_send_and_wait_through_the_daemon(daemon: ThreadedDaemon, unique_name: str) -> None:
    async with (
        Client(bus=HttpBus(_url(daemon))) as waiter_side,
        Client(bus=HttpBus(daemon.url, token=TOKEN)) as sender,
    ):
        assert not waiter_side.bus.connected
        async with waiter_side.expect(
            "external", unique_name, until=timedelta(seconds=20)
        ) as waiter:
            # __aenter__ returned: the wait is bound at the daemon, so this send is caught.
            result = await sender.send_custom_event(
                unique_name, {"a": "1", "text": "two words = x"}, kind="external"
            )
            event = await waiter
        assert result.routed is True
        assert event is not None
        assert event.event_id == result.event_id
        assert event.properties == {"a": "1", "text": "two words = x"}
        assert (event.kind, event.source, event.principal) == ("external", "http", "ops")
        assert event.sent_at.tzinfo is not None
        assert waiter_side.bus.connected
        assert sender.bus.connected
        unrouted = await sender.send_custom_event(f"{unique_name}.none", {}, kind="external")
        assert unrouted.routed is False


async def test_wait_with_a_pattern_and_the_deadline(
    daemon: ThreadedDaemon, unique_name: str
) -> None:
    async with Client(bus=HttpBus(_url(daemon))) as client:
        nothing = await client.wait_custom_event_until(
            "external", unique_name, timedelta(milliseconds=300)
        )
        assert nothing is None
        async with client.expect(
            "external", f"{unique_name}.#", until=datetime.now(UTC) + timedelta(seconds=20)
        ) as waiter:
            await client.send_custom_event(f"{unique_name}.a.b", {}, kind="external")
            event = await waiter
        assert event is not None
        assert event.name == f"{unique_name}.a.b"


async def test_internal_events_cannot_be_sent_over_http(daemon: ThreadedDaemon) -> None:
    async with Client(bus=HttpBus(_url(daemon))) as client:
        with pytest.raises(InvalidInput, match="only external events"):
            await client.send_custom_event("t.x", {}, kind="internal")


async def test_refusals_map_to_the_exception_tree(daemon: ThreadedDaemon) -> None:
    async with Client(bus=HttpBus(_url(daemon, "ops", "wrong"))) as wrong:
        with pytest.raises(BrokerAuthenticationError, match="401"):
            await wrong.send_custom_event("t.x", {}, kind="external")
        with pytest.raises(BrokerAuthenticationError, match="401"):
            await wrong.wait_custom_event_until("external", "t.x", timedelta(seconds=5))
    async with Client(bus=HttpBus(_url(daemon, *LIMITED))) as limited:
        with pytest.raises(BrokerAuthenticationError, match="403"):
            await limited.send_custom_event("t.other", {}, kind="external")
    async with Client(bus=HttpBus(_url(daemon))) as client:
        with pytest.raises(InvalidInput, match="max_wait"):
            await client.wait_custom_event_until("external", "t.x", timedelta(hours=2))
        big = {f"p{i}": "x" for i in range(300)}
        with pytest.raises(InvalidInput, match="limit of 256"):
            await client.send_custom_event("t.x", big, kind="external")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize("bus_kind", ["memory"])
async def test_no_daemon_is_bus_unavailable_naming_it(bus_kind: str) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    async with Client(bus=HttpBus(url)) as client:
        with pytest.raises(BusUnavailable) as refused:
            await client.send_custom_event("t.x", {}, kind="external")
        assert url in str(refused.value)
        assert "customevent serve" in str(refused.value)
        assert not client.bus.connected
        with pytest.raises(BusUnavailable, match="customevent serve"):
            await client.wait_custom_event_until("external", "t.x", timedelta(seconds=5))


@pytest.mark.parametrize("bus_kind", ["memory"])
async def test_a_stopping_daemon_ends_waits_with_bus_unavailable(
    daemon: ThreadedDaemon, unique_name: str
) -> None:
    async with Client(bus=HttpBus(_url(daemon))) as client:
        async with client.expect("external", unique_name, until=timedelta(seconds=30)) as waiter:
            await asyncio.to_thread(daemon.stop)
            with pytest.raises(BusUnavailable, match="shutting down"):
                await waiter
