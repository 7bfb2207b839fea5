"""The MQTT -> RabbitMQ forwarders that bench_mqtt.py compares, each run in its own process by
``bench_mqtt.py --forward KIND ...``: it prints ``ready`` once subscribed, forwards until its stdin
closes, then prints ``{"cpu": <seconds of CPU time since ready>}``.

- ``bridge``: ``MqttBridge`` (acks after the confirm, validation, events, metrics, backpressure);
- ``peer``: what a Python team would write with aiomqtt and aio-pika: about 30 lines, acks on
  receipt (aiomqtt has no manual acks), one confirmed publish after the other, no validation;
- ``thread``: the least a paho-thread bridge must do: paho's network thread with manual acks, each
  payload published with a confirm, acks in arrival order; no checks, no event, no backpressure.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import json
import os
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

__all__ = ["FORWARDERS", "serve_forwarder"]

PREFIX = "customevents"
SESSION_EXPIRY = 60


@contextlib.asynccontextmanager
async def bridge(
    mqtt_url: str, amqp_url: str, client_id: str, group: str | None
) -> AsyncIterator[None]:
    from adapter import Client, load_settings
    from adapter._mqtt import MqttBridge

    settings = load_settings(
        amqp={"url": amqp_url},
        mqtt={
            "url": mqtt_url,
            "client_id": client_id,
            "session_expiry": SESSION_EXPIRY,
            "shared_group": group,
        },
    )
    async with Client(settings) as client, MqttBridge(settings, client) as bridge:
        async with asyncio.timeout(20):
            await bridge.wait_connected()
        yield


@contextlib.asynccontextmanager
async def peer(
    mqtt_url: str, amqp_url: str, client_id: str, group: str | None
) -> AsyncIterator[None]:
    import aio_pika
    import aiomqtt

    async def forward(subscribed: asyncio.Event) -> None:
        connection = await aio_pika.connect_robust(amqp_url)
        async with connection:
            channel = await connection.channel()  # publisher confirms are on by default
            exchange = await channel.declare_exchange(
                PREFIX, aio_pika.ExchangeType.TOPIC, durable=True
            )
            url = urlsplit(mqtt_url)
            async with aiomqtt.Client(url.hostname or "localhost", url.port or 1883) as mqtt:
                await mqtt.subscribe(f"{PREFIX}/external/#", qos=1)
                subscribed.set()
                async for message in mqtt.messages:
                    name = str(message.topic).split("/", 2)[2].replace("/", ".")
                    await exchange.publish(
                        aio_pika.Message(
                            bytes(message.payload),  # type: ignore[arg-type]
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=f"external.{name}",
                    )

    subscribed = asyncio.Event()
    task = asyncio.create_task(forward(subscribed))
    async with asyncio.timeout(20):
        await subscribed.wait()
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def thread(
    mqtt_url: str, amqp_url: str, client_id: str, group: str | None
) -> AsyncIterator[None]:
    import aio_pika
    import aiormq
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    loop = asyncio.get_running_loop()
    inbox: deque[mqtt.MQTTMessage] = deque()
    unacked: deque[list[Any]] = deque()  # [mid, confirmed]
    subscribed = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_exchange(PREFIX, "topic", durable=True)
        amqp = await channel.get_underlay_channel()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )

        async def forward(message: mqtt.MQTTMessage, entry: list[Any]) -> None:
            await amqp.basic_publish(
                bytes(message.payload),
                exchange=PREFIX,
                routing_key="external." + message.topic.split("/", 2)[2].replace("/", "."),
                properties=aiormq.spec.Basic.Properties(delivery_mode=2),
                mandatory=True,
                wait=False,  # type: ignore[call-arg]
            )
            entry[1] = True
            while unacked and unacked[0][1]:
                client.ack(unacked.popleft()[0], 1)

        def drain() -> None:
            while inbox:
                message = inbox.popleft()
                entry = [message.mid, False]
                unacked.append(entry)
                task = loop.create_task(forward(message, entry))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            inbox.append(message)
            if len(inbox) == 1:
                loop.call_soon_threadsafe(drain)

        def on_subscribe(*_: Any) -> None:
            loop.call_soon_threadsafe(subscribed.set)

        client.on_message = on_message
        client.on_connect = lambda client, *_: client.subscribe(f"{PREFIX}/external/#", qos=1)
        client.on_subscribe = on_subscribe
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY
        properties.ReceiveMaximum = 256
        url = urlsplit(mqtt_url)
        client.connect(
            url.hostname or "localhost", url.port or 1883, clean_start=False, properties=properties
        )
        client.loop_start()
        try:
            async with asyncio.timeout(20):
                await subscribed.wait()
            yield
        finally:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)


FORWARDERS: dict[
    str, Callable[[str, str, str, str | None], contextlib.AbstractAsyncContextManager[None]]
] = {
    "bridge": bridge,
    "peer": peer,
    "thread": thread,
}


async def serve_forwarder(
    kind: str, mqtt_url: str, amqp_url: str, client_id: str, group: str
) -> None:
    """Run one forwarder until stdin closes (``group`` "-": no shared subscription)."""
    async with FORWARDERS[kind](mqtt_url, amqp_url, client_id, None if group == "-" else group):
        print("ready", flush=True)
        profile_to = os.environ.get("CUSTOMEVENT_BENCH_PROFILE")
        profiler = cProfile.Profile() if profile_to else None
        cpu = time.process_time()
        if profiler is not None:
            profiler.enable()
        await asyncio.to_thread(sys.stdin.read)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{profile_to}.{kind}.{os.getpid()}")
        cpu = time.process_time() - cpu
    print(json.dumps({"cpu": cpu}), flush=True)
