"""Any AMQP client is a sender: publish the message the contract describes with aio-pika alone,
and a waiter receives it as an event. Needs RabbitMQ (CUSTOMEVENT_AMQP__URL)."""

import asyncio
import json
import os
import uuid
from datetime import UTC, datetime, timedelta

import aio_pika

import adapter


async def main(name: str = "vm.created") -> adapter.Event | None:
    url = os.environ.get("CUSTOMEVENT_AMQP__URL", "amqp://guest:guest@127.0.0.1:5672/")
    async with (
        adapter.Client(url) as client,
        client.expect("internal", name, until=timedelta(seconds=30)) as waiter,
    ):
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange("customevents")
            message = aio_pika.Message(
                json.dumps({"vm": "web-01"}).encode(),
                content_type="application/json",
                message_id=str(uuid.uuid4()),
                timestamp=datetime.now(UTC),
                app_id="my-backend",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers={
                    "x-event-name": name,
                    "x-event-kind": "internal",
                    "x-event-source": "amqp",
                },
            )
            # Only the routing key and the body are required; the rest is what the bridge sets.
            await exchange.publish(message, routing_key=f"internal.{name}")
        event = await waiter
    if event is not None:
        print(event.name, event.properties, event.event_id == message.message_id)
    return event


if __name__ == "__main__":
    asyncio.run(main())
