"""The RabbitMQ bus (aio-pika).

Publishing: one channel in confirm mode, ``mandatory`` set, so a send reports whether any queue
was bound. Waiting: waits are grouped by deadline into *wait queues*, one per client process and
deadline bucket, each with ``x-expires`` set to the bucket's end plus a grace; a wait adds one
binding to its bucket's queue (refcounted per key) and the queue's consumer dispatches each message
to every wait whose pattern matches. Setting up a wait is then one ``queue.bind`` round trip
instead of a declare, a bind and a consume, and the binds of concurrent waits go over all the wait
channels at once (docs/waits.md has the measurements behind this).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import ssl
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
    AbstractRobustQueue,
)
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from .._event import APP_ID, Event, encode_body, event_from_message
from .._exceptions import (
    AdapterError,
    BrokerAuthenticationError,
    BusUnavailable,
    ConfigurationError,
    PublishRejected,
)
from .._names import Kind, routing_key
from .._settings import AmqpSettings
from .._tls import client_tls_context
from ._base import Bus, Subscription, SubscriptionIndex, check_wait_id, seconds_until

__all__ = ["AmqpBus", "redact_url"]

log = logging.getLogger("adapter.amqp")

BUCKET_SECONDS = 10.0
_UNAVAILABLE = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ConnectionClosed,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
    RuntimeError,
)


def redact_url(url: str) -> str:
    """The URL with its password replaced, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _ssl_context(settings: AmqpSettings) -> ssl.SSLContext | None:
    if settings.url is None or urlsplit(settings.url).scheme != "amqps":
        return None
    return client_tls_context(settings, what="AMQP")


class _WaitQueue:
    """One queue of this client for the waits whose deadlines fall in one bucket."""

    def __init__(self, bus: AmqpBus, name: str, bucket_end: float) -> None:
        self.bus = bus
        self.name = name
        self.bucket_end = bucket_end
        self.queue: AbstractQueue | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.subscriptions = SubscriptionIndex()
        self.bindings: dict[str, int] = {}
        self.binding_locks: dict[str, asyncio.Lock] = {}
        self.members = 0
        self.consumer_tag: str | None = None
        # The queue on every wait channel: a channel answers one method at a time, so binds
        # spread over all of them run side by side.
        self.handles: list[AbstractRobustQueue] = []
        self._turn = itertools.count()

    async def open(
        self, channels: Sequence[AbstractRobustChannel], home: int, expires_ms: int
    ) -> None:
        try:
            # Declared and consumed on its home channel: aio-pika re-declares and re-consumes it
            # after a reconnect. Its bindings are this object's to restore (``rebind``).
            self.queue = queue = await channels[home].declare_queue(
                self.name,
                durable=False,
                auto_delete=False,
                arguments={"x-expires": expires_ms},
            )
            self.handles = [
                queue
                if i == home
                else cast(AbstractRobustQueue, await channel.get_queue(self.name, ensure=False))
                for i, channel in enumerate(channels)
            ]
            self.consumer_tag = await self.queue.consume(self._on_message, no_ack=True)
        except BaseException as exc:
            self.ready.set_exception(exc)
            # A waiter sees this exception; the future must not log it as never retrieved.
            self.ready.exception()
            raise
        self.ready.set_result(None)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        key = message.routing_key or ""
        subs = self.subscriptions.matching(key)
        if not subs:
            return
        try:
            event = _decode(message)
        except AdapterError as exc:
            log.warning("dropping a message on %r that is not an event: %s", key, exc)
            return
        for sub in subs:
            sub.deliver(event)

    def _handle(self) -> AbstractRobustQueue:
        return self.handles[next(self._turn) % len(self.handles)]

    async def bind(self, key: str) -> None:
        lock = self.binding_locks.setdefault(key, asyncio.Lock())
        async with lock:
            count = self.bindings.get(key, 0)
            if count == 0:
                # Not robust: aio-pika would keep a list of the bindings that it scans on every
                # unbind (quadratic in the waits held); ``self.bindings`` is the record instead.
                await self._handle().bind(self.bus._exchange_name, key, robust=False)
            self.bindings[key] = count + 1

    async def rebind(self) -> None:
        """Bind every key again after a reconnect. A queue that outlived the outage kept its
        bindings (binding again changes nothing); one the broker lost (a restart, or an outage
        longer than its expiry) came back empty from aio-pika's re-declare."""

        async def again(key: str) -> None:
            async with self.binding_locks.setdefault(key, asyncio.Lock()):
                if self.bindings.get(key, 0) > 0:
                    await self._handle().bind(self.bus._exchange_name, key, robust=False)

        await asyncio.gather(*(again(key) for key in list(self.bindings)))

    async def unbind(self, key: str, *, at_broker: bool) -> None:
        lock = self.binding_locks.setdefault(key, asyncio.Lock())
        async with lock:
            count = self.bindings.get(key, 0) - 1
            if count > 0:
                self.bindings[key] = count
                return
            self.bindings.pop(key, None)
            self.binding_locks.pop(key, None)
            if at_broker and self.handles and self.members > 1:
                await self._handle().unbind(self.bus._exchange_name, key)


def _decode(message: AbstractIncomingMessage) -> Event:
    return event_from_message(
        routing_key=message.routing_key or "",
        body=message.body,
        headers=message.headers,
        message_id=message.message_id,
        timestamp=message.timestamp,
    )


class _AmqpSubscription(Subscription):
    def __init__(self, bus: AmqpBus, kind: Kind, pattern: str, deadline: datetime) -> None:
        super().__init__(kind, pattern, deadline)
        self.bus = bus
        self._wq: _WaitQueue | None = None

    async def __aenter__(self) -> Self:
        self.bus._check_open()
        wq = await self.bus._wait_queue_for(self.deadline)
        wq.subscriptions.add(self)
        try:
            await wq.bind(self.binding_key)
        except BaseException:
            wq.subscriptions.remove(self)
            await self.bus._leave(wq)
            raise
        self._wq = wq
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        wq, self._wq = self._wq, None
        if wq is None:
            return
        wq.subscriptions.remove(self)
        # Past the deadline the whole bucket's queue goes soon: skip the round trip.
        try:
            await wq.unbind(self.binding_key, at_broker=not self.expired)
        except _UNAVAILABLE as exc:
            log.debug("could not unbind %r: %s", self.binding_key, exc)
        finally:
            await self.bus._leave(wq)


class _ResumableSubscription(Subscription):
    """A wait with an id: a durable queue named from it, expiring at the deadline plus a grace,
    so events sent while the waiter is away wait for it."""

    def __init__(
        self, bus: AmqpBus, kind: Kind, pattern: str, deadline: datetime, wait_id: str
    ) -> None:
        super().__init__(kind, pattern, deadline)
        self.bus = bus
        self.queue_name = f"customevent.wait.resumable.{wait_id}"
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._pending: dict[str, AbstractIncomingMessage] = {}
        self._consumer_tag: str | None = None

    async def __aenter__(self) -> Self:
        self.bus._check_open()
        connection = self.bus._require_connection()
        expires = self.deadline + timedelta(seconds=self.bus.settings.wait_grace)
        expires_ms = max(int(seconds_until(expires) * 1000), 1000)
        try:
            self._channel = await connection.channel()
            await self._channel.set_qos(prefetch_count=16)
            self._queue = await self._declare(self._channel, expires_ms)
            await self._queue.bind(self.bus._exchange_name, self.binding_key)
            self._consumer_tag = await self._queue.consume(self._on_message, no_ack=False)
        except _UNAVAILABLE as exc:
            await self._close_channel()
            raise BusUnavailable(f"cannot set up the resumable wait: {exc}") from exc
        return self

    async def _declare(self, channel: AbstractRobustChannel, expires_ms: int) -> AbstractQueue:
        # A queue left by an earlier attempt keeps its own expiry: re-declaring it with another
        # x-expires would be refused, so look for it first, on a throwaway channel.
        probe = await self.bus._require_connection().channel()
        try:
            await probe.declare_queue(self.queue_name, passive=True)
            exists = True
        except aio_pika.exceptions.ChannelNotFoundEntity:
            exists = False
        finally:
            if not probe.is_closed:
                await probe.close()
        if exists:
            return await channel.declare_queue(self.queue_name, passive=True)
        return await channel.declare_queue(
            self.queue_name, durable=True, auto_delete=False, arguments={"x-expires": expires_ms}
        )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            event = _decode(message)
        except AdapterError as exc:
            log.warning("dropping a message that is not an event: %s", exc)
            await message.ack()
            return
        self._pending[event.event_id] = message
        self.deliver(event)

    def _take(self, event: Event) -> Event:
        message = self._pending.pop(event.event_id, None)
        if message is not None:
            task = asyncio.ensure_future(message.ack())
            task.add_done_callback(lambda t: t.exception())
        return event

    async def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*_UNAVAILABLE):
                await channel.close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None and self._queue is not None:
                # The wait finished (an event, or its deadline): its queue is no longer needed.
                with contextlib.suppress(*_UNAVAILABLE):
                    if self._consumer_tag is not None:
                        await self._queue.cancel(self._consumer_tag)
                    await self._queue.delete(if_unused=False, if_empty=False)
        finally:
            # Unacknowledged deliveries go back to the queue when the channel closes.
            await self._close_channel()


class AmqpBus(Bus):
    """The RabbitMQ bus: a durable topic exchange, confirmed publishing, wait queues."""

    name = "RabbitMQ"

    def __init__(self, settings: AmqpSettings, *, connection_name: str = APP_ID) -> None:
        if not settings.url:
            raise ConfigurationError("the RabbitMQ bus needs amqp.url (CUSTOMEVENT_AMQP__URL)")
        self.settings = settings
        self._url = settings.url
        self._connection_name = connection_name
        self._exchange_name = settings.exchange
        self._client_id = uuid.uuid4().hex[:12]
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractRobustExchange | None = None
        self._confirm_channel: AbstractRobustChannel | None = None
        self._wait_channels: list[AbstractRobustChannel] = []
        self._next_channel = itertools.count()
        self._wait_queues: dict[int, _WaitQueue] = {}
        self._generation = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_reconnect: list[Callable[[], None]] = []

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._connection = await self._connect()
        try:
            self._connection.reconnect_callbacks.add(self._reconnected)
            passive = await self._exchange_needs_passive_declare()
            channel = await self._connection.channel(publisher_confirms=True)
            self._confirm_channel = channel
            self._exchange = await channel.declare_exchange(
                self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True, passive=passive
            )
            for _ in range(self.settings.channels):
                self._wait_channels.append(await self._connection.channel())
        except BaseException:
            await self._connection.close()
            raise

    async def _exchange_needs_passive_declare(self) -> bool:
        """Declare the exchange if we may; a user without configure permission (an edge or
        backend account, config/rabbitmq/definitions.json) can still use an existing one."""
        probe = await self._require_connection().channel()
        try:
            await probe.declare_exchange(
                self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
        except aiormq.exceptions.ChannelAccessRefused:
            log.info("no configure permission on %r: using it as it is", self._exchange_name)
            return True
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"exchange {self._exchange_name!r} exists with other properties than a durable "
                f"topic exchange: {exc}"
            ) from None
        finally:
            if not probe.is_closed:
                await probe.close()
        return False

    async def _connect(self) -> AbstractRobustConnection:
        shown = redact_url(self._url)
        context = _ssl_context(self.settings)

        def announce(state: RetryCallState) -> None:
            outcome = state.outcome
            error = outcome.exception() if outcome is not None else None
            pause = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "RabbitMQ at %s: connection attempt %d of %d failed (%s); retrying in %.1fs",
                shown,
                state.attempt_number,
                self.settings.connect_attempts,
                str(error) or type(error).__name__,
                pause,
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.connect_attempts),
            wait=wait_exponential(multiplier=0.5, max=self.settings.connect_backoff_max)
            + wait_random(0, 0.5),
            retry=retry_if_not_exception_type(aiormq.exceptions.ProbableAuthenticationError),
            before_sleep=announce,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await aio_pika.connect_robust(
                        self._url,
                        client_properties={"connection_name": self._connection_name},
                        reconnect_interval=self.settings.reconnect_interval,
                        heartbeat=self.settings.heartbeat,
                        ssl_context=context,
                        timeout=10,
                    )
        except aiormq.exceptions.ProbableAuthenticationError as exc:
            raise BrokerAuthenticationError(
                f"RabbitMQ at {shown} refused the credentials (check the user and password in "
                f"amqp.url): {exc}"
            ) from None
        except (OSError, aiormq.exceptions.AMQPError, TimeoutError) as exc:
            raise BusUnavailable(
                f"cannot connect to RabbitMQ at {shown} after "
                f"{self.settings.connect_attempts} attempts: {exc or type(exc).__name__}"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _reconnected(self, *_: Any) -> None:
        log.warning("RabbitMQ at %s: reconnected", redact_url(self._url))
        if self._wait_queues:
            task = asyncio.get_running_loop().create_task(
                self._rebind(), name="customevent-amqp-rebind"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        for callback in self.on_reconnect:
            callback()

    async def _rebind(self) -> None:
        for wq in list(self._wait_queues.values()):
            try:
                await wq.rebind()
            except (*_UNAVAILABLE, aiormq.exceptions.AMQPError) as exc:
                log.warning("could not bind the waits of %s again: %s", wq.name, exc)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    @property
    def connected(self) -> bool:
        connection = self._connection
        channel = self._confirm_channel
        # After a reconnect the connection is up a moment before the confirm channel is reopened:
        # ready means both, so /readyz never says ready while sends would get 503.
        return (
            connection is not None
            and not connection.is_closed
            and connection.connected.is_set()
            and channel is not None
            and not channel.is_closed
        )

    def _publish_channel(self) -> AbstractRobustChannel:
        if self._confirm_channel is None:
            raise BusUnavailable("not connected to RabbitMQ")
        return self._confirm_channel

    def _require_connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise BusUnavailable("not connected to RabbitMQ")
        return self._connection

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, event: Event) -> bool:
        return await self.publish_raw(
            routing_key(event.kind, event.name),
            encode_body(event.properties),
            content_type="application/json",
            message_id=event.event_id,
            timestamp=event.sent_at,
            headers=event.headers(),
            what=f"the event {event.name!r}",
        )

    async def publish_raw(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str,
        message_id: str,
        timestamp: datetime,
        headers: dict[str, str],
        what: str,
    ) -> bool:
        """Publish persistent bytes with a confirm and ``mandatory``; True if a queue was bound.

        ``publish`` sends events through here; the MQTT edge sends its dead letters.
        """
        self._check_open()
        if not self.connected:
            raise BusUnavailable(f"RabbitMQ is not connected; {what} was not sent")
        properties = aiormq.spec.Basic.Properties(
            content_type=content_type,
            message_id=message_id,
            timestamp=timestamp,
            app_id=APP_ID,
            delivery_mode=2,
            headers=headers,  # type: ignore[arg-type]
        )
        try:
            # A robust channel waits for a reconnection here: bound it like the confirm.
            async with asyncio.timeout(self.settings.publish_timeout):
                channel = await self._publish_channel().get_underlay_channel()
            # wait=False: release the channel as soon as the frames are queued; the confirm is
            # still awaited. Waiting for each socket drain under the channel lock halves the
            # rate of concurrent publishes (bench/bench_core.py).
            result = await channel.basic_publish(
                body,
                exchange=self._exchange_name,
                routing_key=key,
                properties=properties,
                mandatory=True,
                timeout=self.settings.publish_timeout,
                wait=False,  # type: ignore[call-arg]
            )
        except aiormq.exceptions.DeliveryError as exc:
            raise PublishRejected(f"RabbitMQ refused {what}: {exc}") from None
        except (*_UNAVAILABLE, TimeoutError) as exc:
            raise BusUnavailable(
                f"RabbitMQ did not confirm {what}: {exc or type(exc).__name__}"
            ) from None
        return not isinstance(result, aiormq.abc.DeliveredMessage)

    async def dead_letter(self, source: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Publish the refused message to routing key ``deadletter.<source>`` of the exchange,
        persistent and confirmed; bind a queue there to inspect them (docs/devices.md)."""
        await self.publish_raw(
            f"deadletter.{source}",
            bytes(body),
            content_type="application/octet-stream",
            message_id=str(uuid.uuid4()),
            timestamp=datetime.now(UTC),
            headers=dict(headers),
            what="the dead letter",
        )

    # -- waiting ---------------------------------------------------------------------------

    def subscribe(
        self, kind: Kind, pattern: str, deadline: datetime, *, wait_id: str | None = None
    ) -> Subscription:
        if check_wait_id(wait_id) is not None:
            assert wait_id is not None
            return _ResumableSubscription(self, kind, pattern, deadline, wait_id)
        return _AmqpSubscription(self, kind, pattern, deadline)

    async def _wait_queue_for(self, deadline: datetime) -> _WaitQueue:
        end_epoch = math.ceil(deadline.timestamp() / BUCKET_SECONDS) * BUCKET_SECONDS
        bucket = int(end_epoch)
        wq = self._wait_queues.get(bucket)
        if wq is None:
            name = f"customevent.wait.{self._client_id}.{bucket}.{next(self._generation)}"
            wq = _WaitQueue(self, name, end_epoch)
            self._wait_queues[bucket] = wq
            home = next(self._next_channel) % len(self._wait_channels)
            expires = end_epoch - datetime.now().timestamp() + self.settings.wait_grace
            wq.members += 1
            try:
                await wq.open(self._wait_channels, home, max(int(expires * 1000), 1000))
            except BaseException as exc:
                wq.members -= 1
                if self._wait_queues.get(bucket) is wq:
                    del self._wait_queues[bucket]
                if isinstance(exc, _UNAVAILABLE):
                    raise BusUnavailable(f"cannot set up a wait queue: {exc}") from exc
                raise
            return wq
        wq.members += 1
        try:
            await asyncio.shield(wq.ready)
        except BaseException as exc:
            wq.members -= 1
            if isinstance(exc, _UNAVAILABLE):
                raise BusUnavailable(f"cannot set up a wait queue: {exc}") from exc
            raise
        return wq

    async def _leave(self, wq: _WaitQueue) -> None:
        wq.members -= 1
        if wq.members > 0:
            return
        for bucket, current in list(self._wait_queues.items()):
            if current is wq:
                del self._wait_queues[bucket]
        if wq.queue is not None:
            with contextlib.suppress(*_UNAVAILABLE, aiormq.exceptions.AMQPError):
                # Cancel first, so the broker does not report our own consumer as cancelled.
                if wq.consumer_tag is not None:
                    await wq.queue.cancel(wq.consumer_tag)
                await wq.queue.delete(if_unused=False, if_empty=False)

    @property
    def active_wait_queues(self) -> int:
        return len(self._wait_queues)
