"""Fault injection against real processes: the broker stopped, the TCP link cut, a resumable
waiter killed, the daemon stopped under load. Every send answered 2xx must reach a durable
consumer; the figures go to docs/reliability.md (scripts/reliability_report.py)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from collections import Counter

import aio_pika
import httpx
import pytest

from adapter._bus.amqp._queues import resumable_queue
from tests.support.load import Load, check_nothing_lost, run_load
from tests.support.mqtt import LEFTOVER_EXPIRY
from tests.support.processes import Daemon, clean_env, customevent, rabbitmqctl
from tests.support.proxy import Proxy
from tests.support.reliability import record

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]


async def _durable_queue(amqp_url: str, name: str) -> str:
    queue_name = f"test.faults.{uuid.uuid4().hex[:10]}"
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange("customevents", "topic", durable=True)
        queue = await channel.declare_queue(queue_name, durable=True, arguments=LEFTOVER_EXPIRY)
        await queue.bind(exchange, f"external.{name}")
    return queue_name


async def _drain(amqp_url: str, queue_name: str) -> Counter[str]:
    """Every message id in the queue, with how often it arrived; deletes the queue."""
    seen: Counter[str] = Counter()
    connection = await _connect_retrying(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, durable=True, arguments=LEFTOVER_EXPIRY)
        while (message := await queue.get(fail=False, timeout=5)) is not None:
            seen[message.message_id or ""] += 1
            await message.ack()
        await queue.delete(if_unused=False, if_empty=False)
    return seen


async def _connect_retrying(amqp_url: str) -> aio_pika.abc.AbstractConnection:
    for _ in range(120):
        try:
            return await aio_pika.connect(amqp_url)
        except (OSError, aio_pika.exceptions.AMQPError):
            await asyncio.sleep(0.5)
    raise AssertionError("RabbitMQ did not come back")


async def _ready_after(url: str, since: float) -> float:
    async with httpx.AsyncClient(timeout=2) as http:
        for _ in range(600):
            try:
                if (await http.get(url + "/readyz")).status_code == 200:
                    return time.monotonic() - since
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("the daemon did not become ready again within 30 s")


async def test_broker_stopped_and_started_under_send_load(amqp_url: str, unique_name: str) -> None:
    queue_name = await _durable_queue(amqp_url, unique_name)
    with Daemon(
        "faults-broker-restart",
        CUSTOMEVENT_AMQP__URL=amqp_url,
        CUSTOMEVENT_AMQP__RECONNECT_INTERVAL="0.5",
        CUSTOMEVENT_AMQP__PUBLISH_TIMEOUT="5",
    ) as daemon:
        load = Load(daemon.url, unique_name)
        async for _ in run_load(load):
            await asyncio.sleep(2)
            before_outage = len(load.accepted)
            await asyncio.to_thread(rabbitmqctl, "stop_app")
            try:
                await asyncio.sleep(3)
            finally:
                await asyncio.to_thread(rabbitmqctl, "start_app")
            started = time.monotonic()
            recovery = await _ready_after(daemon.url, started)
            accepted_at_recovery = len(load.accepted)
            await asyncio.sleep(2)
        assert len(load.accepted) > accepted_at_recovery, "no send accepted after the restart"
        assert daemon.stop() == 0
    delivered = await _drain(amqp_url, queue_name)
    figures = check_nothing_lost(load, delivered)
    assert figures["refused_503"] > 0, "no send was refused while the broker was down"
    assert figures["other"] == 0, load.count()
    assert before_outage > 0
    record(
        "test_broker_stopped_and_started_under_send_load",
        load="8 HTTP senders, JSON API, RabbitMQ bus",
        fault="rabbitmqctl stop_app for 3 s, then start_app",
        outcome="every 202 delivered; 503 during the outage",
        recovery_s=round(recovery, 2),
        **figures,
    )


async def test_tcp_link_to_the_broker_cut_and_restored(amqp_url: str, unique_name: str) -> None:
    queue_name = await _durable_queue(amqp_url, unique_name)
    async with Proxy.in_front_of(amqp_url) as proxy:
        proxied = proxy.url()
        daemon = Daemon(
            "faults-tcp-cut",
            CUSTOMEVENT_AMQP__URL=proxied,
            CUSTOMEVENT_AMQP__RECONNECT_INTERVAL="0.5",
            CUSTOMEVENT_AMQP__PUBLISH_TIMEOUT="3",
            CUSTOMEVENT_AMQP__HEARTBEAT="5",
        )
        # The proxy lives on this event loop: start and stop the daemon off it.
        await asyncio.to_thread(daemon.start)
        try:
            load = Load(daemon.url, unique_name)
            async for _ in run_load(load):
                await asyncio.sleep(2)
                proxy.refuse()
                await asyncio.sleep(3)
                proxy.restore()
                recovery = await _ready_after(daemon.url, time.monotonic())
                accepted_at_recovery = len(load.accepted)
                await asyncio.sleep(2)
            assert len(load.accepted) > accepted_at_recovery, "no send accepted after the cut"
            assert await asyncio.to_thread(daemon.stop) == 0
        finally:
            await asyncio.to_thread(daemon.__exit__, None, None, None)
    delivered = await _drain(amqp_url, queue_name)
    figures = check_nothing_lost(load, delivered)
    assert figures["refused_503"] > 0, "no send was refused while the link was cut"
    assert figures["other"] == 0, load.count()
    record(
        "test_tcp_link_to_the_broker_cut_and_restored",
        load="8 HTTP senders, JSON API, RabbitMQ bus through a TCP proxy",
        fault="every connection cut and new ones refused for 3 s, then restored",
        outcome="reconnected; every 202 delivered; 503 while cut",
        recovery_s=round(recovery, 2),
        **figures,
    )


async def test_resumable_waiter_killed_and_restarted(amqp_url: str, unique_name: str) -> None:
    wait_id = f"faults-{uuid.uuid4().hex[:12]}"
    env = clean_env(CUSTOMEVENT_AMQP__URL=amqp_url)
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 90))
    command = customevent("wait", unique_name, "--until", until, "--wait-id", wait_id, "--json")
    first = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await _until_consumed(
            connection, resumable_queue("customevents", wait_id, f"internal.{unique_name}")
        )
        first.send_signal(signal.SIGKILL)
        await first.wait()
        sender_settings = {"CUSTOMEVENT_AMQP__URL": amqp_url}
        sent = await asyncio.to_thread(
            subprocess.run,
            customevent("send", unique_name, "-p", "while=down", "--json"),
            env=clean_env(**sender_settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["routed"] is True  # the durable queue kept the binding
        second = await asyncio.to_thread(
            subprocess.run, command, env=env, capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 0, second.stderr
        event = json.loads(second.stdout)
        assert event["properties"] == {"while": "down"}
        channel = await connection.channel()
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(
                resumable_queue("customevents", wait_id, f"internal.{unique_name}"), passive=True
            )
    record(
        "test_resumable_waiter_killed_and_restarted",
        load="one CLI waiter with --wait-id, RabbitMQ bus",
        fault="waiter killed with SIGKILL; event sent while it was down; waiter restarted",
        outcome="the restarted waiter received the event; its queue was removed after",
        sent=1,
        accepted=1,
        lost=0,
        duplicated=0,
    )


async def _until_consumed(connection: aio_pika.abc.AbstractConnection, queue_name: str) -> None:
    for _ in range(300):
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(queue_name, passive=True)
            declared = queue.declaration_result
            if declared.consumer_count:
                await channel.close()
                return
            await channel.close()
        except aio_pika.exceptions.ChannelNotFoundEntity:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"nobody consumed {queue_name} within 30 s")


async def test_daemon_stopped_with_sigterm_under_load(amqp_url: str, unique_name: str) -> None:
    queue_name = await _durable_queue(amqp_url, unique_name)
    daemon = Daemon("faults-sigterm", CUSTOMEVENT_AMQP__URL=amqp_url)
    await asyncio.to_thread(daemon.start)
    load = Load(daemon.url, unique_name, workers=16, pause=0)
    async for _ in run_load(load):
        await asyncio.sleep(2)
        stopped = time.monotonic()
        code = await asyncio.to_thread(daemon.stop, signal.SIGTERM)
        stop_seconds = time.monotonic() - stopped
        await asyncio.sleep(0.5)
    assert code == 0, daemon.log_tail()
    delivered = await _drain(amqp_url, queue_name)
    figures = check_nothing_lost(load, delivered)
    record(
        "test_daemon_stopped_with_sigterm_under_load",
        load="16 HTTP senders without pause, JSON API, RabbitMQ bus",
        fault="SIGTERM to the daemon",
        outcome=f"exit {code}; every 202 delivered; the rest refused or not connected",
        stop_s=round(stop_seconds, 2),
        **figures,
    )
