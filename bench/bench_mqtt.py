"""MQTT ingress benchmark: the bridge against the forwarder a Python team would write, today's
thread-based forwarder and RabbitMQ's own MQTT plugin.

    python bench/bench_mqtt.py [--count 20000] [--amqp-url URL] [--plugin-port 1884]
                               [--baseline DIR]

The same device (paho, MQTT 3.1.1, QoS 1, 100 in flight) sends the same burst down each path, and
a RabbitMQ consumer in its own process counts what arrives. Each forwarder runs in its own process,
with its own private Mosquitto:

    plugin:     device -> RabbitMQ's rabbitmq_mqtt plugin -> consumer (the native reference)
    bridge:     device -> Mosquitto -> MqttBridge -> RabbitMQ -> consumer (acks after the confirm)
    peer:       the same path through the forwarder of about 30 lines a Python team would write:
                aiomqtt receives (and acks on receipt), aio-pika publishes each message with a
                confirm; no validation
    thread:     the same path through a bare forwarder on paho's network thread: manual acks in
                arrival order after aio-pika's confirm, no checks, no event
    replicas:   the bridge in two processes sharing one subscription
    baseline:   (with --baseline DIR) the bridge imported from another checkout, e.g. the previous
                release, for a before/after in one run

and, with no MQTT at all, aio-pika's confirmed publishing alone. It prints every rate (messages per
second, from the first publish to the last message consumed), the ratios, the losses and
duplicates, and the goals: bridge >= 2.0x peer and >= 1.2x thread with 0 lost, and >= 0.4x the
plugin. A missed goal is reported, not a failed run.

RabbitMQ: ``--amqp-url`` (default ``$CUSTOMEVENT_AMQP__URL``, else 127.0.0.1:5672, guest). The
plugin is enabled on ``--plugin-port`` for the run, with ``rabbitmqctl``/``rabbitmq-plugins`` (which
honour ``RABBITMQ_NODENAME``), and disabled again afterwards if it was off. Needs the ``mosquitto``
binary and aiomqtt (the ``dev`` extra). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
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

from _common import DEFAULT_AMQP_URL, Figure, emit_figures, in_flight, median  # noqa: E402
from _mqtt_forwarders import FORWARDERS, serve_forwarder  # noqa: E402

PEER_GOAL = 2.0
THREAD_GOAL = 1.2
PLUGIN_AIM = 0.4
# What a figure measures when it is not the bridge (its chart draws it in neither bridge colour).
PEER = "aiomqtt + aio-pika forwarder (the peer)"
THREAD = "paho-thread + aio-pika bare forwarder"
PLUGIN = "RabbitMQ's MQTT plugin"
IDLE_SECONDS = 20.0  # the consumer gives up this long after the last message
DEVICE_INFLIGHT = 100
EXCHANGE = "customevents"

# The forwarders' broker: no silent drops for a slow subscriber, and a wide window for the
# forwarder (which sets its own Receive Maximum).
BENCH_MOSQUITTO = """
max_queued_messages 0
max_inflight_messages 0
persistence false
"""


# -- the device and the consumer (subprocesses; the same for every path) ------------------------


def run_device(port: int, topic: str, count: int) -> None:
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    acked = 0
    done = threading.Event()

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


async def run_consumer(amqp_url: str, exchange: str, key: str, count: int) -> None:
    import aio_pika

    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=2000)
    await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
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


# -- RabbitMQ's MQTT plugin -----------------------------------------------------------------------


def _run(*command: str) -> str:
    return subprocess.run(
        list(command), capture_output=True, text=True, timeout=120, check=True
    ).stdout


def _plugin_enabled() -> bool:
    listing = _run("rabbitmq-plugins", "list", "-e", "rabbitmq_mqtt")
    return "rabbitmq_mqtt " in listing and "[E" in listing


def enable_plugin(port: int) -> bool:
    """Enable rabbitmq_mqtt on 127.0.0.1:``port``; True if this run switched it on."""
    if _plugin_enabled():
        return False
    # Set before the plugin loads (persistent survives the load): its default, 1883, is Mosquitto's.
    _run(
        "rabbitmqctl",
        "eval",
        f'application:set_env(rabbitmq_mqtt, tcp_listeners, [{{"127.0.0.1", {port}}}],'
        " [{persistent, true}]).",
    )
    _run("rabbitmq-plugins", "enable", "rabbitmq_mqtt")
    return True


def disable_plugin() -> None:
    _run("rabbitmq-plugins", "disable", "rabbitmq_mqtt")


# -- orchestration --------------------------------------------------------------------------------


async def _spawn(
    *args: str, stdin: bool = False, pythonpath: str | None = None
) -> asyncio.subprocess.Process:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    return await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin else None,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )


async def _line(process: asyncio.subprocess.Process, json_only: bool = False) -> Any:
    assert process.stdout is not None
    while True:
        line = await process.stdout.readline()
        if not line:
            raise RuntimeError("a benchmark subprocess ended without a result")
        if not json_only and line.strip() == b"ready":
            return "ready"
        if line.startswith(b"{"):
            return json.loads(line)


async def one_burst(
    amqp_url: str, port: int, topic: str, exchange: str, key: str, count: int
) -> dict[str, Any]:
    consumer = await _spawn("--consume", amqp_url, exchange, key, str(count))
    if await _line(consumer) != "ready":
        raise RuntimeError("the consumer did not start")
    device = await _spawn("--device", str(port), topic, str(count))
    sent = await _line(device, json_only=True)
    got = await _line(consumer, json_only=True)
    await device.wait()
    await consumer.wait()
    seconds = got["last"] - sent["started"]
    return {
        "rate": got["unique"] / seconds if seconds > 0 else 0.0,
        "seconds": seconds,
        "lost": count - got["unique"],
        "duplicates": got["received"] - got["unique"],
    }


async def forwarded_run(
    amqp_url: str, kind: str, count: int, processes: int = 1, pythonpath: str | None = None
) -> dict[str, Any]:
    """A burst through ``processes`` forwarders of ``kind``, each in its own process, one
    Mosquitto; the result has the forwarders' CPU time over the burst, in cores."""
    from adapter._mqtt._testing import PrivateMosquitto

    run = uuid.uuid4().hex[:8]
    with PrivateMosquitto(BENCH_MOSQUITTO) as broker:
        group = f"bench{run}" if processes > 1 else "-"
        forwarders = [
            await _spawn(
                "--forward",
                kind,
                broker.url,
                amqp_url,
                f"bench-{kind}-{run}-{index}",
                group,
                stdin=True,
                pythonpath=pythonpath,
            )
            for index in range(processes)
        ]
        try:
            for forwarder in forwarders:
                if await _line(forwarder) != "ready":
                    raise RuntimeError(f"a {kind} forwarder did not start")
            result = await one_burst(
                amqp_url,
                broker.port,
                f"customevents/external/bench/{run}/burst",
                EXCHANGE,
                f"external.bench.{run}.burst",
                count,
            )
        finally:
            for forwarder in forwarders:
                assert forwarder.stdin is not None
                forwarder.stdin.close()
        cpu = 0.0
        for forwarder in forwarders:
            usage = await _line(forwarder, json_only=True)
            cpu += usage["cpu"]
            await forwarder.wait()
    result["cpu"] = cpu / result["seconds"]
    return result


async def plugin_run(amqp_url: str, port: int, count: int) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    return await one_burst(
        amqp_url,
        port,
        f"customevents/external/bench/{run}/burst",
        "amq.topic",  # the plugin publishes there, with '/' in the topic written as '.'
        f"customevents.external.bench.{run}.burst",
        count,
    )


async def publish_alone(amqp_url: str, count: int, concurrency: int = 256) -> float:
    """aio-pika's confirmed, mandatory, persistent publishes per second to a bound queue, no MQTT
    at all (an unrouted mandatory message comes back as a Basic.Return, which costs more)."""
    import aio_pika

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(EXCHANGE, "topic", durable=True)
        key = f"external.bench.{uuid.uuid4().hex[:8]}.alone"
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, key)

        async def one(i: int) -> None:
            await exchange.publish(
                aio_pika.Message(b'{"i":"%d"}' % i, delivery_mode=2), key, mandatory=True
            )

        return count / await in_flight(count, concurrency, one)


PATHS = ("plugin", "bridge", "peer", "thread", "replicas")


async def _path_run(args: argparse.Namespace, path: str) -> dict[str, Any]:
    url, count = args.amqp_url, args.count
    if path == "plugin":
        return await plugin_run(url, args.plugin_port, count)
    if path == "replicas":
        return await forwarded_run(url, "bridge", count, processes=2)
    if path == "baseline":
        return await forwarded_run(url, "bridge", count, pythonpath=args.baseline)
    return await forwarded_run(url, path, count)


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds of one path: median rate and CPU, every loss and duplicate added up."""
    summary: dict[str, Any] = {
        "rate": median(r["rate"] for r in results),
        "rates": tuple(r["rate"] for r in results),
        "lost": sum(r["lost"] for r in results),
        "duplicates": sum(r["duplicates"] for r in results),
    }
    if "cpu" in results[0]:
        summary["cpu"] = median(r["cpu"] for r in results)
    return summary


def _per_message(result: dict[str, Any]) -> float:
    """CPU microseconds per message: what a path costs, whatever share of the cores it got."""
    return float(result["cpu"] * 1e6 / result["rate"]) if result["rate"] else math.nan


def _row(label: str, result: dict[str, Any], plugin: float, peer: float) -> str:
    cpu = per_message = "    -"
    if "cpu" in result:
        cpu = f"{result['cpu']:5.2f}"
        per_message = f"{_per_message(result):5.0f}"
    rates = " ".join(f"{rate:.0f}" for rate in result["rates"])
    return (
        f"{label:10} {result['rate']:8.0f} {result['rate'] / plugin:8.2f} "
        f"{result['rate'] / peer:6.2f} {result['lost']:5d} {result['duplicates']:5d} {cpu} "
        f"{per_message}  ({rates})"
    )


def _goal(name: str, ratio: float, goal: float, lost: int | None = None) -> str:
    condition = f"goal >= {goal}" + (" with 0 lost" if lost is not None else "")
    verdict = "ok" if ratio >= goal and not lost else "MISSED"
    if lost:
        verdict += f" ({lost} lost)"
    return f"{name:14} {ratio:5.2f}  ({condition}): {verdict}"


async def bench(args: argparse.Namespace) -> int:
    paths = [*PATHS, "baseline"] if args.baseline else list(PATHS)
    rounds: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
    switched_on = enable_plugin(args.plugin_port)
    try:
        for number in range(args.rounds):
            # A B C, then C B A: load from elsewhere on the machine falls on every path alike.
            for path in paths if number % 2 == 0 else paths[::-1]:
                rounds[path].append(await _path_run(args, path))
    finally:
        if switched_on:
            disable_plugin()
    alone = await publish_alone(args.amqp_url, args.count)
    results = {path: _summary(runs) for path, runs in rounds.items()}
    plugin, bridge, peer, thread = (results[p] for p in ("plugin", "bridge", "peer", "thread"))
    replicas = results["replicas"]
    p, q = plugin["rate"], peer["rate"]
    print(
        f"{args.count} QoS 1 messages from one paho device (MQTT 3.1.1, {DEVICE_INFLIGHT} in "
        f"flight), median of {args.rounds} rounds"
    )
    print(
        f"{'path':10} {'msg/s':>8} {'/plugin':>8} {'/peer':>6} {'lost':>5} {'dup':>5} "
        f"{'cpu':>5} {'us/msg':>5}  (each round)"
    )
    for path in paths:
        print(_row(path, results[path], p, q))
    print(f"{'alone':10} {alone:8.0f} {alone / p:8.2f}  (aio-pika confirmed publishing, no MQTT)")
    print(
        "cpu: the forwarders' processes' CPU time over the burst, in cores; us/msg: that CPU "
        "time per message"
    )
    print(_goal("bridge/peer", bridge["rate"] / q, PEER_GOAL, bridge["lost"]))
    print(_goal("bridge/thread", bridge["rate"] / thread["rate"], THREAD_GOAL, bridge["lost"]))
    print(_goal("bridge/plugin", bridge["rate"] / p, PLUGIN_AIM))

    def against_plugin(name: str, result: dict[str, Any], subject: str = "") -> Figure:
        return Figure(
            name,
            result["rate"],
            "msg/s",
            reference=p,
            reference_name="RabbitMQ's MQTT plugin",
            samples=result["rates"],
            subject=subject,
        )

    figures = [
        Figure(
            "QoS 1 burst through the bridge, against the peer",
            bridge["rate"],
            "msg/s",
            reference=q,
            reference_name="aiomqtt + aio-pika forwarder, same path",
            at_least=PEER_GOAL,
            samples=bridge["rates"],
        ),
        Figure(
            "QoS 1 burst through the bridge, against the thread forwarder",
            bridge["rate"],
            "msg/s",
            reference=thread["rate"],
            reference_name="paho-thread + aio-pika bare forwarder, same path",
            at_least=THREAD_GOAL,
        ),
        Figure(
            "QoS 1 burst through the bridge, against the plugin",
            bridge["rate"],
            "msg/s",
            reference=p,
            reference_name="RabbitMQ's MQTT plugin, same device and burst",
            at_least=PLUGIN_AIM,
        ),
        against_plugin("QoS 1 burst through 2 bridge replicas (shared subscription)", replicas),
        against_plugin("peer against the plugin", peer, PEER),
        against_plugin("thread forwarder against the plugin", thread, THREAD),
        Figure(
            "aio-pika confirmed publishing alone, no MQTT",
            alone,
            "msg/s",
            reference=p,
            reference_name="RabbitMQ's MQTT plugin",
            subject="aio-pika alone",
        ),
        Figure("bridge process CPU during the burst", bridge["cpu"], "cores"),
        Figure(
            "CPU time per message in the bridge, against the thread forwarder",
            _per_message(bridge),
            "us",
            reference=_per_message(thread),
            reference_name="paho-thread + aio-pika bare forwarder",
        ),
        Figure(
            "CPU time per message in the bridge, against the peer",
            _per_message(bridge),
            "us",
            reference=_per_message(peer),
            reference_name="aiomqtt + aio-pika forwarder",
        ),
        Figure("messages lost through the bridge", bridge["lost"], at_most=0),
        Figure("messages lost through 2 replicas", replicas["lost"], at_most=0),
        Figure("duplicates through the bridge", bridge["duplicates"], better="lower"),
        Figure("messages lost through the peer", peer["lost"], subject=PEER, better="lower"),
        Figure("messages lost through the plugin", plugin["lost"], subject=PLUGIN, better="lower"),
    ]
    if args.baseline:
        figures.append(
            Figure(
                "QoS 1 burst through the bridge, against --baseline",
                bridge["rate"],
                "msg/s",
                reference=results["baseline"]["rate"],
                reference_name=args.baseline,
            )
        )
    emit_figures(figures)
    # A missed goal is reported, not a failure of the run (bench/README.md).
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds over every path; the median is reported"
    )
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("CUSTOMEVENT_AMQP__URL") or DEFAULT_AMQP_URL,
        help="RabbitMQ (default $CUSTOMEVENT_AMQP__URL, else %(default)s)",
    )
    parser.add_argument(
        "--plugin-port",
        type=int,
        default=int(os.environ.get("CUSTOMEVENT_BENCH_PLUGIN_PORT", "1884")),
        help="where RabbitMQ's MQTT plugin listens (default $CUSTOMEVENT_BENCH_PLUGIN_PORT "
        "or 1884)",
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run the bridge imported from DIR (a checkout's root), e.g. the last release",
    )
    parser.add_argument("--device", nargs=3, metavar=("PORT", "TOPIC", "COUNT"))
    parser.add_argument("--consume", nargs=4, metavar=("AMQP_URL", "EXCHANGE", "KEY", "COUNT"))
    parser.add_argument(
        "--forward", nargs=5, metavar=("KIND", "MQTT_URL", "AMQP_URL", "CLIENT_ID", "GROUP")
    )
    args = parser.parse_args()
    if args.device:
        run_device(int(args.device[0]), args.device[1], int(args.device[2]))
    elif args.consume:
        url, exchange, key, count = args.consume
        asyncio.run(run_consumer(url, exchange, key, int(count)))
    elif args.forward:
        kind, mqtt_url, amqp_url, client_id, group = args.forward
        if kind not in FORWARDERS:
            parser.error(f"--forward: no forwarder {kind!r}; one of {', '.join(FORWARDERS)}")
        # Every forwarder on the event loop the daemon uses (customevent serve: uvloop).
        uvloop.run(serve_forwarder(kind, mqtt_url, amqp_url, client_id, group))
    else:
        sys.exit(uvloop.run(bench(args)))


if __name__ == "__main__":
    main()
