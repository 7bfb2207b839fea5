"""The MQTT bridge's bounds and self-repair: QoS 0 held within mqtt.max_inflight_qos0 while the bus
is down (QoS 1 never dropped), poison messages dead-lettered through the Bus interface on the
in-process bus too, a failed egress task logged, counted and restarted, and a connection the
driver had to drop coming back by itself."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime
from typing import Any

import pytest

from adapter import MemoryBus
from adapter._bus import Subscription
from adapter._bus._http import HttpBus
from adapter._event import Event
from adapter._exceptions import BusError
from adapter._mqtt._testing import PrivateMosquitto
from adapter._names import Kind
from tests.support.metrics import sample
from tests.support.mqtt import (
    Device,
    StuckBus,
    bridge_settings,
    running_bridge,
    unique_prefix,
)

# -- QoS 0 is bounded (issue 10, item 7) --------------------------------------------------------


@pytest.mark.mosquitto
async def test_qos0_held_is_bounded_and_qos1_is_never_dropped() -> None:
    """With the bus down, 500 QoS 0 messages leave at most mqtt.max_inflight_qos0 held and the
    rest dropped and counted; the QoS 1 messages behind them all arrive once the bus is back."""
    with PrivateMosquitto() as broker:
        prefix = unique_prefix()
        settings = bridge_settings(None, broker.url, prefix, max_inflight=8, max_inflight_qos0=50)
        bus = StuckBus()
        async with running_bridge(settings, bus) as (client, bridge):
            device = Device(broker.port)
            try:
                for i in range(500):
                    device.publish(f"{prefix}/external/zero/x", f"i={i}", qos=0)
                for i in range(500, 520):
                    device.publish(f"{prefix}/external/one/x", f"i={i}", qos=1)
                await device.wait_acked(520)

                def dropped() -> float:
                    return sample(client.metrics, "customevent_mqtt_qos0_dropped_total")

                async with asyncio.timeout(20):
                    while dropped() + bridge.held_qos0 < 500:
                        await asyncio.sleep(0.05)
                assert bridge.held_qos0 == 50
                assert dropped() == 450
                assert bridge.in_flight == 8  # QoS 1: held unacknowledged, the rest at the broker
                bus.gate.set()
                async with asyncio.timeout(30):
                    while sum(e.name == "one.x" for e in bus.events) < 20:
                        await asyncio.sleep(0.02)
                    while bridge.held_qos0:
                        await asyncio.sleep(0.02)
            finally:
                device.close()
    zero = [e for e in bus.events if e.name == "zero.x"]
    one = sorted(int(e.properties["i"]) for e in bus.events if e.name == "one.x")
    assert len(zero) == 50
    assert one == list(range(500, 520))


# -- dead letters through the Bus interface (issue 14, item 4) -----------------------------------


@pytest.mark.mosquitto
async def test_poison_messages_are_kept_on_the_in_process_bus(mqtt_url: str) -> None:
    prefix = unique_prefix()
    settings = bridge_settings(None, mqtt_url, prefix)
    bus = StuckBus()
    bus.gate.set()
    async with running_bridge(settings, bus) as (client, bridge):
        device = Device(int(mqtt_url.rsplit(":", 1)[1]))
        try:
            device.publish(f"{prefix}/external/good", "i=0")
            device.publish(f"{prefix}/external/bad", b"\xff not text", "text/plain")
            device.publish(f"{prefix}/external/bad.level", "i=x")
            device.publish(f"{prefix}/external/good", "i=1")
            await device.wait_acked(4)
            async with asyncio.timeout(10):
                while len(bus.events) < 2 or len(bus.refused) < 2:
                    await asyncio.sleep(0.02)
                while bridge.in_flight:
                    await asyncio.sleep(0.02)
        finally:
            device.close()
    assert [e.properties["i"] for e in bus.events] == ["0", "1"]
    letters = {letter.headers["x-mqtt-topic"]: letter for letter in bus.refused}
    bad = letters[f"{prefix}/external/bad"]
    assert (bad.source, bad.body) == ("mqtt", b"\xff not text")
    assert bad.headers["x-deadletter-reason"] == "payload"
    assert bad.headers["x-mqtt-content-type"] == "text/plain"
    assert bad.headers["x-event-source"] == "mqtt"
    assert "UTF-8" in bad.headers["x-deadletter-detail"]
    level = letters[f"{prefix}/external/bad.level"]
    assert level.headers["x-deadletter-reason"] == "topic"
    assert sample(client.metrics, "customevent_mqtt_poison_total", reason="payload") == 1


async def test_the_in_process_bus_keeps_the_latest_refused_messages() -> None:
    async with MemoryBus(max_refused=3) as bus:
        for i in range(5):
            await bus.keep_refused("mqtt", b"%d" % i, {"x-deadletter-reason": "payload"})
        assert [letter.body for letter in bus.refused] == [b"2", b"3", b"4"]
        assert all(letter.source == "mqtt" for letter in bus.refused)


async def test_the_http_bus_says_it_keeps_no_refused_messages() -> None:
    async with HttpBus("http://127.0.0.1:9") as bus:
        with pytest.raises(BusError, match="keeps no refused messages"):
            await bus.keep_refused("mqtt", b"x", {})


# -- egress supervised (issue 14, item 5; issue 10, item 10) --------------------------------------


class _FaultyEgressBus(MemoryBus):
    """An in-process bus with a bug: the first subscription fails when it is made ("subscribe"),
    or after handing out its first event ("get")."""

    def __init__(self, fault: str) -> None:
        super().__init__()
        self.fault: str | None = fault

    def subscribe(
        self, kind: Kind, pattern: str, deadline: datetime, *, wait_id: str | None = None
    ) -> Subscription:
        fault, self.fault = self.fault, None
        if fault == "subscribe":
            raise RuntimeError("a bug in subscribe")
        sub = super().subscribe(kind, pattern, deadline, wait_id=wait_id)
        if fault == "get":
            handed_out = sub.get

            async def get() -> Event | None:
                event = await handed_out()
                if event is not None:
                    sub.get = handed_out  # type: ignore[method-assign]
                    raise RuntimeError("a bug after the first event")
                return event

            sub.get = get  # type: ignore[method-assign]
        return sub


@pytest.mark.mosquitto
@pytest.mark.parametrize("fault", ["subscribe", "get"])
async def test_a_failed_egress_is_logged_counted_and_restarted(
    mqtt_url: str, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = unique_prefix()
    word = f"w{uuid.uuid4().hex[:10]}"
    pattern = f"{word}.#"
    settings = bridge_settings(None, mqtt_url, prefix, egress=[pattern])
    restarts = "customevent_mqtt_egress_restarts_total"
    device = Device(int(mqtt_url.rsplit(":", 1)[1]))
    try:
        device.client.subscribe(f"{prefix}/out/#", qos=1)
        bus = _FaultyEgressBus(fault)
        async with running_bridge(settings, bus) as (client, bridge), asyncio.timeout(20):
            if fault == "get":
                while pattern not in bridge.egress_running:
                    await asyncio.sleep(0.02)
                await client.send_custom_event(f"{word}.first", {"n": "1"})
            while not sample(client.metrics, restarts, pattern=pattern):
                await asyncio.sleep(0.02)
            assert sample(client.metrics, "customevent_mqtt_egress_running", pattern=pattern) == 0
            while pattern not in bridge.egress_running:
                await asyncio.sleep(0.05)
            assert sample(client.metrics, "customevent_mqtt_egress_running", pattern=pattern) == 1
            await client.send_custom_event(f"{word}.after", {"n": "2"})
            async with asyncio.timeout(10):
                while not any(m.topic.endswith("/after") for m in device.received):
                    await asyncio.sleep(0.05)
    finally:
        device.close()
    assert sample(client.metrics, restarts, pattern=pattern) == 1
    failures = [r for r in caplog.records if "MQTT egress" in r.getMessage()]
    assert failures and failures[0].levelno == logging.ERROR
    assert failures[0].exc_info is not None  # the traceback is logged, not discarded


# -- the connection repairs itself ---------------------------------------------------------------


@pytest.mark.mosquitto
async def test_a_dropped_connection_comes_back_and_redelivers(mqtt_url: str) -> None:
    """A connection the driver drops (here: its socket closed under it) is reconnected with the
    persistent session, and the message that was in hand comes again and is published."""
    prefix = unique_prefix()
    settings = bridge_settings(None, mqtt_url, prefix)
    bus = StuckBus()
    async with running_bridge(settings, bus) as (client, bridge):
        device = Device(int(mqtt_url.rsplit(":", 1)[1]))
        try:
            device.publish(f"{prefix}/external/again", "i=7")
            await device.wait_acked(1)
            async with asyncio.timeout(10):
                while not bridge.in_flight:
                    await asyncio.sleep(0.02)
            link: Any = bridge._link
            link.driver.drop()
            assert not bridge.connected
            bus.gate.set()
            async with asyncio.timeout(30):
                await bridge.wait_connected()
                while len(bus.events) < 2 or bridge.in_flight:
                    await asyncio.sleep(0.02)
        finally:
            device.close()
    # Published twice (at least once): the copy in hand when the link dropped, and the copy the
    # broker sent again on the resumed session, which the bridge then acknowledged.
    assert [e.properties["i"] for e in bus.events] == ["7", "7"]
    assert sample(client.metrics, "customevent_mqtt_redelivered_total") == 1
