"""Groups on the in-process bus, with the semantics of the RabbitMQ ones: a durable queue per
group (for the bus's lifetime), competing consumers (or one active consumer when the group
de-duplicates), prefetch, retries after a backoff, dead letters, redelivery of what a leaving
consumer did not settle, and a bounded length."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

from .._clock import SYSTEM_CLOCK, Clock
from .._event import Event
from .._exceptions import (
    ClientStateError,
    ConfigurationError,
    DeadLetterNotFound,
    GroupInUse,
    GroupNotFound,
    PublishRejected,
)
from .._groups import (
    DeadLetter,
    Delivery,
    GroupInfo,
    GroupOptions,
    GroupSubscription,
    SeenIds,
    dedup_key,
)
from .._names import pattern_matches
from .._retry import RetryPolicy

__all__ = ["MemoryGroups"]

_DEAD_MAX = 10_000  # dead letters kept per group; the oldest go first


@dataclass(eq=False)
class _Message:
    event: Event
    retries: int = 0
    redeliveries: int = 0
    first_failure: datetime | None = None
    last_failure: datetime | None = None

    @property
    def attempt(self) -> int:
        return 1 + self.retries + self.redeliveries


class _Group:
    def __init__(self, name: str, options: GroupOptions, clock: Clock) -> None:
        self.name = name
        self.options = options
        self.bindings: set[str] = set()
        self.queue: deque[_Message] = deque()
        self.consumers: list[_Consumer] = []
        self.dead: deque[DeadLetter] = deque(maxlen=_DEAD_MAX)
        self.seen = SeenIds(options.dedup_window, options.dedup_max, clock)
        self.in_flight: dict[str, int] = {}  # dedup key -> deliveries of it out now
        self.policy = RetryPolicy(options.retry_initial, options.retry_max)
        self.timers: set[asyncio.TimerHandle] = set()
        self.retrying: dict[asyncio.TimerHandle, _Message] = {}
        self.deleted = False
        self._turn = itertools.count()

    def info(self) -> GroupInfo:
        return GroupInfo(
            name=self.name,
            bindings=tuple(sorted(self.bindings)),
            depth=len(self.queue),
            consumers=len(self.consumers),
            dead_letters=len(self.dead),
        )

    def purge(self) -> int:
        """Drop what waits, in the queue and for a retry."""
        dropped = len(self.queue) + len(self.retrying)
        self.queue.clear()
        for timer in self.retrying:
            timer.cancel()
            self.timers.discard(timer)
        self.retrying.clear()
        return dropped

    def matches(self, key: str) -> bool:
        return any(pattern_matches(binding, key) for binding in self.bindings)

    def pump(self) -> None:
        """Hand queued messages to consumers with room: the first consumer only when the group
        de-duplicates (one active consumer), else in turn."""
        while self.queue:
            consumer = self._next_consumer()
            if consumer is None:
                return
            message = self.queue.popleft()
            key = dedup_key(message.event)
            if self.options.dedup and (key in self.seen or key in self.in_flight):
                continue  # a copy of an event handled (or being handled): acknowledged, dropped
            self.in_flight[key] = self.in_flight.get(key, 0) + 1
            consumer.take(message)

    def _next_consumer(self) -> _Consumer | None:
        if not self.consumers:
            return None
        if self.options.dedup:
            active = self.consumers[0]
            return active if active.has_room else None
        start = next(self._turn)
        for i in range(len(self.consumers)):
            consumer = self.consumers[(start + i) % len(self.consumers)]
            if consumer.has_room:
                return consumer
        return None

    def settled(self, message: _Message) -> None:
        key = dedup_key(message.event)
        left = self.in_flight.get(key, 1) - 1
        if left:
            self.in_flight[key] = left
        else:
            self.in_flight.pop(key, None)

    def requeue(self, message: _Message, *, front: bool = False) -> None:
        if self.deleted:
            return  # a delivery settled after its group was deleted (forced): nowhere to go
        if front:
            self.queue.appendleft(message)
        else:
            self.queue.append(message)
        self.pump()

    def bury(self, message: _Message, reason: str) -> None:
        if self.deleted:
            return
        now = datetime.now(UTC)
        self.dead.append(
            DeadLetter(
                event=message.event,
                reason=reason,
                attempts=message.attempt,
                first_failure=message.first_failure or now,
                last_failure=now,
            )
        )

    def close(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        self.retrying.clear()


class _MemoryDelivery(Delivery):
    def __init__(self, consumer: _Consumer, message: _Message) -> None:
        super().__init__(message.event, message.attempt)
        self._consumer = consumer
        self._message = message

    async def _ack(self) -> None:
        group = self._consumer.finish(self._message)
        if group.options.dedup:
            group.seen.add(dedup_key(self._message.event))

    async def _retry(self, reason: str, at_least: float) -> bool:
        group = self._consumer.finish(self._message)
        message = self._message
        now = datetime.now(UTC)
        message.first_failure = message.first_failure or now
        message.last_failure = now
        if message.attempt >= group.options.max_attempts:
            group.bury(
                message, f"{reason} (attempt {message.attempt} of {group.options.max_attempts})"
            )
            return True
        delay = group.policy.delay_ms(message.attempt, at_least=at_least) / 1000
        message.retries += 1
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def back() -> None:
            group.timers.discard(timer)
            group.retrying.pop(timer, None)
            group.requeue(message)

        timer = loop.call_later(delay, back)
        group.timers.add(timer)
        group.retrying[timer] = message
        return False

    async def _dead_letter(self, reason: str) -> None:
        group = self._consumer.finish(self._message)
        self._message.last_failure = datetime.now(UTC)
        group.bury(self._message, reason)


class _Consumer:
    def __init__(self, group: _Group, prefetch: int) -> None:
        self.group = group
        self.prefetch = prefetch
        self.out: set[_Message] = set()
        self.inbox: asyncio.Queue[_Message] = asyncio.Queue()

    @property
    def has_room(self) -> bool:
        return len(self.out) < self.prefetch

    def take(self, message: _Message) -> None:
        self.out.add(message)
        self.inbox.put_nowait(message)

    def finish(self, message: _Message) -> _Group:
        self.out.discard(message)
        self.group.settled(message)
        self.group.pump()
        return self.group

    def leave(self) -> None:
        """Hand back what was not settled: it is delivered again, counted as a redelivery, and
        dead-lettered once it reaches ``max_attempts``."""
        group = self.group
        if self in group.consumers:
            group.consumers.remove(self)
        for message in sorted(self.out, key=lambda m: m.event.sent_at, reverse=True):
            group.settled(message)
            message.redeliveries += 1
            if message.attempt > group.options.max_attempts:
                group.bury(message, "delivery limit: its consumers went away before settling it")
            else:
                group.queue.appendleft(message)
        self.out.clear()
        group.pump()


class _MemoryGroupSubscription(GroupSubscription):
    def __init__(
        self, groups: MemoryGroups, group: str, kind: str, pattern: str, options: GroupOptions
    ) -> None:
        super().__init__(group, kind, pattern, options)
        self._groups = groups
        self._consumer: _Consumer | None = None

    async def __aenter__(self) -> Self:
        group = self._groups.declare(self.group, self.options)
        group.bindings.add(f"{self.kind}.{self.pattern}")
        self._consumer = _Consumer(group, self.options.prefetch)
        group.consumers.append(self._consumer)
        group.pump()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.leave()

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        consumer = self._consumer
        if consumer is None:
            raise ClientStateError("iterate the group subscription inside its async with")
        while True:
            message = await consumer.inbox.get()
            if message in consumer.out:
                yield _MemoryDelivery(consumer, message)


def _fixed(options: GroupOptions) -> tuple[bool, int, int]:
    """The options a group's queue is made with, which RabbitMQ would refuse to change."""
    return options.dedup, options.max_attempts, options.max_length


class MemoryGroups:
    """The groups of one in-process bus."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._groups: dict[str, _Group] = {}
        self._clock = clock

    def declare(self, name: str, options: GroupOptions) -> _Group:
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = _Group(name, options, self._clock)
        elif _fixed(group.options) != _fixed(options):
            raise ConfigurationError(
                f"the group {name!r} exists with other options than this consumer's ([groups]: "
                "dedup_window, max_attempts, max_length must be the same for every consumer of "
                "a group)"
            )
        return group

    def subscribe(
        self, group: str, kind: str, pattern: str, options: GroupOptions
    ) -> GroupSubscription:
        return _MemoryGroupSubscription(self, group, kind, pattern, options)

    def route(self, key: str, event: Event) -> bool:
        """Queue the event in every group bound to its key; True if any. All or nothing: a full
        group refuses it before any takes it, as RabbitMQ's reject-publish overflow does."""
        targets = [group for group in self._groups.values() if group.matches(key)]
        for group in targets:
            if len(group.queue) >= group.options.max_length:
                raise PublishRejected(
                    f"group {group.name!r} holds {len(group.queue)} events, its limit "
                    "(groups.max_length): the event was not sent"
                )
        for group in targets:
            group.requeue(_Message(event))
        return bool(targets)

    def _existing(self, name: str) -> _Group:
        group = self._groups.get(name)
        if group is None:
            raise GroupNotFound(name)
        return group

    def dead_letters(self, name: str) -> list[DeadLetter]:
        return list(self._existing(name).dead)

    def replay(self, name: str, event_id: str | None) -> int:
        group = self._existing(name)
        chosen = [d for d in group.dead if event_id is None or d.event.event_id == event_id]
        if event_id is not None and not chosen:
            raise DeadLetterNotFound(name, event_id)
        for letter in chosen:
            group.dead.remove(letter)
            group.requeue(_Message(letter.event))
        return len(chosen)

    def groups(self, known: Iterable[str]) -> list[GroupInfo]:
        # Every group of the bus is known to it: ``known`` adds nothing here.
        return [self._groups[name].info() for name in sorted(self._groups)]

    def info(self, name: str) -> GroupInfo:
        return self._existing(name).info()

    def purge(self, name: str) -> int:
        return self._existing(name).purge()

    def delete(self, name: str, *, force: bool) -> GroupInfo:
        group = self._existing(name)
        info = group.info()
        if group.consumers and not force:
            raise GroupInUse(name, len(group.consumers))
        group.purge()
        group.deleted = True
        group.close()
        # Its consumers (forced) are cut off, as RabbitMQ cancels a deleted queue's: they take
        # nothing more, and what they settle goes nowhere.
        group.consumers.clear()
        del self._groups[name]
        return info

    def purge_dead(self, name: str) -> int:
        group = self._existing(name)
        dropped = len(group.dead)
        group.dead.clear()
        return dropped

    def close(self) -> None:
        for group in self._groups.values():
            group.close()
