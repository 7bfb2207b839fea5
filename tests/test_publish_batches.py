"""Concurrent sends leave in one write of the confirm channel (adapter/_bus/amqp/_batching.py),
and each caller still gets its own broker's answer: routed or returned, acked or nacked, or the
link's loss. Against the real RabbitMQ."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import pamqp.frame
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp.header import ContentHeader

from adapter import BusUnavailable, Client, PublishRejected, load_settings
from adapter._bus.amqp import AmqpBus
from adapter._bus.amqp._batching import content_header_frame
from adapter._version import APP_ID
from tests.support.proxy import Proxy


async def _underlay(client: Client) -> aiormq.Channel:
    bus = client.bus
    assert isinstance(bus, AmqpBus)
    confirm = bus.link._confirm_channel
    assert confirm is not None
    channel = await confirm.get_underlay_channel()
    assert isinstance(channel, aiormq.Channel)
    return channel


def _count_writes(channel: aiormq.Channel, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the frames the channel hands its connection's writer."""
    writes: list[int] = []
    put = channel.write_queue.put

    async def counted(frame: Any) -> None:
        writes.append(len(frame.payload))
        await put(frame)

    monkeypatch.setattr(channel.write_queue, "put", counted)
    return writes


@pytest.fixture
async def bound(amqp_url: str, unique_name: str) -> AsyncIterator[aio_pika.abc.AbstractQueue]:
    """An exclusive queue bound to ``internal.<unique_name>.bound``."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange("customevents", "topic", durable=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, f"internal.{unique_name}.bound")
        yield queue


async def _drain(queue: aio_pika.abc.AbstractQueue, expected: int) -> list[str]:
    ids: list[str] = []
    for _ in range(expected):
        message = await queue.get(timeout=5)
        await message.ack()
        assert message.message_id is not None
        ids.append(message.message_id)
    assert await queue.get(fail=False) is None
    return ids


@pytest.mark.rabbitmq
async def test_concurrent_sends_leave_in_one_write_and_unroutable_ones_are_told_apart(
    amqp_url: str,
    unique_name: str,
    bound: aio_pika.abc.AbstractQueue,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with Client(load_settings(amqp={"url": amqp_url})) as client:
        writes = _count_writes(await _underlay(client), monkeypatch)
        # Every third one goes to a name nobody bound, among the others of the same write.
        names = [f"{unique_name}.{'nobody' if i % 3 == 1 else 'bound'}" for i in range(60)]
        results = await asyncio.gather(
            *(client.send_custom_event(name, {"i": str(i)}) for i, name in enumerate(names))
        )
        assert len(writes) == 1
        assert [result.routed for result in results] == [name.endswith("bound") for name in names]
        routed = {result.event_id for result in results if result.routed}
        assert len(routed) == 40
        assert sorted(await _drain(bound, 40)) == sorted(routed)
        # The batches that follow are written again and answered the same way.
        again = await asyncio.gather(
            client.send_custom_event(f"{unique_name}.nobody"),
            client.send_custom_event(f"{unique_name}.bound"),
        )
        assert [result.routed for result in again] == [False, True]
        assert len(writes) == 2


@pytest.mark.rabbitmq
async def test_a_nack_fails_exactly_the_sends_the_broker_refused(
    amqp_url: str, unique_name: str
) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange("customevents", "topic", durable=True)
        # A full queue that refuses more: the broker nacks a publish routed only to it.
        full = await channel.declare_queue(
            exclusive=True, arguments={"x-max-length": 2, "x-overflow": "reject-publish"}
        )
        await full.bind(exchange, f"internal.{unique_name}.full")
        async with Client(load_settings(amqp={"url": amqp_url})) as client:
            outcomes = await asyncio.gather(
                *(
                    client.send_custom_event(f"{unique_name}.{name}")
                    for name in ("full", "nobody", "full", "full", "nobody", "full")
                ),
                return_exceptions=True,
            )
            later = await client.send_custom_event(f"{unique_name}.nobody")
        assert not later.routed
    kinds = [
        "rejected"
        if isinstance(outcome, PublishRejected)
        else ("routed" if not isinstance(outcome, BaseException) and outcome.routed else "none")
        for outcome in outcomes
    ]
    assert kinds == ["routed", "none", "routed", "rejected", "none", "rejected"]


@pytest.mark.rabbitmq
async def test_a_link_cut_mid_batch_fails_the_unconfirmed_sends_and_loses_no_confirm(
    amqp_url: str,
    unique_name: str,
    bound: aio_pika.abc.AbstractQueue,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with Proxy.in_front_of(amqp_url) as proxy:
        settings = load_settings(
            amqp={"url": proxy.url(), "reconnect_interval": 0.2, "publish_timeout": 5}
        )
        async with Client(settings) as client:
            channel = await _underlay(client)
            put = channel.write_queue.put

            async def cut_after(frame: Any) -> None:
                await put(frame)
                if len(frame.payload) > 10_000:  # the batch, not a heartbeat
                    # Its frames are queued, none confirmed yet: the link goes now.
                    asyncio.get_running_loop().call_soon(proxy.cut)

            monkeypatch.setattr(channel.write_queue, "put", cut_after)
            outcomes = await asyncio.wait_for(
                asyncio.gather(
                    *(client.send_custom_event(f"{unique_name}.bound") for _ in range(200)),
                    return_exceptions=True,
                ),
                timeout=10,
            )
    failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    confirmed = {outcome.event_id for outcome in outcomes if not isinstance(outcome, BaseException)}
    assert failed, "the cut came after every confirm"
    assert all(isinstance(outcome, BusUnavailable) for outcome in failed), failed
    # A send confirmed before the cut is in the queue: no confirm was given to another message.
    delivered: set[str] = set()
    while (message := await bound.get(fail=False)) is not None:
        await message.ack()
        assert message.message_id is not None
        delivered.add(message.message_id)
    assert confirmed <= delivered


_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


@given(
    headers=st.dictionaries(
        st.sampled_from(["x-event-name", "ce-id", "ce-time", "traceparent", "x-a", "é"]) | _text,
        _text | st.integers(-(2**40), 2**40) | st.booleans(),
        max_size=12,
    ),
    content_type=st.sampled_from(["application/json", "application/octet-stream"]),
    message_id=_text.filter(bool),
    user_id=st.none() | st.sampled_from(["", "bridge", "ü-user"]),
    seconds=st.integers(0, 2**34),
    naive=st.booleans(),
    body_size=st.integers(0, 2**40),
    number=st.integers(1, 2047),
)
def test_the_content_header_frame_is_the_one_pamqp_marshals(
    headers: dict[str, Any],
    content_type: str,
    message_id: str,
    user_id: str | None,
    seconds: int,
    naive: bool,
    body_size: int,
    number: int,
) -> None:
    moment = datetime.fromtimestamp(seconds, UTC)
    if naive:
        moment = moment.replace(tzinfo=None)
    properties = spec.Basic.Properties(
        content_type=content_type,
        message_id=message_id,
        timestamp=moment,
        app_id=APP_ID,
        delivery_mode=2,
        user_id=user_id,
        headers=headers,
    )
    theirs = pamqp.frame.marshal(ContentHeader(properties=properties, body_size=body_size), number)
    ours = content_header_frame(
        number,
        body_size,
        content_type=content_type,
        message_id=message_id,
        timestamp=moment,
        headers=headers,
        user_id=user_id,
    )
    assert ours == theirs
