"""The synchronous facade, for scripts."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from adapter import ClientStateError, Event, SyncClient


@pytest.mark.rabbitmq
def test_send_and_wait_without_asyncio(amqp_url: str, unique_name: str) -> None:
    results: list[Event | None] = []
    with SyncClient(amqp_url) as waiter_client, SyncClient(amqp_url) as sender:
        thread = threading.Thread(
            target=lambda: results.append(
                waiter_client.wait_custom_event_until(
                    "internal", unique_name, timedelta(seconds=20)
                )
            )
        )
        thread.start()
        for _ in range(400):
            if sender.send_custom_event(unique_name, "a=1").routed:
                break
            thread.join(0.05)
        thread.join(30)
    assert results and results[0] is not None and results[0].properties == {"a": "1"}


def test_a_closed_sync_client_refuses_calls() -> None:
    client = SyncClient("memory://")
    with pytest.raises(ClientStateError):
        client.send_custom_event("a")
    with client:
        assert client.send_custom_event("a").routed is False
        assert client.wait_custom_event_until("internal", "a", timedelta(0)) is None
    with pytest.raises(ClientStateError):
        client.send_custom_event("a")
