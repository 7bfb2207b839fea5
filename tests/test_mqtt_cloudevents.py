"""MQTT v5 devices and the late-binding and CloudEvents work: a structured CloudEvent as a
payload (its type must be the topic's name), and a retained event asked for with a user property
and the message expiry interval. Real Mosquitto; the in-process bus and the real RabbitMQ."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapter import MemoryBus
from adapter._mqtt import DEADLETTER_ROUTING_KEY
from adapter._mqtt._mapping import RETAIN_PROPERTY
from tests.support.mqtt import (
    Collector,
    Device,
    bridge_settings,
    running_bridge,
    unique_prefix,
)

pytestmark = pytest.mark.mosquitto

STRUCTURED = "application/cloudevents+json"


def _port(url: str) -> int:
    return urlsplit(url).port or 1883


def _publish(
    device: Device,
    topic: str,
    payload: bytes | str,
    *,
    content_type: str | None = None,
    user: list[tuple[str, str]] | None = None,
    expiry: int | None = None,
) -> None:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if content_type is not None:
        properties.ContentType = content_type
    if user:
        properties.UserProperty = user
    if expiry is not None:
        properties.MessageExpiryInterval = expiry
    device.client.publish(topic, payload, qos=1, properties=properties)


def _cloudevent(type_: str, **extra: Any) -> bytes:
    attributes = {"type": type_, "source": "/devices/pump-7", "id": "ce-1", **extra}
    return JSONFormat().write(CloudEvent(attributes=attributes, data={"level": "high"}))


async def test_a_structured_cloudevent_from_a_device_is_an_event(mqtt_url: str) -> None:
    prefix = unique_prefix()
    settings = bridge_settings(None, mqtt_url, prefix)
    bus = MemoryBus()
    async with running_bridge(settings, bus) as (client, _):
        async with client.expect("external", "pump.alarm", until=timedelta(seconds=20)) as wait:
            device = Device(_port(mqtt_url))
            try:
                _publish(
                    device,
                    f"{prefix}/external/pump/alarm",
                    _cloudevent("pump.alarm", subject="pump-7"),
                    content_type=STRUCTURED,
                )
                await device.wait_acked(1)
            finally:
                device.close()
            event = await wait
    assert event is not None
    assert (event.name, event.kind, event.source) == ("pump.alarm", "external", "mqtt")
    assert event.event_id == "ce-1"
    assert event.properties == {"level": "high"}
    assert event.cloudevent_attributes["subject"] == "pump-7"


@pytest.mark.parametrize(
    ("payload", "user", "expiry", "words"),
    [
        (_cloudevent("other.name"), None, None, "is not the topic's name"),
        (b'{"specversion": "1.0"', None, None, "not JSON"),
        (_cloudevent("pump.alarm", eventkind="internal"), None, None, "eventkind"),
        (b"a=1", [(RETAIN_PROPERTY, "true")], None, "needs a message expiry interval"),
        (b"a=1", [(RETAIN_PROPERTY, "yes")], 30, "must be given once, as true"),
        (b"a=1", [(RETAIN_PROPERTY, "true")], 10 * 3600, "longer than amqp.max_retain"),
    ],
)
async def test_bad_cloudevents_and_retain_requests_are_dead_letters(
    mqtt_url: str,
    payload: bytes,
    user: list[tuple[str, str]] | None,
    expiry: int | None,
    words: str,
) -> None:
    prefix = unique_prefix()
    settings = bridge_settings(None, mqtt_url, prefix)
    bus = MemoryBus()
    content_type = STRUCTURED if payload.startswith(b"{") else None
    async with running_bridge(settings, bus):
        device = Device(_port(mqtt_url))
        try:
            _publish(
                device,
                f"{prefix}/external/pump/alarm",
                payload,
                content_type=content_type,
                user=user,
                expiry=expiry,
            )
            await device.wait_acked(1)
        finally:
            device.close()
        async with asyncio.timeout(10):
            while not bus.refused:
                await asyncio.sleep(0.05)
    (refused,) = bus.refused
    assert words in refused.headers["x-deadletter-detail"]
    assert refused.body == payload


async def test_a_device_retains_an_event_for_its_expiry_interval(mqtt_url: str) -> None:
    prefix = unique_prefix()
    settings = bridge_settings(None, mqtt_url, prefix)
    bus = MemoryBus()
    async with running_bridge(settings, bus) as (client, _):
        device = Device(_port(mqtt_url))
        try:
            _publish(
                device,
                f"{prefix}/external/job/done",
                "ok=1",
                user=[(RETAIN_PROPERTY, "true")],
                expiry=60,
            )
            await device.wait_acked(1)
        finally:
            device.close()
        # A wait that starts after the send still gets it: it was retained.
        async with asyncio.timeout(10):
            while bus.retained.latest("external.job.done") is None:
                await asyncio.sleep(0.05)
        late = await client.wait_custom_event_until("external", "job.done", timedelta(seconds=2))
    assert late is not None and late.properties == {"ok": "1"}


@pytest.mark.rabbitmq
async def test_a_cloudevent_from_a_device_reaches_rabbitmq_with_its_ce_headers(
    amqp_url: str, mqtt_url: str
) -> None:
    prefix = unique_prefix()
    word = f"w{prefix}"
    settings = bridge_settings(amqp_url, mqtt_url, prefix)
    collector = Collector(amqp_url, "customevents", [f"external.{word}.#"])
    dead = Collector(amqp_url, "customevents", [DEADLETTER_ROUTING_KEY])
    await collector.declare()
    await dead.declare()
    async with running_bridge(settings):
        device = Device(_port(mqtt_url))
        try:
            _publish(
                device,
                f"{prefix}/external/{word}/alarm",
                _cloudevent(f"{word}.alarm"),
                content_type=STRUCTURED,
            )
            await device.wait_acked(1)
        finally:
            device.close()
        (message,) = await collector.drain(1)
    assert json.loads(message.body) == {"level": "high"}
    assert message.headers["ce-type"] == f"{word}.alarm"
    assert message.headers["ce-id"] == "ce-1"
    assert message.headers["ce-eventkind"] == "external"
