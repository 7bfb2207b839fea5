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
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import urlsplit

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
    BusError,
    BusUnavailable,
    ConfigurationError,
    PublishRejected,
)
from .._groups import DeadLetter, GroupOptions, GroupSubscription
from .._names import Kind, routing_key
from .._nodes import redact_url
from .._settings import AmqpSettings, LimitsSettings
from .._tls import client_tls_context
from ._amqp_groups import AmqpGroups
from ._amqp_retained import RetainedStream
from ._base import (
    Bus,
    ResumableWaits,
    Subscription,
    SubscriptionIndex,
    check_wait_id,
    seconds_until,
)
from ._durable import durable_queue_arguments
from ._failover import NodeConnection, Nodes, shown

__all__ = ["AmqpBus", "redact_url"]

log = logging.getLogger("adapter.amqp")

BUCKET_SECONDS = 10.0
# What the broker or the link does to us while it is away. Not RuntimeError in general: a bug
# must surface as one, not pass for an outage.
_UNAVAILABLE = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
)
# A clean-up at the broker (an unbind, a queue delete) waits this long at most: what it would
# remove expires on its own, and a caller's answer must not wait for it.
_TIDY_SECONDS = 2.0


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
        self.keys: dict[str, _Key] = {}
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
            if isinstance(exc, asyncio.CancelledError):
                self.ready.cancel()  # the waits sharing this queue see it as unavailable
            else:
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

    @contextlib.asynccontextmanager
    async def _key(self, key: str) -> AsyncIterator[_Key]:
        """The key's state, locked: its broker bind or unbind is answered before anyone else
        changes the key (a bind on another channel cannot overtake an unbind still in flight).
        The state lives while a wait holds the key or anyone waits for its lock."""
        state = self.keys.get(key)
        if state is None:
            state = self.keys[key] = _Key()
        state.users += 1
        try:
            async with state.lock:
                yield state
        finally:
            state.users -= 1
            if state.users == 0 and state.count == 0:
                del self.keys[key]

    async def bind(self, key: str) -> None:
        async with self._key(key) as state:
            if state.count == 0:
                # Not robust: aio-pika would keep a list of the bindings that it scans on every
                # unbind (quadratic in the waits held); ``self.keys`` is the record instead.
                await self._handle().bind(self.bus._exchange_name, key, robust=False)
            state.count += 1

    async def rebind(self) -> None:
        """Bind every key again after a reconnect. A queue that outlived the outage kept its
        bindings (binding again changes nothing); one the broker lost (a restart, or an outage
        longer than its expiry) came back empty from aio-pika's re-declare."""

        async def again(key: str) -> None:
            async with self._key(key) as state:
                if state.count > 0:
                    await self._handle().bind(self.bus._exchange_name, key, robust=False)

        await asyncio.gather(*(again(key) for key in list(self.keys)))

    async def unbind(self, key: str, *, at_broker: bool) -> None:
        async with self._key(key) as state:
            state.count -= 1
            if state.count == 0 and at_broker and self.handles and self.members > 1:
                handle = self._handle()
                await self.bus._tidy(
                    f"unbind {key!r}", lambda: handle.unbind(self.bus._exchange_name, key)
                )


@dataclass(eq=False)
class _Key:
    """A binding key of a wait queue: how many waits hold it, and the lock that orders its
    broker binds and unbinds."""

    count: int = 0
    users: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


async def _drop(queue: AbstractQueue, consumer_tag: str | None) -> None:
    # Cancel first, so the broker does not report our own consumer as cancelled.
    if consumer_tag is not None:
        await queue.cancel(consumer_tag)
    await queue.delete(if_unused=False, if_empty=False)


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
        async with self.bus._broker_call("the wait was not bound"):
            wq = await self.bus._wait_queue_for(self.deadline)
            wq.subscriptions.add(self)
            try:
                await wq.bind(self.binding_key)
            except BaseException:
                wq.subscriptions.remove(self)
                await self.bus._leave(wq)
                raise
        self._wq = wq
        await self.bus._retained.watch(self)
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
        self.bus._retained.unwatch(self)
        wq.subscriptions.remove(self)
        try:
            # Past the deadline the whole bucket's queue goes soon: skip the round trip.
            await wq.unbind(self.binding_key, at_broker=not self.expired)
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
        self.wait_id = wait_id
        self.queue_name = f"customevent.wait.resumable.{wait_id}"
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._pending: dict[str, AbstractIncomingMessage] = {}
        self._consumer_tag: str | None = None
        self._held = False

    async def __aenter__(self) -> Self:
        self.bus._check_open()
        self.bus._resumable.hold(self.wait_id)
        self._held = True
        expires = self.deadline + timedelta(seconds=self.bus.settings.wait_grace)
        expires_ms = max(int(seconds_until(expires) * 1000), 1000)
        try:
            async with self.bus._broker_call("the resumable wait was not set up"):
                self._channel = await self.bus._new_channel()
                await self._channel.set_qos(prefetch_count=16)
                self._queue = await self._declare(self._channel, expires_ms)
                await self._queue.bind(self.bus._exchange_name, self.binding_key)
                self._consumer_tag = await self._queue.consume(self._on_message, no_ack=False)
        except BaseException:
            await self._close_channel()
            self._release(kept=False)
            raise
        await self.bus._retained.watch(self)
        return self

    def _release(self, *, kept: bool) -> None:
        if self._held:
            self._held = False
            self.bus._resumable.release(self.wait_id, self.deadline if kept else None)

    async def _declare(self, channel: AbstractRobustChannel, expires_ms: int) -> AbstractQueue:
        # A queue left by an earlier attempt keeps its own expiry: re-declaring it with another
        # x-expires would be refused, so look for it first.
        if await self.bus._probe(lambda probe: probe.queue_declare(self.queue_name, passive=True)):
            return await channel.declare_queue(self.queue_name, passive=True)
        return await channel.declare_queue(
            self.queue_name,
            durable=True,
            auto_delete=False,
            arguments=durable_queue_arguments(
                {
                    "x-expires": expires_ms,
                    # The newest events are kept: a waiter that never comes back cannot make the
                    # broker hold more than this, and no publisher is ever refused for it.
                    "x-max-length": self.bus.limits.max_resumable_events,
                    "x-overflow": "drop-head",
                }
            ),
        )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            event = _decode(message)
        except AdapterError as exc:
            log.warning("dropping a message that is not an event: %s", exc)
            await message.ack()
            return
        if self.deliver(event):
            self._pending[event.event_id] = message
        else:
            await message.ack()  # a copy of one it was handed already

    def _take(self, event: Event) -> Event:
        message = self._pending.pop(event.event_id, None)
        if message is not None:
            task = asyncio.ensure_future(message.ack())
            task.add_done_callback(lambda t: t.exception())
        return event

    async def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await self.bus._release(channel)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Left by an error or a cancellation, the queue stays (for a comeback) until it expires.
        kept = exc_type is not None
        self.bus._retained.unwatch(self)
        queue = self._queue
        try:
            if not kept and queue is not None:
                # The wait finished (an event, or its deadline): its queue is no longer needed.
                await self.bus._tidy(
                    f"delete {self.queue_name}", lambda: _drop(queue, self._consumer_tag)
                )
        finally:
            # Unacknowledged deliveries go back to the queue when the channel closes.
            await self._close_channel()
            self._release(kept=kept)


class AmqpBus(Bus):
    """The RabbitMQ bus: a durable topic exchange, confirmed publishing, wait queues."""

    name = "RabbitMQ"

    def __init__(
        self,
        settings: AmqpSettings,
        *,
        connection_name: str = APP_ID,
        limits: LimitsSettings | None = None,
    ) -> None:
        if not settings.url:
            raise ConfigurationError("the RabbitMQ bus needs amqp.url (CUSTOMEVENT_AMQP__URL)")
        self.settings = settings
        self.limits = limits if limits is not None else LimitsSettings()
        self._resumable = ResumableWaits(self.limits.max_resumable_waits, settings.wait_grace)
        self._groups = AmqpGroups(self)
        self._url = settings.url
        try:
            self._nodes = Nodes.from_settings(settings)
        except ValueError as exc:  # settings made without validation (a --url, model_copy)
            raise ConfigurationError(f"amqp.url: {exc}") from None
        self._connection_name = connection_name
        self._exchange_name = settings.exchange
        self._client_id = uuid.uuid4().hex[:12]
        self._connection: NodeConnection | None = None
        self._exchange: AbstractRobustExchange | None = None
        self._confirm_channel: AbstractRobustChannel | None = None
        self._wait_channels: list[AbstractRobustChannel] = []
        self._next_channel = itertools.count()
        self._wait_queues: dict[int, _WaitQueue] = {}
        self._generation = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_reconnect: list[Callable[[], None]] = []
        self._retained = RetainedStream(self)

    @property
    def where(self) -> str:
        return f"RabbitMQ at {redact_url(self._url)}"

    @property
    def node(self) -> str | None:
        """The node this bus is connected to (password hidden), or None while it is not."""
        connection = self._connection
        if connection is None or not self.connected:
            return None
        return shown(connection.url)

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
        try:
            await self._probe(
                lambda probe: probe.exchange_declare(
                    self._exchange_name, exchange_type="topic", durable=True
                )
            )
        except aiormq.exceptions.ChannelAccessRefused:
            log.info("no configure permission on %r: using it as it is", self._exchange_name)
            return True
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"exchange {self._exchange_name!r} exists with other properties than a durable "
                f"topic exchange: {exc}"
            ) from None
        return False

    async def _probe(self, method: Callable[[aiormq.abc.AbstractChannel], Awaitable[Any]]) -> bool:
        """Run one method that the broker may answer by closing the channel (404 for a passive
        declare that finds nothing): True if it succeeded, False on 404; other refusals raise.

        It runs on a plain aiormq channel of its own. On a robust channel, aio-pika would reopen
        the channel the broker closed and keep it open for good: one leaked channel per probe.
        """
        transport = self._require_connection().transport
        if transport is None:
            raise BusUnavailable("not connected to RabbitMQ")
        channel = await transport.connection.channel()
        try:
            await method(channel)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        finally:
            if not channel.is_closed:
                await channel.close()
        return True

    async def _connect(self) -> NodeConnection:
        shown_url = redact_url(self._url)
        context = _ssl_context(self.settings)
        failures: dict[str, str] = {}

        def announce(state: RetryCallState) -> None:
            pause = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "RabbitMQ at %s: connection attempt %d of %d failed (%s); retrying in %.1fs",
                shown_url,
                state.attempt_number,
                self.settings.connect_attempts,
                "; ".join(f"{node}: {error}" for node, error in failures.items()),
                pause,
            )

        async def each_node_once() -> NodeConnection:
            # One attempt is a round of the nodes: a node that is down costs no back-off while
            # another one answers.
            last: Exception | None = None
            for _ in range(len(self._nodes)):
                node = self._nodes.current
                connection = NodeConnection(
                    self._nodes,
                    client_properties={"connection_name": self._connection_name},
                    reconnect_interval=self.settings.reconnect_interval,
                    heartbeat=self.settings.heartbeat,
                    ssl_context=context,
                )
                try:
                    await connection.connect(timeout=10)
                except aiormq.exceptions.ProbableAuthenticationError:
                    raise  # the users are the cluster's: the next node would refuse them too
                except (OSError, aiormq.exceptions.AMQPError, TimeoutError) as exc:
                    failures[shown(node)] = str(exc) or type(exc).__name__
                    if self._nodes.current == node:
                        # aio-pika reports a failed attempt to the connection, which moved on
                        # already; this covers a failure before that report.
                        self._nodes.advance()
                    last = exc
                    continue
                return connection
            assert last is not None
            raise last

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
                    return await each_node_once()
        except aiormq.exceptions.ProbableAuthenticationError as exc:
            raise BrokerAuthenticationError(
                f"RabbitMQ at {shown_url} refused the credentials (check the user and password in "
                f"amqp.url, or amqp.username and amqp.password): {exc}"
            ) from None
        except (OSError, aiormq.exceptions.AMQPError, TimeoutError):
            reasons = "; ".join(f"{node}: {error}" for node, error in failures.items())
            raise BusUnavailable(
                f"cannot connect to RabbitMQ at {shown_url} after "
                f"{self.settings.connect_attempts} attempts: {reasons}"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _reconnected(self, *_: Any) -> None:
        connection = self._connection
        node = shown(connection.url) if connection is not None else redact_url(self._url)
        log.warning("RabbitMQ: reconnected to %s", node)
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
        await self._retained.close()
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

    async def _new_channel(self) -> AbstractRobustChannel:
        connection = self._require_connection()
        if connection.transport is None:  # aio-pika would raise a bare RuntimeError
            raise BusUnavailable("not connected to RabbitMQ")
        channel = connection.channel()
        try:
            await channel
        except BaseException:
            # The robust connection took the channel before it opened: one that failed to open
            # (the link lost meanwhile, a timeout) would be opened on the next reconnection.
            await self._release(channel)
            raise
        return channel

    async def _release(self, channel: AbstractRobustChannel) -> None:
        """Close a channel of ours for good. Always, even when the link is down and the channel
        reads as closed: a robust channel that was not closed is opened again on the next
        reconnection, and kept open with nobody to close it (one leaked channel per wait and per
        outage until ``channel_max``)."""
        await self._tidy("close a channel", channel.close, connected_only=False)

    @contextlib.asynccontextmanager
    async def _broker_call(self, what: str) -> AsyncIterator[None]:
        """Around a caller's set-up at the broker (a wait's queue, binding, channel): refused at
        once while disconnected (a robust channel would wait for the reconnection, however long),
        bounded by ``amqp.publish_timeout``, and every broker failure a ``BusError``."""
        if not self.connected:
            raise BusUnavailable(f"RabbitMQ is not connected; {what}")
        try:
            async with asyncio.timeout(self.settings.publish_timeout):
                yield
        except TimeoutError:
            raise BusUnavailable(
                f"RabbitMQ did not answer within {self.settings.publish_timeout:g}s; {what}"
            ) from None
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise BusError(f"RabbitMQ refused it ({exc}); {what}") from None
        except (*_UNAVAILABLE, aiormq.exceptions.AMQPError) as exc:
            raise BusUnavailable(f"RabbitMQ failed ({exc or type(exc).__name__}); {what}") from None

    async def _tidy(
        self, what: str, operation: Callable[[], Awaitable[object]], *, connected_only: bool = True
    ) -> None:
        """A clean-up at the broker, which must never hold up a caller: skipped while
        disconnected (what it removes expires on its own), bounded in time, failures logged."""
        if connected_only and not self.connected:
            return
        try:
            async with asyncio.timeout(_TIDY_SECONDS):
                await operation()
        except (TimeoutError, *_UNAVAILABLE, aiormq.exceptions.AMQPError) as exc:
            log.debug("could not %s: %s", what, exc or type(exc).__name__)

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, event: Event, *, retain: timedelta | None = None) -> bool:
        if retain is None:
            return await self._publish_event(event)
        view = await self._retained.caught_up()
        key = routing_key(event.kind, event.name)
        reserved = view.reserve(key, time.time() + retain.total_seconds())
        try:
            routed, _ = await asyncio.gather(
                self._publish_event(event), self._retained.retain(event, retain)
            )
        except BaseException:
            if reserved:
                view.release(key)
            raise
        return routed

    async def _publish_event(self, event: Event) -> bool:
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
        headers: Mapping[str, Any],
        what: str,
        exchange: str | None = None,
    ) -> bool:
        """Publish persistent bytes with a confirm and ``mandatory``; True if a queue was bound.

        ``publish`` sends events through here; the MQTT edge sends its dead letters, groups
        their retries and dead letters, the retained events their copies (``exchange``: another
        exchange than the events', ``""`` for the default one, straight to the queue named by
        ``key``).
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
                exchange=self._exchange_name if exchange is None else exchange,
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

    async def keep_refused(self, source: str, body: bytes, headers: Mapping[str, str]) -> None:
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

    def subscribe_group(
        self, group: str, kind: Kind, pattern: str, options: GroupOptions
    ) -> GroupSubscription:
        self._check_open()
        return self._groups.subscribe(group, kind, pattern, options)

    async def dead_letters(self, group: str) -> list[DeadLetter]:
        self._check_open()
        return await self._groups.dead_letters(group)

    async def replay(self, group: str, event_id: str | None = None) -> int:
        self._check_open()
        return await self._groups.replay(group, event_id)

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
            except BaseException:
                wq.members -= 1
                if self._wait_queues.get(bucket) is wq:
                    del self._wait_queues[bucket]
                raise
            return wq
        wq.members += 1
        try:
            await asyncio.shield(wq.ready)
        except BaseException as exc:
            wq.members -= 1
            task = asyncio.current_task()
            if (
                isinstance(exc, asyncio.CancelledError)
                and task is not None
                and not task.cancelling()
            ):
                # Not this wait's cancellation: the wait that was opening the queue gave up.
                raise BusUnavailable("the wait queue could not be set up") from None
            raise
        return wq

    async def _leave(self, wq: _WaitQueue) -> None:
        wq.members -= 1
        if wq.members > 0:
            return
        for bucket, current in list(self._wait_queues.items()):
            if current is wq:
                del self._wait_queues[bucket]
        queue = wq.queue
        if queue is not None:
            await self._tidy(f"delete {wq.name}", lambda: _drop(queue, wq.consumer_tag))

    @property
    def active_wait_queues(self) -> int:
        return len(self._wait_queues)
