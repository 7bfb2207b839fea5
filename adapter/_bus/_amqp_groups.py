"""Groups on RabbitMQ.

A group ``G`` is the quorum queue ``customevent.group.G``, bound to ``<kind>.<pattern>`` on the
events exchange. Its consumers compete for its events; when the group de-duplicates, the queue has
a single active consumer (the others stand by), which remembers the event ids it acknowledged.
A retry publishes a copy, with a confirm, to ``customevent.group.G.retry.<ms>``: a quorum queue
whose messages expire after that many milliseconds and are dead-lettered back to the group's queue,
so the delay is kept by the broker, not by a sleeping process; then the original is acknowledged.
Dead letters are copies in ``customevent.group.G.dead`` with the reason, the attempts and the
first and last failure times in headers. A delivery whose consumers keep going away without
settling it is dead-lettered by RabbitMQ itself after ``max_attempts`` redeliveries
(``x-delivery-limit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from .._event import Event, event_from_message
from .._exceptions import AdapterError, BusError, ClientStateError, ConfigurationError
from .._groups import DeadLetter, Delivery, GroupOptions, GroupSubscription, RetryPolicy, SeenIds
from .._names import Kind
from ._durable import durable_queue_arguments

if TYPE_CHECKING:
    from ._amqp import AmqpBus

__all__ = ["AmqpGroups", "dead_queue", "group_queue", "retry_queue"]

log = logging.getLogger("adapter.amqp.groups")


H_ROUTING_KEY = "x-original-routing-key"
H_RETRIES = "x-retry-count"
H_FIRST_FAILURE = "x-first-failure"
H_LAST_FAILURE = "x-last-failure"
H_LAST_REASON = "x-last-failure-reason"
H_DEAD_REASON = "x-deadletter-reason"
H_DEAD_ATTEMPTS = "x-deadletter-attempts"
_OURS = (H_RETRIES, H_FIRST_FAILURE, H_LAST_FAILURE, H_LAST_REASON, H_DEAD_REASON, H_DEAD_ATTEMPTS)
_DEAD_LISTED = 10_000  # dead letters read at once by a listing or a replay


def group_queue(group: str) -> str:
    return f"customevent.group.{group}"


def dead_queue(group: str) -> str:
    return f"customevent.group.{group}.dead"


def retry_queue(group: str, delay_ms: int) -> str:
    return f"customevent.group.{group}.retry.{delay_ms}"


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = _text(value)
    return int(text) if text is not None and text.isdigit() else 0


def _time(value: object) -> datetime | None:
    text = _text(value)
    if text is None:
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(text)
    return None


def _decode(message: AbstractIncomingMessage) -> Event:
    """The event of a group's message: a copy (retried, replayed) keeps the routing key it was
    first published with in a header."""
    headers = message.headers or {}
    return event_from_message(
        routing_key=_text(headers.get(H_ROUTING_KEY)) or message.routing_key or "",
        body=message.body,
        headers=headers,
        message_id=message.message_id,
        timestamp=message.timestamp,
    )


def _copy_headers(message: AbstractIncomingMessage, **ours: str) -> dict[str, str]:
    """The headers of a copy: the message's own text headers (not the broker's x-death records),
    the original routing key, and ``ours``."""
    headers = {
        key: text
        for key, value in (message.headers or {}).items()
        if not key.startswith("x-death")
        and not key.startswith("x-first-death")
        and key != "x-delivery-count"
        and (text := _text(value)) is not None
    }
    headers.setdefault(H_ROUTING_KEY, message.routing_key or "")
    headers.update(ours)
    return headers


class _AmqpDelivery(Delivery):
    def __init__(self, sub: _AmqpGroupSubscription, message: AbstractIncomingMessage, event: Event):
        headers = message.headers or {}
        attempt = 1 + _int(headers.get(H_RETRIES)) + _int(headers.get("x-delivery-count"))
        super().__init__(event, attempt)
        self._sub = sub
        self._message = message

    async def _ack(self) -> None:
        await self._sub._settle(self._message, self.event, acked=True)

    async def _retry(self, reason: str, at_least: float) -> None:
        options = self._sub.options
        if self.attempt >= options.max_attempts:
            await self._sub._bury(
                self._message,
                self.event,
                f"{reason} (attempt {self.attempt} of {options.max_attempts})",
                self.attempt,
            )
            return
        await self._sub._again(self._message, self.event, reason, self.attempt, at_least)

    async def _dead_letter(self, reason: str) -> None:
        await self._sub._bury(self._message, self.event, reason, self.attempt)


class _AmqpGroupSubscription(GroupSubscription):
    def __init__(
        self, groups: AmqpGroups, group: str, kind: Kind, pattern: str, options: GroupOptions
    ) -> None:
        super().__init__(group, kind, pattern, options)
        self._kind = kind
        self._groups = groups
        self._bus = groups.bus
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._inbox: asyncio.Queue[_AmqpDelivery] = asyncio.Queue()
        self._seen = SeenIds(options.dedup_window, options.dedup_max)
        self._in_flight: set[str] = set()
        self._policy = RetryPolicy(options.retry_initial, options.retry_max)

    async def __aenter__(self) -> Self:
        self._bus._check_open()
        try:
            async with self._bus._broker_call(f"the group {self.group!r} was not joined"):
                self._channel = await self._bus._new_channel()
                await self._channel.set_qos(prefetch_count=self.options.prefetch)
                self._queue = await self._groups.declare(
                    self._channel, self.group, self._kind, self.pattern, self.options
                )
                self._tag = await self._queue.consume(self._on_message, no_ack=False)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        channel, self._channel = self._channel, None
        queue, tag, self._queue, self._tag = self._queue, self._tag, None, None
        if queue is not None and tag is not None:
            await self._bus._tidy(f"stop consuming {self.group!r}", lambda: queue.cancel(tag))
        if channel is not None:
            # Unsettled deliveries go back to the group when the channel closes.
            await self._bus._release(channel)

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        if self._channel is None:
            raise ClientStateError("iterate the group subscription inside its async with")
        while True:
            yield await self._inbox.get()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            event = _decode(message)
        except AdapterError as exc:
            log.warning("group %r: a message that is not an event: %s", self.group, exc)
            await self._bury_raw(message, f"not an event: {exc}", 1)
            return
        if self.options.dedup and (
            event.event_id in self._seen or event.event_id in self._in_flight
        ):
            # A copy of an event this (the only active) consumer handled or is handling.
            await self._ack_quietly(message)
            return
        self._in_flight.add(event.event_id)
        self._inbox.put_nowait(_AmqpDelivery(self, message, event))

    # -- settling (called by the deliveries) ---------------------------------------------

    async def _settle(self, message: AbstractIncomingMessage, event: Event, *, acked: bool) -> None:
        self._in_flight.discard(event.event_id)
        if acked and self.options.dedup:
            # Handled, whether or not the broker hears the ack: when the ack is lost with the
            # channel, the copy that comes again is a duplicate to drop.
            self._seen.add(event.event_id)
        await self._ack_quietly(message)

    async def _ack_quietly(self, message: AbstractIncomingMessage) -> bool:
        """Acknowledge; False if the channel it came on is gone (the broker delivers it again,
        which at least once allows)."""
        try:
            # Queued for the socket, not waited out: an ack that is written is no surer of
            # reaching the broker, and waiting for the write makes a consumer that settles one
            # delivery after another wait a turn of the event loop for each.
            tag = message.delivery_tag
            if tag is not None:  # None only for a consumer without acknowledgements
                await message.channel.basic_ack(tag, wait=False)
        except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError) as exc:
            log.info("group %r: an acknowledgement was lost (%s); it comes again", self.group, exc)
            return False
        return True

    async def _again(
        self,
        message: AbstractIncomingMessage,
        event: Event,
        reason: str,
        attempt: int,
        at_least: float,
    ) -> None:
        delay = self._policy.delay_ms(attempt, at_least=at_least)
        now = datetime.now(UTC).isoformat()
        headers = _copy_headers(
            message,
            **{
                H_RETRIES: str(_int((message.headers or {}).get(H_RETRIES)) + 1),
                H_LAST_FAILURE: now,
                H_LAST_REASON: reason[:1000],
            },
        )
        headers.setdefault(H_FIRST_FAILURE, now)
        queue = await self._groups.retry_queue(self.group, delay)
        await self._publish_copy(queue, message, event, headers, f"the retry of {event.event_id!r}")
        await self._settle(message, event, acked=False)

    async def _bury(
        self, message: AbstractIncomingMessage, event: Event, reason: str, attempts: int
    ) -> None:
        await self._bury_raw(message, reason, attempts, event)

    async def _bury_raw(
        self,
        message: AbstractIncomingMessage,
        reason: str,
        attempts: int,
        event: Event | None = None,
    ) -> None:
        now = datetime.now(UTC).isoformat()
        headers = _copy_headers(
            message,
            **{
                H_DEAD_REASON: reason[:1000],
                H_DEAD_ATTEMPTS: str(attempts),
                H_LAST_FAILURE: now,
            },
        )
        headers.setdefault(H_FIRST_FAILURE, now)
        what = f"the dead letter of {event.event_id!r}" if event else "a dead letter"
        await self._publish_copy(dead_queue(self.group), message, event, headers, what)
        if event is not None:
            await self._settle(message, event, acked=False)
        else:
            await self._ack_quietly(message)

    async def _publish_copy(
        self,
        queue: str,
        message: AbstractIncomingMessage,
        event: Event | None,
        headers: dict[str, str],
        what: str,
    ) -> None:
        routed = await self._bus.publish_raw(
            queue,
            message.body,
            content_type=message.content_type or "application/json",
            message_id=message.message_id or (event.event_id if event else str(uuid.uuid4())),
            timestamp=message.timestamp or datetime.now(UTC),
            headers=headers,
            what=what,
            exchange="",
        )
        if not routed:
            raise BusError(f"RabbitMQ has no queue {queue!r}: {what} was not kept")


class AmqpGroups:
    """The groups of one RabbitMQ bus: their queues, declared once each per process."""

    def __init__(self, bus: AmqpBus) -> None:
        self.bus = bus
        self._retry_queues: dict[tuple[str, int], str] = {}
        self._lock = asyncio.Lock()

    def subscribe(
        self, group: str, kind: Kind, pattern: str, options: GroupOptions
    ) -> GroupSubscription:
        return _AmqpGroupSubscription(self, group, kind, pattern, options)

    async def declare(
        self,
        channel: AbstractRobustChannel,
        group: str,
        kind: Kind,
        pattern: str,
        options: GroupOptions,
    ) -> AbstractQueue:
        arguments = durable_queue_arguments(
            {
                "x-single-active-consumer": options.dedup,
                "x-max-length": options.max_length,
                "x-overflow": "reject-publish",
                # Consumers that keep dying on one message: RabbitMQ dead-letters it.
                "x-delivery-limit": options.max_attempts,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": dead_queue(group),
                "x-dead-letter-strategy": "at-least-once",
            }
        )
        try:
            await channel.declare_queue(
                dead_queue(group), durable=True, arguments=durable_queue_arguments()
            )
            queue = await channel.declare_queue(
                group_queue(group), durable=True, arguments=arguments
            )
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"the group {group!r} exists at RabbitMQ with other options than this consumer's "
                f"([groups]: dedup_window, max_attempts, max_length must be the same for every "
                f"consumer of a group): {exc}"
            ) from None
        await queue.bind(self.bus._exchange_name, f"{kind}.{pattern}")
        return queue

    async def retry_queue(self, group: str, delay_ms: int) -> str:
        key = (group, delay_ms)
        name = self._retry_queues.get(key)
        if name is not None:
            return name
        async with self._lock:
            name = retry_queue(group, delay_ms)
            channel = await self.bus._new_channel()
            try:
                await channel.declare_queue(
                    name,
                    durable=True,
                    arguments=durable_queue_arguments(
                        {
                            "x-message-ttl": delay_ms,
                            "x-dead-letter-exchange": "",
                            "x-dead-letter-routing-key": group_queue(group),
                            "x-dead-letter-strategy": "at-least-once",
                            "x-overflow": "reject-publish",
                        }
                    ),
                )
            finally:
                await self.bus._release(channel)
            self._retry_queues[key] = name
        return name

    @contextlib.asynccontextmanager
    async def _dead_messages(self, group: str) -> AsyncIterator[list[AbstractIncomingMessage]]:
        """The group's dead letters, taken unacknowledged on a channel of their own: what the
        caller does not acknowledge goes back, in order, when the channel closes."""
        async with self.bus._broker_call(f"the dead letters of {group!r} were not read"):
            exists = await self.bus._probe(
                lambda probe: probe.queue_declare(dead_queue(group), passive=True)
            )
            channel = await self.bus._new_channel() if exists else None
        if channel is None:
            yield []
            return
        try:
            queue = await channel.get_queue(dead_queue(group), ensure=False)
            messages: list[AbstractIncomingMessage] = []
            while len(messages) < _DEAD_LISTED:
                message = await queue.get(
                    no_ack=False, fail=False, timeout=self.bus.settings.publish_timeout
                )
                if message is None:
                    break
                messages.append(message)
            yield messages
        finally:
            await self.bus._release(channel)

    async def dead_letters(self, group: str) -> list[DeadLetter]:
        letters = []
        async with self._dead_messages(group) as messages:
            for message in messages:
                headers = message.headers or {}
                try:
                    event = _decode(message)
                except AdapterError:
                    continue
                reason = _text(headers.get(H_DEAD_REASON)) or _broker_reason(headers)
                letters.append(
                    DeadLetter(
                        event=event,
                        reason=reason,
                        attempts=_int(headers.get(H_DEAD_ATTEMPTS))
                        or 1 + _int(headers.get("x-delivery-count")),
                        first_failure=_time(headers.get(H_FIRST_FAILURE)),
                        last_failure=_time(headers.get(H_LAST_FAILURE)),
                    )
                )
        return letters

    async def replay(self, group: str, event_id: str | None) -> int:
        replayed = 0
        async with self._dead_messages(group) as messages:
            for message in messages:
                if event_id is not None and message.message_id != event_id:
                    continue
                headers = {
                    key: value for key, value in _copy_headers(message).items() if key not in _OURS
                }
                routed = await self.bus.publish_raw(
                    group_queue(group),
                    message.body,
                    content_type=message.content_type or "application/json",
                    message_id=message.message_id or str(uuid.uuid4()),
                    timestamp=message.timestamp or datetime.now(UTC),
                    headers=headers,
                    what=f"the replay of {message.message_id!r}",
                    exchange="",
                )
                if not routed:
                    raise BusError(f"RabbitMQ has no queue {group_queue(group)!r} to replay into")
                await message.ack()
                replayed += 1
        return replayed


def _broker_reason(headers: dict[str, Any]) -> str:
    """Why RabbitMQ dead-lettered a message itself (its delivery limit)."""
    reason = _text(headers.get("x-first-death-reason"))
    if reason == "delivery_limit":
        return "delivery limit: its consumers went away before settling it"
    return reason or "unknown"
