"""MQTT ingress benchmark: the bridge against RabbitMQ's own MQTT plugin.

    python bench/bench_mqtt.py [--count 20000]

The same device (paho, MQTT 3.1.1, QoS 1) sends the same burst twice, and a RabbitMQ consumer in
its own process counts what arrives:

    bridge:  device -> private Mosquitto -> MqttBridge -> RabbitMQ -> consumer
    plugin:  device -> RabbitMQ's rabbitmq_mqtt plugin (127.0.0.1:1884) -> consumer

It prints both rates (messages per second, from the first publish to the last message consumed),
the ratio bridge/plugin, and the losses and duplicates of each. Loopback only. The plugin is enabled
on port 1884 for the run (1883 belongs to Mosquitto) and disabled again afterwards if it was off.
Needs RabbitMQ on 127.0.0.1:5672 (guest/guest) and the ``mosquitto`` binary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import uvloop

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import Figure, emit_figures  # noqa: E402

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
PLUGIN_PORT = 1884
TARGET_RATIO = 0.8
IDLE_SECONDS = 20.0  # the consumer gives up this long after the last message
DEVICE_INFLIGHT = 100

# The bridge's broker: no silent drops for a slow subscriber, and a wide window for the bridge
# (which sets its own Receive Maximum from mqtt.max_inflight).
BENCH_MOSQUITTO = """
max_queued_messages 0
max_inflight_messages 0
persistence false
"""


# -- the device (a subprocess; the same code for both targets) ------------------------------------


def run_device(port: int, topic: str, count: int) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    acked = 0
    done = __import__("threading").Event()

    def on_publish(*_: Any) -> None:
        nonlocal acked
        acked += 1
        if acked == count:
            done.set()

    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:8]}")
    device.max_inflight_messages_set(DEVICE_INFLIGHT)
    device.on_publish = on_publish
    device.connect("127.0.0.1", port)
    device.loop_start()
    started = time.time()
    for i in range(count):
        device.publish(topic, f"i={i}", qos=1)
    done.wait(timeout=170)
    print(json.dumps({"started": started, "acked": acked, "acked_at": time.time()}), flush=True)
    device.disconnect()
    device.loop_stop()


# -- the consumer (a subprocess) ------------------------------------------------------------------


async def run_consumer(exchange: str, key: str, count: int) -> None:
    import aio_pika

    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=2000)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, key)
    seen: set[int] = set()
    received = 0
    last = time.time()
    finished = asyncio.Event()
    digits = re.compile(rb"(\d+)")

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal received, last
        received += 1
        match = digits.search(message.body)
        if match:
            seen.add(int(match.group(1)))
        last = time.time()
        if len(seen) == count:
            finished.set()

    await queue.consume(on_message, no_ack=True)
    print("ready", flush=True)
    while not finished.is_set():
        try:
            async with asyncio.timeout(1.0):
                await finished.wait()
        except TimeoutError:
            if received and time.time() - last > IDLE_SECONDS:
                break
    print(json.dumps({"unique": len(seen), "received": received, "last": last}), flush=True)
    await connection.close()


# -- orchestration --------------------------------------------------------------------------------


def _rabbitmqctl(*args: str) -> str:
    result = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout


def _plugin_enabled() -> bool:
    listing = subprocess.run(
        ["rabbitmq-plugins", "list", "-e", "rabbitmq_mqtt"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return "rabbitmq_mqtt " in listing and "[E" in listing


def enable_plugin() -> bool:
    """Enable rabbitmq_mqtt on 127.0.0.1:1884; True if this run switched it on."""
    if _plugin_enabled():
        return False
    # Set before the plugin loads (persistent survives the load): its default, 1883, is Mosquitto's.
    _rabbitmqctl(
        "eval",
        f'application:set_env(rabbitmq_mqtt, tcp_listeners, [{{"127.0.0.1", {PLUGIN_PORT}}}],'
        " [{persistent, true}]).",
    )
    subprocess.run(
        ["rabbitmq-plugins", "enable", "rabbitmq_mqtt"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return True


def disable_plugin() -> None:
    subprocess.run(
        ["rabbitmq-plugins", "disable", "rabbitmq_mqtt"],
        capture_output=True,
        timeout=120,
        check=True,
    )


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, __file__, *args, stdout=asyncio.subprocess.PIPE
    )


async def _json_line(process: asyncio.subprocess.Process) -> dict[str, Any]:
    assert process.stdout is not None
    while True:
        line = await process.stdout.readline()
        if not line:
            raise RuntimeError("a benchmark subprocess ended without a result")
        if line.startswith(b"{"):
            result: dict[str, Any] = json.loads(line)
            return result


async def one_run(port: int, topic: str, exchange: str, key: str, count: int) -> dict[str, Any]:
    consumer = await _spawn("--consume", exchange, key, str(count))
    assert consumer.stdout is not None
    if (await consumer.stdout.readline()).strip() != b"ready":
        raise RuntimeError("the consumer did not start")
    device = await _spawn("--device", str(port), topic, str(count))
    sent = await _json_line(device)
    got = await _json_line(consumer)
    await device.wait()
    await consumer.wait()
    seconds = got["last"] - sent["started"]
    return {
        "rate": got["unique"] / seconds if seconds > 0 else 0.0,
        "seconds": seconds,
        "lost": count - got["unique"],
        "duplicates": got["received"] - got["unique"],
        "acked": sent["acked"],
        "device_seconds": sent["acked_at"] - sent["started"],
    }


async def bridge_run(count: int) -> dict[str, Any]:
    from adapter import Client, load_settings
    from adapter._mqtt import MqttBridge
    from adapter._mqtt._testing import PrivateMosquitto

    run = uuid.uuid4().hex[:8]
    with PrivateMosquitto(BENCH_MOSQUITTO) as broker:
        settings = load_settings(
            amqp={"url": AMQP_URL},
            mqtt={"url": broker.url, "client_id": f"bench-bridge-{run}", "session_expiry": 60},
        )
        async with Client(settings) as client, MqttBridge(settings, client) as bridge:
            async with asyncio.timeout(20):
                await bridge.wait_connected()
            return await one_run(
                broker.port,
                f"customevents/external/bench/{run}/burst",
                settings.amqp.exchange,
                f"external.bench.{run}.burst",
                count,
            )


async def plugin_run(count: int) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    return await one_run(
        PLUGIN_PORT,
        f"customevents/external/bench/{run}/burst",
        "amq.topic",  # the plugin publishes there, with '/' in the topic written as '.'
        f"customevents.external.bench.{run}.burst",
        count,
    )


def _show(label: str, result: dict[str, Any]) -> None:
    print(
        f"{label:8} {result['rate']:8.0f} msg/s  {result['seconds']:6.2f} s  "
        f"lost {result['lost']}  duplicates {result['duplicates']}"
    )


async def raw_publish_ceiling(count: int, in_flight: int = 256) -> float:
    """Confirmed, mandatory, persistent publishes per second with raw aio-pika alone (no MQTT):
    the most any aio-pika bridge in this process could forward."""
    import aio_pika

    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange("customevents", "topic", durable=True)
        gate = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            async with gate:
                await exchange.publish(
                    aio_pika.Message(b'{"i":"%d"}' % i, delivery_mode=2),
                    "external.bench.ceiling",
                    mandatory=True,
                )

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        return count / (time.perf_counter() - started)


async def bench(count: int) -> int:
    switched_on = enable_plugin()
    try:
        plugin = await plugin_run(count)
    finally:
        if switched_on:
            disable_plugin()
    bridge = await bridge_run(count)
    ceiling = await raw_publish_ceiling(count)
    ratio = bridge["rate"] / plugin["rate"] if plugin["rate"] else 0.0
    print(f"{count} QoS 1 messages from one paho device (MQTT 3.1.1, {DEVICE_INFLIGHT} in flight)")
    _show("plugin", plugin)
    _show("bridge", bridge)
    print(f"raw aio-pika confirmed publishing alone (no MQTT): {ceiling:8.0f} msg/s")
    ok = ratio >= TARGET_RATIO and bridge["lost"] == 0
    print(
        f"ratio    {ratio:.2f} (target >= {TARGET_RATIO} with 0 lost): {'ok' if ok else 'MISSED'}"
    )
    emit_figures(
        [
            Figure(
                "QoS 1 burst through the bridge",
                bridge["rate"],
                "msg/s",
                reference=plugin["rate"],
                reference_name="RabbitMQ's MQTT plugin, same device and burst",
                at_least=TARGET_RATIO,
            ),
            Figure(
                "QoS 1 burst through the bridge, against aio-pika alone",
                bridge["rate"],
                "msg/s",
                reference=ceiling,
                reference_name="raw aio-pika confirmed publishing, no MQTT (the ceiling)",
            ),
            Figure("messages lost through the bridge", bridge["lost"], at_most=0),
            Figure("duplicates through the bridge", bridge["duplicates"]),
            Figure("messages lost through the plugin", plugin["lost"]),
        ]
    )
    # A missed target is reported, not a failure of the run (bench/README.md).
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--device", nargs=3, metavar=("PORT", "TOPIC", "COUNT"))
    parser.add_argument("--consume", nargs=3, metavar=("EXCHANGE", "KEY", "COUNT"))
    args = parser.parse_args()
    if args.device:
        run_device(int(args.device[0]), args.device[1], int(args.device[2]))
    elif args.consume:
        asyncio.run(run_consumer(args.consume[0], args.consume[1], int(args.consume[2])))
    else:
        # The bridge runs here on the event loop the daemon uses (customevent serve: uvloop).
        sys.exit(uvloop.run(bench(args.count)))


if __name__ == "__main__":
    main()
