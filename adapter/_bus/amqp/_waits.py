"""Waits on RabbitMQ: wait queues shared by the waits of one process, and resumable waits.

Waits are grouped by deadline into *wait queues*, one per client process and deadline bucket,
each with ``x-expires`` set to the bucket's end plus a grace; a wait adds one binding to its
bucket's queue (refcounted per key) and the queue's consumer dispatches each message to every
wait whose pattern matches. Setting up a wait is then one ``queue.bind`` round trip instead of a
declare, a bind and a consume, and the binds of concurrent waits go over all the wait channels at
once (docs/waits.md has the measurements behind this).

A resumable wait (one with a wait id) has a durable queue of its own, named from its id and what
it waits on (``_queues.resumable_queue``), so events sent while its waiter is away wait for it.
Its set-ups queue behind a bounded number of slots, so a burst of them never opens more channels
at once than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Protocol, Self, cast

import aiormq
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustQueue,
)

from ..._event import Event
from ..._exceptions import BusUnavailable
from ..._names import Kind
from ..._settings import LimitsSettings
from .._base import ResumableWaits, Subscription, SubscriptionIndex, seconds_until
from ._codec import BadMessage, Policy, decode
from ._link import UNAVAILABLE, BrokerLink
from ._metrics import Refusals
from ._queues import resumable_arguments, resumable_queue, wait_queue, wait_queue_arguments

__all__ = ["BUCKET_SECONDS", "RetainedWatch", "Waits"]

log = logging.getLogger("adapter.amqp")

BUCKET_SECONDS = 10.0
# Resumable waits being set up at once (each opens a channel and makes three broker calls).
_RESUMABLE_SETUPS = 16


class RetainedWatch(Protocol):
    """What waits tell the retained events (``_retained.RetainedStream``)."""

    async def watch(self, sub: Subscription) -> None: ...

    def unwatch(self, sub: Subscription) -> None: ...


class _WaitQueue:
    """One queue of this client for the waits whose deadlines fall in one bucket."""

    def __init__(self, waits: Waits, name: str, bucket_end: float) -> None:
        self.waits = waits
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
                arguments=wait_queue_arguments(expires_ms),
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
        if not self.subscriptions.binds(key):
            return
        try:
            event = decode(message, self.waits.policy).event
        except BadMessage as exc:
            self.waits.refused("wait", self.name, exc)
            return
        for sub in self.subscriptions.matching(key, event):
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
                await self._handle().bind(self.waits.link.exchange, key, robust=False)
            state.count += 1

    async def rebind(self) -> None:
        """Bind every key again after a reconnect. A queue that outlived the outage kept its
        bindings (binding again changes nothing); one the broker lost (a restart, or an outage
        longer than its expiry) came back empty from aio-pika's re-declare."""

        async def again(key: str) -> None:
            async with self._key(key) as state:
                if state.count > 0:
                    await self._handle().bind(self.waits.link.exchange, key, robust=False)

        await asyncio.gather(*(again(key) for key in list(self.keys)))

    async def unbind(self, key: str, *, at_broker: bool) -> None:
        async with self._key(key) as state:
            state.count -= 1
            if state.count == 0 and at_broker and self.handles and self.members > 1:
                handle = self._handle()
                await self.waits.link.tidy(
                    f"unbind {key!r}", lambda: handle.unbind(self.waits.link.exchange, key)
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


class _AmqpSubscription(Subscription):
    def __init__(
        self,
        waits: Waits,
        kind: Kind,
        pattern: str,
        deadline: datetime,
        match: Mapping[str, str] | None,
    ) -> None:
        super().__init__(kind, pattern, deadline, match)
        self.waits = waits
        self._wq: _WaitQueue | None = None

    async def __aenter__(self) -> Self:
        waits = self.waits
        waits.check_open()
        async with waits.link.call("the wait was not bound"):
            wq = await waits._wait_queue_for(self.deadline)
            wq.subscriptions.add(self)
            try:
                await wq.bind(self.binding_key)
            except BaseException:
                wq.subscriptions.remove(self)
                await waits._leave(wq)
                raise
        self._wq = wq
        await waits.retained.watch(self)
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
        self.waits.retained.unwatch(self)
        wq.subscriptions.remove(self)
        try:
            # Past the deadline the whole bucket's queue goes soon: skip the round trip.
            await wq.unbind(self.binding_key, at_broker=not self.expired)
        finally:
            await self.waits._leave(wq)


class _ResumableSubscription(Subscription):
    """A wait with an id: a durable queue named from it and from what it waits on, expiring at
    the deadline plus a grace, so events sent while the waiter is away wait for it."""

    def __init__(
        self,
        waits: Waits,
        kind: Kind,
        pattern: str,
        deadline: datetime,
        wait_id: str,
        match: Mapping[str, str] | None,
    ) -> None:
        super().__init__(kind, pattern, deadline, match)
        self.waits = waits
        self.wait_id = wait_id
        self.queue_name = resumable_queue(waits.link.exchange, wait_id, self.binding_key)
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._pending: dict[str, AbstractIncomingMessage] = {}
        self._consumer_tag: str | None = None
        self._held = False

    async def __aenter__(self) -> Self:
        waits = self.waits
        waits.check_open()
        waits.resumable.hold(self.wait_id, self.binding_key)
        self._held = True
        expires = self.deadline + timedelta(seconds=waits.grace)
        expires_ms = max(int(seconds_until(expires) * 1000), 1000)
        link = waits.link
        try:
            # A burst of set-ups waits for a slot (within its deadline, as every bind does).
            async with waits.setups, link.call("the resumable wait was not set up"):
                self._channel = await link.new_channel()
                await self._channel.set_qos(prefetch_count=16)
                self._queue = await self._declare(self._channel, expires_ms)
                await self._queue.bind(link.exchange, self.binding_key)
                self._consumer_tag = await self._queue.consume(self._on_message, no_ack=False)
        except BaseException:
            await self._close_channel()
            self._release(kept=False)
            raise
        await waits.retained.watch(self)
        return self

    def _release(self, *, kept: bool) -> None:
        if self._held:
            self._held = False
            self.waits.resumable.release(self.wait_id, self.deadline if kept else None)

    async def _declare(self, channel: AbstractRobustChannel, expires_ms: int) -> AbstractQueue:
        # A queue left by an earlier attempt keeps its own expiry: re-declaring it with another
        # x-expires would be refused, so look for it first.
        name = self.queue_name
        if await self.waits.link.probe(lambda probe: probe.queue_declare(name, passive=True)):
            return await channel.declare_queue(name, passive=True)
        return await channel.declare_queue(
            name,
            durable=True,
            auto_delete=False,
            arguments=resumable_arguments(expires_ms, self.waits.limits.max_resumable_events),
        )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            event = decode(message, self.waits.policy).event
        except BadMessage as exc:
            self.waits.refused("resumable", self.queue_name, exc)
            await _settle(message.ack())
            return
        if self.offer(event):
            self._pending[event.event_id] = message
        else:
            # Not its own (its match), or a copy of one it was handed already.
            await _settle(message.ack())

    def _take(self, event: Event) -> Event:
        message = self._pending.pop(event.event_id, None)
        if message is not None:
            task = asyncio.ensure_future(_settle(message.ack()))
            task.add_done_callback(lambda t: t.exception())
        return event

    async def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await self.waits.link.release(channel)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Left by an error or a cancellation, the queue stays (for a comeback) until it expires.
        kept = exc_type is not None
        self.waits.retained.unwatch(self)
        queue = self._queue
        try:
            if not kept and queue is not None:
                # The wait finished (an event, or its deadline): its queue is no longer needed.
                await self.waits.link.tidy(
                    f"delete {self.queue_name}", lambda: _drop(queue, self._consumer_tag)
                )
        finally:
            # Unacknowledged deliveries go back to the queue when the channel closes.
            await self._close_channel()
            self._release(kept=kept)


async def _settle(acking: object) -> None:
    with contextlib.suppress(*UNAVAILABLE, aiormq.exceptions.AMQPError):
        await acking  # type: ignore[misc]


class Waits:
    """The waits of one bus: its wait channels and wait queues, and its resumable waits."""

    def __init__(
        self,
        link: BrokerLink,
        policy: Policy,
        *,
        limits: LimitsSettings,
        retained: RetainedWatch,
        check_open: Callable[[], None],
        refused: Refusals,
    ) -> None:
        self.link = link
        self.refused = refused
        self.policy = policy
        self.limits = limits
        self.retained = retained
        self.check_open = check_open
        self.grace = link.settings.wait_grace
        self.resumable = ResumableWaits(limits.max_resumable_waits, self.grace)
        self.setups = asyncio.Semaphore(_RESUMABLE_SETUPS)
        self._client_id = uuid.uuid4().hex[:12]
        self._channels: list[AbstractRobustChannel] = []
        self._next_channel = itertools.count()
        self._wait_queues: dict[int, _WaitQueue] = {}
        self._generation = itertools.count()

    async def open(self) -> None:
        for _ in range(self.link.settings.channels):
            self._channels.append(await self.link.new_channel())

    def subscribe(
        self,
        kind: Kind,
        pattern: str,
        deadline: datetime,
        wait_id: str | None,
        match: Mapping[str, str] | None = None,
    ) -> Subscription:
        if wait_id is not None:
            return _ResumableSubscription(self, kind, pattern, deadline, wait_id, match)
        return _AmqpSubscription(self, kind, pattern, deadline, match)

    async def rebind(self) -> None:
        for wq in list(self._wait_queues.values()):
            try:
                await wq.rebind()
            except (*UNAVAILABLE, aiormq.exceptions.AMQPError) as exc:
                log.warning("could not bind the waits of %s again: %s", wq.name, exc)

    @property
    def active_wait_queues(self) -> int:
        return len(self._wait_queues)

    async def _wait_queue_for(self, deadline: datetime) -> _WaitQueue:
        end_epoch = math.ceil(deadline.timestamp() / BUCKET_SECONDS) * BUCKET_SECONDS
        bucket = int(end_epoch)
        wq = self._wait_queues.get(bucket)
        if wq is None:
            name = wait_queue(self._client_id, bucket, next(self._generation))
            wq = _WaitQueue(self, name, end_epoch)
            self._wait_queues[bucket] = wq
            home = next(self._next_channel) % len(self._channels)
            expires = end_epoch - datetime.now().timestamp() + self.grace
            wq.members += 1
            try:
                await wq.open(self._channels, home, max(int(expires * 1000), 1000))
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
            await self.link.tidy(f"delete {wq.name}", lambda: _drop(queue, wq.consumer_tag))
