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
import functools
import itertools
import logging
import math
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, Self

import aiormq
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
)
from tenacity import RetryCallState

from ..._event import Event
from ..._exceptions import BusError, BusUnavailable
from ..._names import Kind
from ..._retry import failure_of, wait_rebind_retrying
from ..._settings import LimitsSettings
from ..._setup_bounds import SetUpBounds
from .._base import ResumableWaits, Subscription, SubscriptionIndex, T, seconds_until
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
        # How many waits hold each key (bound, or being bound), and the bind under way for a
        # key whose first wait is being set up (the key's later waits await the same one).
        self.keys: dict[str, int] = {}
        self.binding: dict[str, asyncio.Future[None]] = {}
        self.members = 0
        self.consumer_tag: str | None = None
        # The channel the queue is declared and consumed on, and the node it lives on.
        self.home: AbstractRobustChannel | None = None
        self.node: str | None = None
        # A reconnect and a cancel may both rebind the queue: one at a time, or two moves could
        # each declare a new queue, and one would be left consuming the same events.
        self.rebinding = asyncio.Lock()
        # A key's binds and unbinds go, in order, over the lane its key hashes to (one per wait
        # channel), so an unbind can never overtake a bind of the same key, with no lock per key.
        self.lanes = [_Lane(self, channel) for channel in waits.channels]

    async def open(self, channels: Sequence[AbstractRobustChannel], home: int) -> None:
        self.home = channels[home]
        try:
            # Declared and consumed on its home channel: aio-pika re-declares and re-consumes it
            # after a reconnect. Its bindings are this object's to restore (``rebind``).
            self.queue = queue = await self._declare(self.name)
            self.consumer_tag = await queue.consume(self._on_message, no_ack=True)
            self.node = self.waits.link.node
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                self.ready.cancel()  # the waits sharing this queue see it as unavailable
            else:
                self.ready.set_exception(exc)
                # A waiter sees this exception; the future must not log it as never retrieved.
                self.ready.exception()
            raise
        self.ready.set_result(None)

    async def _declare(self, name: str) -> AbstractQueue:
        """Declare the queue under ``name`` on its home channel, expiring at the bucket's end
        plus the grace (1 s at least)."""
        assert self.home is not None
        expires = self.bucket_end - datetime.now().timestamp() + self.waits.grace
        return await self.home.declare_queue(
            name,
            durable=False,
            auto_delete=False,
            arguments=wait_queue_arguments(max(int(expires * 1000), 1000)),
        )

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

    def _lane(self, key: str) -> _Lane:
        return self.lanes[hash(key) % len(self.lanes)]

    def hold(self, key: str) -> asyncio.Future[None] | None:
        """Hold the key for one more wait: the bind to await (the first wait's, which the
        key's later waits share until it is answered), or None if the key is bound already.
        Not a coroutine, so that a wait being set up costs one frame less."""
        held = self.keys.get(key, 0)
        self.keys[key] = held + 1
        if held == 0:
            bound = self.binding[key] = self._lane(key).push(key, bind=True)
            return bound
        # A failed bind stays in ``binding`` until its waits have all left, so one that comes
        # meanwhile hears of the failure too instead of taking the key for bound.
        return self.binding.get(key)

    def rehold(self, key: str) -> asyncio.Future[None]:
        """Another bind of a held key, when the wait whose bind it shared was called off and
        took the shared future with it (the bind itself still goes out)."""
        bound = self.binding[key] = self._lane(key).push(key, bind=True)
        return bound

    def release(self, key: str, *, at_broker: bool) -> asyncio.Future[None] | None:
        """One wait less on the key; the last one unbinds it: the unbind's future (the lane
        orders it before any later bind of the key)."""
        held = self.keys[key] - 1
        if held > 0:
            self.keys[key] = held
            return None
        del self.keys[key]
        bound = self.binding.pop(key, None)
        if bound is not None and bound.done() and not bound.cancelled():
            bound.exception()  # seen: every wait that awaited it has left
        if at_broker and self.queue is not None and self.members > 1:
            return self._lane(key).push(key, bind=False)
        return None

    async def rebind(self) -> None:
        """Declare the queue and bind every key again: after a reconnect, or after the broker
        cancelled the queue's consumer. Retried a few times while the link is up
        (``_retry.wait_rebind_retrying``).

        On the node it lived on, the queue outlived a short outage with its bindings (declaring
        and binding again change nothing), or came back empty from aio-pika's re-declare (a
        restart, an outage longer than its expiry), or was deleted (by hand: aio-pika declares
        it again for its cancelled consumer, but the bindings are ours, raw ``nowait`` binds it
        never saw). On another node (the old one lost), it moves to a new name: RabbitMQ's
        clean-up of a lost node deletes its transient queues *by name* a moment after they were
        declared again elsewhere (rabbitmq-server#6271, #9798; CI saw it on 3.10), leaving the
        consumer on a queue nothing is routed to, and with no cancel to tell."""
        if self.queue is None or not self.ready.done():
            return  # still being opened: its binds wait in the lanes for it
        link = self.waits.link

        def note(state: RetryCallState) -> None:
            error = failure_of(state)
            log.info("binding the waits of %s again failed, retrying: %s", self.name, error)

        # A wait that comes for a held key meanwhile waits for the keys to be bound again, not
        # taking the key for bound while the broker may have no binding for it.
        rebound = asyncio.get_running_loop().create_future()
        binding = self.binding
        for key in self.keys:
            binding[key] = rebound
        try:
            async with self.rebinding:
                try:
                    await self._rebind(link, note)
                finally:
                    if self.members <= 0:  # its last wait left meanwhile
                        await self.drop()
        except BaseException as exc:
            error = exc if isinstance(exc, BusError) else None
            _settle(rebound, error or BusUnavailable("the wait was not bound again"))
            raise
        else:
            _settle(rebound, None)
        finally:
            for key, bound in list(binding.items()):
                if bound is rebound:
                    del binding[key]

    async def drop(self) -> None:
        """Delete the queue (a clean-up: bounded, failures logged)."""
        queue = self.queue
        if queue is not None:
            await self.waits.link.tidy(
                f"delete {self.name}", lambda: _drop(queue, self.consumer_tag)
            )

    async def _rebind(self, link: BrokerLink, note: Callable[[RetryCallState], None]) -> None:
        # A queue moved away from: deleted once every key is bound on the new one.
        moved_from: list[tuple[str, AbstractQueue]] = []
        try:
            async for attempt in wait_rebind_retrying(lambda: link.connected, note):
                with attempt:
                    queue = self.queue
                    assert queue is not None
                    if self.node != link.node:
                        moved_from.append(await self._move())
                    else:
                        await self._declare_again(queue)
                    again = {self._lane(key).push(key, bind=True) for key in list(self.keys)}
                    # A batch's future is shared with waits being set up; one that was called
                    # off cancels it, which is no failure of the binds.
                    for outcome in await asyncio.gather(*again, return_exceptions=True):
                        if isinstance(outcome, Exception):
                            raise outcome
        finally:
            # After the binds, since a lane may still be confirming a batch sent to the old
            # name; a queue left undeleted (the link down) expires with its bucket.
            for name, old in moved_from:
                await link.tidy(f"delete {name}", functools.partial(_drop, old, None))

    async def _move(self) -> tuple[str, AbstractQueue]:
        """Go on under a new name on the node the link is on now: the new queue is declared and
        consumed first, then the wait queue switches to it in one step (a lane reads the name
        per batch), then the old queue's consumer is cancelled, so that no event is dispatched
        from both. The old name and queue, to delete once the keys are bound on the new one."""
        old, tag = self.queue, self.consumer_tag
        assert old is not None
        waits = self.waits
        name = waits.new_name(self.bucket_end)
        async with waits.link.call("the wait queue was not moved"):
            queue = await self._declare(name)
            consumer_tag = await queue.consume(self._on_message, no_ack=True)
        previous = self.name
        self.name, self.queue, self.consumer_tag = name, queue, consumer_tag
        self.node = waits.link.node
        if tag is not None:
            await waits.link.tidy(f"cancel the consumer of {previous}", lambda: old.cancel(tag))
        log.info("wait queue %s moved to %s on %s", previous, name, self.node)
        return previous, old

    async def _declare_again(self, queue: AbstractQueue) -> None:
        """Declare the queue as it was opened, on a probe channel: a node that is down answers
        404, which must not close a wait channel."""
        async with self.waits.link.call("the wait queue was not declared again"):
            declared = await self.waits.link.probe(
                lambda channel: channel.queue_declare(
                    self.name, durable=False, auto_delete=False, arguments=queue.arguments
                )
            )
        if not declared:
            raise BusUnavailable(f"RabbitMQ could not declare {self.name} again (its node is down)")


# Binds in flight at once over all the lanes of a wait queue: a batch must be answered within
# ``amqp.publish_timeout``, and RabbitMQ binds a few thousand keys a second (docs/waits.md), so
# the lanes share a budget that it answers in a fraction of a second even when loaded.
_BINDS_IN_FLIGHT = 256


class _Lane:
    """The binds and unbinds of a wait queue that go over one wait channel, in order.

    A bind is sent with ``nowait`` (RabbitMQ sends no answer), many in a row; the answer to the
    next synchronous call on the channel says they all took effect, since RabbitMQ handles a
    channel's methods in order and closes the channel at the first that fails. One round trip
    then sets up a batch of waits instead of one, and a burst of them queues here (bounded by
    the waits' own deadlines) instead of timing out at the broker.
    """

    def __init__(self, wq: _WaitQueue, channel: AbstractRobustChannel) -> None:
        self.wq = wq
        self.channel = channel
        self.todo: deque[_Batch] = deque()
        self.pump: asyncio.Task[None] | None = None
        self.size = max(8, _BINDS_IN_FLIGHT // len(wq.waits.channels))

    def push(self, key: str, *, bind: bool) -> asyncio.Future[None]:
        """Queue a bind (its future fails if the bind did) or an unbind (a clean-up: its future
        is answered when it is done or failed, and a failure is only logged). The keys of one
        batch share its future: a burst of waits costs one future a batch, not one a wait."""
        last = self.todo[-1] if self.todo else None
        if last is None or last.bind is not bind or len(last.keys) >= self.size:
            last = _Batch(asyncio.get_running_loop().create_future(), [], bind)
            self.todo.append(last)
        last.keys.append(key)
        if self.pump is None:
            self.pump = asyncio.create_task(self._run())
        return last.done

    async def _run(self) -> None:
        try:
            while self.todo:
                # Taken whole: a key pushed from now on goes into a batch of its own.
                await self._send(self.todo.popleft())
        finally:
            self.pump = None
            closed = BusUnavailable("the bus closed; the wait was not bound")
            while self.todo:  # cancelled with work left (the bus closing)
                self.todo.popleft().settle(closed)

    async def _send(self, batch: _Batch) -> None:
        wq = self.wq
        link = wq.waits.link
        exchange = link.exchange
        if not wq.ready.done():
            try:
                await asyncio.shield(wq.ready)
            except BaseException as exc:
                task = asyncio.current_task()
                if isinstance(exc, asyncio.CancelledError) and task and task.cancelling():
                    batch.settle(BusUnavailable("the bus closed; the wait was not bound"))
                    raise
        if wq.ready.cancelled() or wq.ready.exception() is not None:
            # The wait that was opening the queue failed (and heard why) or gave up.
            batch.settle(
                BusUnavailable("the wait queue could not be set up; the wait was not bound")
            )
            return
        try:
            async with link.call("the wait was not bound"):
                channel = await self.channel.get_underlay_channel()
                name = wq.name  # once: a move renames the queue (and binds every key again)
                if batch.bind:
                    for key in batch.keys:
                        await channel.queue_bind(name, exchange, key, nowait=True)
                    # The call that says the binds took effect.
                    await channel.queue_declare(name, passive=True)
                else:
                    for key in batch.keys:
                        await channel.queue_unbind(name, exchange, key)
        except BaseException as exc:
            error = exc if isinstance(exc, BusError) else BusUnavailable("the wait was not bound")
            batch.settle(error)
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.debug("binds and unbinds of %s failed: %s", wq.name, exc)
            return
        batch.settle(None)
        if batch.bind:
            binding = wq.binding
            for key in batch.keys:
                if binding.get(key) is batch.done:
                    del binding[key]  # bound: the key's later waits need not wait


@dataclass(eq=False, slots=True)
class _Batch:
    """Keys a lane binds (or unbinds) together, and the future their waits share."""

    done: asyncio.Future[None]
    keys: list[str]
    bind: bool

    def settle(self, error: BaseException | None) -> None:
        _settle(self.done, error if self.bind else None)


def _settle(bound: asyncio.Future[None], error: BaseException | None) -> None:
    """Answer a bind that waits share: done, or failed with ``error``."""
    if bound.done():
        return  # cancelled by a wait that awaited it (the others bind again)
    if error is None:
        bound.set_result(None)
    else:
        bound.set_exception(error)
        bound.exception()  # a bind nobody awaits any more must not be logged as lost


async def _drop(queue: AbstractQueue, consumer_tag: str | None) -> None:
    # Cancel first, so the broker does not report our own consumer as cancelled.
    if consumer_tag is not None:
        await queue.cancel(consumer_tag)
    await queue.delete(if_unused=False, if_empty=False)


class _AmqpSubscription(Subscription):
    __slots__ = ("_wq", "waits")

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
        return await self.enter(None, self)

    async def enter(self, setups: SetUpBounds | None, owner: T) -> T:
        # The base class's entry with the set-up inlined: one coroutine a wait, not two.
        waits = self.waits
        waits.check_open()
        if setups is not None:
            task, cancelling, slot = setups.start(self.deadline)
        try:
            wq = await waits.join(self.deadline)
            wq.subscriptions.add(self)
            key = self.binding_key
            bound = wq.hold(key)
            try:
                while bound is not None:
                    try:
                        await bound  # not shielded: that would cost a future for every wait
                        bound = None
                    except asyncio.CancelledError:
                        current = asyncio.current_task()
                        if current is None or current.cancelling():
                            raise  # this wait's own cancellation
                        bound = wq.rehold(key)  # another wait's cancellation took the future
            except BaseException:
                failed = (
                    bound is not None
                    and bound.done()
                    and not bound.cancelled()
                    and bound.exception() is not None
                )
                wq.release(key, at_broker=not failed)
                wq.subscriptions.remove(self)
                await waits._leave(wq)
                raise
            self._wq = wq
            await waits.retained.watch(self)
        except asyncio.CancelledError:
            if setups is not None:
                setups.cut(slot, task, cancelling)
            raise
        finally:
            if setups is not None:
                slot.leave(task)
        if setups is not None:
            setups.active += 1
        return owner

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
        # Past the deadline the whole bucket's queue goes soon: skip the round trip.
        unbound = wq.release(self.binding_key, at_broker=not self.expired)
        try:
            if unbound is not None:
                # Shielded: a cancelled waiter's unbind is still done, in its lane's order.
                await asyncio.shield(unbound)
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
            await _settle_message(message.ack())
            return
        if self.offer(event):
            self._pending[event.event_id] = message
        else:
            # Not its own (its match), or a copy of one it was handed already.
            await _settle_message(message.ack())

    def _take(self, event: Event) -> Event:
        message = self._pending.pop(event.event_id, None)
        if message is not None:
            task = asyncio.ensure_future(_settle_message(message.ack()))
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


def _bucket(deadline: datetime) -> int:
    """The wait-queue bucket of a deadline: the epoch second its bucket ends."""
    return int(math.ceil(deadline.timestamp() / BUCKET_SECONDS) * BUCKET_SECONDS)


async def _settle_message(acking: object) -> None:
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
        self.channels: list[AbstractRobustChannel] = []
        self._next_channel = itertools.count()
        self._wait_queues: dict[int, _WaitQueue] = {}
        self._generation = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def open(self) -> None:
        for _ in range(self.link.settings.channels):
            channel = await self.link.new_channel()
            await self._watch_cancels(channel)
            # Each reopen (a reconnect, or the broker closing the channel) is a new channel
            # underneath, which needs the callback again.
            channel.reopen_callbacks.add(self._watch_cancels)
            self.channels.append(channel)

    async def _watch_cancels(self, channel: AbstractRobustChannel | None, /) -> None:
        if channel is None:  # aio-pika's callbacks allow for a sender that is gone
            return
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._consumer_cancelled)

    def _consumer_cancelled(self, frame: aiormq.spec.Basic.Cancel) -> None:
        """The broker cancelled a consumer: when it is a wait queue's, the queue was deleted (its
        node lost, or someone deleted it), so it is declared and bound again."""
        for wq in list(self._wait_queues.values()):
            if wq.consumer_tag == frame.consumer_tag:
                log.warning("RabbitMQ cancelled the consumer of %s: binding it again", wq.name)
                self._spawn(self._rebind_one(wq))

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

    def rebind_soon(self) -> None:
        """Bind the waits again in the background (after a reconnect)."""
        if self._wait_queues:
            self._spawn(self.rebind())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if self._closed:
            work.close()  # a cancel reported while the bus closes
            return
        task = asyncio.get_running_loop().create_task(work, name="customevent-amqp-rebind")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def rebind(self) -> None:
        for wq in list(self._wait_queues.values()):
            await self._rebind_one(wq)

    async def _rebind_one(self, wq: _WaitQueue) -> None:
        try:
            await wq.rebind()
        except (BusError, *UNAVAILABLE, aiormq.exceptions.AMQPError) as exc:
            log.warning("could not bind the waits of %s again: %s", wq.name, exc)

    @property
    def active_wait_queues(self) -> int:
        return len(self._wait_queues)

    async def join(self, deadline: datetime) -> _WaitQueue:
        """The wait queue for the deadline, joined, perhaps still being opened. Only the wait
        that opens it makes a broker call of its own; the others of a burst (a hundred
        thousand, say) queue their binds in its lanes at once, which send them once it is
        ready, so no wait but the opener holds a timer or a future for it."""
        wq = self._wait_queues.get(_bucket(deadline))
        if wq is None:
            # Let the rest of a burst take its first step first: the bound then counts the
            # broker's answer, not the time this process takes to start the burst's waits.
            await asyncio.sleep(0)
            async with self.link.call("the wait was not bound"):
                return await self._wait_queue_for(deadline)
        if not self.link.connected:
            raise BusUnavailable("RabbitMQ is not connected; the wait was not bound")
        wq.members += 1
        return wq

    def new_name(self, bucket_end: float) -> str:
        return wait_queue(self._client_id, int(bucket_end), next(self._generation))

    async def _wait_queue_for(self, deadline: datetime) -> _WaitQueue:
        bucket = _bucket(deadline)
        end_epoch = float(bucket)
        wq = self._wait_queues.get(bucket)
        if wq is None:
            wq = _WaitQueue(self, self.new_name(end_epoch), end_epoch)
            self._wait_queues[bucket] = wq
            home = next(self._next_channel) % len(self.channels)
            wq.members += 1
            try:
                await wq.open(self.channels, home)
            except BaseException:
                wq.members -= 1
                if self._wait_queues.get(bucket) is wq:
                    del self._wait_queues[bucket]
                raise
            return wq
        return await self.join(deadline)  # another wait opened it meanwhile

    async def _leave(self, wq: _WaitQueue) -> None:
        wq.members -= 1
        if wq.members > 0:
            return
        for bucket, current in list(self._wait_queues.items()):
            if current is wq:
                del self._wait_queues[bucket]
        if wq.rebinding.locked():
            return  # the rebind under way (it may move the queue) deletes it when done
        await wq.drop()
