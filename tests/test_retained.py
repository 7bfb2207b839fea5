"""Retained events: a send with ``retain`` is received at once by a wait that starts later on the
same kind and exact name, until it expires or a later retained send replaces it; without
``retain``, vRO's semantics. One suite for the in-process bus, RabbitMQ and a bridge daemon."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest

from adapter import Client, InvalidInput, LimitExceeded, MemoryBus, load_settings
from adapter.testing import memory_client
from tests.support.broker import rabbitmqctl
from tests.support.buses import over_http
from tests.support.clock import FakeClock

SOON = timedelta(seconds=10)
BRIEF = timedelta(milliseconds=500)

everywhere = over_http


@everywhere
async def test_a_wait_that_starts_later_receives_the_retained_event(
    client: Client, unique_name: str, kind: str
) -> None:
    sent = await client.send_custom_event(
        unique_name, {"ok": "1"}, kind=kind, retain=timedelta(seconds=60)
    )
    assert sent.routed is False  # nobody was waiting when it was sent
    for _ in range(2):  # every wait that starts within the window gets it, not only the first
        event = await client.wait_custom_event_until(kind, unique_name, SOON)
        assert event is not None
        assert event.properties == {"ok": "1"}
        assert event.event_id == sent.event_id


@everywhere
async def test_without_retain_a_late_wait_sees_nothing(
    client: Client, unique_name: str, kind: str
) -> None:
    await client.send_custom_event(unique_name, {"ok": "1"}, kind=kind)
    assert await client.wait_custom_event_until(kind, unique_name, BRIEF) is None


@everywhere
async def test_the_latest_retained_send_wins_and_plain_sends_do_not_replace_it(
    client: Client, unique_name: str, kind: str
) -> None:
    for value in ("1", "2"):
        await client.send_custom_event(
            unique_name, {"n": value}, kind=kind, retain=timedelta(seconds=60)
        )
    await client.send_custom_event(unique_name, {"n": "plain"}, kind=kind)
    event = await client.wait_custom_event_until(kind, unique_name, SOON)
    assert event is not None
    assert event.properties == {"n": "2"}


@everywhere
async def test_a_retained_event_expires(client: Client, unique_name: str, kind: str) -> None:
    await client.send_custom_event(
        unique_name, {"ok": "1"}, kind=kind, retain=timedelta(milliseconds=300)
    )
    await asyncio.sleep(0.6)  # nothing to await: the retain window has to pass
    assert await client.wait_custom_event_until(kind, unique_name, BRIEF) is None


@everywhere
async def test_a_later_retained_send_replaces_even_once_expired(
    client: Client, unique_name: str, kind: str
) -> None:
    await client.send_custom_event(unique_name, {"n": "1"}, kind=kind, retain=timedelta(hours=1))
    await client.send_custom_event(
        unique_name, {"n": "2"}, kind=kind, retain=timedelta(milliseconds=200)
    )
    await asyncio.sleep(0.4)
    # As with an MQTT retained message: the replaced one does not come back.
    assert await client.wait_custom_event_until(kind, unique_name, BRIEF) is None


@everywhere
async def test_only_the_exact_kind_and_name_see_it(
    client: Client, unique_name: str, kind: str, bus_kind: str
) -> None:
    name = f"{unique_name}.device"
    await client.send_custom_event(name, {"ok": "1"}, kind=kind, retain=timedelta(seconds=60))
    # A pattern wait is given only what is sent while it is bound.
    assert await client.wait_custom_event_until(kind, f"{unique_name}.*", BRIEF) is None
    assert await client.wait_custom_event_until(kind, f"{unique_name}.#", BRIEF) is None
    assert await client.wait_custom_event_until(kind, unique_name, BRIEF) is None
    if bus_kind != "http":  # over HTTP every event is external
        other = "external" if kind == "internal" else "internal"
        assert await client.wait_custom_event_until(other, name, BRIEF) is None


@everywhere
async def test_a_bound_wait_gets_a_retained_event_once(
    client: Client, unique_name: str, kind: str
) -> None:
    async with client.expect(kind, unique_name, until=SOON) as waiter:
        sent = await client.send_custom_event(
            unique_name, {"ok": "1"}, kind=kind, retain=timedelta(seconds=60)
        )
        event = await waiter
    assert event is not None
    assert event.event_id == sent.event_id
    assert sent.routed is True


async def test_a_subscription_never_gets_the_retained_event_twice(unique_name: str) -> None:
    async with memory_client() as client:
        deadline = datetime.now(UTC) + timedelta(seconds=1)
        async with client.bus.subscribe("internal", unique_name, deadline) as subscription:
            await client.send_custom_event(unique_name, {"n": "1"}, retain=timedelta(minutes=1))
            # Handed to the bound wait, and then as the retained event: the second is dropped.
            assert await subscription.get() is not None
            assert await subscription.get() is None


@everywhere
async def test_retain_is_checked(client: Client, unique_name: str, kind: str) -> None:
    for retain in (timedelta(0), timedelta(seconds=-1), timedelta(hours=2)):
        with pytest.raises(InvalidInput, match="retain"):
            await client.send_custom_event(unique_name, kind=kind, retain=retain)
    with pytest.raises(InvalidInput, match="timedelta"):
        await client.send_custom_event(unique_name, kind=kind, retain=30)  # type: ignore[arg-type]


@pytest.fixture
async def capped(
    bus_kind: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Client, FakeClock | None]]:
    """A client allowed 2 retained names, on an exchange (and so a retained-events stream) of
    its own: the cap counts every name retained on the broker. In process, with the clock of
    its bus (RabbitMQ keeps real time)."""
    url = request.getfixturevalue("amqp_url") if bus_kind == "rabbitmq" else None
    exchange = f"customevents.test.{uuid.uuid4().hex[:10]}"
    settings = load_settings(amqp={"url": url, "exchange": exchange, "max_retained_names": 2})
    clock = FakeClock() if url is None else None
    bus = MemoryBus(max_retained_names=2, clock=clock) if clock is not None else None
    async with Client(settings, bus=bus) as opened:
        yield opened, clock
    if url is not None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(f"customevent.retained.{exchange}")
            await channel.exchange_delete(exchange)


@pytest.mark.parametrize(
    "bus_kind", ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]
)
async def test_the_number_of_retained_names_is_capped(
    capped: tuple[Client, FakeClock | None], unique_name: str
) -> None:
    client, clock = capped
    minute = timedelta(minutes=1)
    # Long enough for the checks below on a busy machine (300 ms was not, in CI), short enough
    # to wait out at the end.
    short = timedelta(seconds=5)
    await client.send_custom_event(f"{unique_name}.a", retain=minute)
    await client.send_custom_event(f"{unique_name}.b", retain=short)
    b_expires = time.monotonic() + short.total_seconds()
    with pytest.raises(LimitExceeded, match=r"amqp\.max_retained_names"):
        await client.send_custom_event(f"{unique_name}.c", retain=minute)
    # A name already retained may be retained again, and a plain send is never refused.
    await client.send_custom_event(f"{unique_name}.a", retain=minute)
    await client.send_custom_event(f"{unique_name}.c")
    # An expired name makes room: in process, the bus's clock is moved past its end.
    if clock is not None:
        clock.advance(short.total_seconds() + 0.2)
    else:
        await asyncio.sleep(b_expires - time.monotonic() + 0.2)
    await client.send_custom_event(f"{unique_name}.c", retain=minute)
    event = await client.wait_custom_event_until("internal", f"{unique_name}.c", SOON)
    assert event is not None


@pytest.mark.parametrize(
    "bus_kind", ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]
)
async def test_the_cap_counts_retained_sends_still_under_way(
    capped: tuple[Client, FakeClock | None], unique_name: str
) -> None:
    client, _ = capped
    # On RabbitMQ a send's copy reaches this process's view only after its confirm: sends at
    # once must still not retain more names than the cap.
    results = await asyncio.gather(
        *(
            client.send_custom_event(f"{unique_name}.{n}", retain=timedelta(minutes=1))
            for n in range(6)
        ),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, LimitExceeded)]
    assert len(refused) == 4, results
    assert len(results) - len(refused) == 2


@pytest.mark.rabbitmq
async def test_retained_events_live_in_a_stream_any_process_reads(
    amqp_url: str, unique_name: str
) -> None:
    settings = load_settings(amqp={"url": amqp_url})
    async with Client(settings) as sender:
        sent = await sender.send_custom_event(
            unique_name, {"ok": "1"}, retain=timedelta(seconds=60)
        )
    # A client of its own, that never saw the send: it reads the stream when its wait starts.
    async with Client(settings) as waiter:
        event = await waiter.wait_custom_event_until("internal", unique_name, SOON)
    assert event is not None
    assert event.event_id == sent.event_id
    listing = await rabbitmqctl("list_queues", "name", "type", "durable")
    assert "customevent.retained.customevents\tstream\ttrue" in listing.splitlines()
