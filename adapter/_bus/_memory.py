"""The in-process bus: RabbitMQ's topic semantics inside one event loop, for the no-broker
default and fast tests."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Self

from .._clock import SYSTEM_CLOCK, Clock
from .._event import Event
from .._groups import DeadLetter, GroupInfo, GroupOptions, GroupSubscription
from .._names import Kind, pattern_matches, routing_key
from .._settings import LimitsSettings
from ._base import (
    Bus,
    RefusedMessage,
    ResumableWaits,
    Subscription,
    SubscriptionIndex,
    check_wait_id,
    seconds_until,
)
from ._memory_groups import MemoryGroups
from ._retained import RetainedEvents

__all__ = ["MemoryBus"]


@dataclass
class _Mailbox:
    """What a resumable wait keeps while nobody listens: the events, and when to forget them."""

    binding_key: str
    expires: float
    events: deque[Event]  # bounded: the oldest go first, as with x-max-length at the broker
    attached: _MemorySubscription | None = None


class _MemorySubscription(Subscription):
    def __init__(
        self,
        bus: MemoryBus,
        kind: Kind,
        pattern: str,
        deadline: datetime,
        wait_id: str | None,
        match: Mapping[str, str] | None,
    ) -> None:
        super().__init__(kind, pattern, deadline, match)
        self._bus = bus
        self._wait_id = wait_id

    async def __aenter__(self) -> Self:
        self._bus._check_open()
        self._bus._attach(self, self._wait_id)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Left by an error or a cancellation, a resumable wait keeps its mailbox for a comeback.
        self._bus._detach(self, self._wait_id, keep=exc_type is not None)


class MemoryBus(Bus):
    """An in-process bus with the same semantics as the RabbitMQ one: topic patterns with ``*``
    and ``#``, broadcast to every subscription, deadlines, resumable waits."""

    name = "in-process"

    def __init__(
        self,
        *,
        wait_grace: float = 5.0,
        limits: LimitsSettings | None = None,
        max_retained_names: int = 10000,
        max_refused: int = 1000,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._grace = wait_grace
        self._clock = clock
        self.limits = limits if limits is not None else LimitsSettings()
        self._subscriptions = SubscriptionIndex()
        self._mailboxes: dict[str, _Mailbox] = {}
        self._resumable = ResumableWaits(self.limits.max_resumable_waits, wait_grace)
        self._groups = MemoryGroups(clock)
        self.retained = RetainedEvents(max_retained_names, clock)
        self.retained.mark_ready()  # nothing was retained before this bus existed
        self._retained_order = itertools.count()
        self.refused: deque[RefusedMessage] = deque(maxlen=max_refused)
        """The latest messages an edge refused (``keep_refused``), oldest first; older ones are
        dropped."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._subscriptions.clear()
        self._mailboxes.clear()
        self._groups.close()
        self.retained.clear()

    @property
    def connected(self) -> bool:
        return self._state == "opened"

    @property
    def active_subscriptions(self) -> int:
        return len(self._subscriptions)

    async def publish(self, event: Event, *, retain: timedelta | None = None) -> bool:
        self._check_open()
        key = routing_key(event.kind, event.name)
        if retain is not None:
            self.retained.check_room(key)
        routed = self._groups.route(key, event)  # first: a full group refuses the whole send
        subs = self._subscriptions.matching(key, event)
        bound = self._subscriptions.binds(key)
        for sub in subs:
            sub.deliver(event)
        routed = routed or bound
        self._forget_expired(asyncio.get_running_loop().time())
        for box in self._mailboxes.values():
            if box.attached is None and pattern_matches(box.binding_key, key):
                box.events.append(event)
                routed = True
        if retain is not None:
            until = self._clock.time() + retain.total_seconds()
            self.retained.put(key, event, until, next(self._retained_order))
        return routed

    def _forget_expired(self, now: float) -> None:
        for wait_id, box in list(self._mailboxes.items()):
            if box.expires <= now and box.attached is None:
                del self._mailboxes[wait_id]

    async def keep_refused(self, source: str, body: bytes, headers: Mapping[str, str]) -> None:
        self._check_open()
        self.refused.append(RefusedMessage(source, bytes(body), dict(headers)))

    def subscribe(
        self,
        kind: Kind,
        pattern: str,
        deadline: datetime,
        *,
        wait_id: str | None = None,
        match: Mapping[str, str] | None = None,
    ) -> Subscription:
        return _MemorySubscription(self, kind, pattern, deadline, check_wait_id(wait_id), match)

    def subscribe_group(
        self, group: str, kind: Kind, pattern: str, options: GroupOptions
    ) -> GroupSubscription:
        self._check_open()
        return self._groups.subscribe(group, kind, pattern, options)

    async def dead_letters(self, group: str) -> list[DeadLetter]:
        self._check_open()
        return self._groups.dead_letters(group)

    async def replay(self, group: str, event_id: str | None = None) -> int:
        self._check_open()
        return self._groups.replay(group, event_id)

    async def groups(self, known: Iterable[str] = ()) -> list[GroupInfo]:
        self._check_open()
        return self._groups.groups(known)

    async def group_info(self, group: str) -> GroupInfo:
        self._check_open()
        return self._groups.info(group)

    async def purge_group(self, group: str) -> int:
        self._check_open()
        return self._groups.purge(group)

    async def delete_group(self, group: str, *, force: bool = False) -> GroupInfo:
        self._check_open()
        return self._groups.delete(group, force=force)

    async def purge_dead(self, group: str) -> int:
        self._check_open()
        return self._groups.purge_dead(group)

    def _attach(self, sub: _MemorySubscription, wait_id: str | None) -> None:
        if wait_id is None:
            self._subscriptions.add(sub)
            self.retained.watch(sub)
            return
        self._resumable.hold(wait_id, sub.binding_key)
        self._subscriptions.add(sub)
        box = self._mailboxes.get(wait_id)
        now = asyncio.get_running_loop().time()
        if box is None or box.expires <= now:
            self._forget_expired(now)
            expires = now + seconds_until(sub.deadline + timedelta(seconds=self._grace))
            events: deque[Event] = deque(maxlen=self.limits.max_resumable_events)
            box = self._mailboxes[wait_id] = _Mailbox(sub.binding_key, expires, events)
        for event in box.events:
            sub.offer(event)
        box.events.clear()
        box.attached = sub
        self.retained.watch(sub)

    def _detach(self, sub: _MemorySubscription, wait_id: str | None, *, keep: bool) -> None:
        self._subscriptions.remove(sub)
        self.retained.unwatch(sub)
        if wait_id is None:
            return
        box = self._mailboxes.get(wait_id)
        if box is None or box.attached is not sub:
            return
        self._resumable.release(wait_id, sub.deadline if keep else None)
        if keep:
            # The waiter went away without finishing: keep what it had not taken yet.
            box.attached = None
            box.events.extend(sub.take_all())
        else:
            del self._mailboxes[wait_id]
