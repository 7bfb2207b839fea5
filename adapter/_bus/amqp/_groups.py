"""Groups on RabbitMQ.

A group ``G`` is the quorum queue ``customevent/<exchange>/group/G``, bound to
``<kind>.<pattern>`` on the events exchange. Its consumers compete for its events; when the group
de-duplicates, the queue has a single active consumer (the others stand by), which remembers the
events it acknowledged. A retry publishes a copy, with a confirm, to ``.../group/G/retry/<ms>``: a
quorum queue whose messages expire after that many milliseconds and are dead-lettered back to the
group's queue, so the delay is kept by the broker, not by a sleeping process; then the original is
acknowledged. Dead letters are copies in ``.../group/G/dead`` with the reason, the attempts and
the first and last failure times in headers. A delivery whose consumers keep going away without
settling it is dead-lettered by RabbitMQ itself after ``max_attempts`` redeliveries
(``x-delivery-limit``).

Every message is read by the codec (``_codec.decode``): a copy of ours (through the default
exchange, which only the bridge's accounts may publish to) is read with the routing key and the
retry count it carries; anything through the events exchange by its own routing key, whatever its
headers claim. A message the codec refuses is dead-lettered with the reason and acknowledged, and
the consumer goes on: no message can stall a group.

Managing groups. AMQP 0-9-1 cannot list queues (only the management plugin, optional on a
user's broker, can), so the bridge keeps a registry: the quorum queue
``customevent/<exchange>/groups`` holds one small JSON record for each binding a consumer joined a
group with and each retry queue it declared, written (confirmed) in the background the first
time a process meets one that is not there yet: no join or retry waits for it. Reading it takes
every record unacknowledged on a channel of its own, by one consumer with them all in flight (not
a ``basic.get`` each, a round trip each), and gives them back by closing it; duplicates (two
processes that joined at once) and records that are not ours are removed as they are met. A
group's depth, consumers and dead letters come from passive declarations of its queues, which
RabbitMQ answers exactly. Limits: a group joined before the registry existed is listed once a
consumer joins it again (or when its name is given, as the daemon gives its triggers'); a listing
taken while another process is reading the registry, or just after another process joined, may
miss groups (list again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustQueue,
)

from ..._clock import SYSTEM_CLOCK, Clock
from ..._event import Event
from ..._exceptions import (
    AdapterError,
    BusError,
    BusUnavailable,
    ClientStateError,
    ConfigurationError,
    DeadLetterNotFound,
    GroupInUse,
    GroupNotFound,
)
from ..._groups import (
    DeadLetter,
    Delivery,
    GroupInfo,
    GroupOptions,
    GroupSubscription,
    SeenIds,
    check_group_name,
    dedup_key,
)
from ..._names import Kind, routing_key, validate_kind, validate_pattern
from ..._retry import RetryPolicy
from ..._times import parse_rfc3339
from ._codec import H_ORIGINAL_ROUTING_KEY, BadMessage, Decoded, Policy, decode, message_headers
from ._link import UNAVAILABLE, BrokerLink
from ._metrics import Refusals
from ._queues import (
    dead_arguments,
    dead_queue,
    group_arguments,
    group_queue,
    registry_arguments,
    registry_queue,
    retry_arguments,
    retry_queue,
)

__all__ = ["AmqpGroups"]

log = logging.getLogger("adapter.amqp.groups")

H_RETRIES = "x-retry-count"
H_FIRST_FAILURE = "x-first-failure"
H_LAST_FAILURE = "x-last-failure"
H_LAST_REASON = "x-last-failure-reason"
H_DEAD_REASON = "x-deadletter-reason"
H_DEAD_ATTEMPTS = "x-deadletter-attempts"
_DEAD_LISTED = 10_000  # dead letters (or registry records) read at once
_TAKE_IDLE = 0.5  # a reading of ready messages stops when none has come for this long
_REGISTRY_CLOSE_SECONDS = 2.0  # the most a closing bus waits for its records to be written
_REASON_MAX = 1000
_RECORD_BYTES = 1024  # a registry record is far smaller; a bigger one is not ours
_RETRY_MS_MAX = 2**31 - 1
#: A registry record: ("binding", group, "<kind>.<pattern>") or ("retry", group, "<ms>").
Record = tuple[str, str, str]


def _record_body(record: Record) -> bytes:
    what, group, value = record
    entry: dict[str, object] = {"group": group}
    entry[what] = value if what == "binding" else int(value)
    return json.dumps(entry, separators=(",", ":")).encode()


def _read_record(body: bytes) -> Record | None:
    """A registry record from a message's body, or None for anything that is not one of ours
    (a registry is reached through the default exchange, so it is read as untrusted input)."""
    if len(body) > _RECORD_BYTES:
        return None
    try:
        entry = json.loads(body)
        if not isinstance(entry, dict) or len(entry) != 2:
            return None
        group = check_group_name(entry["group"])
        if "binding" in entry:
            kind, sep, pattern = str(entry["binding"]).partition(".")
            if not (isinstance(entry["binding"], str) and sep):
                return None
            validate_kind(kind)
            validate_pattern(pattern)
            return ("binding", group, f"{kind}.{pattern}")
        delay = entry.get("retry")
        if isinstance(delay, int) and not isinstance(delay, bool) and 0 < delay <= _RETRY_MS_MAX:
            return ("retry", group, str(delay))
    except (ValueError, KeyError, TypeError, RecursionError, AdapterError):
        return None
    return None


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    text = _text(value)
    return int(text) if text is not None and text.isdigit() and len(text) < 10 else 0


def _time(value: object) -> datetime | None:
    text = _text(value)
    if text is None:
        return None
    with contextlib.suppress(ValueError):
        return parse_rfc3339(text)
    return None


def _ours(message: AbstractIncomingMessage, decoded: Decoded) -> dict[str, Any]:
    """The headers of ours a message may be believed to carry: only a copy of ours has any."""
    if not decoded.copy:
        return {}
    names = (H_RETRIES, H_FIRST_FAILURE, H_LAST_FAILURE, H_LAST_REASON)
    return {name: value for name in names if (value := (message.headers or {}).get(name))}


def _copy_headers(event: Event, carried: dict[str, Any], **ours: str) -> dict[str, Any]:
    """The headers of a copy: those the event is written with (only what was believed of the
    original), its routing key, what a copy of ours carried, and ``ours``."""
    headers: dict[str, Any] = message_headers(event)
    headers[H_ORIGINAL_ROUTING_KEY] = routing_key(event.kind, event.name)
    headers.update(carried)
    headers.update(ours)
    return headers


def _attempt(message: AbstractIncomingMessage, carried: dict[str, Any]) -> int:
    retries = _int(carried.get(H_RETRIES))
    # Set by RabbitMQ on a redelivery; a publisher's own value on a first delivery is ignored.
    redelivered = (
        _int((message.headers or {}).get("x-delivery-count")) if message.redelivered else 0
    )
    return 1 + retries + redelivered


class _AmqpDelivery(Delivery):
    def __init__(
        self, sub: _AmqpGroupSubscription, message: AbstractIncomingMessage, decoded: Decoded
    ) -> None:
        carried = _ours(message, decoded)
        super().__init__(decoded.event, _attempt(message, carried))
        self._sub = sub
        self._message = message
        self._carried = carried

    async def _ack(self) -> None:
        await self._sub._settle(self._message, self.event, acked=True)

    async def _retry(self, reason: str, at_least: float) -> bool:
        options = self._sub.options
        if self.attempt >= options.max_attempts:
            await self._sub._bury(
                self._message,
                self.event,
                self._carried,
                f"{reason} (attempt {self.attempt} of {options.max_attempts})",
                self.attempt,
            )
            return True
        await self._sub._again(
            self._message, self.event, self._carried, reason, self.attempt, at_least
        )
        return False

    async def _dead_letter(self, reason: str) -> None:
        await self._sub._bury(self._message, self.event, self._carried, reason, self.attempt)


class _AmqpGroupSubscription(GroupSubscription):
    def __init__(
        self, groups: AmqpGroups, group: str, kind: Kind, pattern: str, options: GroupOptions
    ) -> None:
        super().__init__(group, kind, pattern, options)
        self._kind = kind
        self._groups = groups
        self._link = groups.link
        self._queue_name = group_queue(groups.link.exchange, group)
        self._dead_name = dead_queue(groups.link.exchange, group)
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._inbox: asyncio.Queue[_AmqpDelivery] = asyncio.Queue()
        self._seen = SeenIds(options.dedup_window, options.dedup_max, groups.clock)
        # The message of each delivery handed out and not settled yet, by its dedup key.
        self._in_flight: dict[str, AbstractIncomingMessage] = {}
        self._policy = RetryPolicy(options.retry_initial, options.retry_max)
        # Deliveries whose settling failed, to be given back to the queue after a backoff: at
        # most one give-back a message (a second would settle its delivery tag twice, and the
        # broker close the channel for it).
        self._giving_back: dict[AbstractIncomingMessage, asyncio.Task[None]] = {}

    async def __aenter__(self) -> Self:
        self._groups.check_open()
        try:
            async with self._link.call(f"the group {self.group!r} was not joined"):
                self._channel = await self._link.new_channel()
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
        for task in list(self._giving_back.values()):
            task.cancel()  # the channel's close gives their messages back
        channel, self._channel = self._channel, None
        queue, tag, self._queue, self._tag = self._queue, self._tag, None, None
        if queue is not None and tag is not None:
            await self._link.tidy(f"stop consuming {self.group!r}", lambda: queue.cancel(tag))
        if channel is not None:
            # Unsettled deliveries go back to the group when the channel closes.
            await self._link.release(channel)

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        if self._channel is None:
            raise ClientStateError("iterate the group subscription inside its async with")
        while True:
            yield await self._inbox.get()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Nothing may escape: aio-pika would leave the message unacknowledged, holding a
        # prefetch slot for good, and the consumer would take nothing more.
        try:
            await self._take(message)
        except Exception as exc:
            if message in self._giving_back:
                # Its dead letter could not be kept: it comes back after the backoff.
                log.warning("group %r: a message could not be dead-lettered: %s", self.group, exc)
                return
            log.exception("group %r: could not handle a message; dead-lettering it", self.group)
            with contextlib.suppress(Exception):
                await self._bury_raw(message, f"could not be handled: {type(exc).__name__}")

    async def _take(self, message: AbstractIncomingMessage) -> None:
        try:
            decoded = decode(message, self._groups.policy, copies_to=self._queue_name)
        except BadMessage as exc:
            self._groups.refused("group", repr(self.group), exc)
            await self._bury_raw(message, f"not an event: {exc.reason}")
            return
        event = decoded.event
        key = dedup_key(event)
        if self.options.dedup and (key in self._seen or self._handling(key)):
            # A copy of an event this (the only active) consumer handled or is handling.
            await self._ack_quietly(message)
            return
        self._in_flight[key] = message
        self._inbox.put_nowait(_AmqpDelivery(self, message, decoded))

    def _handling(self, key: str) -> bool:
        """Whether a delivery of ``key`` is under way and can still be settled. One whose channel
        is gone cannot be: RabbitMQ hands its message out again, and that copy is the one to
        deliver (acking it as a duplicate would lose the event if the first then fails)."""
        message = self._in_flight.get(key)
        if message is None:
            return False
        try:
            return not message.channel.is_closed
        except aiormq.exceptions.ChannelInvalidStateError:  # aio-pika's word for a closed one
            return False

    # -- settling (called by the deliveries) ---------------------------------------------

    async def _settle(self, message: AbstractIncomingMessage, event: Event, *, acked: bool) -> None:
        key = dedup_key(event)
        if self._in_flight.get(key) is message:
            del self._in_flight[key]
        if acked and self.options.dedup:
            # Handled, whether or not the broker hears the ack: when the ack is lost with the
            # channel, the copy that comes again is a duplicate to drop.
            self._seen.add(key)
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
        carried: dict[str, Any],
        reason: str,
        attempt: int,
        at_least: float,
    ) -> None:
        delay = self._policy.delay_ms(attempt, at_least=at_least)
        now = datetime.now(UTC).isoformat()
        headers = _copy_headers(
            event,
            carried,
            **{
                # Every attempt so far, redeliveries too: the copy is the next one.
                H_RETRIES: str(attempt),
                H_LAST_FAILURE: now,
                H_LAST_REASON: reason[:_REASON_MAX],
            },
        )
        headers.setdefault(H_FIRST_FAILURE, now)
        try:
            queue = await self._groups.retry_queue(self.group, delay)
        except BaseException:
            self._give_back(message, event, delay / 1000)
            raise
        what = f"the retry of {event.event_id!r}"
        await self._publish_copy(queue, message, event, headers, what, delay / 1000)
        await self._settle(message, event, acked=False)

    async def _bury(
        self,
        message: AbstractIncomingMessage,
        event: Event,
        carried: dict[str, Any],
        reason: str,
        attempts: int,
    ) -> None:
        now = datetime.now(UTC).isoformat()
        headers = _copy_headers(
            event,
            carried,
            **{
                H_DEAD_REASON: reason[:_REASON_MAX],
                H_DEAD_ATTEMPTS: str(attempts),
                H_LAST_FAILURE: now,
            },
        )
        headers.setdefault(H_FIRST_FAILURE, now)
        what = f"the dead letter of {event.event_id!r}"
        delay = self._policy.delay_ms(attempts) / 1000
        await self._publish_copy(self._dead_name, message, event, headers, what, delay)
        await self._settle(message, event, acked=False)

    async def _bury_raw(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Dead-letter a message that is no event: its body as it came, none of its headers
        (nothing it claims is believed, now or on a replay), the reason; then acknowledge it."""
        now = datetime.now(UTC).isoformat()
        headers = {H_DEAD_REASON: reason[:_REASON_MAX], H_DEAD_ATTEMPTS: "1", H_LAST_FAILURE: now}
        delay = self._policy.delay_ms(1) / 1000
        await self._publish_copy(self._dead_name, message, None, headers, "a dead letter", delay)
        await self._ack_quietly(message)

    def _give_back(
        self,
        message: AbstractIncomingMessage,
        event: Event | None,
        delay: float,
        dead_queue_gone: bool = False,
    ) -> None:
        """A delivery whose settling failed (its copy was not kept): unless its channel goes,
        which gives it back at once, the broker would hold it unacknowledged for as long as the
        channel lives, and a copy of it that comes meanwhile would be dropped as a duplicate of
        one under way. Handed back to the queue after ``delay``, so that a broker that keeps
        refusing is not asked again at once, with a reject (RabbitMQ counts it against the
        delivery limit, as it no longer counts a nack from 4.3 on: max_attempts bounds the
        give-backs too). ``dead_queue_gone``: the dead letters' queue is declared again first."""
        if event is not None:
            key = dedup_key(event)
            if self._in_flight.get(key) is message:
                del self._in_flight[key]
        if self._channel is None or message in self._giving_back:
            return  # the subscription closed (its channel's close gave it back), or under way
        task = asyncio.create_task(self._requeue_later(message, delay, dead_queue_gone))
        self._giving_back[message] = task
        task.add_done_callback(lambda _: self._giving_back.pop(message, None))

    async def _requeue_later(
        self, message: AbstractIncomingMessage, delay: float, dead_queue_gone: bool
    ) -> None:
        await asyncio.sleep(delay)
        if dead_queue_gone:
            with contextlib.suppress(AdapterError):
                await self._groups.declare_dead(self.group)
        tag = message.delivery_tag
        try:
            if tag is not None:
                await message.channel.basic_reject(tag, requeue=True)
        except (*UNAVAILABLE, aiormq.exceptions.AMQPError):
            pass  # its channel is gone, which gave it back already
        else:
            log.info("group %r: a delivery that could not be settled was given back", self.group)

    async def _publish_copy(
        self,
        queue: str,
        message: AbstractIncomingMessage,
        event: Event | None,
        headers: dict[str, Any],
        what: str,
        give_back_after: float,
    ) -> None:
        """Publish a copy of ``message`` to ``queue``; when it is not kept, the message is given
        back after ``give_back_after`` seconds (``_give_back``) and ``BusError`` raised. A queue
        that is gone (deleted by another process's ``group delete``, or an operator) is declared
        again: a retry queue on the next retry to it, the dead letters' before the give-back."""
        try:
            routed = await self._link.publish_raw(
                queue,
                message.body,
                content_type="application/json"
                if event is not None
                else "application/octet-stream",
                message_id=event.event_id if event is not None else str(uuid.uuid4()),
                timestamp=event.sent_at if event is not None else datetime.now(UTC),
                headers=headers,
                what=what,
                exchange="",
            )
        except BaseException:
            self._give_back(message, event, give_back_after)
            raise
        if not routed:
            self._groups.forget_retry_queue(queue)
            self._give_back(message, event, give_back_after, queue == self._dead_name)
            raise BusError(f"RabbitMQ has no queue {queue!r}: {what} was not kept")


def _dead_original_key(message: AbstractIncomingMessage, exchange: str) -> str | None:
    """For a message RabbitMQ dead-lettered itself (the delivery limit), the routing key it was
    delivered to the group with, from the broker's newest ``x-death`` record: its own exchange and
    routing key, not a header of the publisher's."""
    deaths = (message.headers or {}).get("x-death")
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], dict):
        return None
    newest = deaths[0]
    if _text(newest.get("reason")) != "delivery_limit":
        return None
    keys = newest.get("routing-keys")
    first = _text(keys[0]) if isinstance(keys, list) and keys else None
    if _text(newest.get("exchange")) == exchange:
        return first
    # Delivered as a copy of ours (a retry): the key the copy carried, which we wrote.
    return _text((message.headers or {}).get(H_ORIGINAL_ROUTING_KEY))


class AmqpGroups:
    """The groups of one RabbitMQ bus: their queues, declared once each per process."""

    def __init__(
        self,
        link: BrokerLink,
        policy: Policy,
        *,
        check_open: Callable[[], None],
        refused: Refusals,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.link = link
        self.refused = refused
        self.clock = clock
        self.policy = policy
        self.check_open = check_open
        self._retry_queues: dict[tuple[str, int], str] = {}
        self._lock = asyncio.Lock()
        self._registry_lock = asyncio.Lock()
        self._registered: set[Record] = set()
        self._unregistered: set[Record] = set()
        self._registrar: asyncio.Task[None] | None = None
        self._closed = False

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
        exchange = self.link.exchange
        arguments = group_arguments(
            exchange,
            group,
            single_active=options.dedup,
            max_length=options.max_length,
            max_attempts=options.max_attempts,
        )
        try:
            await channel.declare_queue(
                dead_queue(exchange, group), durable=True, arguments=dead_arguments()
            )
            queue = await channel.declare_queue(
                group_queue(exchange, group), durable=True, arguments=arguments
            )
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"the group {group!r} exists at RabbitMQ with other options than this consumer's "
                f"([groups]: dedup_window, max_attempts, max_length must be the same for every "
                f"consumer of a group): {exc}"
            ) from None
        await queue.bind(exchange, f"{kind}.{pattern}")
        self._register(("binding", group, f"{kind}.{pattern}"))
        return queue

    async def declare_dead(self, group: str) -> None:
        """Declare the group's dead letters' queue again (deleted under the group)."""
        name = dead_queue(self.link.exchange, group)
        async with self.link.call(f"the queue {name!r} was not declared"):
            channel = await self.link.new_channel()
            try:
                await channel.declare_queue(name, durable=True, arguments=dead_arguments())
            finally:
                await self.link.release(channel)

    def forget_retry_queue(self, name: str) -> None:
        """The queue ``name`` is gone: if it was a retry queue, the next retry to it declares it
        again."""
        for key in [key for key, known in self._retry_queues.items() if known == name]:
            del self._retry_queues[key]

    async def retry_queue(self, group: str, delay_ms: int) -> str:
        key = (group, delay_ms)
        name = self._retry_queues.get(key)
        if name is not None:
            return name
        async with self._lock:
            exchange = self.link.exchange
            name = retry_queue(exchange, group, delay_ms)
            channel = await self.link.new_channel()
            try:
                await channel.declare_queue(
                    name, durable=True, arguments=retry_arguments(exchange, group, delay_ms)
                )
            finally:
                await self.link.release(channel)
            self._retry_queues[key] = name
        self._register(("retry", group, str(delay_ms)))
        return name

    # -- the registry of groups ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _records(self, *, create: bool) -> AsyncIterator[list[tuple[Any, Record]]]:
        """The registry's records with their messages, taken unacknowledged on a channel of
        their own (what is not acknowledged goes back when it closes); duplicates and messages
        that are no record are acknowledged (removed) on the way. A reader (``create`` false)
        first waits for the records this process is writing, so it sees its own joins; the
        writer reads with ``create`` and must not wait for itself."""
        name = registry_queue(self.link.exchange)
        if not create:
            await self._registry_written()
        async with self._registry_lock:
            async with self.link.call("the registry of groups was not read"):
                exists = create or await self.link.probe(
                    lambda probe: probe.queue_declare(name, passive=True)
                )
                channel = await self.link.new_channel() if exists else None
            if channel is None:
                yield []
                return
            try:
                async with self.link.call("the registry of groups was not read"):
                    queue = await channel.declare_queue(
                        name, durable=True, arguments=registry_arguments()
                    )
                    found: list[tuple[Any, Record]] = []
                    seen: set[Record] = set()
                    taking = _take_ready(
                        channel,
                        queue,
                        _DEAD_LISTED,
                        seconds=self.link.settings.publish_timeout,
                        what="the registry of groups was not read",
                    )
                    for message in await taking:
                        record = _read_record(message.body)
                        if record is None or record in seen:
                            await message.ack()
                            continue
                        seen.add(record)
                        found.append((message, record))
                self._registered.update(seen)
                yield found
            finally:
                await self.link.release(channel)

    def _register(self, record: Record) -> None:
        """Write a record into the registry, in the background, unless it is there. Neither a
        join nor a retry waits for it (a registry of thousands of records takes a moment to
        read), and neither fails for it: a group that is not in the registry works, and is only
        missing from ``group list``. Whatever reads the registry here waits for it first."""
        if record in self._registered or self._closed:
            return
        self._unregistered.add(record)
        if self._registrar is None or self._registrar.done():
            self._registrar = asyncio.get_running_loop().create_task(
                self._write_records(), name="customevent-group-registry"
            )

    async def _write_records(self) -> None:
        while self._unregistered:
            batch, self._unregistered = self._unregistered, set()
            try:
                async with self._records(create=True) as records:
                    known = {record for _, record in records}
                    for record in sorted(batch - known):
                        routed = await self.link.publish_raw(
                            registry_queue(self.link.exchange),
                            _record_body(record),
                            content_type="application/json",
                            message_id=str(uuid.uuid4()),
                            timestamp=datetime.now(UTC),
                            headers={},
                            what=f"the record of the group {record[1]!r}",
                            exchange="",
                        )
                        if routed:
                            self._registered.add(record)
            except Exception as exc:  # bookkeeping in the background: said, never fatal
                self._unwritten(batch, exc)

    def _unwritten(self, batch: set[Record], exc: Exception) -> None:
        """Say which groups are missing from the registry (with the traceback when it is no
        broker failure but a bug), and let a later join or retry of this process write their
        records again."""
        self._retry_queues = {
            key: name
            for key, name in self._retry_queues.items()
            if ("retry", key[0], str(key[1])) not in batch
        }
        log.warning(
            "groups %s: not written in the registry of groups (%s); they work, but "
            "customevent group list will not show them",
            ", ".join(sorted({repr(record[1]) for record in batch})),
            exc or type(exc).__name__,
            exc_info=not isinstance(exc, (BusError, aiormq.exceptions.AMQPError)),
        )

    async def _registry_written(self) -> None:
        """Wait for the records this process is writing (a listing sees its own joins)."""
        registrar = self._registrar
        if registrar is not None and not registrar.done():
            await asyncio.wait([registrar])

    async def close(self) -> None:
        """Let the records being written land (briefly: they are bookkeeping), then stop."""
        self._closed = True
        registrar, self._registrar = self._registrar, None
        if registrar is None or registrar.done():
            return
        await asyncio.wait([registrar], timeout=_REGISTRY_CLOSE_SECONDS)
        registrar.cancel()
        await asyncio.gather(registrar, return_exceptions=True)

    async def _queue_counts(self, name: str) -> tuple[int, int] | None:
        """A queue's messages ready and consumers, from a passive declaration; None if there
        is no such queue."""
        answer: list[Any] = []

        async def declare(probe: aiormq.abc.AbstractChannel) -> None:
            answer.append(await probe.queue_declare(name, passive=True))

        async with self.link.call(f"the queue {name!r} was not looked up"):
            if not await self.link.probe(declare):
                return None
        ok = answer[0]
        return int(ok.message_count or 0), int(ok.consumer_count or 0)

    async def _info(self, group: str, bindings: Iterable[str]) -> GroupInfo | None:
        exchange = self.link.exchange
        counts = await self._queue_counts(group_queue(exchange, group))
        if counts is None:
            return None
        dead = await self._queue_counts(dead_queue(exchange, group))
        return GroupInfo(
            name=group,
            bindings=tuple(sorted(set(bindings))),
            depth=counts[0],
            consumers=counts[1],
            dead_letters=dead[0] if dead is not None else 0,
        )

    async def _existing(self, group: str) -> None:
        if await self._queue_counts(group_queue(self.link.exchange, group)) is None:
            raise GroupNotFound(group)

    async def _recorded(self) -> dict[str, list[Record]]:
        by_group: dict[str, list[Record]] = {}
        async with self._records(create=False) as records:
            for _, record in records:
                by_group.setdefault(record[1], []).append(record)
        return by_group

    async def groups(self, known: Iterable[str]) -> list[GroupInfo]:
        names = {check_group_name(name) for name in known}
        found = []
        async with self._records(create=False) as records:
            by_group: dict[str, list[tuple[Any, Record]]] = {}
            for message, record in records:
                by_group.setdefault(record[1], []).append((message, record))
            for name in sorted(names | set(by_group)):
                mine = by_group.get(name, [])
                info = await self._info(name, [r[2] for _, r in mine if r[0] == "binding"])
                if info is not None:
                    found.append(info)
                    continue
                # Its queue was deleted by other means (rabbitmqctl, the management UI): the
                # records are stale.
                for message, record in mine:
                    await message.ack()
                    self._registered.discard(record)
        return found

    async def info(self, group: str, *, bindings: bool = True) -> GroupInfo:
        """The group's bindings (read from the registry), depth, consumers and dead letters;
        ``bindings=False``: the counts alone, two passive declarations."""
        records = (await self._recorded()).get(group, []) if bindings else []
        info = await self._info(group, [r[2] for r in records if r[0] == "binding"])
        if info is None:
            raise GroupNotFound(group)
        return info

    def _retry_names(self, group: str, records: Iterable[Record]) -> set[str]:
        """The group's retry queues: those recorded, and the default ladder's (queues made
        before the registry, or whose record was lost)."""
        exchange = self.link.exchange
        defaults = GroupOptions()
        policy = RetryPolicy(defaults.retry_initial, defaults.retry_max)
        ladder = {policy.delay_ms(step) for step in range(1, 64)}
        delays = ladder | {int(r[2]) for r in records if r[0] == "retry"}
        return {retry_queue(exchange, group, delay) for delay in delays}

    async def _each(self, names: Iterable[str], method: str) -> int:
        """``queue_purge`` or ``queue_delete`` each queue; the messages they held."""
        answers: list[Any] = []

        async def call(probe: aiormq.abc.AbstractChannel, name: str) -> None:
            answers.append(await getattr(probe, method)(name))

        for name in sorted(names):
            async with self.link.call(f"the queue {name!r} was not emptied"):
                await self.link.probe(lambda probe, name=name: call(probe, name))  # type: ignore[misc]
        return sum(int(answer.message_count or 0) for answer in answers)

    async def purge(self, group: str) -> int:
        await self._existing(group)
        records = (await self._recorded()).get(group, [])
        retries = self._retry_names(group, records)
        return await self._each([group_queue(self.link.exchange, group), *retries], "queue_purge")

    async def delete(self, group: str, *, force: bool) -> GroupInfo:
        info = await self.info(group)
        if info.consumers and not force:
            raise GroupInUse(group, info.consumers)
        exchange = self.link.exchange
        async with self._records(create=False) as records:
            mine = [(message, record) for message, record in records if record[1] == group]
            # The retries first (they expire into the group's queue), then the group (its
            # delivery limit dead-letters into the dead queue), then its dead letters.
            await self._each(self._retry_names(group, [r for _, r in mine]), "queue_delete")
            await self._each([group_queue(exchange, group)], "queue_delete")
            await self._each([dead_queue(exchange, group)], "queue_delete")
            for message, record in mine:
                await message.ack()
                self._registered.discard(record)
        for key in [key for key in self._retry_queues if key[0] == group]:
            del self._retry_queues[key]
        return info

    async def purge_dead(self, group: str) -> int:
        await self._existing(group)
        return await self._each([dead_queue(self.link.exchange, group)], "queue_purge")

    @contextlib.asynccontextmanager
    async def _dead_messages(self, group: str) -> AsyncIterator[list[AbstractIncomingMessage]]:
        """The group's dead letters, taken unacknowledged on a channel of their own: what the
        caller does not acknowledge goes back, in order, when the channel closes."""
        name = dead_queue(self.link.exchange, group)
        what = f"the dead letters of {group!r} were not read"
        async with self.link.call(what):
            exists = await self.link.probe(lambda probe: probe.queue_declare(name, passive=True))
            channel = await self.link.new_channel() if exists else None
        if channel is None:
            yield []
            return
        try:
            async with self.link.call(what):
                try:
                    queue = await channel.declare_queue(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    queue = None  # deleted since it was looked up: no dead letters
            # Not bounded as a whole: 10,000 big dead letters take a while to come; each call
            # to the broker is, and the reading stops when they stop coming.
            seconds = self.link.settings.publish_timeout
            yield (
                []
                if queue is None
                else await _take_ready(channel, queue, _DEAD_LISTED, seconds=seconds, what=what)
            )
        finally:
            await self.link.release(channel)

    def _read_dead(self, group: str, message: AbstractIncomingMessage) -> Event | None:
        try:
            return decode(
                message,
                self.policy,
                copies_to=dead_queue(self.link.exchange, group),
                original_key=_dead_original_key(message, self.link.exchange),
            ).event
        except BadMessage:
            return None  # a refused message, kept for an operator with its reason

    async def dead_letters(self, group: str) -> list[DeadLetter]:
        await self._existing(group)
        letters = []
        async with self._dead_messages(group) as messages:
            for message in messages:
                headers = message.headers or {}
                event = self._read_dead(group, message)
                if event is None:
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
        await self._existing(group)
        replayed = 0
        target = group_queue(self.link.exchange, group)
        async with self._dead_messages(group) as messages:
            for message in messages:
                event = self._read_dead(group, message)
                if event is None or (event_id is not None and event.event_id != event_id):
                    continue
                routed = await self.link.publish_raw(
                    target,
                    message.body,
                    content_type="application/json",
                    message_id=event.event_id,
                    timestamp=event.sent_at,
                    headers=_copy_headers(event, {}),
                    what=f"the replay of {event.event_id!r}",
                    exchange="",
                )
                if not routed:
                    raise BusError(f"RabbitMQ has no queue {target!r} to replay into")
                await message.ack()
                replayed += 1
        if event_id is not None and not replayed:
            raise DeadLetterNotFound(group, event_id)
        return replayed


async def _take_ready(
    channel: AbstractRobustChannel,
    queue: AbstractRobustQueue,
    limit: int,
    *,
    seconds: float,
    what: str,
) -> list[AbstractIncomingMessage]:
    """Up to ``limit`` of the messages ``queue`` had ready when it was declared, in order, taken
    unacknowledged by one consumer with all of them in flight. Not a ``basic.get`` each: that is
    a round trip a message, and a registry of 8,000 records took longer than a join may (10 s).
    A message another reader took meanwhile is not waited for: the reading stops when nothing
    has come for ``_TAKE_IDLE`` seconds. Each call to the broker is bounded by ``seconds`` (a
    robust channel would wait for a reconnection, however long); a link lost meanwhile is
    ``BusUnavailable`` (``what`` says what was not done), never a partial reading, and messages
    of a channel reopened meanwhile (aio-pika consumes again there) are not taken."""
    declared = queue.declaration_result
    ready = int(declared.message_count or 0) if declared is not None else 0
    want = min(ready, limit)
    if want <= 0:
        return []
    taken: list[AbstractIncomingMessage] = []
    arrived = asyncio.Event()
    done = False  # a delivery's callback runs as a task of its own: none may come after
    underlay: aiormq.abc.AbstractChannel | None = None
    try:
        async with asyncio.timeout(seconds):
            underlay = await channel.get_underlay_channel()

            async def take(message: AbstractIncomingMessage) -> None:
                try:
                    mine = message.channel is underlay
                except aiormq.exceptions.ChannelInvalidStateError:
                    return  # its channel is gone: the message is back in the queue
                if mine and not done and len(taken) < want:
                    taken.append(message)
                    arrived.set()

            await channel.set_qos(prefetch_count=want)  # no more than wanted comes
            # Not restored by aio-pika after a reconnection: the messages would come again, and
            # the copies of those read already be removed as duplicates.
            tag = await queue.consume(take, no_ack=False, robust=False)
        try:
            while len(taken) < want and not underlay.is_closed:
                arrived.clear()
                try:
                    async with asyncio.timeout(_TAKE_IDLE):
                        await arrived.wait()
                except TimeoutError:
                    break
        finally:
            done = True
            if not underlay.is_closed:
                async with asyncio.timeout(seconds):
                    await queue.cancel(tag)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return []  # the queue was deleted meanwhile: nothing in it any more
    except TimeoutError:
        raise BusUnavailable(f"RabbitMQ did not answer within {seconds:g}s; {what}") from None
    except Exception as exc:  # aiormq rejects calls on a lost link with a bare Exception too
        if underlay is not None and not underlay.is_closed:
            raise
        raise BusUnavailable(f"the link to RabbitMQ was lost; {what}") from exc
    if underlay.is_closed:
        raise BusUnavailable(f"the link to RabbitMQ was lost; {what}")
    return taken


def _broker_reason(headers: dict[str, Any]) -> str:
    """Why RabbitMQ dead-lettered a message itself (its delivery limit)."""
    reason = _text(headers.get("x-first-death-reason"))
    if reason == "delivery_limit":
        return "delivery limit: its consumers went away before settling it"
    return reason or "unknown"
