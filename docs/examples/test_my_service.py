"""A service's own tests, with the fixtures of adapter.testing (conftest.py: pytest_plugins =
["adapter.testing"]). Needs pytest and pytest-asyncio; no broker."""

from datetime import timedelta

import httpx
import pytest

import adapter
from adapter.testing import BridgeDaemon


async def approve(client: adapter.Client, change: str) -> None:
    """The code under test: it sends an internal event."""
    await client.send_custom_event(f"change.{change}.approval", {"approved": "yes"})


@pytest.mark.asyncio
async def test_approve_sends_the_event(customevent_client: adapter.Client) -> None:
    # customevent_client: an opened Client on an in-process bus of its own.
    async with customevent_client.expect(
        "internal", "change.4711.approval", until=timedelta(seconds=5)
    ) as waiter:
        await approve(customevent_client, "4711")
        event = await waiter
    assert event is not None and event.properties == {"approved": "yes"}


def test_a_vro_era_client_reaches_the_daemon(
    customevent_daemon: BridgeDaemon,
) -> None:
    # customevent_daemon: the bridge daemon as `make serve` runs it, on a free port.
    url = f"{customevent_daemon.url}/vco/api/customevent/vm.created?properties=vm%3Dweb-01"
    assert httpx.post(url).status_code == 200
