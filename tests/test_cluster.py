"""The bridge on a RabbitMQ cluster: three nodes on this machine (scripts/rabbitmq-cluster.sh),
all listed in ``amqp.url``. A client connects to a node that answers and moves to another when
its node is lost; a confirmed send is never lost; a resumable wait lives in a quorum queue that
outlives the loss of its node and a restart of the whole cluster; the daemon keeps serving sends.
Only the test cluster's own nodes are stopped. The figures go to docs/reliability.md."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest

from adapter import BusError, Client, Event, SendResult, load_settings
from adapter._bus.amqp import AmqpBus
from adapter._bus.amqp._queues import dead_queue, group_queue, resumable_queue
from adapter._mqtt._testing import free_port
from tests.support.cluster import Cluster, Node, collector, drain
from tests.support.load import Load, check_nothing_lost, run_load
from tests.support.processes import Daemon
from tests.support.reliability import record

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "cluster.md"
PASSWORD = "cluster-s3cret-pw"  # of the test cluster's own user: must never reach a log
WAIT_S = 8.0  # an HTTP wait open across a node loss


@pytest.fixture(scope="module")
def running_cluster() -> Iterator[Cluster]:
    """The local 3-node cluster: the one that runs (CI boots it while it installs), or one these
    tests start with scripts/rabbitmq-cluster.sh, and stop again after them, so that `make test`
    alone runs everything. Required like the single broker: never a skip."""
    cluster = Cluster()
    started = False
    if not any(node.answers() for node in cluster.nodes):
        script = Path(__file__).resolve().parents[1] / "scripts" / "rabbitmq-cluster.sh"
        done = subprocess.run([str(script), "start"], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            ports = ", ".join(str(node.port) for node in cluster.nodes)
            pytest.fail(
                f"the local 3-node RabbitMQ cluster does not answer on 127.0.0.1 ports {ports}, "
                f"and scripts/rabbitmq-cluster.sh start failed: {done.stderr.strip()[-2000:]}"
            )
        started = True
    cluster.heal()
    yield cluster
    if started:
        subprocess.run(
            [str(Path(__file__).resolve().parents[1] / "scripts" / "rabbitmq-cluster.sh"), "stop"],
            capture_output=True,
            timeout=300,
        )


@pytest.fixture
def cluster(running_cluster: Cluster) -> Iterator[Cluster]:
    """The test cluster with every node running; a node that a failed test left stopped is
    started again after it."""
    yield running_cluster
    running_cluster.heal()


def _client(urls: str, **amqp: Any) -> Client:
    settings = {"url": urls, "reconnect_interval": 0.5, "publish_timeout": 5.0, **amqp}
    return Client(load_settings(amqp=settings))


def _node(cluster: Cluster, client: Client) -> Node:
    bus = client.bus
    assert isinstance(bus, AmqpBus)
    assert bus.node is not None, "the client is not connected"
    return cluster.node_at(bus.node)


async def _until(condition: Callable[[], bool], what: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within:g} s")
        await asyncio.sleep(0.05)


async def _send_retrying(client: Client, name: str, properties: dict[str, str]) -> SendResult:
    """A send retried while the cluster moves a quorum queue's leader (it nacks meanwhile),
    as the caller of a 503 would retry."""
    for _ in range(100):
        try:
            return await client.send_custom_event(name, properties)
        except BusError:
            await asyncio.sleep(0.2)
    raise AssertionError("no send was confirmed within 20 s")


@dataclass
class Sends:
    """A steady library sender's outcomes: when each event id was confirmed or refused."""

    confirmed: dict[str, float] = field(default_factory=dict)
    refused: dict[str, float] = field(default_factory=dict)
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    async def steadily(self, client: Client, name: str, stop: asyncio.Event) -> None:
        number = 0
        while not stop.is_set():
            event_id = f"{self.run}-{number}"
            number += 1
            try:
                await client.send_custom_event(name, {"n": str(number)}, event_id=event_id)
                self.confirmed[event_id] = time.monotonic()
            except BusError:
                self.refused[event_id] = time.monotonic()
                await asyncio.sleep(0.02)

    def confirmed_after(self, moment: float) -> int:
        return sum(1 for at in self.confirmed.values() if at > moment)


def _messages(records: list[logging.LogRecord]) -> list[str]:
    """Every record's message, arguments included. aio-pika logs objects whose repr fails once
    they are done (OneShotCallback): those arguments are shown by their type."""

    def shown(argument: object) -> str:
        try:
            return str(argument)
        except Exception:
            return type(argument).__name__

    messages = []
    for entry in records:
        try:
            messages.append(entry.getMessage())
        except Exception:
            messages.append(" ".join([str(entry.msg), *map(shown, entry.args or ())]))
    return messages


def _longest_gap(moments: list[float]) -> float:
    """The failover window as a sender sees it: the longest time without a success."""
    ordered = sorted(moments)
    return max((b - a for a, b in itertools.pairwise(ordered)), default=0.0)


async def test_the_client_connects_to_a_node_that_answers(cluster: Cluster) -> None:
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    # One attempt is one round of the nodes: the node that is down costs no back-off.
    async with _client(f"{down},{cluster.urls}", connect_attempts=1) as client:
        node = _node(cluster, client)
        assert node in cluster.nodes
        result = await client.send_custom_event(f"t.cluster.{uuid.uuid4().hex[:8]}")
        assert result.routed is False


async def test_a_sender_loses_no_confirmed_send_when_its_node_stops(
    cluster: Cluster, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    queue = await collector(cluster.nodes[0].url, f"internal.{unique_name}")
    sends = Sends()
    stop = asyncio.Event()
    urls = await asyncio.to_thread(cluster.urls_as, "cluster-test", PASSWORD)
    async with _client(urls) as client:
        lost = _node(cluster, client)
        sender = asyncio.create_task(sends.steadily(client, unique_name, stop))
        try:
            await _until(lambda: len(sends.confirmed) >= 200, "200 confirmed sends")
            stopping = time.monotonic()
            await cluster.run("stop_app", lost)
            stopped = time.monotonic()
            await _until(lambda: sends.confirmed_after(stopped) >= 200, "sends after the loss")
            moved_to = _node(cluster, client)
        finally:
            stop.set()
            await sender
    await cluster.run("start_app", lost)
    delivered = await drain(cluster.other_than(lost).url, queue)
    lost_sends = set(sends.confirmed) - set(delivered)
    assert not lost_sends, f"{len(lost_sends)} confirmed, never arrived: {sorted(lost_sends)[:5]}"
    assert moved_to != lost
    logged = _messages(caplog.records)
    assert any("the next attempt goes to amqp://cluster-test:***@" in m for m in logged)
    assert not [m for m in logged if PASSWORD in m], "a log line holds the password"
    window = _longest_gap([at for at in sends.confirmed.values() if at > stopping - 5])
    record(
        "test_a_sender_loses_no_confirmed_send_when_its_node_stops",
        load="one library sender, confirmed sends one after another, 3-node cluster in amqp.url",
        fault="rabbitmqctl stop_app on the sender's node (then start_app)",
        outcome="moved to another node; every confirmed send delivered (quorum queue)",
        sent=len(sends.confirmed) + len(sends.refused),
        accepted=len(sends.confirmed),
        lost=len(lost_sends),
        duplicated=sum(count - 1 for count in delivered.values() if count > 1),
        refused=len(sends.refused),
        failover_s=round(window, 2),
    )


async def test_a_group_consumer_loses_nothing_when_its_node_stops(
    cluster: Cluster, unique_name: str
) -> None:
    group = f"t-cluster-{uuid.uuid4().hex[:8]}"
    handled: Counter[str] = Counter()
    confirmed: set[str] = set()
    stop = asyncio.Event()

    async def consume(client: Client) -> None:
        async with client.subscribe(unique_name, group=group) as deliveries:
            joined.set()
            async for delivery in deliveries:
                handled[delivery.event.event_id] += 1
                await delivery.ack()

    async def send(client: Client) -> None:
        # As a sender should: an ambiguous failure is retried with the same event id.
        for number in itertools.count():
            if stop.is_set():
                return
            event_id = f"{group}-{number}"
            while True:
                try:
                    await client.send_custom_event(unique_name, event_id=event_id)
                    confirmed.add(event_id)
                    break
                except BusError:
                    await asyncio.sleep(0.05)

    joined = asyncio.Event()
    lost: Node | None = None
    try:
        async with _client(cluster.urls) as consumer_client, _client(cluster.urls) as sender:
            consumer = asyncio.create_task(consume(consumer_client))
            await asyncio.wait_for(joined.wait(), 30)
            sending = asyncio.create_task(send(sender))
            await _until(lambda: len(handled) >= 100, "100 events handled")
            lost = _node(cluster, consumer_client)
            await cluster.run("stop_app", lost)
            stopped = len(confirmed)
            await _until(lambda: len(confirmed) >= stopped + 100, "sends after the loss")
            stop.set()
            await sending
            await _until(lambda: confirmed <= set(handled), "every confirmed send handled", 120)
            await asyncio.sleep(2)  # any duplicate would show now
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
            assert _node(cluster, consumer_client) != lost
    finally:
        if lost is not None:
            await cluster.run("start_app", lost)
        await _delete_group(cluster, group)
    twice = {event_id: n for event_id, n in handled.items() if n > 1}
    assert not twice, f"handled more than once (de-duplication): {sorted(twice)[:5]}"
    record(
        "test_a_group_consumer_loses_nothing_when_its_node_stops",
        load="a group consumer and a sender retrying refused sends by event id, 3-node cluster",
        fault="rabbitmqctl stop_app on the consumer's node (then start_app)",
        outcome="the consumer moved on; every confirmed send handled once (de-duplication)",
        sent=len(confirmed),
        accepted=len(confirmed),
        lost=len(confirmed - set(handled)),
        duplicated=sum(n - 1 for n in handled.values()),
    )


async def _delete_group(cluster: Cluster, group: str) -> None:
    connection = await aio_pika.connect(cluster.nodes[0].url)
    async with connection:
        channel = await connection.channel()
        for queue in (group_queue("customevents", group), dead_queue("customevents", group)):
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)


async def test_a_resumable_wait_gets_an_event_sent_after_its_node_stopped(
    cluster: Cluster, unique_name: str
) -> None:
    wait_id = f"cluster-{uuid.uuid4().hex[:12]}"
    async with _client(cluster.urls) as waiter:
        lost = _node(cluster, waiter)
        async with waiter.expect(
            "internal", unique_name, until=timedelta(seconds=120), wait_id=wait_id
        ) as wait:
            queue = resumable_queue("customevents", wait_id, f"internal.{unique_name}")
            assert cluster.queue_type_and_members(queue) == ("quorum", 3)
            await cluster.run("stop_app", lost)
            survivor = cluster.other_than(lost)
            async with _client(survivor.url) as sender:
                sent = await _send_retrying(sender, unique_name, {"sent": "after the loss"})
            assert sent.routed, "the quorum queue lost its binding with the node"
            event = await asyncio.wait_for(wait.get(), 90)
        assert isinstance(event, Event), "the wait ended without the event"
        assert event.properties == {"sent": "after the loss"}
        # The wait's own channel can be back before the bus's confirm channel: it is connected
        # again once both are.
        await _until(lambda: waiter.bus.connected, "the waiter's reconnection")
        assert _node(cluster, waiter) != lost
    await cluster.run("start_app", lost)
    record(
        "test_a_resumable_wait_gets_an_event_sent_after_its_node_stopped",
        load="one resumable wait (quorum queue, 3 replicas), library client on the cluster",
        fault="rabbitmqctl stop_app on the waiter's node; an event sent after, through another",
        outcome="the wait moved to another node and received the event",
        sent=1,
        accepted=1,
        lost=0,
        duplicated=0,
    )


async def test_a_temporary_wait_goes_on_after_its_node_stopped(
    cluster: Cluster, unique_name: str
) -> None:
    sent: dict[int, float] = {}
    received: set[int] = set()
    refused = 0
    stop = asyncio.Event()
    async with _client(cluster.urls) as waiter:
        lost = _node(cluster, waiter)
        survivor = cluster.other_than(lost)

        async def send_steadily(sender: Client) -> None:
            nonlocal refused
            number = 0
            while not stop.is_set():
                try:
                    await sender.send_custom_event(unique_name, {"n": str(number)})
                    sent[number] = time.monotonic()
                except BusError:
                    refused += 1
                number += 1
                await asyncio.sleep(0.01)

        async def receive(subscription: Any) -> None:
            while (event := await subscription.get()) is not None:
                received.add(int(event.properties["n"]))

        # A wait's own subscription, which takes every event, not just the first.
        subscription = waiter.bus.subscribe(
            "internal", unique_name, datetime.now(UTC) + timedelta(seconds=120)
        )
        async with subscription, _client(survivor.url) as sender:
            tasks = [
                asyncio.create_task(send_steadily(sender)),
                asyncio.create_task(receive(subscription)),
            ]
            try:
                await _until(lambda: len(received) >= 50, "50 events received")
                stopping = time.monotonic()
                await cluster.run("stop_app", lost)
                stopped = time.monotonic()
                await _until(
                    lambda: (
                        sum(1 for n, at in sent.items() if at > stopped and n in received) >= 100
                    ),
                    "events received after the loss",
                )
            finally:
                stop.set()
                await tasks[0]
                await asyncio.sleep(1)
                tasks[1].cancel()
        assert _node(cluster, waiter) != lost
    await cluster.run("start_app", lost)
    missed = sorted(n for n in sent if n not in received)
    # What is missed lies in one window around the loss; afterwards the wait gets everything.
    last_sent = max(sent)
    assert all(n in received for n in sent if n > last_sent - 50)
    assert all(sent[n] >= stopping - 1 for n in missed), "an event was missed before the loss"
    window = sent[missed[-1]] - sent[missed[0]] if missed else 0.0
    record(
        "test_a_temporary_wait_goes_on_after_its_node_stopped",
        load="one temporary wait (classic queue) on the cluster; a sender on another node, 100/s",
        fault="rabbitmqctl stop_app on the waiter's node",
        outcome=(
            f"the wait moved to another node and went on; the {len(missed)} events sent in its "
            "failover window were missed (as documented)"
        ),
        sent=len(sent),
        accepted=len(sent),
        missed=len(missed),
        refused=refused,
        failover_s=round(window, 2),
    )


class _TimedStatuses(dict[str, int | str]):
    """A Load's statuses that also remember when each answer came."""

    def __init__(self) -> None:
        super().__init__()
        self.at: dict[str, float] = {}

    def __setitem__(self, key: str, value: int | str) -> None:
        self.at[key] = time.monotonic()
        super().__setitem__(key, value)


async def _watch_readiness(url: str, seen: list[tuple[float, int]], stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=2) as http:
        while not stop.is_set():
            try:
                status = (await http.get(url + "/readyz")).status_code
            except httpx.HTTPError:
                status = 0
            seen.append((time.monotonic(), status))
            await asyncio.sleep(0.05)


async def _http_wait(url: str, name: str, seconds: float) -> tuple[int, float]:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=seconds + 30) as http:
        response = await http.get(f"/api/v1/events/{name}/wait", params={"timeout": f"{seconds}s"})
    return response.status_code, time.monotonic() - started


async def _metric(url: str, name: str) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        text = (await http.get("/metrics")).text
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    return sum(values)


async def _until_metric(url: str, name: str, at_least: float) -> None:
    for _ in range(300):
        if await _metric(url, name) >= at_least:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} did not reach {at_least}")


async def test_the_daemon_keeps_serving_sends_when_its_node_stops(
    cluster: Cluster, unique_name: str
) -> None:
    queue = await collector(cluster.nodes[0].url, f"external.{unique_name}")
    connection_name = f"test-cluster-{uuid.uuid4().hex[:8]}"
    daemon = Daemon(
        "cluster-node-loss",
        CUSTOMEVENT_AMQP__URL=await asyncio.to_thread(cluster.urls_as, "cluster-test", PASSWORD),
        CUSTOMEVENT_AMQP__CONNECTION_NAME=connection_name,
        CUSTOMEVENT_AMQP__RECONNECT_INTERVAL="0.5",
        CUSTOMEVENT_AMQP__PUBLISH_TIMEOUT="5",
    )
    await asyncio.to_thread(daemon.start)
    statuses = _TimedStatuses()
    readiness: list[tuple[float, int]] = []
    watching = asyncio.Event()
    try:
        lost = await asyncio.to_thread(cluster.node_of_connection, connection_name)
        load = Load(daemon.url, unique_name, statuses=statuses)
        watcher = asyncio.create_task(_watch_readiness(daemon.url, readiness, watching))
        async for _ in run_load(load):
            await _until(lambda: len(load.accepted) >= 200, "200 accepted sends")
            # An HTTP wait open across the loss, on a name nobody sends: 204 by its deadline.
            quiet = asyncio.create_task(_http_wait(daemon.url, f"{unique_name}.quiet", WAIT_S))
            await _until_metric(daemon.url, "customevent_http_waits_active", 1)
            stopping = time.monotonic()
            await cluster.run("stop_app", lost)
            stopped = time.monotonic()
            await _until(
                lambda at=stopped: sum(1 for k in load.accepted if statuses.at[k] > at) >= 200,
                "sends accepted after the loss",
            )
            quiet_status, quiet_seconds = await quiet
        watching.set()
        await watcher
        assert await _metric(daemon.url, "customevent_bus_reconnects_total") >= 1
        moved_to = await asyncio.to_thread(cluster.node_of_connection, connection_name)
        assert await asyncio.to_thread(daemon.stop) == 0, daemon.log_tail()
    finally:
        await asyncio.to_thread(daemon.__exit__, None, None, None)
    await cluster.run("start_app", lost)
    delivered = await drain(cluster.other_than(lost).url, queue)
    figures = check_nothing_lost(load, delivered)
    assert figures["other"] == 0, load.count()
    assert moved_to != lost
    # 503 only while the daemon was moving: from the loss until it was ready again.
    not_ready = [at for at, status in readiness if status != 200 and at >= stopping]
    ready_again = next(
        (at for at, status in readiness if status == 200 and not_ready and at > not_ready[-1]),
        stopped,
    )
    window_end = ready_again + 1
    late = [
        k for k, v in statuses.items() if v == 503 and not stopping <= statuses.at[k] <= window_end
    ]
    assert not late, f"{len(late)} sends refused outside the failover window"
    assert quiet_status == 204 and quiet_seconds < WAIT_S + 2, (quiet_status, quiet_seconds)
    log = daemon.log_path.read_text(errors="replace")
    assert "RabbitMQ: reconnected to amqp://cluster-test:***@" in log
    assert PASSWORD not in log, "the daemon logged the password"
    window = _longest_gap([statuses.at[k] for k in load.accepted if statuses.at[k] > stopping - 5])
    record(
        "test_the_daemon_keeps_serving_sends_when_its_node_stops",
        load="8 HTTP senders, JSON API, daemon with the 3-node cluster in amqp.url",
        fault="rabbitmqctl stop_app on the daemon's node (then start_app)",
        outcome=(
            "moved to another node; every 202 delivered; 503 only in the failover window; an "
            "open HTTP wait answered by its deadline; no password in the log"
        ),
        failover_s=round(window, 2),
        **figures,
    )


def test_the_cluster_guide_runs(cluster: Cluster, unique_name: str) -> None:
    marker = "<!-- docs-test: see test_the_cluster_guide_runs -->\n```sh\n"
    block = GUIDE.read_text().split(marker, 1)[1].split("```", 1)[0]
    script = (
        block.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
        .replace("demo.cluster", unique_name)
        .replace("demo-cluster", f"guide-{uuid.uuid4().hex[:12]}")
        .replace("customevent-1@localhost", cluster.nodes[0].name)
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CUSTOMEVENT_") or k.startswith("CUSTOMEVENT_TEST_CLUSTER_")
    }
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=GUIDE.parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{script}\n{result.stdout}\n{result.stderr}"
    assert "answer=42" in result.stdout.splitlines()


# -- a whole-cluster restart -------------------------------------------------------------------


@dataclass
class Survivor:
    """Something durable that must outlive a restart of the whole cluster: ``before`` sets it up
    and leaves an event in it; ``after`` (a new client, after the restart) must get that event."""

    what: str
    before: Callable[[Client, str], Awaitable[None]]
    after: Callable[[Client, str], Awaitable[None]]


async def _resumable_before(client: Client, name: str) -> None:
    # Left by an error, a resumable wait's queue stays for the next wait with its id.
    with pytest.raises(RuntimeError):
        async with client.expect(
            "internal", name, until=timedelta(minutes=5), wait_id=f"restart-{name}"
        ):
            raise RuntimeError("the waiter went away")
    result = await client.send_custom_event(name, {"kept": "across the restart"})
    assert result.routed


async def _resumable_after(client: Client, name: str) -> None:
    event = await client.wait_custom_event_until(
        "internal", name, timedelta(seconds=60), wait_id=f"restart-{name}"
    )
    assert event is not None and event.properties == {"kept": "across the restart"}


def _restart_group(name: str) -> str:
    """The group of one run: unique like the name, so a cluster kept from an earlier run (its data
    directory outlives a run) cannot hand this run the events that run left behind."""
    run, n = name.rsplit(".", 2)[-2:]
    return f"restart-{run}-{n}"


async def _group_before(client: Client, name: str) -> None:
    group = _restart_group(name)
    async with client.subscribe(name, group=group) as deliveries:
        await client.send_custom_event(name, {"fate": "dead letter"}, event_id=f"{name}-dead")
        async with asyncio.timeout(30):
            async for delivery in deliveries:
                await delivery.dead_letter("kept across the restart")
                break
    # Sent while no consumer runs: it waits in the group.
    await client.send_custom_event(name, {"fate": "waiting"}, event_id=f"{name}-waiting")


async def _group_after(client: Client, name: str) -> None:
    group = _restart_group(name)
    try:
        dead = await client.dead_letters(group)
        assert [(d.event.event_id, d.reason) for d in dead] == [
            (f"{name}-dead", "kept across the restart")
        ]
        async with client.subscribe(name, group=group) as deliveries:
            async with asyncio.timeout(60):
                async for delivery in deliveries:
                    assert delivery.event.properties == {"fate": "waiting"}
                    await delivery.ack()
                    break
    finally:
        connection = await aio_pika.connect(client.settings.amqp.url.split(",")[0])
        async with connection:
            channel = await connection.channel()
            for queue in (group_queue("customevents", group), dead_queue("customevents", group)):
                await channel.queue_delete(queue)


SURVIVORS = [
    Survivor("resumable wait", _resumable_before, _resumable_after),
    Survivor("group and its dead letters", _group_before, _group_after),
]


async def test_a_whole_cluster_restart_keeps_what_is_durable(
    cluster: Cluster, unique_name: str
) -> None:
    names = {s.what: f"{unique_name}.{n}" for n, s in enumerate(SURVIVORS)}
    async with _client(cluster.urls) as client:
        for survivor in SURVIVORS:
            await survivor.before(client, names[survivor.what])
    started = time.monotonic()
    await asyncio.to_thread(cluster.restart)
    restart = time.monotonic() - started
    async with _client(cluster.urls) as client:
        for survivor in SURVIVORS:
            await survivor.after(client, names[survivor.what])
    record(
        "test_a_whole_cluster_restart_keeps_what_is_durable",
        load=", ".join(s.what for s in SURVIVORS) + ", each holding an event",
        fault="all three nodes stopped, then started (scripts/rabbitmq-cluster.sh stop, start)",
        outcome="every durable queue and its event came back",
        sent=len(SURVIVORS),
        accepted=len(SURVIVORS),
        lost=0,
        restart_s=round(restart, 1),
    )
