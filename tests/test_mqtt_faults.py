"""The MQTT bridge under load and faults: shared subscriptions, a Mosquitto restart and a RabbitMQ
stop mid-burst. Nothing may be lost; duplicates are allowed, counted and reported."""

from __future__ import annotations

import asyncio
import subprocess
import uuid

import pytest

from adapter._mqtt._testing import PrivateMosquitto
from tests.support.mqtt import Collector, Device, bridge_settings, losses, running_bridge
from tests.support.reliability import record


@pytest.mark.mosquitto
@pytest.mark.rabbitmq
async def test_two_bridges_share_the_subscription(amqp_url: str) -> None:
    count = 5000
    word = f"w{uuid.uuid4().hex[:10]}"
    collector = Collector(amqp_url, "customevents", [f"external.{word}.#"])
    await collector.declare()
    with PrivateMosquitto() as broker:
        prefix = "shared"
        first = bridge_settings(
            amqp_url, broker.url, prefix, client_id="bridge-a", shared_group="bridges"
        )
        second = bridge_settings(
            amqp_url, broker.url, prefix, client_id="bridge-b", shared_group="bridges"
        )
        async with running_bridge(first), running_bridge(second):
            device = Device(broker.port)
            try:
                for i in range(count):
                    device.publish(f"{prefix}/external/{word}/n", f"i={i}")
                await device.wait_acked(count)
            finally:
                device.close()
            messages = await collector.drain(count)
    lost, duplicates = losses(messages, count)
    print(f"shared subscription: {count} sent, {lost} lost, {duplicates} duplicates")
    assert (lost, duplicates) == (0, 0)
    record(
        "test_two_bridges_share_the_subscription",
        load=f"{count} QoS 1 messages from one device, two bridges in one shared group",
        fault="none: each message must be handled by exactly one replica",
        outcome="each message delivered once",
        sent=count,
        accepted=count,
        lost=lost,
        duplicated=duplicates,
    )


@pytest.mark.mosquitto
@pytest.mark.rabbitmq
@pytest.mark.slow
async def test_mosquitto_restart_mid_burst_loses_nothing(amqp_url: str) -> None:
    count = 3000
    word = f"w{uuid.uuid4().hex[:10]}"
    collector = Collector(amqp_url, "customevents", [f"external.{word}.#"])
    await collector.declare()
    with PrivateMosquitto() as broker:
        settings = bridge_settings(amqp_url, broker.url, "restart")
        async with running_bridge(settings) as (_, bridge):
            device = Device(broker.port, persistent=True)
            try:
                for i in range(count):
                    device.publish(f"restart/external/{word}/n", f"i={i}")
                    if i == count // 2:
                        await asyncio.to_thread(broker.restart)
                await device.wait_acked(count, within=120)
            finally:
                device.close()
            messages = await collector.drain(count, idle=10)
            assert bridge.connected
    lost, duplicates = losses(messages, count)
    print(f"Mosquitto restart: {count} sent, {lost} lost, {duplicates} duplicates")
    assert lost == 0
    record(
        "test_mosquitto_restart_mid_burst_loses_nothing",
        load=f"{count} QoS 1 messages from one device through the bridge to RabbitMQ",
        fault="the (private) Mosquitto restarted mid-burst",
        outcome="0 lost; duplicates from redelivery counted",
        sent=count,
        accepted=count,
        lost=lost,
        duplicated=duplicates,
    )


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.mark.mosquitto
@pytest.mark.rabbitmq
@pytest.mark.slow
async def test_rabbitmq_stopped_mid_burst_loses_nothing(amqp_url: str) -> None:
    count = 2000
    word = f"w{uuid.uuid4().hex[:10]}"
    collector = Collector(amqp_url, "customevents", [f"external.{word}.#"])
    await collector.declare()
    with PrivateMosquitto() as broker:
        settings = bridge_settings(amqp_url, broker.url, "rabbit", max_inflight=64)
        async with running_bridge(settings) as (_, bridge):
            device = Device(broker.port)
            try:
                for i in range(count // 2):
                    device.publish(f"rabbit/external/{word}/n", f"i={i}")
                await asyncio.to_thread(_rabbitmqctl, "stop_app")
                try:
                    for i in range(count // 2, count):
                        device.publish(f"rabbit/external/{word}/n", f"i={i}")
                    await asyncio.sleep(2)
                    held = bridge.in_flight
                finally:
                    await asyncio.to_thread(_rabbitmqctl, "start_app")
                await device.wait_acked(count)
            finally:
                device.close()
            messages = await collector.drain(count, idle=15)
    lost, duplicates = losses(messages, count)
    print(f"RabbitMQ stop: {count} sent, {lost} lost, {duplicates} duplicates, {held} held")
    record(
        "test_rabbitmq_stopped_mid_burst_loses_nothing",
        load=f"{count} QoS 1 messages from one device through the bridge to RabbitMQ",
        fault="rabbitmqctl stop_app mid-burst, then start_app",
        outcome=f"0 lost; at most {held} held unacknowledged during the outage (max_inflight)",
        sent=count,
        accepted=count,
        lost=lost,
        duplicated=duplicates,
        refused=held,
    )
    assert held <= 64
    assert lost == 0
