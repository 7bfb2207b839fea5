"""The bus as a hostile peer sees it: what anyone allowed to publish to the exchange can send to
the bridge's consumers (groups and ``listen``, triggers, waits, the retained stream), and the
resources a burst of waits or a second deployment on the same virtual host could take.

Classes of abuse and their bounds:

- malformed: bodies that are no JSON object, 100k-deep JSON, ``ce-time`` out of any calendar, a
  NUL in ``ce-id``, headers of the wrong type: one decoder (``adapter/_bus/amqp/_codec.py``)
  refuses each with a reason; a group dead-letters it and acknowledges it, a wait drops it (both
  count it, ``customevent_bus_refused_total``); the next message is handled;
- a settle that fails on a live channel (the retry queue deleted under the group): the delivery
  is given back after the backoff, never stranded unacknowledged;
- forged headers: ``x-original-routing-key``, ``x-event-principal``, ``x-retry-count``,
  ``x-delivery-count`` from a publisher are not believed: the kind is the routing key's, a
  principal is taken only from a trusted AMQP user (RabbitMQ checks ``user_id``);
- replayed ids: de-duplication knows an event by its sender, name and id, so one sender cannot
  suppress another's;
- a wait id reused for another name or kind: 409 (``WaitConflict``), never the other's events;
- a burst of resumable waits (600, 50 at once): no channel number reused while open, no connection
  closed, no channel left;
- wait queues deleted under their waits (once, or again and again in bursts), or lost with a
  cluster node (a move to a new name, simulated): declared and bound again, every event sent
  afterwards heard, no channel or task left;
- two deployments on one virtual host (``amqp.exchange`` a and b): no queue shared;
- a virtual host that does not exist: refused at once, named, exit 77.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import aio_pika
import httpx
import pytest

from adapter import (
    BrokerAuthenticationError,
    BusError,
    Client,
    ConfigurationError,
    Event,
    WaitConflict,
    load_settings,
)
from adapter._bus._base import Subscription
from adapter._bus.amqp._queues import dead_queue, group_queue, retained_stream
from adapter._cli import shown_text
from adapter._listen import command_environment
from adapter._secrets import hash_token
from adapter.testing import BridgeDaemon
from tests.support.broker import connection_channels, queues_named, rabbitmqctl
from tests.support.http import HEADERS, make_settings
from tests.support.metrics import own_metrics, sample

GROUPS = {"retry_initial": 0.2, "retry_max": 0.4, "dedup_window": 60.0}


async def _publish(url: str, exchange: str, key: str, body: bytes, **properties: object) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        target = await channel.get_exchange(exchange, ensure=False)
        await target.publish(aio_pika.Message(body, **properties), routing_key=key)  # type: ignore[arg-type]


async def _delete_queues(*names: str) -> None:
    for name in names:
        with contextlib.suppress(AssertionError):
            await rabbitmqctl("delete_queue", name)


async def _delete_exchange(url: str, exchange: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(exchange)


async def _next(deliveries: object, within: float = 10.0) -> object:
    async with asyncio.timeout(within):
        return await anext(aiter(deliveries))  # type: ignore[call-overload]


async def _dead_count(url: str, queue: str) -> int:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


@pytest.mark.rabbitmq
async def test_poison_messages_are_dead_lettered_and_the_group_goes_on(
    amqp_url: str, unique_name: str
) -> None:
    group = f"poison-{uuid.uuid4().hex[:8]}"
    poisons: list[tuple[bytes, dict[str, object]]] = [
        (b"[" * 100_000 + b"]" * 100_000, {}),
        (b'{"a": "1"}', {"headers": {"ce-time": "9999-12-31T23:59:59-14:00"}}),
        (b'{"a": "1"}', {"headers": {"ce-id": "bad\x00id"}}),
        (b"not json", {}),
        (b'{"a": 1}', {}),
        (b'{"a": "1"}', {"headers": {"ce-specversion": "0.3"}}),
        # Huge: past what an event of limits.max_bytes can be, refused before it is parsed.
        (b'{"a": "' + b"x" * 500_000 + b'"}', {}),
    ]
    settings = load_settings(amqp={"url": amqp_url}, groups=GROUPS)
    async with Client(settings, metrics=own_metrics()) as client:
        try:
            # Prefetch 1, as listen has: one message never settled would stall the group.
            async with client.subscribe(
                unique_name, group=group, kind="external", prefetch=1
            ) as deliveries:
                for body, properties in poisons:
                    await _publish(
                        amqp_url, "customevents", f"external.{unique_name}", body, **properties
                    )
                await client.send_custom_event(unique_name, {"good": "yes"}, kind="external")
                delivery = await _next(deliveries)
                assert delivery.event.properties == {"good": "yes"}  # type: ignore[attr-defined]
                await delivery.ack()  # type: ignore[attr-defined]
            refused = sample(client.metrics, "customevent_bus_refused_total", consumer="group")
            assert refused == len(poisons)
            assert await _dead_count(amqp_url, dead_queue("customevents", group)) == len(poisons)
        finally:
            await _delete_queues(
                group_queue("customevents", group), dead_queue("customevents", group)
            )


@pytest.mark.rabbitmq
async def test_a_retry_whose_copy_is_not_kept_is_given_back_not_stranded(
    amqp_url: str, unique_name: str
) -> None:
    """The retry queue deleted under the group (another process's ``group delete``): the retry's
    copy is returned, so ``retry`` raises; the delivery must come again (it would otherwise stay
    unacknowledged on a live channel for as long as the consumer runs, and every copy of it be
    dropped as a duplicate of one under way), and the next retry declares the queue again."""
    group = f"strand-{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        amqp={"url": amqp_url}, groups={**GROUPS, "retry_max": GROUPS["retry_initial"]}
    )
    retry = f"{group_queue('customevents', group)}/retry/200"
    async with Client(settings) as client:
        try:
            async with client.subscribe(unique_name, group=group, prefetch=4) as deliveries:
                await client.send_custom_event(unique_name, {"a": "1"}, event_id=f"{group}-e")
                first = await _next(deliveries)
                await first.retry("flaky")  # type: ignore[attr-defined]  # declares the retry queue
                second = await _next(deliveries)
                assert second.attempt == 2  # type: ignore[attr-defined]
                await rabbitmqctl("delete_queue", retry)
                with pytest.raises(BusError, match="no queue"):
                    await second.retry("flaky again")  # type: ignore[attr-defined]
                third = await _next(deliveries, within=5)  # given back after the backoff
                assert third.event.event_id == f"{group}-e"  # type: ignore[attr-defined]
                assert third.attempt == 3  # type: ignore[attr-defined]
                await third.retry("once more")  # type: ignore[attr-defined]  # declared again
                fourth = await _next(deliveries)
                assert fourth.attempt == 4  # type: ignore[attr-defined]
                await fourth.ack()  # type: ignore[attr-defined]
                with pytest.raises(TimeoutError):
                    await _next(deliveries, within=1)
            assert await queues_named(retry)
        finally:
            await _delete_queues(group_queue("customevents", group), retry)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("poisons", [1, 30])
async def test_a_poison_message_whose_dead_letters_queue_was_deleted_is_given_back_once(
    amqp_url: str, unique_name: str, poisons: int
) -> None:
    """The dead letters' queue deleted under the group, then poison messages (one, or a flood of
    30 past the prefetch of 4): each dead letter is refused (no queue), so each message is given
    back once, the queue declared again, and on its next delivery it is dead-lettered. Settled
    once each time: a second settle of one delivery tag would make RabbitMQ close the consumer's
    channel (and hand out its other messages again)."""
    group = f"graves-{uuid.uuid4().hex[:8]}"
    settings = load_settings(amqp={"url": amqp_url}, groups=GROUPS)
    dead = dead_queue("customevents", group)
    async with Client(settings, metrics=own_metrics()) as client:
        try:
            async with client.subscribe(
                unique_name, group=group, kind="external", prefetch=4
            ) as deliveries:
                closed: list[object] = []
                deliveries._channel.close_callbacks.add(  # type: ignore[attr-defined]
                    lambda *args: closed.append(args)
                )
                await rabbitmqctl("delete_queue", dead)
                for _ in range(poisons):
                    await _publish(amqp_url, "customevents", f"external.{unique_name}", b"not json")
                for _ in range(100):
                    if await queues_named(dead) and await _dead_count(amqp_url, dead) == poisons:
                        break
                    await asyncio.sleep(0.1)
                assert await _dead_count(amqp_url, dead) == poisons
                await client.send_custom_event(unique_name, {"good": "yes"}, kind="external")
                delivery = await _next(deliveries)
                assert delivery.event.properties == {"good": "yes"}  # type: ignore[attr-defined]
                await delivery.ack()  # type: ignore[attr-defined]
                # The channel was never closed by the broker for a double settle.
                assert closed == []
        finally:
            await _delete_queues(group_queue("customevents", group), dead)


@pytest.mark.rabbitmq
async def test_headers_from_the_bus_are_not_credentials(amqp_url: str, unique_name: str) -> None:
    group = f"forged-{uuid.uuid4().hex[:8]}"
    forged = {
        "x-original-routing-key": f"internal.{unique_name}.forged",
        "x-event-principal": "admin",
        "ce-principal": "admin",
        "x-retry-count": "100",
        "x-delivery-count": 7,
    }
    async with Client(load_settings(amqp={"url": amqp_url}, groups=GROUPS)) as client:
        try:
            async with client.subscribe(
                f"{unique_name}.#", group=group, kind="external"
            ) as deliveries:
                # A third-party publisher (no user_id: RabbitMQ cannot vouch for it).
                await _publish(
                    amqp_url,
                    "customevents",
                    f"external.{unique_name}.x",
                    b'{"n": "1"}',
                    headers=forged,
                )
                first = await _next(deliveries)
                event: Event = first.event  # type: ignore[attr-defined]
                assert (event.kind, event.name, event.principal) == (
                    "external",
                    f"{unique_name}.x",
                    None,
                )
                assert first.attempt == 1  # type: ignore[attr-defined]
                # Through the bridge's own retry path the kind and name stay what they were.
                await first.retry("again")  # type: ignore[attr-defined]
                second = await _next(deliveries)
                assert second.event.kind == "external"  # type: ignore[attr-defined]
                assert second.event.name == f"{unique_name}.x"  # type: ignore[attr-defined]
                assert second.attempt == 2  # type: ignore[attr-defined]
                await second.ack()  # type: ignore[attr-defined]
                # The bridge's own publisher (its user_id, which RabbitMQ checked) is believed.
                await client.send_custom_event(f"{unique_name}.y", kind="external", principal="ops")
                third = await _next(deliveries)
                assert third.event.principal == "ops"  # type: ignore[attr-defined]
                await third.ack()  # type: ignore[attr-defined]
        finally:
            await _delete_queues(
                group_queue("customevents", group),
                dead_queue("customevents", group),
                *[q for q in await queues_named(group_queue("customevents", group) + "/retry")],
            )


@pytest.mark.parametrize("bus", ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def test_de_duplication_cannot_suppress_another_senders_event(
    bus: str, request: pytest.FixtureRequest, unique_name: str
) -> None:
    url = request.getfixturevalue("amqp_url") if bus == "rabbitmq" else None
    group = f"dd-{uuid.uuid4().hex[:8]}"
    async with Client(load_settings(amqp={"url": url}, groups=GROUPS)) as client:
        try:
            async with client.subscribe(f"{unique_name}.#", group=group) as deliveries:
                await client.send_custom_event(
                    f"{unique_name}.dev.noise", event_id="deploy-42", principal="dev"
                )
                await client.send_custom_event(
                    f"{unique_name}.ops.deploy", event_id="deploy-42", principal="ops"
                )
                got = []
                for _ in range(2):
                    delivery = await _next(deliveries)
                    got.append(delivery.event.name)  # type: ignore[attr-defined]
                    await delivery.ack()  # type: ignore[attr-defined]
                assert sorted(got) == [f"{unique_name}.dev.noise", f"{unique_name}.ops.deploy"]
                # A true redelivery (same sender, name and id) is still dropped.
                await client.send_custom_event(
                    f"{unique_name}.ops.deploy", event_id="deploy-42", principal="ops"
                )
                await client.send_custom_event(f"{unique_name}.after", event_id="after-1")
                delivery = await _next(deliveries)
                assert delivery.event.name == f"{unique_name}.after"  # type: ignore[attr-defined]
                await delivery.ack()  # type: ignore[attr-defined]
        finally:
            if url is not None:
                await _delete_queues(
                    group_queue("customevents", group), dead_queue("customevents", group)
                )


@pytest.mark.parametrize("bus", ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def test_a_wait_id_belongs_to_one_name_and_kind(
    bus: str, request: pytest.FixtureRequest, unique_name: str
) -> None:
    url = request.getfixturevalue("amqp_url") if bus == "rabbitmq" else None
    wait_id = f"ra-{uuid.uuid4().hex[:10]}"
    async with Client(load_settings(amqp={"url": url, "wait_grace": 2.0})) as client:

        class Leave(Exception):
            pass

        with pytest.raises(Leave):  # left early: the wait is kept for a comeback
            async with client.expect(
                "internal", f"{unique_name}.ra", until=timedelta(seconds=30), wait_id=wait_id
            ):
                raise Leave
        await client.send_custom_event(f"{unique_name}.ra", {"for": "ra"})
        for kind, name in (("internal", f"{unique_name}.rb"), ("external", f"{unique_name}.ra")):
            with pytest.raises(WaitConflict) as conflict:
                await client.wait_custom_event_until(
                    kind, name, timedelta(seconds=1), wait_id=wait_id
                )
            assert f"{unique_name}.ra" in str(conflict.value)
        # Its own comeback gets what was sent meanwhile.
        event = await client.wait_custom_event_until(
            "internal", f"{unique_name}.ra", timedelta(seconds=5), wait_id=wait_id
        )
        assert event is not None and event.properties == {"for": "ra"}


def test_a_wait_id_reused_over_http_is_409_and_shares_are_per_caller() -> None:
    settings = make_settings(http={"max_resumable_waits_per_caller": 2})
    with BridgeDaemon(settings) as daemon, httpx.Client(base_url=daemon.url, timeout=30) as http:

        def leave_early(name: str, wait_id: str, headers: dict[str, str]) -> None:
            params = {"timeout": "30s", "stream": "true", "wait_id": wait_id}
            with http.stream(
                "GET", f"/api/v1/events/{name}/wait", params=params, headers=headers
            ) as r:
                assert r.status_code == 200
                assert r.headers["x-customevent-wait"] == "bound"

        leave_early("t.ra", "job-1", HEADERS)
        answer = http.get(
            "/api/v1/events/t.rb/wait",
            params={"timeout": "1s", "wait_id": "job-1"},
            headers=HEADERS,
        )
        assert answer.status_code == 409, answer.text
        assert "t.ra" in answer.json()["detail"] and "t.rb" in answer.json()["detail"]
        # ops holds its share of kept resumable waits (2): a third is 429, with a Retry-After
        # that says when the first is let go (about 30 s away, not "1").
        leave_early("t.rc", "job-2", HEADERS)
        refused = http.get(
            "/api/v1/events/t.rd/wait",
            params={"timeout": "1s", "wait_id": "job-3"},
            headers=HEADERS,
        )
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) > 10
        # Another principal is served.
        from tests.support.http import LIMITED, basic

        other = http.get(
            "/api/v1/events/t.limited.x/wait",
            params={"timeout": "0.2s", "wait_id": "job-3"},
            headers=basic(*LIMITED),
        )
        assert other.status_code == 204, other.text


def test_retained_names_have_a_per_caller_share() -> None:
    settings = make_settings(http={"max_retained_names_per_caller": 3})
    with BridgeDaemon(settings) as daemon, httpx.Client(base_url=daemon.url, timeout=30) as http:
        for i in range(3):
            sent = http.post(f"/api/v1/events/t.keep.{i}", json={"retain": "60s"}, headers=HEADERS)
            assert sent.status_code == 202, sent.text
        refused = http.post("/api/v1/events/t.keep.9", json={"retain": "60s"}, headers=HEADERS)
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) > 30
        # Retaining again a name it holds, and sending without retain, still pass.
        again = http.post("/api/v1/events/t.keep.0", json={"retain": "60s"}, headers=HEADERS)
        assert again.status_code == 202
        assert http.post("/api/v1/events/t.keep.9", json={}, headers=HEADERS).status_code == 202


@pytest.mark.rabbitmq
async def test_a_burst_of_resumable_waits_closes_nothing(amqp_url: str, unique_name: str) -> None:
    name = f"burst-{uuid.uuid4().hex[:8]}"
    settings = load_settings(amqp={"url": amqp_url, "connection_name": name, "wait_grace": 1.0})
    async with Client(settings) as client:
        reconnects: list[int] = []
        client.bus.on_reconnect.append(lambda: reconnects.append(1))  # type: ignore[attr-defined]
        # One wait first: it starts the reader of the retained events (one channel, for good).
        await client.wait_custom_event_until("internal", unique_name, timedelta(seconds=0.1))
        before = await connection_channels(name)
        gate = asyncio.Semaphore(50)
        errors: list[BaseException] = []

        async def one(i: int) -> None:
            async with gate:
                try:
                    await client.wait_custom_event_until(
                        "internal",
                        f"{unique_name}.{i}",
                        timedelta(seconds=0.3),
                        wait_id=f"b{i}-{name}",
                    )
                except Exception as exc:
                    errors.append(exc)

        await asyncio.gather(*(one(i) for i in range(600)))
        assert errors == []
        assert reconnects == []
        assert client.bus.connected
        async with asyncio.timeout(10):  # the broker's count lags the closes a moment
            while (after := await connection_channels(name)) != before:
                print("channels", after, "before", before)
                await asyncio.sleep(0.5)


@pytest.mark.rabbitmq
async def test_a_wait_queue_deleted_under_its_waits_is_declared_and_bound_again(
    amqp_url: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # What a cluster does to the wait queue of a node it lost, a moment after aio-pika restored
    # it (CI saw it: tests/test_cluster.py), and what anyone with configure permission can do.
    # aio-pika re-declares the queue for the cancelled consumer, but not the waits' bindings.
    settings = load_settings(amqp={"url": amqp_url, "reconnect_interval": 0.2})
    async with Client(settings) as client:
        bus = client.bus
        deadline = datetime.now(UTC) + timedelta(seconds=60)
        subscription = bus.subscribe("internal", unique_name, deadline)
        async with subscription:
            assert (await client.send_custom_event(unique_name, {"n": "0"})).routed
            assert (await _next_event(subscription)).properties == {"n": "0"}
            (queue,) = [wq.name for wq in bus.waits._wait_queues.values()]  # type: ignore[attr-defined]
            connection = await aio_pika.connect(amqp_url)
            async with connection:
                channel = await connection.channel()
                await channel.queue_delete(queue)
            routed = None
            async with asyncio.timeout(15):
                for n in itertools.count(1):
                    if (await client.send_custom_event(unique_name, {"n": str(n)})).routed:
                        routed = str(n)
                        break
                    await asyncio.sleep(0.05)
            assert (await _next_event(subscription)).properties == {"n": routed}
            # A later wait of the same bucket shares the queue, bound again.
            async with client.expect("internal", f"{unique_name}.later", until=deadline) as later:
                assert (await client.send_custom_event(f"{unique_name}.later")).routed
                assert await later is not None
        assert bus.connected
    assert "cancelled the consumer" in caplog.text


@pytest.mark.rabbitmq
async def test_a_wait_queue_deleted_again_and_again_costs_no_channel_and_keeps_its_waits(
    amqp_url: str, unique_name: str
) -> None:
    # One peer with configure permission flooding deletions of a wait queue: each is one
    # rebind, serialized per queue; the wait hears every event sent after its queue came back,
    # no rebind task is left and the connection's channels stay as they were.
    name = f"flood-{uuid.uuid4().hex[:8]}"
    settings = load_settings(amqp={"url": amqp_url, "connection_name": name})
    async with Client(settings) as client:
        bus = client.bus
        subscription = bus.subscribe(
            "internal", unique_name, datetime.now(UTC) + timedelta(seconds=60)
        )
        async with subscription:
            (wq,) = bus.waits._wait_queues.values()  # type: ignore[attr-defined]
            before = await connection_channels(name)
            connection = await aio_pika.connect(amqp_url)
            async with connection:
                channel = await connection.channel()
                for round_ in range(5):
                    for _ in range(3):  # in a burst: the later cancels find the rebind under way
                        await channel.queue_delete(wq.name)
                    async with asyncio.timeout(15):
                        while not (
                            await client.send_custom_event(unique_name, {"n": str(round_)})
                        ).routed:
                            await asyncio.sleep(0.05)
                    assert (await _next_event(subscription)).properties == {"n": str(round_)}
            async with asyncio.timeout(10):
                while bus.waits._tasks:  # type: ignore[attr-defined]
                    await asyncio.sleep(0.05)
            async with asyncio.timeout(10):  # the broker's count lags a moment
                while await connection_channels(name) != before:
                    await asyncio.sleep(0.5)


@pytest.mark.rabbitmq
async def test_a_wait_queue_moves_to_a_new_name_when_its_node_changed(
    amqp_url: str, unique_name: str
) -> None:
    # A lost cluster node's clean-up deletes its transient queues by name, even one declared
    # again on another node a moment before (rabbitmq-server#6271): after a failover, a wait
    # queue goes on under a new name. The node change is simulated: this broker has one node.
    settings = load_settings(amqp={"url": amqp_url, "reconnect_interval": 0.2})
    async with Client(settings) as client:
        bus = client.bus
        deadline = datetime.now(UTC) + timedelta(seconds=60)
        subscription = bus.subscribe("internal", unique_name, deadline)
        async with subscription:
            (wq,) = bus.waits._wait_queues.values()  # type: ignore[attr-defined]
            old = wq.name
            # The broker has lost the binding (as with a queue re-created empty): a wait that
            # took its key for bound before the move has bound it again would miss its event.
            connection = await aio_pika.connect(amqp_url)
            async with connection:
                raw = await (await connection.channel()).get_underlay_channel()
                await raw.queue_unbind(old, bus.destination, f"internal.{unique_name}")
            wq.node = "amqp://guest:***@the-lost-node:5672/"
            moving = asyncio.create_task(bus.waits.rebind())  # type: ignore[attr-defined]
            await asyncio.sleep(0)
            # A wait on the held key (the same deadline: the same wait queue), set up during
            # the move, is bound on the new queue when its entry returns: the event sent at
            # once reaches it, and the first wait too.
            async with client.expect("internal", unique_name, until=deadline) as during:
                assert bus.waits.active_wait_queues == 1  # type: ignore[attr-defined]
                assert (await client.send_custom_event(unique_name, {"n": "during"})).routed
                answered = await during
            assert answered is not None and answered.properties == {"n": "during"}
            await moving
            assert (await _next_event(subscription)).properties == {"n": "during"}
            assert wq.name != old and wq.node == bus.node
            assert await queues_named(old) == []
            assert await queues_named(wq.name) == [wq.name]
            assert (await client.send_custom_event(unique_name, {"n": "1"})).routed
            assert (await _next_event(subscription)).properties == {"n": "1"}
            with pytest.raises(TimeoutError):  # routed to one queue: dispatched once
                async with asyncio.timeout(0.5):
                    await subscription.get()
        assert await queues_named(wq.name) == []


async def _next_event(subscription: Subscription) -> Event:
    async with asyncio.timeout(10):
        event = await subscription.get()
    assert event is not None
    return event


@pytest.mark.rabbitmq
async def test_deployments_on_one_vhost_never_share_a_queue(
    amqp_url: str, unique_name: str
) -> None:
    a, b = f"ex-a-{uuid.uuid4().hex[:8]}", f"ex-b-{uuid.uuid4().hex[:8]}"
    group = "shared"
    try:
        async with (
            Client(load_settings(amqp={"url": amqp_url, "exchange": a}, groups=GROUPS)) as on_a,
            Client(load_settings(amqp={"url": amqp_url, "exchange": b}, groups=GROUPS)) as on_b,
            on_a.subscribe(f"{unique_name}.*", group=group) as group_a,
            on_b.subscribe(f"{unique_name}.*", group=group) as group_b,
        ):
            await on_a.send_custom_event(f"{unique_name}.x", {"from": "a"})
            got = await _next(group_a)
            assert got.event.properties == {"from": "a"}  # type: ignore[attr-defined]
            await got.ack()  # type: ignore[attr-defined]
            with pytest.raises(TimeoutError):
                await _next(group_b, within=1.5)
    finally:
        for exchange in (a, b):
            await _delete_queues(group_queue(exchange, group), dead_queue(exchange, group))
            await _delete_exchange(amqp_url, exchange)


@pytest.mark.rabbitmq
async def test_a_missing_vhost_is_refused_at_once_and_named(amqp_url: str) -> None:
    url = amqp_url.rstrip("/") + "/novhost-" + uuid.uuid4().hex[:6]
    with pytest.raises(BrokerAuthenticationError, match="virtual host 'novhost-"):
        async with Client(load_settings(amqp={"url": url, "connect_attempts": 6})):
            pass
    process = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "adapter._cli", "send", "x.y", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CUSTOMEVENT_CONFIG": ""},
    )
    assert process.returncode == 77, process.stderr
    assert "virtual host" in process.stderr and "Traceback" not in process.stderr


@pytest.mark.rabbitmq
async def test_a_plain_wait_declares_no_stream(amqp_url: str, unique_name: str) -> None:
    exchange = f"ex-{uuid.uuid4().hex[:8]}"
    async with Client(load_settings(amqp={"url": amqp_url, "exchange": exchange})) as client:
        assert (
            await client.wait_custom_event_until("internal", unique_name, timedelta(seconds=0.3))
            is None
        )
        assert await queues_named(retained_stream(exchange)) == []
        # A retained send makes it, and a wait then reads it.
        await client.send_custom_event(unique_name, {"kept": "1"}, retain=timedelta(seconds=30))
        event = await client.wait_custom_event_until("internal", unique_name, timedelta(seconds=5))
        assert event is not None and event.properties == {"kept": "1"}
    await _delete_queues(retained_stream(exchange))


def test_two_principals_with_one_token_hash_are_refused() -> None:
    token = hash_token("a-token-of-thirty-two-characters-or-more-0001")
    with pytest.raises(ConfigurationError, match="same token_hash"):
        load_settings(
            auth={
                "principals": [
                    {"name": "a", "token_hash": token, "allow": ["#"]},
                    {"name": "b", "token_hash": token, "allow": ["#"]},
                ]
            }
        )


def test_listen_passes_no_secret_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOMEVENT_AMQP__URL", "amqp://u:secret@h/")
    monkeypatch.setenv("CUSTOMEVENT_TOKEN", "secret-token")
    monkeypatch.setenv("PATH_FOR_TEST", "kept")
    env = command_environment()
    assert "CUSTOMEVENT_AMQP__URL" not in env and "CUSTOMEVENT_TOKEN" not in env
    assert env["PATH_FOR_TEST"] == "kept"
    assert command_environment(["CUSTOMEVENT_TOKEN"])["CUSTOMEVENT_TOKEN"] == "secret-token"


def test_a_reason_cannot_forge_lines_of_dead_list() -> None:
    forged = "bad\nevt-2  internal x.y  attempts=1  reason=ok\x1b[2K\u2028\x85"
    shown = shown_text(forged)
    assert len(shown.splitlines()) == 1
    assert "\x1b" not in shown and "\\x0a" in shown and "\\x1b" in shown
    assert json.dumps(shown)  # still text


async def test_the_daemons_refusals_reach_a_client_as_the_same_errors() -> None:
    from adapter import LimitExceeded
    from adapter._exceptions import EDGES, edge_of
    from tests.support.http import url_with_credentials

    settings = make_settings(http={"max_retained_names_per_caller": 1})
    with BridgeDaemon(settings) as daemon:
        async with Client(url_with_credentials(daemon)) as client:
            await client.send_custom_event(
                "t.once.a", kind="external", retain=timedelta(seconds=60)
            )
            with pytest.raises(LimitExceeded) as refused:
                await client.send_custom_event(
                    "t.once.b", kind="external", retain=timedelta(seconds=60)
                )
            assert refused.value.retry_after > 30
            assert "max_retained_names_per_caller" in str(refused.value)
    # One table gives every error its answer at each edge.
    assert edge_of(LimitExceeded("x", limit=1, setting="s")).http == 429
    assert edge_of(WaitConflict("w", held="a", asked="b")) == EDGES[WaitConflict]
    assert edge_of(BrokerAuthenticationError("x")).exit == 77
