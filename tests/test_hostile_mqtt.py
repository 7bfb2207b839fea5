"""The MQTT edge against hostile input. Classes of abuse and their bounds:

- egress: an event MQTT cannot carry (a Unicode noncharacter in its name, a NUL in its id, a
  topic or user property past 65,535 bytes, a packet past the broker's maximum) reaching the
  egress, from the bus or a third-party publisher: dropped before paho sees it, counted
  (``customevent_mqtt_egress_dropped_total{reason}``), one log line; the link stays up and the
  next event goes out (here);
- names: a name with a noncharacter is refused at every edge by the name rules
  (``tests/test_names.py::test_every_valid_name_is_a_topic_mqtt_can_carry``);
- malformed, huge and deep payloads, poison messages between good ones, floods of QoS 0 and
  QoS 1: ``tests/test_mqtt.py``, ``tests/test_fuzz.py::test_mqtt_topic_and_payload_fuzz``,
  ``tests/test_mqtt_resilience.py::test_qos0_held_is_bounded_and_qos1_is_never_dropped`` (the
  JSON depth bound of 64 levels applies to MQTT payloads through ``loads_json_object``).
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from adapter import Event, MemoryBus
from adapter._mqtt._testing import PrivateMosquitto
from tests.support.metrics import sample
from tests.support.mqtt import Device, bridge_settings, running_bridge, unique_prefix


@pytest.mark.mosquitto
async def test_an_event_mqtt_cannot_carry_never_takes_the_link_down() -> None:
    word = f"w{uuid.uuid4().hex[:10]}"
    with PrivateMosquitto() as broker:
        prefix = unique_prefix()
        settings = bridge_settings(None, broker.url, prefix, egress=[f"{word}.#"])
        device = Device(broker.port)
        try:
            device.client.subscribe(f"{prefix}/out/#", qos=1)
            bus = MemoryBus()
            async with running_bridge(settings, bus=bus) as (client, bridge):
                await asyncio.sleep(0.5)  # the egress binding is made in the background
                # As a third-party publisher could put them on the bus (Event itself checks
                # nothing): a NUL in the id, a noncharacter in the name.
                await bus.publish(Event(f"{word}.bad", "internal", {}, event_id="a\x00b"))
                await bus.publish(Event(f"{word}.bad\uffff", "internal", {}))
                await client.send_custom_event(f"{word}.good", {"n": "1"})
                async with asyncio.timeout(10):
                    while not device.received:
                        await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)
                assert bridge.connections == 1  # never dropped by the broker
                assert bridge.connected
                dropped = "customevent_mqtt_egress_dropped_total"
                assert sample(client.metrics, dropped, reason="property") == 1
                assert sample(client.metrics, dropped, reason="topic") == 1
        finally:
            device.close()
    assert [m.topic for m in device.received] == [f"{prefix}/out/{word}/good"]
    assert json.loads(device.received[0].payload) == {"n": "1"}
