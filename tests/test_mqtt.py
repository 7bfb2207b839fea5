"""The MQTT bridge: mapping, ingress to RabbitMQ, poison messages, persistence, backpressure,
egress. Broker tests use the shared Mosquitto at 1883 with a unique topic prefix each, or a private
Mosquitto where they need one."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from adapter import Client, InvalidEventName, InvalidProperties, load_settings
from adapter._exceptions import ClientStateError, ConfigurationError, PropertiesTooLarge
from adapter._mqtt import (
    DEADLETTER_ROUTING_KEY,
    MqttBridge,
    egress_topic,
    event_from_mqtt,
    principal_from_name,
)
from adapter._mqtt._testing import PrivateMosquitto
from tests.support.metrics import sample
from tests.support.mqtt import (
    Collector,
    Device,
    StuckBus,
    bridge_settings,
    index_of,
    losses,
    running_bridge,
    unique_prefix,
)

from .support.processes import Daemon, clean_env, customevent


def _port(url: str) -> int:
    return urlsplit(url).port or 1883


# -- mapping (no broker) ----------------------------------------------------------------------


@pytest.fixture
def memory_client() -> Client:
    return Client(load_settings(amqp={"url": None}, limits={"max_bytes": 100}))


def test_serialized_properties_payload(memory_client: Client) -> None:
    event = event_from_mqtt(memory_client, "ce", "ce/external/door/open", b"who=me\nwhy=a=b")
    assert (event.kind, event.name, event.source) == ("external", "door.open", "mqtt")
    assert event.properties == {"who": "me", "why": "a=b"}
    assert event.principal is None


def test_json_payload_detected_and_by_content_type(memory_client: Client) -> None:
    detected = event_from_mqtt(memory_client, "ce", "ce/external/a", b' {"k": "v"}')
    assert detected.properties == {"k": "v"}
    typed = event_from_mqtt(memory_client, "ce", "ce/external/a", b'{"k":"v"}', "application/json")
    assert typed.properties == {"k": "v"}
    # text/plain forces serializedProperties even for a name that starts with '{'.
    text = event_from_mqtt(memory_client, "ce", "ce/external/a", b"{k}=v", "text/plain")
    assert text.properties == {"{k}": "v"}


def test_empty_payload_means_no_properties(memory_client: Client) -> None:
    assert event_from_mqtt(memory_client, "ce", "ce/external/a", b"").properties == {}


def test_device_topic_names_the_principal(memory_client: Client) -> None:
    event = event_from_mqtt(memory_client, "ce", "ce/external/device/pump-7/alarm", b"")
    assert event.name == "device.pump-7.alarm"
    assert event.principal == "pump-7"
    assert principal_from_name("devices.x") is None
    assert egress_topic("ce", "vm.ready") == "ce/out/vm/ready"


@pytest.mark.parametrize(
    ("topic", "payload", "content_type", "error"),
    [
        ("ce/external/a.b", b"", None, InvalidEventName),
        ("ce/internal/a", b"", None, InvalidEventName),
        ("ce/external", b"", None, InvalidEventName),
        ("ce/external/a", b"\xff\xfe", None, InvalidProperties),
        ("ce/external/a", b"no equals sign", None, InvalidProperties),
        ("ce/external/a", b'{"k": 1}', None, InvalidProperties),
        ("ce/external/a", b'{"k": "1", "k": "2"}', None, InvalidProperties),
        ("ce/external/a", b"[1]", "application/json", InvalidProperties),
        ("ce/external/a", b"k=v", "image/png", InvalidProperties),
        ("ce/external/a", b"k=" + b"x" * 200, None, PropertiesTooLarge),
        ("ce/external/a", b'{"k": "' + b"x" * 200 + b'"}', None, PropertiesTooLarge),
    ],
)
def test_bad_messages_say_why(
    memory_client: Client, topic: str, payload: bytes, content_type: str | None, error: type
) -> None:
    with pytest.raises(error):
        event_from_mqtt(memory_client, "ce", topic, payload, content_type)


def test_bridge_needs_a_url() -> None:
    settings = load_settings(amqp={"url": None})
    with pytest.raises(ConfigurationError, match=r"mqtt\.url"):
        MqttBridge(settings, Client(settings))


# -- the shared Mosquitto and RabbitMQ ---------------------------------------------------------


@pytest.mark.mosquitto
@pytest.mark.rabbitmq
async def test_paho_and_mosquitto_pub_devices_reach_rabbitmq(amqp_url: str, mqtt_url: str) -> None:
    prefix = unique_prefix()
    settings = bridge_settings(amqp_url, mqtt_url, prefix)
    word = f"w{uuid.uuid4().hex[:10]}"
    collector = Collector(
        amqp_url, "customevents", [f"external.{word}.#", f"external.device.*.{word}"]
    )
    await collector.declare()
    async with running_bridge(settings):
        device = Device(_port(mqtt_url))
        try:
            device.publish(f"{prefix}/external/{word}/json", '{"i": "0"}', "application/json")
            device.publish(f"{prefix}/external/device/{device.client_id}/{word}", "i=1")
            await device.wait_acked(2)
        finally:
            device.close()
        for i, version in ((2, "mqttv311"), (3, "mqttv5")):
            command = ["mosquitto_pub", "-p", str(_port(mqtt_url)), "-V", version, "-q", "1"]
            command += ["-t", f"{prefix}/external/{word}/cli", "-m", f"i={i}\nsource=cli"]
            await asyncio.to_thread(subprocess.run, command, check=True, timeout=10)
        messages = await collector.drain(4)
    by_index = {index_of(m.body): m for m in messages}
    assert sorted(by_index) == ["0", "1", "2", "3"]
    headers = by_index["1"].headers
    assert headers["x-event-source"] == "mqtt"
    assert headers["x-event-kind"] == "external"
    assert headers["x-event-principal"] == device.client_id
    assert by_index["1"].routing_key == f"external.device.{device.client_id}.{word}"
    assert json.loads(by_index["2"].body) == {"i": "2", "source": "cli"}
    assert "x-event-principal" not in by_index["0"].headers


@pytest.mark.mosquitto
@pytest.mark.rabbitmq
async def test_malformed_message_between_two_good_ones(amqp_url: str, mqtt_url: str) -> None:
    prefix = unique_prefix()
    settings = bridge_settings(amqp_url, mqtt_url, prefix)
    collector = Collector(amqp_url, "customevents", ["external.good.#"])
    dead = Collector(amqp_url, "customevents", [DEADLETTER_ROUTING_KEY])
    await collector.declare()
    await dead.declare()
    async with running_bridge(settings) as (client, bridge):
        device = Device(_port(mqtt_url))
        try:
            device.publish(f"{prefix}/external/good/one", "i=0")
            device.publish(f"{prefix}/external/bad", b"\xff not text")
            device.publish(f"{prefix}/external/bad.level", "i=x")
            device.publish(f"{prefix}/external/good/two", "i=1")
            await device.wait_acked(4)
        finally:
            device.close()
        good = await collector.drain(2)
        assert bridge.in_flight == 0
    assert sorted(index_of(m.body) for m in good) == ["0", "1"]
    letters = [
        m
        for m in await dead.drain(10_000, idle=2)
        if str(m.headers.get("x-mqtt-topic", "")).startswith(prefix)
    ]
    reasons = {str(m.headers["x-mqtt-topic"]): m for m in letters}
    assert reasons[f"{prefix}/external/bad"].body == b"\xff not text"
    assert reasons[f"{prefix}/external/bad"].headers["x-deadletter-reason"] == "payload"
    assert reasons[f"{prefix}/external/bad.level"].headers["x-deadletter-reason"] == "topic"
    assert sample(client.metrics, "customevent_mqtt_poison_total", reason="payload") == 1
    assert sample(client.metrics, "customevent_mqtt_poison_total", reason="topic") == 1


@pytest.mark.mosquitto
@pytest.mark.rabbitmq
async def test_messages_sent_while_the_bridge_is_down_arrive_later(
    amqp_url: str, mqtt_url: str
) -> None:
    prefix = unique_prefix()
    settings = bridge_settings(amqp_url, mqtt_url, prefix, protocol="3.1.1")
    collector = Collector(amqp_url, "customevents", ["external.offline.#"])
    await collector.declare()
    async with running_bridge(settings):
        pass  # the persistent session and its subscription now exist at the broker
    device = Device(_port(mqtt_url), v5=False)
    try:
        for i in range(20):
            device.publish(f"{prefix}/external/offline/x", f"i={i}")
        await device.wait_acked(20)
    finally:
        device.close()
    async with running_bridge(settings):
        lost, _ = losses(await collector.drain(20), 20)
    assert lost == 0


@pytest.mark.mosquitto
@pytest.mark.rabbitmq
async def test_egress_publishes_internal_events_to_devices(amqp_url: str, mqtt_url: str) -> None:
    prefix = unique_prefix()
    word = f"w{uuid.uuid4().hex[:10]}"
    settings = bridge_settings(amqp_url, mqtt_url, prefix, egress=[f"{word}.#"])
    device = Device(_port(mqtt_url))
    try:
        device.client.subscribe(f"{prefix}/out/#", qos=1)
        async with running_bridge(settings) as (client, _):
            await asyncio.sleep(0.5)  # the egress binding is made in the background
            sent = await client.send_custom_event(f"{word}.ready", {"vm": "42"})
            await client.send_custom_event(f"{word}.ready", {"vm": "x"}, kind="external")
            await client.send_custom_event("other.name", {"vm": "0"})
            async with asyncio.timeout(10):
                while not device.received:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
    finally:
        device.close()
    assert [m.topic for m in device.received] == [f"{prefix}/out/{word}/ready"]
    message = device.received[0]
    assert json.loads(message.payload) == {"vm": "42"}
    assert ("event_id", sent.event_id) in message.properties.UserProperty  # type: ignore[union-attr]


# -- a private Mosquitto ------------------------------------------------------------------------


@pytest.mark.mosquitto
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_backpressure_holds_a_bounded_number_in_flight(protocol: str) -> None:
    with PrivateMosquitto() as broker:
        prefix = unique_prefix()
        settings = bridge_settings(None, broker.url, prefix, max_inflight=8, protocol=protocol)
        bus = StuckBus()
        async with Client(settings, bus=bus) as client, MqttBridge(settings, client) as bridge:
            async with asyncio.timeout(20):
                await bridge.wait_connected()
            device = Device(broker.port)
            try:
                for i in range(200):
                    device.publish(f"{prefix}/external/bp/x", f"i={i}")
                await device.wait_acked(200)
                await asyncio.sleep(1.0)
                assert bridge.in_flight == 8  # nothing acknowledged, nothing more taken
                bus.gate.set()
                most = 0
                async with asyncio.timeout(30):
                    while len(bus.events) < 200:
                        most = max(most, bridge.in_flight)
                        await asyncio.sleep(0.01)
            finally:
                device.close()
        assert most <= 8
        assert sorted(int(e.properties["i"]) for e in bus.events) == list(range(200))


@pytest.mark.mosquitto
async def test_lifecycle_leaves_nothing_running() -> None:
    with PrivateMosquitto() as broker:
        settings = bridge_settings(None, broker.url, unique_prefix(), egress=["a.#"])
        before = set(asyncio.all_tasks())
        async with Client(settings) as client:
            bridge = MqttBridge(settings, client)
            async with bridge:
                async with asyncio.timeout(20):
                    await bridge.wait_connected()
                assert bridge.connected
            assert not bridge.connected
            with pytest.raises(ClientStateError):
                await bridge.__aenter__()
        assert set(asyncio.all_tasks()) - before == {asyncio.current_task()} - before


@pytest.mark.mosquitto
async def test_unreachable_broker_is_not_connected_and_closes_cleanly() -> None:
    from adapter._mqtt._testing import free_port

    settings = bridge_settings(None, f"mqtt://127.0.0.1:{free_port()}", unique_prefix())
    async with Client(settings) as client, MqttBridge(settings, client) as bridge:
        await asyncio.sleep(0.3)
        assert not bridge.connected


# -- the acceptance, end to end with real processes -------------------------------------


def _mqtt_connected(daemon: Daemon) -> bool:
    metrics = httpx.get(daemon.url + "/metrics", timeout=5).text
    return "customevent_mqtt_connected 1.0" in metrics


@pytest.mark.mosquitto
@pytest.mark.rabbitmq
def test_mosquitto_pub_reaches_customevent_wait_through_the_daemon(
    amqp_url: str, mqtt_url: str
) -> None:
    """``mosquitto_pub -q 1 -t customevents/external/<name as topic> -m 'a=1'`` reaches
    ``customevent wait``, over AMQP and over the daemon's HTTP long-poll."""
    word = f"w{uuid.uuid4().hex[:10]}"
    with Daemon(
        "mqtt-acceptance",
        CUSTOMEVENT_AMQP__URL=amqp_url,
        CUSTOMEVENT_MQTT__URL=mqtt_url,
        CUSTOMEVENT_MQTT__CLIENT_ID=f"test-acceptance-{word}",
        CUSTOMEVENT_MQTT__SESSION_EXPIRY="10",
    ) as daemon:
        deadline = time.monotonic() + 30
        while not _mqtt_connected(daemon):
            assert time.monotonic() < deadline, daemon.log_tail()
            time.sleep(0.1)
        waiters = [
            subprocess.Popen(
                customevent("wait", "--url", url, "--kind", "external", "--until", "60s", word),
                env=clean_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for url in (amqp_url, daemon.url)
        ]
        send = ["mosquitto_pub", "-p", str(_port(mqtt_url)), "-q", "1"]
        send += ["-t", f"customevents/external/{word}", "-m", "a=1"]
        try:
            # The waiters say nothing when they have bound (off a terminal): send until both
            # have one. Each send is a separate event; a waiter takes the first after it bound.
            while any(waiter.poll() is None for waiter in waiters):
                assert time.monotonic() < deadline + 30, "no event reached the waiters"
                subprocess.run(send, check=True, timeout=10)
                time.sleep(0.3)
        finally:
            for waiter in waiters:
                if waiter.poll() is None:
                    waiter.kill()
        for waiter in waiters:
            out, err = waiter.communicate()
            assert waiter.returncode == 0, err.decode()
            assert out.decode().strip() == "a=1"
