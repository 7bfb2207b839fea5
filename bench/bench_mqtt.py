"""MQTT ingress benchmark: the bridge against RabbitMQ's own MQTT plugin.

    python bench/bench_mqtt.py [--count 20000]

The same device (paho, MQTT 3.1.1, QoS 1) sends the same burst each time, and a RabbitMQ consumer in
its own process counts what arrives:

    plugin:     device -> RabbitMQ's rabbitmq_mqtt plugin (127.0.0.1:1884) -> consumer
    bridge:     device -> private Mosquitto -> MqttBridge -> RabbitMQ -> consumer
    replicas:   the same, with two bridges in two processes sharing one subscription
    forwarder:  the same path through the least any paho + aio-pika bridge must do: receive with
                paho, publish the payload with a confirm, ack in order; no checks, no event

and, with no MQTT at all, aio-pika's confirmed publishing alone. It prints every rate (messages per
second, from the first publish to the last message consumed), the ratios to the plugin, and the
losses and duplicates. The forwarder and publishing alone bound what a bridge built on these
libraries can reach on this machine; see docs/devices.md, "Throughput". Loopback only. The plugin
is enabled on port 1884 for the run (1883 belongs to Mosquitto) and disabled again afterwards if it
was off. Needs RabbitMQ on 127.0.0.1:5672 (guest/guest) and the ``mosquitto`` binary.
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

from _common import Figure, emit_figures, in_flight  # noqa: E402

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


def _bridge_settings(broker_url: str, client_id: str, group: str | None = None) -> Any:
    from adapter import load_settings

    return load_settings(
        amqp={"url": AMQP_URL},
        mqtt={
            "url": broker_url,
            "client_id": client_id,
            "session_expiry": 60,
            "shared_group": group,
        },
    )


async def _burst(broker_port: int, run: str, count: int) -> dict[str, Any]:
    return await one_run(
        broker_port,
        f"customevents/external/bench/{run}/burst",
        "customevents",
        f"external.bench.{run}.burst",
        count,
    )


async def bridge_run(count: int) -> dict[str, Any]:
    """One MqttBridge in this process, on the event loop the daemon uses."""
    from adapter import Client
    from adapter._mqtt import MqttBridge
    from adapter._mqtt._testing import PrivateMosquitto

    run = uuid.uuid4().hex[:8]
    with PrivateMosquitto(BENCH_MOSQUITTO) as broker:
        settings = _bridge_settings(broker.url, f"bench-bridge-{run}")
        async with Client(settings) as client, MqttBridge(settings, client) as bridge:
            async with asyncio.timeout(20):
                await bridge.wait_connected()
            cpu = time.process_time()
            result = await _burst(broker.port, run, count)
            # This process's CPU time over the burst, as a share of one core.
            result["cpu"] = (time.process_time() - cpu) / result["seconds"]
            return result


async def run_replica(broker_url: str, group: str, index: int) -> None:
    """A subprocess: one bridge in a shared-subscription group, until its stdin closes."""
    from adapter import Client
    from adapter._mqtt import MqttBridge

    settings = _bridge_settings(broker_url, f"bench-replica-{group}-{index}", group)
    async with Client(settings) as client, MqttBridge(settings, client) as bridge:
        async with asyncio.timeout(20):
            await bridge.wait_connected()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)


async def replicas_run(count: int, replicas: int = 2) -> dict[str, Any]:
    """``replicas`` bridges in their own processes, one shared subscription: the chart's way to
    scale out (docs/devices.md)."""
    from adapter._mqtt._testing import PrivateMosquitto

    run = uuid.uuid4().hex[:8]
    with PrivateMosquitto(BENCH_MOSQUITTO) as broker:
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--replica",
                broker.url,
                f"bench{run}",
                str(index),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            for index in range(replicas)
        ]
        try:
            for process in processes:
                assert process.stdout is not None
                if (await process.stdout.readline()).strip() != b"ready":
                    raise RuntimeError("a bridge replica did not start")
            return await _burst(broker.port, run, count)
        finally:
            for process in processes:
                assert process.stdin is not None
                process.stdin.close()
            for process in processes:
                await process.wait()


async def forwarder_run(count: int, window: int = 256) -> dict[str, Any]:
    """The least any bridge on paho and aio-pika must do, over the bridge's path and on the same
    loop: a persistent MQTT v5 session with manual acks, each payload published as it is with a
    confirm, acks in arrival order. No checks, no event, no metrics, no backpressure."""
    from collections import deque

    import aio_pika
    import aiormq
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from adapter._mqtt._testing import PrivateMosquitto

    run = uuid.uuid4().hex[:8]
    loop = asyncio.get_running_loop()
    inbox: deque[mqtt.MQTTMessage] = deque()
    unacked: deque[list[Any]] = deque()  # [mid, confirmed]
    subscribed = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()
    with PrivateMosquitto(BENCH_MOSQUITTO) as broker:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await channel.declare_exchange("customevents", "topic", durable=True)
            amqp = await channel.get_underlay_channel()
            device = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=f"bench-forwarder-{run}",
                protocol=mqtt.MQTTv5,
                manual_ack=True,
            )

            async def forward(message: mqtt.MQTTMessage, entry: list[Any]) -> None:
                await amqp.basic_publish(
                    bytes(message.payload),
                    exchange="customevents",
                    routing_key="external." + message.topic.split("/", 2)[2].replace("/", "."),
                    properties=aiormq.spec.Basic.Properties(delivery_mode=2),
                    mandatory=True,
                    wait=False,  # type: ignore[call-arg]
                )
                entry[1] = True
                while unacked and unacked[0][1]:
                    device.ack(unacked.popleft()[0], 1)

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

            device.on_message = on_message
            device.on_connect = lambda client, *_: client.subscribe(
                "customevents/external/#", qos=1
            )

            def on_subscribe(*_: Any) -> None:
                loop.call_soon_threadsafe(subscribed.set)

            device.on_subscribe = on_subscribe
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 60
            properties.ReceiveMaximum = window
            device.connect("127.0.0.1", broker.port, clean_start=False, properties=properties)
            device.loop_start()
            try:
                async with asyncio.timeout(20):
                    await subscribed.wait()
                return await _burst(broker.port, run, count)
            finally:
                device.disconnect()
                await asyncio.to_thread(device.loop_stop)


async def plugin_run(count: int) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    return await one_run(
        PLUGIN_PORT,
        f"customevents/external/bench/{run}/burst",
        "amq.topic",  # the plugin publishes there, with '/' in the topic written as '.'
        f"customevents.external.bench.{run}.burst",
        count,
    )


async def publish_alone(count: int, concurrency: int = 256) -> float:
    """aio-pika's confirmed, mandatory, persistent publishes per second to a bound queue, no MQTT
    at all (an unrouted mandatory message comes back as a Basic.Return, which costs more)."""
    import aio_pika

    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange("customevents", "topic", durable=True)
        key = f"external.bench.{uuid.uuid4().hex[:8]}.alone"
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, key)

        async def one(i: int) -> None:
            await exchange.publish(
                aio_pika.Message(b'{"i":"%d"}' % i, delivery_mode=2), key, mandatory=True
            )

        return count / await in_flight(count, concurrency, one)


def _show(label: str, result: dict[str, Any], plugin: dict[str, Any]) -> None:
    print(
        f"{label:10} {result['rate']:8.0f} msg/s  {result['rate'] / plugin['rate']:5.2f}x  "
        f"{result['seconds']:6.2f} s  lost {result['lost']}  duplicates {result['duplicates']}"
    )


async def bench(count: int) -> int:
    switched_on = enable_plugin()
    try:
        plugin = await plugin_run(count)
    finally:
        if switched_on:
            disable_plugin()
    bridge = await bridge_run(count)
    replicas = await replicas_run(count)
    forwarder = await forwarder_run(count)
    alone = await publish_alone(count)
    ratio = bridge["rate"] / plugin["rate"] if plugin["rate"] else 0.0
    print(f"{count} QoS 1 messages from one paho device (MQTT 3.1.1, {DEVICE_INFLIGHT} in flight)")
    print(f"{'':10} {'rate':>8}        {'/plugin':>6}")
    _show("plugin", plugin, plugin)
    _show("bridge", bridge, plugin)
    _show("replicas", replicas, plugin)
    _show("forwarder", forwarder, plugin)
    print(
        f"{'alone':10} {alone:8.0f} msg/s  {alone / plugin['rate']:5.2f}x  "
        "(aio-pika confirmed publishing, no MQTT)"
    )
    print(f"bridge process CPU during its burst: {bridge['cpu']:.2f} of one core")
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
                "QoS 1 burst through 2 bridge replicas (shared subscription)",
                replicas["rate"],
                "msg/s",
                reference=plugin["rate"],
                reference_name="RabbitMQ's MQTT plugin",
            ),
            Figure(
                "QoS 1 burst through a bare paho + aio-pika forwarder",
                forwarder["rate"],
                "msg/s",
                reference=plugin["rate"],
                reference_name="RabbitMQ's MQTT plugin",
            ),
            Figure(
                "QoS 1 burst through the bridge, against the bare forwarder",
                bridge["rate"],
                "msg/s",
                reference=forwarder["rate"],
                reference_name="bare paho + aio-pika forwarder, same path",
            ),
            Figure(
                "aio-pika confirmed publishing alone, no MQTT",
                alone,
                "msg/s",
                reference=plugin["rate"],
                reference_name="RabbitMQ's MQTT plugin",
            ),
            Figure("bridge process CPU during the burst", bridge["cpu"], "cores"),
            Figure("messages lost through the bridge", bridge["lost"], at_most=0),
            Figure("messages lost through 2 replicas", replicas["lost"], at_most=0),
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
    parser.add_argument("--replica", nargs=3, metavar=("MQTT_URL", "GROUP", "INDEX"))
    args = parser.parse_args()
    if args.device:
        run_device(int(args.device[0]), args.device[1], int(args.device[2]))
    elif args.consume:
        asyncio.run(run_consumer(args.consume[0], args.consume[1], int(args.consume[2])))
    elif args.replica:
        uvloop.run(run_replica(args.replica[0], args.replica[1], int(args.replica[2])))
    else:
        # The bridges run on the event loop the daemon uses (customevent serve: uvloop).
        sys.exit(uvloop.run(bench(args.count)))


if __name__ == "__main__":
    main()
