"""Support for the MQTT bridge tests (no tests here): devices, bridges, a RabbitMQ collector."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapter import Client, MemoryBus, load_settings
from adapter._event import Event
from adapter._mqtt import MqttBridge
from adapter._settings import Settings
from tests.support.metrics import own_metrics


def unique_prefix() -> str:
    return "t" + uuid.uuid4().hex[:12]


def bridge_settings(amqp_url: str | None, mqtt_url: str, prefix: str, **mqtt: Any) -> Settings:
    options: dict[str, Any] = {
        "url": mqtt_url,
        "prefix": prefix,
        "client_id": f"bridge-{prefix}",
        "session_expiry": 120,  # the shared broker forgets test sessions soon
    }
    options.update(mqtt)
    return load_settings(amqp={"url": amqp_url}, mqtt=options)


@contextlib.asynccontextmanager
async def running_bridge(
    settings: Settings, bus: MemoryBus | None = None
) -> AsyncIterator[tuple[Client, MqttBridge]]:
    """A client (on ``bus`` when given) and a bridge, once the bridge has subscribed; the client
    counts on metrics of its own (``client.metrics``)."""
    client = Client(settings, bus=bus, metrics=own_metrics())
    async with client, MqttBridge(settings, client) as bridge:
        async with asyncio.timeout(20):
            await bridge.wait_connected()
        yield client, bridge


# A test's durable queue outlives a crashed run by ten minutes at most, not forever.
LEFTOVER_EXPIRY = {"x-expires": 600_000}


class StuckBus(MemoryBus):
    """An in-process bus that confirms nothing until ``gate`` is set: RabbitMQ 'down'."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.events: list[Event] = []

    async def publish(self, event: Event) -> bool:
        await self.gate.wait()
        self.events.append(event)
        return await super().publish(event)


class Device:
    """A paho device publishing QoS 1 messages; ``wait_acked`` waits for every PUBACK."""

    def __init__(
        self, port: int, *, v5: bool = True, client_id: str | None = None, persistent: bool = False
    ) -> None:
        self.client_id = client_id or f"dev-{uuid.uuid4().hex[:8]}"
        kwargs: dict[str, Any] = {}
        if not v5:
            kwargs["clean_session"] = not persistent
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            **kwargs,
        )
        self.client.max_inflight_messages_set(100)
        self._acked = 0
        self._lock = threading.Lock()
        self.client.on_publish = self._on_publish
        self.received: list[mqtt.MQTTMessage] = []
        self.client.on_message = lambda _c, _u, message: self.received.append(message)
        connect: dict[str, Any] = {}
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 600 if persistent else 0
            connect = {"clean_start": not persistent, "properties": properties}
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port, **connect)
        self.client.loop_start()

    def _on_publish(self, *_: Any) -> None:
        with self._lock:
            self._acked += 1

    def publish(
        self, topic: str, payload: str | bytes, content_type: str | None = None, *, qos: int = 1
    ) -> None:
        properties = None
        if content_type is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ContentType = content_type
        self.client.publish(topic, payload, qos=qos, properties=properties)

    async def wait_acked(self, count: int, within: float = 60) -> None:
        async with asyncio.timeout(within):
            while self._acked < count:
                await asyncio.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Collector:
    """A durable queue bound to some routing keys; counts the ``i`` property of what arrives."""

    def __init__(self, amqp_url: str, exchange: str, keys: list[str]) -> None:
        self.url = amqp_url
        self.exchange = exchange
        self.keys = keys
        self.name = f"customevent.test.{uuid.uuid4().hex[:12]}"

    async def declare(self) -> None:
        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(self.name, durable=True, arguments=LEFTOVER_EXPIRY)
            for key in self.keys:
                await queue.bind(exchange, key)

    async def drain(
        self, expected: int, idle: float = 5.0, within: float = 120
    ) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Every message until ``expected`` unique ``i`` values arrived or ``idle`` seconds
        passed with nothing new; then the queue is deleted."""
        messages: list[aio_pika.abc.AbstractIncomingMessage] = []
        seen: set[str] = set()
        connection = await aio_pika.connect_robust(self.url)
        async with connection, asyncio.timeout(within):
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1000)
            queue = await channel.declare_queue(self.name, durable=True, arguments=LEFTOVER_EXPIRY)
            loop = asyncio.get_running_loop()
            last = loop.time()
            while len(seen) < expected:
                message = await queue.get(fail=False)
                if message is None:
                    if loop.time() - last > idle:
                        break
                    await asyncio.sleep(0.1)
                    continue
                last = loop.time()
                await message.ack()
                messages.append(message)
                seen.add(index_of(message.body))
            await queue.delete(if_unused=False, if_empty=False)
        return messages


def index_of(body: bytes) -> str:
    try:
        value = json.loads(body)
        # Dead letters carry raw payloads, which may be any JSON at all.
        return str(value.get("i")) if isinstance(value, dict) else ""
    except ValueError:
        match = re.search(rb"i=(\d+)", body)
        return match.group(1).decode() if match else ""


def losses(messages: list[aio_pika.abc.AbstractIncomingMessage], count: int) -> tuple[int, int]:
    """(lost, duplicates) among the messages carrying ``i`` = 0 .. count - 1."""
    seen = Counter(index_of(m.body) for m in messages)
    lost = sum(1 for i in range(count) if str(i) not in seen)
    duplicates = sum(n - 1 for n in seen.values())
    return lost, duplicates


@contextlib.asynccontextmanager
async def private_exchange(amqp_url: str, prefix: str) -> AsyncIterator[str]:
    """A topic exchange of the test's own (its '#' bindings see only its events), deleted after."""
    name = f"test.{prefix}"
    try:
        yield name
    finally:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.exchange_delete(name)
