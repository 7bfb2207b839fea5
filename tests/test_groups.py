"""Groups (triggers): one behaviour suite, on the in-process bus and on the real RabbitMQ."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from adapter import (
    Client,
    ClientStateError,
    ConfigurationError,
    DeadLetterNotFound,
    GroupSubscription,
    InvalidInput,
    MemoryBus,
    PublishRejected,
    load_settings,
)
from adapter._bus.amqp._queues import group_queue
from tests.support.clock import FakeClock
from tests.support.groups import GROUPS, nothing, take


@pytest.fixture
async def groups_client(bus_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    """A client whose groups retry after 0.2 s; the RabbitMQ queues of the test's groups are
    deleted afterwards."""
    url = request.getfixturevalue("amqp_url") if bus_kind == "rabbitmq" else None
    async with Client(load_settings(amqp={"url": url}, groups=GROUPS)) as client:
        yield client
    if url is not None:
        await _delete_group_queues(url, request.node.name)


async def _delete_group_queues(url: str, test_name: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", "list_queues", "name", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    mine = [
        q
        for q in out.decode().split()
        if q.startswith(group_queue("customevents", _tag(test_name)))
    ]
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in mine:
            await channel.queue_delete(name)


def _tag(test_name: str) -> str:
    return "t-" + "".join(c for c in test_name if c.isalnum())[-30:]


@pytest.fixture
def group(request: pytest.FixtureRequest) -> str:
    return f"{_tag(request.node.name)}-{uuid.uuid4().hex[:8]}"


async def test_each_event_goes_to_one_of_the_competing_consumers(
    groups_client: Client, group: str, unique_name: str
) -> None:
    client = groups_client
    options = {"group": group, "dedup_window": 0, "prefetch": 1}
    handled: dict[str, list[str]] = {"a": [], "b": []}

    async def consume(sub: GroupSubscription, who: str) -> None:
        async for delivery in sub:
            handled[who].append(delivery.event.properties["n"])
            await asyncio.sleep(0.02)
            await delivery.ack()

    async with (
        client.subscribe(f"{unique_name}.*", **options) as first,  # type: ignore[arg-type]
        client.subscribe(f"{unique_name}.*", **options) as second,  # type: ignore[arg-type]
    ):
        workers = [
            asyncio.create_task(consume(first, "a")),
            asyncio.create_task(consume(second, "b")),
        ]
        results = [
            await client.send_custom_event(f"{unique_name}.x", {"n": str(n)}) for n in range(20)
        ]
        async with asyncio.timeout(20):
            while len(handled["a"]) + len(handled["b"]) < 20:
                await asyncio.sleep(0.02)
        for worker in workers:
            worker.cancel()
    assert all(result.routed for result in results)
    assert sorted(handled["a"] + handled["b"], key=int) == [str(n) for n in range(20)]
    assert handled["a"] and handled["b"]  # they competed


async def test_events_wait_in_the_group_while_no_consumer_runs(
    groups_client: Client, group: str, unique_name: str
) -> None:
    async with groups_client.subscribe(unique_name, group=group):
        pass  # the group exists from now on
    assert (await groups_client.send_custom_event(unique_name, {"a": "1"})).routed
    async with groups_client.subscribe(unique_name, group=group) as sub:
        delivery = await take(sub)
        assert delivery.event.properties == {"a": "1"}
        assert delivery.attempt == 1
        await delivery.ack()
        await nothing(sub, 0.5)


async def test_a_retry_comes_back_after_a_backoff_as_the_next_attempt(
    groups_client: Client, group: str, unique_name: str
) -> None:
    async with groups_client.subscribe(unique_name, group=group) as sub:
        await groups_client.send_custom_event(unique_name, {"a": "1"}, event_id=f"{group}-e1")
        first = await take(sub)
        loop = asyncio.get_running_loop()
        retried_at = loop.time()
        await first.retry("flaky")
        second = await take(sub)
        assert loop.time() - retried_at >= 0.15  # the backoff, kept by the bus
        assert (second.event.event_id, second.attempt) == (f"{group}-e1", 2)
        assert second.event.properties == {"a": "1"}
        assert second.event.name == unique_name
        await second.ack()
        await nothing(sub, 0.8)


async def test_after_max_attempts_a_retry_is_a_dead_letter_and_replay_brings_it_back(
    groups_client: Client, group: str, unique_name: str
) -> None:
    client = groups_client
    async with client.subscribe(unique_name, group=group, max_attempts=2) as sub:
        await client.send_custom_event(unique_name, {"a": "1"}, event_id=f"{group}-e2")
        await (await take(sub)).retry("first failure")
        second = await take(sub)
        assert second.attempt == 2
        await second.retry("second failure")
        assert second.settled == "dead_letter"  # its attempts were spent
        await nothing(sub, 0.8)
        dead = await client.dead_letters(group)
        assert len(dead) == 1
        letter = dead[0]
        assert letter.event.event_id == f"{group}-e2" and letter.event.properties == {"a": "1"}
        assert letter.reason == "second failure (attempt 2 of 2)"
        assert letter.attempts == 2
        assert letter.first_failure is not None and letter.last_failure is not None
        assert letter.first_failure <= letter.last_failure
        assert len(await client.dead_letters(group)) == 1  # listing leaves them there
        with pytest.raises(DeadLetterNotFound, match="no dead letter of the event 'another'"):
            await client.replay(group, event_id="another")
        assert await client.replay(group) == 1
        again = await take(sub)
        assert (again.event.event_id, again.attempt) == (f"{group}-e2", 1)
        await again.ack()
    assert await client.dead_letters(group) == []


async def test_dead_letter_at_once_with_the_reason(
    groups_client: Client, group: str, unique_name: str
) -> None:
    async with groups_client.subscribe(unique_name, group=group) as sub:
        await groups_client.send_custom_event(unique_name, event_id=f"{group}-e3")
        delivery = await take(sub)
        await delivery.dead_letter("no such VM")
        with pytest.raises(ClientStateError, match="already settled"):
            await delivery.ack()
    dead = await groups_client.dead_letters(group)
    assert [(d.event.event_id, d.reason, d.attempts) for d in dead] == [
        (f"{group}-e3", "no such VM", 1)
    ]


async def test_what_a_leaving_consumer_did_not_settle_is_delivered_again(
    groups_client: Client, group: str, unique_name: str
) -> None:
    client = groups_client
    async with client.subscribe(unique_name, group=group, dedup_window=0) as sub:
        await client.send_custom_event(unique_name, {"a": "1"}, event_id=f"{group}-e4")
        taken = await take(sub)
        assert taken.attempt == 1
        # It leaves without settling, as a crashed consumer does.
    async with client.subscribe(unique_name, group=group, dedup_window=0) as sub:
        again = await take(sub)
        assert again.event.event_id == f"{group}-e4"
        assert again.attempt == 2
        await again.ack()


async def test_an_event_id_sent_four_times_is_handled_once(
    groups_client: Client, group: str, unique_name: str
) -> None:
    client = groups_client
    async with (
        client.subscribe(unique_name, group=group) as first,
        client.subscribe(unique_name, group=group) as second,
    ):
        for _ in range(4):
            await client.send_custom_event(unique_name, {"a": "1"}, event_id=f"{group}-same")
        await client.send_custom_event(unique_name, {"a": "2"}, event_id=f"{group}-other")
        taken = []
        for sub in (first, second):
            try:
                while True:
                    delivery = await take(sub, 1.5)
                    taken.append(delivery.event.event_id)
                    await delivery.ack()
            except TimeoutError:
                pass
        assert sorted(taken) == [f"{group}-other", f"{group}-same"]
        # Later copies within the window are acknowledged without being handed out.
        await client.send_custom_event(unique_name, {"a": "1"}, event_id=f"{group}-same")
        await nothing(first, 0.8)


async def test_a_deduplicating_group_has_one_active_consumer_and_a_standby(
    groups_client: Client, group: str, unique_name: str
) -> None:
    client = groups_client
    standby = client.subscribe(unique_name, group=group)
    async with client.subscribe(unique_name, group=group) as active:
        await standby.__aenter__()
        try:
            for n in range(3):
                await client.send_custom_event(unique_name, {"n": str(n)})
            for _ in range(3):
                await (await take(active)).ack()
            await nothing(standby, 0.5)
        except BaseException:
            await standby.__aexit__(None, None, None)
            raise
    try:
        # The active one left: the standby takes over.
        await client.send_custom_event(unique_name, {"n": "after"})
        delivery = await take(standby)
        assert delivery.event.properties == {"n": "after"}
        await delivery.ack()
    finally:
        await standby.__aexit__(None, None, None)


async def test_a_full_group_refuses_sends(
    bus_kind: str, request: pytest.FixtureRequest, group: str, unique_name: str
) -> None:
    url = request.getfixturevalue("amqp_url") if bus_kind == "rabbitmq" else None
    settings = load_settings(amqp={"url": url}, groups={**GROUPS, "max_length": 2})
    try:
        async with Client(settings) as client:
            async with client.subscribe(unique_name, group=group):
                pass
            accepted = 0
            with pytest.raises(PublishRejected):
                for _ in range(5):
                    await client.send_custom_event(unique_name)
                    accepted += 1
            # RabbitMQ's quorum queues take one past the length before refusing.
            assert 2 <= accepted <= 3
    finally:
        if url is not None:
            await _delete_group_queues(url, request.node.name)


async def test_a_group_keeps_the_options_it_was_made_with(
    groups_client: Client, group: str, unique_name: str
) -> None:
    async with groups_client.subscribe(unique_name, group=group, max_attempts=3):
        pass
    with pytest.raises(ConfigurationError, match="other options"):
        async with groups_client.subscribe(unique_name, group=group, max_attempts=4):
            pass


@pytest.mark.parametrize("name", ["", "a b", "x" * 101, "a/b", "é"])
async def test_group_names_are_checked(groups_client: Client, name: str) -> None:
    with pytest.raises(InvalidInput, match="group must be"):
        groups_client.subscribe("t.x", group=name)


async def test_the_dedup_window_forgets(bus_kind: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("amqp_url") if bus_kind == "rabbitmq" else None
    group = f"{_tag(request.node.name)}-{uuid.uuid4().hex[:8]}"
    name = f"t.window.{uuid.uuid4().hex[:8]}"
    settings = load_settings(amqp={"url": url}, groups={**GROUPS, "dedup_window": 0.5})
    # In process, the bus's clock is moved past the window; RabbitMQ's consumer keeps real time.
    clock = FakeClock() if url is None else None
    bus = MemoryBus(clock=clock) if clock is not None else None
    try:
        async with Client(settings, bus=bus) as client, client.subscribe(name, group=group) as sub:
            await client.send_custom_event(name, event_id=f"{group}-w")
            await (await take(sub)).ack()
            if clock is not None:
                clock.advance(0.7)
            else:
                await asyncio.sleep(0.7)
            await client.send_custom_event(name, event_id=f"{group}-w")
            late = await take(sub)  # past the window: handed out again
            assert late.event.event_id == f"{group}-w"
            await late.ack()
    finally:
        if url is not None:
            await _delete_group_queues(url, request.node.name)
