"""The bridge on a RabbitMQ cluster next to one node, in one run: confirmed sends/s into a
durable (quorum) queue on the local 3-node cluster (three replicas) against a single node (one),
and the failover windows when a node is lost: from the loss to the next confirmed send of a
sender on that node, and the span of events a temporary wait on that node missed.

The cluster is the one of ``scripts/rabbitmq-cluster.sh``: this benchmark starts it when it is
not running (and stops it again at the end), and stops and starts its nodes' apps. The single
node is ``--amqp-url`` (default ``$CUSTOMEVENT_AMQP__URL`` or 127.0.0.1:5672); it is never
stopped. ``python bench/run.py cluster`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402
    Figure,
    Stopwatch,
    alternating,
    amqp_url,
    in_flight,
    log,
    median,
    rate,
    run_id,
)

import adapter  # noqa: E402
from adapter._bus.amqp import AmqpBus  # noqa: E402
from adapter._bus.amqp._queues import dead_queue, durable_queue_arguments, group_queue  # noqa: E402
from adapter._settings import load_settings  # noqa: E402

SCRIPT = HERE.parent / "scripts" / "rabbitmq-cluster.sh"
CONCURRENCY = 100  # sends in flight, as in bench_core
WAIT_RATE = 100  # events per second sent to the temporary wait


class LocalCluster:
    """The script's cluster: its URL list and which node listens on which port."""

    def __init__(self) -> None:
        self.started_here = _script("status", check=False).returncode != 0
        self.urls = _script("start").stdout.strip()
        self.nodes: dict[int, str] = {}  # AMQP port -> node name
        for line in _script("status").stdout.splitlines():
            fields = line.split()
            if len(fields) >= 2 and "@" in fields[0] and fields[1].startswith("127.0.0.1:"):
                self.nodes[int(fields[1].split(":")[1])] = fields[0]

    def node_of(self, client: adapter.Client) -> str:
        bus = client.bus
        assert isinstance(bus, AmqpBus) and bus.node is not None
        return self.nodes[urlsplit(bus.node).port or 0]

    def url_other_than(self, node: str) -> str:
        port = next(p for p, name in self.nodes.items() if name != node)
        return f"amqp://guest:guest@127.0.0.1:{port}/"

    async def ctl(self, node: str, command: str) -> None:
        process = await asyncio.create_subprocess_exec(
            "rabbitmqctl", "-q", "-n", node, command, stdout=subprocess.DEVNULL
        )
        if await process.wait() != 0:
            raise RuntimeError(f"rabbitmqctl -n {node} {command} failed")

    def close(self) -> None:
        if self.started_here:
            _script("stop")


def _script(command: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), command], capture_output=True, text=True, check=check, timeout=600
    )


def _client(url: str, exchange: str) -> adapter.Client:
    settings = {"url": url, "exchange": exchange, "reconnect_interval": 0.5}
    return adapter.Client(load_settings(amqp={**settings, "publish_timeout": 5.0}))


@contextlib.asynccontextmanager
async def _durable_queue(url: str, exchange: str, key: str) -> AsyncIterator[str]:
    """The run's exchange and a durable queue of the project's type bound to ``key``; both
    deleted after."""
    name = f"bench.cluster.{run_id()}"
    connection = await aio_pika.connect(url.split(",")[0])
    async with connection:
        channel = await connection.channel()
        ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(
            name, durable=True, arguments=durable_queue_arguments({"x-expires": 600_000})
        )
        await queue.bind(ex, key)
        try:
            yield name
        finally:
            await queue.delete(if_unused=False, if_empty=False)
            await ex.delete()


async def _send_rate(url: str, exchange: str, name: str, count: int) -> float:
    async with _client(url, exchange) as client:
        await client.send_custom_event(name, {"k": "v"})  # warm-up
        seconds = await in_flight(
            count, CONCURRENCY, lambda i: client.send_custom_event(name, {"k": "v"})
        )
    return rate(count, seconds)


async def _group_rate(url: str, exchange: str, count: int) -> float:
    """Events/s handed by a group (its quorum queue, de-duplication on) to a consumer that acks
    each, ``count`` of them waiting in the group first."""
    group = f"bench-{run_id()}"
    name = f"bench.groups.{group}"
    async with _client(url, exchange) as client:
        async with client.subscribe(name, group=group, prefetch=64):
            pass
        await in_flight(count, CONCURRENCY, lambda i: client.send_custom_event(name, {"k": "v"}))
        done = 0
        async with client.subscribe(name, group=group, prefetch=64) as deliveries:
            with Stopwatch() as watch:
                async for delivery in deliveries:
                    await delivery.ack()
                    done += 1
                    if done == count:
                        break
    connection = await aio_pika.connect(url.split(",")[0])
    async with connection:
        channel = await connection.channel()
        for queue in (group_queue("customevents", group), dead_queue("customevents", group)):
            await channel.queue_delete(queue)
    return rate(count, watch.seconds)


async def _client_on(node: str, cluster: LocalCluster, exchange: str) -> adapter.Client:
    """A client on the cluster that started on ``node`` (the nodes are shuffled per client)."""
    for _ in range(30):
        client = _client(cluster.urls, exchange)
        await client.__aenter__()
        if cluster.node_of(client) == node:
            return client
        await client.__aexit__(None, None, None)
    raise RuntimeError(f"no client landed on {node} in 30 tries")


async def _failover_round(cluster: LocalCluster, exchange: str, name: str) -> tuple[float, float]:
    """Lose the node a sender and a temporary wait are on. Returns the sender's window (the
    longest time without a confirmed send) and the span of events the wait missed."""
    confirmed: list[float] = []
    sent: dict[int, float] = {}
    received: set[int] = set()
    stop = asyncio.Event()
    async with _client(cluster.urls, exchange) as sender:
        lost = cluster.node_of(sender)
        waiter = await _client_on(lost, cluster, exchange)
        try:
            subscription = waiter.bus.subscribe(
                "internal", f"{name}.wait", datetime.now(UTC) + timedelta(seconds=120)
            )
            async with subscription, _client(cluster.url_other_than(lost), exchange) as other:

                async def send_steadily() -> None:
                    while not stop.is_set():
                        try:
                            await sender.send_custom_event(name, {"k": "v"})
                            confirmed.append(time.monotonic())
                        except adapter.BusError:
                            await asyncio.sleep(0.01)  # refused at once while disconnected

                async def feed_the_wait() -> None:
                    for number in itertools.count():
                        if stop.is_set():
                            return
                        with contextlib.suppress(adapter.BusError):
                            await other.send_custom_event(f"{name}.wait", {"n": str(number)})
                            sent[number] = time.monotonic()
                        await asyncio.sleep(1 / WAIT_RATE)

                async def receive() -> None:
                    while (event := await subscription.get()) is not None:
                        received.add(int(event.properties["n"]))

                tasks = [asyncio.create_task(f()) for f in (send_steadily, feed_the_wait)]
                receiver = asyncio.create_task(receive())
                await asyncio.sleep(1.5)
                stopping = time.monotonic()
                await cluster.ctl(lost, "stop_app")
                await asyncio.sleep(3)
                stop.set()
                await asyncio.gather(*tasks)
                await asyncio.sleep(1)
                receiver.cancel()
        finally:
            await waiter.__aexit__(None, None, None)
    await cluster.ctl(lost, "start_app")
    around = sorted(t for t in confirmed if t > stopping - 1)
    send_window = max((b - a for a, b in itertools.pairwise(around)), default=0.0)
    missed = sorted(n for n in sent if n not in received and sent[n] > stopping - 1)
    wait_window = sent[missed[-1]] - sent[missed[0]] + 1 / WAIT_RATE if missed else 0.0
    log(f"lost {lost}: sends resumed after {send_window:.2f} s; the wait missed {len(missed)}")
    return send_window, wait_window


async def main(args: argparse.Namespace) -> list[Figure]:
    # aio-pika logs every closed channel of a lost node at length: keep the run's output readable.
    for noisy in ("aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    single = amqp_url(args)
    quick = getattr(args, "quick", False)
    rounds = 1 if quick else max(1, getattr(args, "rounds", 3))
    count = 1000 if quick else 5000
    rid = run_id()
    exchange = f"bench.customevents.{rid}"
    name = f"bench.{rid}.routed"
    log("starting (or finding) the local cluster: scripts/rabbitmq-cluster.sh start")
    cluster = LocalCluster()
    try:
        log(f"confirmed sends into a quorum queue: {count:,} per round, {CONCURRENCY} in flight")
        async with (
            _durable_queue(single, exchange, f"internal.{name}"),
            _durable_queue(cluster.urls, exchange, f"internal.{name}"),
        ):
            sends = await alternating(
                rounds,
                {
                    "single node": lambda r: _send_rate(single, exchange, name, count),
                    "3-node cluster": lambda r: _send_rate(cluster.urls, exchange, name, count),
                },
            )
            log(f"group deliveries: {count:,} per round")
            groups = await alternating(
                rounds,
                {
                    "single node": lambda r: _group_rate(single, exchange, count),
                    "3-node cluster": lambda r: _group_rate(cluster.urls, exchange, count),
                },
            )
        windows: list[tuple[float, float]] = []
        log(f"failover: {rounds} rounds, each stopping the node a sender and a wait are on")
        for _ in range(rounds):
            windows.append(await _failover_round(cluster, exchange, f"bench.{rid}.failover"))
    finally:
        cluster.close()
    send_windows = [w[0] for w in windows]
    wait_windows = [w[1] for w in windows]
    return [
        Figure(
            f"confirmed sends into a quorum queue ({CONCURRENCY} in flight), 3-node cluster",
            median(sends["3-node cluster"]),
            "msg/s",
            reference=median(sends["single node"]),
            reference_name="one node",
            samples=tuple(sends["3-node cluster"]),
            note="three replicas confirm each message instead of one: what the cluster costs",
        ),
        Figure(
            "group deliveries to a consumer that acks each (de-duplication on), 3-node cluster",
            median(groups["3-node cluster"]),
            "events/s",
            reference=median(groups["single node"]),
            reference_name="one node",
            samples=tuple(groups["3-node cluster"]),
            note="the group's quorum queue replicated on three nodes",
        ),
        Figure(
            "failover window of a sender whose node is lost (to its next confirmed send)",
            median(send_windows),
            "s",
            samples=tuple(send_windows),
        ),
        Figure(
            f"failover window of a temporary wait whose node is lost ({WAIT_RATE} events/s)",
            median(wait_windows),
            "s",
            samples=tuple(wait_windows),
            note="events sent in this window do not reach the wait (docs/waits.md)",
        ),
    ]
