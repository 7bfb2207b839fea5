"""What only the RabbitMQ bus has: the message format, third-party publishers, connection errors,
and reconnection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest

from adapter import BrokerAuthenticationError, BusUnavailable, Client, load_settings
from adapter._bus.amqp import AmqpBus
from adapter._bus.amqp._queues import resumable_queue
from adapter._nodes import redact_url
from tests.support.broker import connection_channels, queues_named, rabbitmqctl
from tests.support.proxy import Proxy

pytestmark = pytest.mark.rabbitmq


async def test_the_message_on_the_bus_follows_the_contract(amqp_url: str, unique_name: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange("customevents", "topic", durable=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, f"internal.{unique_name}")
        async with Client(load_settings(amqp={"url": amqp_url})) as client:
            result = await client.send_custom_event(
                unique_name, {"a": "1", "é": "ü"}, principal="ops"
            )
        message = await queue.get(timeout=5)
        await message.ack()
    assert result.routed
    assert json.loads(message.body) == {"a": "1", "é": "ü"}
    assert message.content_type == "application/json"
    assert message.message_id == result.event_id
    assert str(uuid.UUID(result.event_id)) == result.event_id
    assert message.app_id == "customevent-bridge"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.timestamp is not None
    headers = dict(message.headers or {})
    sent_at = datetime.fromisoformat(str(headers.pop("ce-time")))
    assert abs(sent_at - message.timestamp.replace(tzinfo=UTC)) < timedelta(seconds=1)
    assert headers == {
        "x-event-name": unique_name,
        "x-event-kind": "internal",
        "x-event-source": "amqp",
        "x-event-principal": "ops",
        # The same message is a CloudEvent in binary mode (tests/test_cloudevents_bus.py).
        "ce-specversion": "1.0",
        "ce-id": result.event_id,
        "ce-type": unique_name,
        "ce-source": "urn:customevent:amqp",
        "ce-eventkind": "internal",
        "ce-principal": "ops",
    }


async def test_a_third_party_publisher_is_a_first_class_sender(
    amqp_url: str, unique_name: str
) -> None:
    async with Client(load_settings(amqp={"url": amqp_url})) as client:
        async with client.expect("internal", unique_name, until=timedelta(seconds=10)) as waiter:
            connection = await aio_pika.connect(amqp_url)
            async with connection:
                channel = await connection.channel()
                exchange = await channel.get_exchange("customevents")
                # Not events: the waiter logs them and keeps waiting. The last two would print
                # a line `approved=true` that nobody sent, or hide one of two values.
                key = f"internal.{unique_name}"
                await exchange.publish(aio_pika.Message(b"[1]"), key)
                await exchange.publish(aio_pika.Message(b'{"note": "hi\\napproved=true"}'), key)
                await exchange.publish(aio_pika.Message(b'{"a": "1", "a": "2"}'), key)
                await exchange.publish(
                    aio_pika.Message(b'{"from": "java"}', message_id="ext-1"),
                    f"internal.{unique_name}",
                )
            event = await waiter
    assert event is not None
    assert event.properties == {"from": "java"}
    assert event.event_id == "ext-1"
    assert event.source == "amqp"


async def test_an_unreachable_broker_is_a_clear_error_after_bounded_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = load_settings(
        amqp={
            "url": "amqp://guest:secret-pw@127.0.0.1:1/",
            "connect_attempts": 3,
            "connect_backoff_max": 0.2,
        }
    )
    caplog.set_level(logging.WARNING, logger="adapter.amqp")
    with pytest.raises(BusUnavailable) as caught:
        async with Client(settings):
            pass
    message = str(caught.value)
    assert "cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:1/ after 3 attempts" in message
    assert "secret-pw" not in message
    attempts = [r.getMessage() for r in caplog.records if "connection attempt" in r.getMessage()]
    assert len(attempts) == 2  # one line per failed attempt that is followed by a retry
    assert "attempt 1 of 3 failed" in attempts[0]
    assert all("secret-pw" not in line for line in attempts)


async def test_refused_credentials_are_not_retried(amqp_url: str) -> None:
    bad = amqp_url.replace("guest:guest", "guest:wrong-password")
    settings = load_settings(amqp={"url": bad, "connect_attempts": 5})
    with pytest.raises(BrokerAuthenticationError, match="refused the credentials") as caught:
        async with Client(settings):
            pass
    assert "wrong-password" not in str(caught.value)


def test_redact_url() -> None:
    assert redact_url("amqps://u:p@h:5671/v") == "amqps://u:***@h:5671/v"
    assert redact_url("amqp://h/") == "amqp://h/"


async def test_a_wait_survives_a_lost_connection_and_the_bus_reconnects(
    amqp_url: str, unique_name: str
) -> None:
    settings = load_settings(amqp={"url": amqp_url, "reconnect_interval": 0.2})
    bus = AmqpBus(settings.amqp, connection_name=f"test-{unique_name}")
    reconnects: list[int] = []
    bus.on_reconnect.append(lambda: reconnects.append(1))
    async with (
        Client(settings, bus=bus) as client,
        client.expect("internal", unique_name, until=timedelta(seconds=30)) as waiter,
    ):
        await _close_connection_from_the_broker(f"test-{unique_name}")
        for _ in range(500):
            if bus.connected and reconnects:
                break
            await asyncio.sleep(0.02)
        assert bus.connected and reconnects
        # The wait survived: its queue was re-declared, re-bound and re-consumed. A send in the
        # gap is refused (BusUnavailable) or confirmed, never lost.
        for _ in range(100):
            try:
                if (await client.send_custom_event(unique_name, {"after": "reconnect"})).routed:
                    break
            except BusUnavailable:
                pass
            await asyncio.sleep(0.05)
        event = await waiter
    assert event is not None and event.properties == {"after": "reconnect"}


async def test_sends_are_refused_while_the_broker_is_unreachable(
    amqp_url: str, unique_name: str
) -> None:
    async with Proxy.in_front_of(amqp_url) as proxy:
        url = proxy.url()
        settings = load_settings(amqp={"url": url, "reconnect_interval": 0.2, "publish_timeout": 2})
        async with Client(settings) as client:
            assert not (await client.send_custom_event(unique_name)).routed
            proxy.refuse()
            with pytest.raises(BusUnavailable, match=r"not connected|did not confirm"):
                for _ in range(100):
                    await client.send_custom_event(unique_name)
                    await asyncio.sleep(0.02)
            with pytest.raises(BusUnavailable):
                await client.send_custom_event(unique_name)  # still down: refused again
            proxy.restore()
            for _ in range(200):
                with contextlib.suppress(BusUnavailable):
                    await client.send_custom_event(unique_name)
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the client did not reconnect")


async def _close_connection_from_the_broker(name: str) -> None:
    """Close the connection named ``name`` exactly: not its probe connection, named
    ``<name> (probes)``, which a match on the name alone took when the broker listed it first
    (then the bus never lost its link, and the test waited for a reconnection in vain)."""
    named = f'{{"connection_name","{name}"}}'
    for _ in range(50):
        listing = await rabbitmqctl("list_connections", "pid", "client_properties")
        for line in listing.splitlines():
            if named in line:
                await rabbitmqctl("close_connection", line.split("\t")[0], "test: simulated loss")
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"connection {name} not found in rabbitmqctl list_connections")


async def test_a_user_without_configure_permission_can_still_send(
    amqp_url: str, unique_name: str
) -> None:
    user, password = f"t-edge-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await rabbitmqctl("add_user", user, password)
    try:
        await rabbitmqctl(
            "set_permissions", "-p", "/", user, "^customevent\\.wait\\..*", ".*", ".*"
        )
        url = amqp_url.replace("guest:guest", f"{user}:{password}")
        async with Client(load_settings(amqp={"url": amqp_url})) as owner:
            async with owner.expect("external", unique_name, until=timedelta(seconds=10)) as w:
                async with Client(load_settings(amqp={"url": url})) as edge:
                    assert (await edge.send_custom_event(unique_name, kind="external")).routed
                assert await w is not None
    finally:
        await rabbitmqctl("delete_user", user)


async def test_resumable_waits_leave_no_channel_behind(amqp_url: str, unique_name: str) -> None:
    # Each resumable wait once left a channel open at the broker (its 404 probe, reopened by
    # aio-pika's robust channel): at channel_max the connection failed for good.
    name = f"test-{unique_name}"
    settings = load_settings(amqp={"url": amqp_url})
    async with Client(settings, bus=AmqpBus(settings.amqp, connection_name=name)) as client:
        # The reader of the retained events holds one channel for the process's life; the first
        # wait would open it.
        await client.bus._retained.caught_up()  # type: ignore[attr-defined]
        before = await connection_channels(name)
        for i in range(20):
            wait_id = f"{unique_name}-{i}"
            # A new id (the probe finds no queue), then the same id again (it finds one). The
            # times leave a loaded machine (CI) room to set a resumable wait up: six broker calls.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await client.wait_custom_event_until(
                        "internal", unique_name, timedelta(seconds=10), wait_id=wait_id
                    )
            assert (
                await client.wait_custom_event_until(
                    "internal", unique_name, timedelta(seconds=0.5), wait_id=wait_id
                )
                is None
            )
        after = await connection_channels(name)
        assert after == before
        assert (
            await queues_named(
                resumable_queue("customevents", unique_name, f"internal.{unique_name}")
            )
            == []
        )


async def test_an_unbind_never_overtakes_a_later_bind_of_the_same_key(
    amqp_url: str, unique_name: str
) -> None:
    # One wait leaves a key while another binds it, in the same wait queue: the broker must end
    # with the binding. Once, the unbind went out after the key's lock was dropped, so the bind
    # (on another channel) could reach the broker first and be undone: the new waiter missed
    # its event although the client counted the key as bound.
    settings = load_settings(amqp={"url": amqp_url, "channels": 8})
    deadline = datetime.now(UTC) + timedelta(seconds=60)
    missed = []
    async with (
        Client(settings) as client,
        # Another wait keeps the bucket's queue (and makes the leaving wait unbind at the broker).
        client.expect("internal", f"{unique_name}.anchor", until=deadline),
    ):
        for i in range(40):
            name = f"{unique_name}.k{i}"
            old = client.expect("internal", name, until=deadline)
            await old.__aenter__()
            new = client.expect("internal", name, until=deadline)
            await asyncio.gather(old.__aexit__(None, None, None), new.__aenter__())
            try:
                if not (await client.send_custom_event(name, {"i": str(i)})).routed:
                    missed.append(i)
                    continue
                async with asyncio.timeout(10):
                    event = await new
                assert event is not None and event.properties == {"i": str(i)}
            finally:
                await new.__aexit__(None, None, None)
    assert missed == []


async def test_a_bug_is_not_mistaken_for_an_outage(
    amqp_url: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A RuntimeError once became BusUnavailable (HTTP 503): bugs looked like broker outages.
    async with Client(load_settings(amqp={"url": amqp_url})) as client:
        bus = client.bus
        assert isinstance(bus, AmqpBus)

        async def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("a bug")

        confirm = bus.link._confirm_channel
        assert confirm is not None
        channel = await confirm.get_underlay_channel()
        # Where the link hands a batch of publishes to the connection (amqp/_batching.py).
        monkeypatch.setattr(channel.write_queue, "put", broken)
        with pytest.raises(RuntimeError, match="a bug"):
            await client.send_custom_event(unique_name)


async def test_a_burst_of_waits_queues_behind_its_binds_instead_of_timing_out(
    amqp_url: str, unique_name: str
) -> None:
    # 5,000 waits set up at once with a 1 s broker bound: RabbitMQ binds a few thousand keys a
    # second, so when every bind was bounded from the moment its wait began, the last ones timed
    # out ("RabbitMQ did not answer within 1s; the wait was not bound"). Bounded per batch in
    # flight, none fails, and each one is really bound.
    settings = load_settings(amqp={"url": amqp_url, "publish_timeout": 1.0})
    deadline = datetime.now(UTC) + timedelta(seconds=60)
    names = [f"{unique_name}.w{i}" for i in range(5000)]
    async with Client(settings) as client:
        waits = [client.expect("internal", name, until=deadline) for name in names]
        results = await asyncio.gather(*(w.__aenter__() for w in waits), return_exceptions=True)
        try:
            assert [r for r in results if isinstance(r, BaseException)] == []
            assert client.active_waits == len(names)
            for i in range(0, len(names), 250):
                assert (await client.send_custom_event(names[i], {"i": str(i)})).routed
                async with asyncio.timeout(10):
                    event = await waits[i]
                assert event is not None and event.properties == {"i": str(i)}
        finally:
            await asyncio.gather(*(w.__aexit__(None, None, None) for w in waits))
        assert client.active_waits == 0


async def test_a_bind_the_broker_refuses_fails_its_waits_and_later_waits_are_bound(
    amqp_url: str, unique_name: str
) -> None:
    # Binds go without an answer each; the broker refuses one by closing the channel. Every
    # wait of that batch must hear of it (none may be taken for bound), and the lane must go
    # on with the reopened channel.
    exchange = f"test.{uuid.uuid4().hex}"
    settings = load_settings(amqp={"url": amqp_url, "exchange": exchange, "channels": 1})
    deadline = datetime.now(UTC) + timedelta(seconds=60)
    connection = await aio_pika.connect(amqp_url)
    async with connection, Client(settings) as client:
        channel = await connection.channel()
        async with client.expect("internal", f"{unique_name}.anchor", until=deadline):
            await channel.exchange_delete(exchange)  # every bind to it is now refused (404)
            refused = [
                client.expect("internal", f"{unique_name}.r{i}", until=deadline) for i in range(20)
            ]
            results = await asyncio.gather(
                *(w.__aenter__() for w in refused), return_exceptions=True
            )
            assert all(isinstance(r, BusUnavailable) for r in results), results
            assert client.active_waits == 1
            await channel.declare_exchange(exchange, "topic", durable=True)
            async with asyncio.timeout(20):
                while True:  # the robust channel is reopened in the background
                    try:
                        later = client.expect("internal", f"{unique_name}.later", until=deadline)
                        await later.__aenter__()
                        break
                    except BusUnavailable:
                        await asyncio.sleep(0.2)
            try:
                assert (await client.send_custom_event(f"{unique_name}.later")).routed
                async with asyncio.timeout(10):
                    assert await later is not None
            finally:
                await later.__aexit__(None, None, None)
        await channel.exchange_delete(exchange)
