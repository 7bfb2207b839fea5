"""CloudEvents on the bus, against the real RabbitMQ with the CloudEvents SDK on the other side:
every message the project publishes is a binary-mode CloudEvent of the RabbitMQ binding, and a
message published by someone else with only ``ce-*`` headers is a first-class event."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage
from cloudevents.core.bindings import rabbitmq as sdk_rabbitmq
from cloudevents.core.v1.event import CloudEvent

from adapter import Client, load_settings

pytestmark = pytest.mark.rabbitmq


def _sdk_message(message: AbstractIncomingMessage) -> sdk_rabbitmq.RabbitMQMessage:
    """What any AMQP consumer hands the SDK: the headers as text, the content type, the body."""
    headers = {
        key: value.decode() if isinstance(value, bytes) else str(value)
        for key, value in (message.headers or {}).items()
    }
    return sdk_rabbitmq.RabbitMQMessage(headers, message.content_type, message.body)


@pytest.fixture
async def exchange(amqp_url: str) -> AsyncIterator[AbstractExchange]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        yield await channel.declare_exchange("customevents", "topic", durable=True)


async def test_the_sdk_reads_our_message_from_the_exchange_as_a_cloudevent(
    amqp_url: str, unique_name: str, exchange: AbstractExchange
) -> None:
    queue = await exchange.channel.declare_queue(exclusive=True)
    await queue.bind(exchange, f"internal.{unique_name}")
    async with Client(load_settings(amqp={"url": amqp_url})) as client:
        event = client.prepare_event(unique_name, {"vm": "web-01", "é": "ü"}, principal="ops")
        await client.send_event(event)
    message = await queue.get(timeout=5)
    await message.ack()
    cloudevent = sdk_rabbitmq.from_rabbitmq_event(_sdk_message(message))
    assert cloudevent.get_attributes() == {
        "specversion": "1.0",
        "id": event.event_id,
        "type": unique_name,
        "source": "urn:customevent:amqp",
        "time": event.sent_at,
        "datacontenttype": "application/json",
        "eventkind": "internal",
        "principal": "ops",
    }
    assert cloudevent.get_data() == {"vm": "web-01", "é": "ü"}


async def test_a_message_with_only_ce_headers_is_a_first_class_event(
    amqp_url: str, unique_name: str, exchange: AbstractExchange
) -> None:
    sent = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    cloudevent = CloudEvent(
        {
            "type": unique_name,
            "source": "https://knative.example.com/sources/ping",
            "id": "knative-1",
            "time": sent,
            "datacontenttype": "application/json",
            "subject": "nightly",
            "knativearrivaltime": "2026-05-06T07:08:09Z",
        },
        {"ok": "1"},
    )
    message = sdk_rabbitmq.to_binary_event(cloudevent)
    async with Client(load_settings(amqp={"url": amqp_url})) as client:
        async with client.expect("internal", unique_name, until=timedelta(seconds=10)) as waiter:
            # No message_id, no timestamp, no x-event-* header: the CloudEvent says it all.
            await exchange.publish(
                aio_pika.Message(
                    message.body,
                    headers=message.headers,  # type: ignore[arg-type]
                    content_type=message.content_type,
                ),
                f"internal.{unique_name}",
            )
            event = await waiter
    assert event is not None
    assert (event.name, event.kind, event.event_id) == (unique_name, "internal", "knative-1")
    assert event.sent_at == sent
    assert event.properties == {"ok": "1"}
    assert event.source == "amqp"
    assert event.cloudevent_attributes == {
        "source": "https://knative.example.com/sources/ping",
        "subject": "nightly",
        "knativearrivaltime": "2026-05-06T07:08:09Z",
    }


async def test_a_cloudevent_that_disagrees_with_its_routing_key_is_not_an_event(
    amqp_url: str, unique_name: str, exchange: AbstractExchange
) -> None:
    key = f"internal.{unique_name}"
    async with Client(load_settings(amqp={"url": amqp_url})) as client:
        async with client.expect("internal", unique_name, until=timedelta(seconds=10)) as waiter:
            for headers in (
                {"ce-specversion": "1.0", "ce-type": "other.name", "ce-id": "x"},
                {"ce-specversion": "1.0", "ce-type": unique_name, "ce-eventkind": "external"},
                {"ce-specversion": "0.3", "ce-type": unique_name},
                {"ce-specversion": "1.0", "ce-time": "not a time"},
            ):
                await exchange.publish(
                    aio_pika.Message(b"{}", headers=headers),  # type: ignore[arg-type]
                    key,
                )
            await exchange.publish(aio_pika.Message(json.dumps({"n": "5"}).encode()), key)
            event = await waiter
    # Each refused message was logged and skipped; the wait took the first real event.
    assert event is not None
    assert event.properties == {"n": "5"}
