"""Managing groups: list, purge, delete, dead purge, and the misses, on both buses (RabbitMQ with
an exchange of the test's own, so its registry of groups holds only the test's records)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from adapter import (
    BusUnavailable,
    Client,
    ConfigurationError,
    DeadLetterNotFound,
    Delivery,
    GroupInUse,
    GroupNotFound,
    GroupSubscription,
    Settings,
    load_settings,
)
from adapter._bus._http import HttpBus
from adapter._bus.amqp import _groups as groups_module
from adapter._bus.amqp._queues import (
    dead_queue,
    group_queue,
    registry_arguments,
    registry_queue,
    retry_queue,
)
from adapter._exceptions import edge_of
from adapter.testing import memory_client
from tests.support.proxy import Proxy

GROUPS = {"retry_initial": 0.2, "retry_max": 5.0, "dedup_window": 0.0}


@pytest.fixture
def exchange() -> str:
    return f"t-admin-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def admin_client(
    bus_kind: str, exchange: str, request: pytest.FixtureRequest
) -> AsyncIterator[Client]:
    url = request.getfixturevalue("amqp_url") if bus_kind == "rabbitmq" else None
    settings = load_settings(amqp={"url": url, "exchange": exchange}, groups=GROUPS)
    async with Client(settings) if url is not None else memory_client(settings) as client:
        yield client
        if url is not None:
            for info in await client.groups():
                await client.delete_group(info.name, force=True)
    if url is not None:
        await _drop_broker_side(url, exchange)


async def _drop_broker_side(url: str, exchange: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(registry_queue(exchange))
        await channel.exchange_delete(exchange)


async def _queue_exists(url: str, name: str) -> bool:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        try:
            await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return False
    return True


async def _take(sub: GroupSubscription, seconds: float = 10) -> Delivery:
    async with asyncio.timeout(seconds):
        async for delivery in sub:
            return delivery
    raise AssertionError("no delivery")


async def _depth_reaches(client: Client, group: str, depth: int, seconds: float = 10) -> None:
    async with asyncio.timeout(seconds):
        while (await client.group_info(group)).depth != depth:
            await asyncio.sleep(0.05)


async def test_a_group_is_listed_with_its_bindings_depth_consumers_and_dead_letters(
    admin_client: Client, unique_name: str
) -> None:
    client = admin_client
    async with client.subscribe(unique_name, group="orders", prefetch=1) as sub:
        await client.send_custom_event(unique_name, event_id="e1")
        await (await _take(sub)).dead_letter("bad order")
        [info] = await client.groups()
        assert (info.name, info.bindings) == ("orders", (f"internal.{unique_name}",))
        assert (info.consumers, info.dead_letters) == (1, 1)
    for n in range(3):
        await client.send_custom_event(unique_name, event_id=f"w{n}")
    await _depth_reaches(client, "orders", 3)
    info = await client.group_info("orders")
    assert (info.depth, info.consumers, info.dead_letters) == (3, 0, 1)
    # The gauges' read: the same counts, the bindings left out where they cost a registry read.
    counts = await client.group_info("orders", bindings=False)
    assert (counts.name, counts.depth, counts.consumers, counts.dead_letters) == ("orders", 3, 0, 1)
    assert counts.bindings in ((), info.bindings)
    assert info.to_json() == {
        "name": "orders",
        "bindings": [f"internal.{unique_name}"],
        "depth": 3,
        "consumers": 0,
        "dead_letters": 1,
    }


async def test_purge_drops_what_waits_and_dead_purge_the_dead_letters(
    admin_client: Client, unique_name: str
) -> None:
    client = admin_client
    async with client.subscribe(unique_name, group="p", prefetch=1) as sub:
        await client.send_custom_event(unique_name, event_id="d1")
        await (await _take(sub)).dead_letter("gone")
    for n in range(4):
        await client.send_custom_event(unique_name, event_id=f"w{n}")
    await _depth_reaches(client, "p", 4)
    assert await client.purge_group("p") == 4
    assert (await client.group_info("p")).depth == 0
    assert await client.purge_dead_letters("p") == 1
    assert await client.dead_letters("p") == []
    assert await client.purge_dead_letters("p") == 0
    async with client.subscribe(unique_name, group="p") as sub:  # the group still works
        await client.send_custom_event(unique_name, event_id="after")
        assert (await _take(sub)).event.event_id == "after"


async def test_purge_drops_the_deliveries_waiting_for_a_retry_too(
    admin_client: Client, unique_name: str
) -> None:
    client = admin_client
    async with client.subscribe(unique_name, group="r", prefetch=1) as sub:
        await client.send_custom_event(unique_name, event_id="later")
        await (await _take(sub)).retry("busy", at_least=3)  # 3.2 s in a retry queue
        assert await client.purge_group("r") == 1
        with pytest.raises(TimeoutError):
            await _take(sub, 4.5)
    assert await client.dead_letters("r") == []


async def test_delete_refuses_while_consumers_are_attached_unless_forced(
    admin_client: Client,
    unique_name: str,
    bus_kind: str,
    exchange: str,
    request: pytest.FixtureRequest,
) -> None:
    client = admin_client
    async with client.subscribe(unique_name, group="d", max_attempts=3) as sub:
        await client.send_custom_event(unique_name, event_id="r1")
        await (await _take(sub)).retry("later")  # makes a retry queue
        await (await _take(sub)).dead_letter("given up")
        with pytest.raises(GroupInUse, match="1 consumer") as refused:
            await client.delete_group("d")
        assert (refused.value.group, refused.value.consumers) == ("d", 1)
        assert edge_of(refused.value).exit == 75 and edge_of(refused.value).http == 409
        deleted = await client.delete_group("d", force=True)
        assert (deleted.name, deleted.consumers, deleted.dead_letters) == ("d", 1, 1)
    assert [g.name for g in await client.groups()] == []
    with pytest.raises(GroupNotFound):
        await client.group_info("d")
    if bus_kind == "rabbitmq":
        url = request.getfixturevalue("amqp_url")
        for name in (
            group_queue(exchange, "d"),
            dead_queue(exchange, "d"),
            retry_queue(exchange, "d", 200),
        ):
            assert not await _queue_exists(url, name), name
    # Made again from nothing on the next join.
    async with client.subscribe(unique_name, group="d") as sub:
        info = await client.group_info("d")
        assert (info.depth, info.dead_letters, info.consumers) == (0, 0, 1)


@pytest.mark.parametrize(
    "call",
    ["group_info", "purge_group", "delete_group", "purge_dead_letters", "dead_letters", "replay"],
)
async def test_every_action_on_a_group_that_does_not_exist_is_a_clear_miss(
    admin_client: Client, call: str
) -> None:
    with pytest.raises(GroupNotFound, match="no group 'nowhere'") as missed:
        await getattr(admin_client, call)("nowhere")
    assert missed.value.group == "nowhere"
    if call == "group_info":
        with pytest.raises(GroupNotFound, match="no group 'nowhere'"):
            await admin_client.group_info("nowhere", bindings=False)
    assert (edge_of(missed.value).http, edge_of(missed.value).exit) == (404, 66)


async def test_replaying_an_event_id_with_no_dead_letter_is_a_miss(
    admin_client: Client, unique_name: str
) -> None:
    client = admin_client
    async with client.subscribe(unique_name, group="m") as sub:
        await client.send_custom_event(unique_name, event_id="kept")
        await (await _take(sub)).dead_letter("no")
    with pytest.raises(DeadLetterNotFound, match="'m' has no dead letter of the event 'x'") as miss:
        await client.replay("m", event_id="x")
    assert (miss.value.group, miss.value.event_id) == ("m", "x")
    assert len(await client.dead_letters("m")) == 1  # nothing else was touched


@pytest.mark.parametrize("bus_kind", ["rabbitmq"], indirect=True)
async def test_forged_and_malformed_registry_records_are_dropped(
    admin_client: Client, unique_name: str, exchange: str, amqp_url: str
) -> None:
    client = admin_client
    async with client.subscribe(unique_name, group="real"):
        pass
    hostile = [
        b"x" * 100_000,  # huge
        b"[" * 5000 + b"]" * 5000,  # deep
        b"\xff\xfe not json",
        json.dumps({"group": "../evil", "binding": "internal.a"}).encode(),
        json.dumps({"group": "ok", "binding": "secret.a"}).encode(),  # no such kind
        json.dumps({"group": "ok", "binding": "internal.a/b"}).encode(),
        json.dumps({"group": "ok", "retry": True}).encode(),
        json.dumps({"group": "ok", "retry": 10**12}).encode(),
        json.dumps({"group": "ok", "binding": "internal.a", "more": 1}).encode(),
        json.dumps({"group": "real", "binding": f"internal.{unique_name}"}).encode(),  # a copy
    ]
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for body in hostile:
            await channel.default_exchange.publish(
                aio_pika.Message(body), routing_key=registry_queue(exchange)
            )
    # A group named by a forged record but with no queue is not listed; the real one is, once.
    infos = await client.groups()
    assert [(i.name, i.bindings) for i in infos] == [("real", (f"internal.{unique_name}",))]
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(registry_queue(exchange), passive=True)
        assert queue.declaration_result.message_count == 1  # the rest were removed


async def _fill(
    url: str, queue: str, messages: list[aio_pika.Message], arguments: dict[str, object] | None
) -> None:
    """Put ``messages`` in ``queue`` (declared with ``arguments``; None: it exists), confirmed,
    500 at a time."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        if arguments is not None:
            await channel.declare_queue(queue, durable=True, arguments=arguments)
        for start in range(0, len(messages), 500):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(message, routing_key=queue)
                    for message in messages[start : start + 500]
                )
            )


def _retry_records(group: str, count: int) -> list[aio_pika.Message]:
    """``count`` registry records of the group's retry queues (another process's, say)."""
    return [
        aio_pika.Message(json.dumps({"group": group, "retry": 1000 + n}).encode())
        for n in range(count)
    ]


def _through(proxy: Proxy, exchange: str, publish_timeout: float) -> Settings:
    """Settings on ``proxy`` in front of RabbitMQ, reconnecting at once when it lets through."""
    return load_settings(
        amqp={
            "url": proxy.url(),
            "exchange": exchange,
            "publish_timeout": publish_timeout,
            "reconnect_interval": 0.2,
        },
        groups=GROUPS,
    )


async def _ready(url: str, queue: str, expected: int) -> int:
    """The messages ready in ``queue``, once it holds ``expected`` (a reader's channel closing
    gives its messages back a moment later) or after 5 s."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for _ in range(50):
            declared = await channel.declare_queue(queue, passive=True)
            count = int(declared.declaration_result.message_count or 0)
            if count == expected:
                break
            await asyncio.sleep(0.1)
    return count


@pytest.mark.parametrize("bus_kind", ["rabbitmq"], indirect=True)
async def test_a_registry_of_thousands_of_records_holds_up_no_join_and_is_read_at_once(
    admin_client: Client, exchange: str, amqp_url: str, unique_name: str
) -> None:
    """The registry of a busy vhost: 8,000 records (another process's retry queues of a group).
    A join does not wait for it, and a listing reads it within a 3 s bound for each call to the
    broker. Both failed while each record was a ``basic.get`` of its own (8 s for 8,000), and
    a group's triggers could not join (the CI's shared registry made a webhook test flaky)."""
    records = 8000
    async with admin_client.subscribe(unique_name, group="busy"):
        pass
    await _fill(
        amqp_url, registry_queue(exchange), _retry_records("busy", records), registry_arguments()
    )
    settings = load_settings(
        amqp={"url": amqp_url, "exchange": exchange, "publish_timeout": 3}, groups=GROUPS
    )
    async with Client(settings) as client:
        async with client.subscribe(unique_name, group="new") as sub:
            await client.send_custom_event(unique_name, event_id="after")
            delivery = await _take(sub)
            await delivery.ack()
        infos = await client.groups()
        assert [(i.name, i.bindings) for i in infos] == [
            ("busy", (f"internal.{unique_name}",)),
            ("new", (f"internal.{unique_name}",)),
        ]
    # Every record was given back, and the new group's written once.
    assert await _ready(amqp_url, registry_queue(exchange), records + 2) == records + 2
    connection = await aio_pika.connect(amqp_url)
    async with connection:  # the clean-up deletes the groups, not 8,000 retry queues
        channel = await connection.channel()
        await (await channel.declare_queue(registry_queue(exchange), passive=True)).purge()


async def test_a_link_lost_while_the_registry_is_read_loses_no_record(
    exchange: str, amqp_url: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The link cut while a listing and the background writer read 3,000 records: the listing
    is ``BusUnavailable`` (aiormq's bare Exception was let through), the writer says so and goes
    on (it died with "Task exception was never retrieved"), and every record is still there."""
    records = 3000
    await _fill(
        amqp_url, registry_queue(exchange), _retry_records("busy", records), registry_arguments()
    )
    async with Proxy.in_front_of(amqp_url) as proxy:
        async with Client(_through(proxy, exchange, publish_timeout=3)) as client:
            async with client.subscribe(unique_name, group="busy"):
                listing = asyncio.ensure_future(client.groups())
                await asyncio.sleep(0.05)  # both readings under way
                proxy.cut()
                with pytest.raises(BusUnavailable):
                    await listing
            for _ in range(100):
                if client.bus.connected:
                    break
                await asyncio.sleep(0.1)
            infos = await client.groups()
            assert [i.name for i in infos] == ["busy"]
            # None of the 3,000 lost. (The join's own record, cut on its way, is written by the
            # group's next join.)
            assert await _ready(amqp_url, registry_queue(exchange), records) >= records
            await client.delete_group("busy", force=True)
    assert "Task exception was never retrieved" not in caplog.text
    await _drop_broker_side(amqp_url, exchange)


async def test_dead_letters_read_as_the_broker_goes_away_answer_by_the_bound(
    exchange: str, amqp_url: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link lost once the dead letters' queue is declared, as they are being taken: the
    listing answers ``BusUnavailable`` within its bound (it waited for as long as the broker was
    away: the robust channel waits for the reconnection), and lists them once it is back."""
    async with Proxy.in_front_of(amqp_url) as proxy:
        async with Client(_through(proxy, exchange, publish_timeout=2)) as client:
            async with client.subscribe(unique_name, group="away") as sub:
                await client.send_custom_event(unique_name, event_id="one")
                await (await _take(sub)).dead_letter("refused")
            taking = groups_module._take_ready

            async def away_first(*args: Any, **kwargs: Any) -> Any:
                proxy.refuse()
                return await taking(*args, **kwargs)

            monkeypatch.setattr(groups_module, "_take_ready", away_first)
            async with asyncio.timeout(10):
                with pytest.raises(BusUnavailable):
                    await client.dead_letters("away")
            monkeypatch.setattr(groups_module, "_take_ready", taking)
            proxy.restore()
            listed: list[str] = []
            for _ in range(100):  # until the link is back
                with contextlib.suppress(BusUnavailable):
                    listed = [d.event.event_id for d in await client.dead_letters("away")]
                    break
                await asyncio.sleep(0.1)
            assert listed == ["one"]
            await client.delete_group("away", force=True)
    await _drop_broker_side(amqp_url, exchange)


@pytest.mark.parametrize("bus_kind", ["rabbitmq"], indirect=True)
async def test_ten_thousand_dead_letters_are_listed_in_order_and_given_back(
    admin_client: Client, exchange: str, amqp_url: str, unique_name: str
) -> None:
    """A listing reads at most 10,000 dead letters, in their order, and leaves them all there."""
    client = admin_client
    async with client.subscribe(unique_name, group="dl") as sub:
        await client.send_custom_event(unique_name, event_id="first")
        await (await _take(sub)).dead_letter("the receiver refused it")
    letters = await client.dead_letters("dl")
    assert [letter.event.event_id for letter in letters] == ["first"]
    # The same dead letter 10,049 times more: what a receiver refusing everything leaves.
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(dead_queue(exchange, "dl"), passive=True)
        message = await queue.get(no_ack=False)
        assert message is not None
        copy = aio_pika.Message(
            message.body,
            headers=dict(message.headers or {}),
            message_id=message.message_id,
            content_type=message.content_type,
            timestamp=message.timestamp,
        )
        await message.nack(requeue=True)
    extra = 10_049
    await _fill(amqp_url, dead_queue(exchange, "dl"), [copy] * extra, None)
    letters = await client.dead_letters("dl")
    assert len(letters) == 10_000
    assert all(letter.reason == "the receiver refused it" for letter in letters)
    assert await _ready(amqp_url, dead_queue(exchange, "dl"), 1 + extra) == 1 + extra


@pytest.mark.parametrize("bus_kind", ["rabbitmq"], indirect=True)
async def test_a_group_made_before_the_registry_is_listed_by_its_trigger_name(
    admin_client: Client, exchange: str, amqp_url: str
) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(
            group_queue(exchange, "old"), durable=True, arguments={"x-queue-type": "quorum"}
        )
    try:
        assert await admin_client.groups() == []
        listed = await admin_client.bus.groups(["old"])
        assert [(i.name, i.bindings, i.depth) for i in listed] == [("old", (), 0)]
    finally:
        await admin_client.delete_group("old")


async def test_a_bridge_daemon_bus_has_no_groups_to_manage() -> None:
    bus = HttpBus("http://127.0.0.1:9")
    async with Client(load_settings(), bus=bus) as client:
        with pytest.raises(ConfigurationError, match="groups need RabbitMQ"):
            await client.groups()
        for call in ("group_info", "purge_group", "delete_group", "purge_dead_letters"):
            with pytest.raises(ConfigurationError, match="groups need RabbitMQ"):
                await getattr(client, call)("g")


# -- the command line ----------------------------------------------------------------------------


def _customevent(exchange: str, amqp_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUSTOMEVENT_AMQP__URL": amqp_url, "CUSTOMEVENT_AMQP__EXCHANGE": exchange}
    return subprocess.run(
        [sys.executable, "-m", "adapter._cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("bus_kind", ["rabbitmq"], indirect=True)
async def test_the_group_commands_list_purge_delete_and_miss(
    admin_client: Client, unique_name: str, exchange: str, amqp_url: str
) -> None:
    client = admin_client
    run = lambda *args: asyncio.to_thread(_customevent, exchange, amqp_url, *args)  # noqa: E731
    async with client.subscribe(unique_name, group="cli") as sub:
        await client.send_custom_event(unique_name, event_id="one")
        await (await _take(sub)).dead_letter("no")
        listed = await run("group", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [json.loads(line) for line in listed.stdout.splitlines()] == [
            {
                "name": "cli",
                "bindings": [f"internal.{unique_name}"],
                "depth": 0,
                "consumers": 1,
                "dead_letters": 1,
            }
        ]
        plain = await run("group", "list")
        assert plain.stdout.split() == [
            "cli",
            f"internal.{unique_name}",
            "depth=0",
            "consumers=1",
            "dead_letters=1",
        ]
        refused = await run("group", "delete", "cli")
        assert refused.returncode == 75
        assert "has 1 consumer(s) attached" in refused.stderr and "--force" in refused.stderr
    missing = await run("dead", "replay", "cli", "--event-id", "nonexistent")
    assert missing.returncode == 66
    assert "no dead letter of the event 'nonexistent'" in missing.stderr
    assert "replayed" not in missing.stdout
    purged = await run("dead", "purge", "cli")
    assert (purged.returncode, purged.stdout.strip()) == (
        0,
        "dropped 1 dead letter(s) of group 'cli'",
    )
    assert (await run("group", "purge", "cli", "--json")).stdout.strip() == '{"purged": 0}'
    deleted = await run("group", "delete", "cli")
    assert deleted.returncode == 0 and "deleted group 'cli'" in deleted.stdout
    gone = await run("group", "delete", "cli")
    assert gone.returncode == 66 and "no group 'cli'" in gone.stderr
    empty = await run("group", "list")
    assert empty.returncode == 0 and empty.stdout == "" and "no groups" in empty.stderr
