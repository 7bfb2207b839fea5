"""The in-process bus: RabbitMQ's topic semantics inside one event loop, for the no-broker
default and fast tests."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Self

from .._event import Event
from .._names import Kind, pattern_matches, routing_key
from ._base import (
    Bus,
    DeadLetter,
    Subscription,
    SubscriptionIndex,
    check_wait_id,
    seconds_until,
)

__all__ = ["MemoryBus"]


@dataclass
class _Mailbox:
    """What a resumable wait keeps while nobody listens: the events, and when to forget them."""

    binding_key: str
    expires: float
    events: list[Event] = field(default_factory=list)
    attached: _MemorySubscription | None = None


class _MemorySubscription(Subscription):
    def __init__(
        self, bus: MemoryBus, kind: Kind, pattern: str, deadline: datetime, wait_id: str | None
    ) -> None:
        super().__init__(kind, pattern, deadline)
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

    def __init__(self, *, wait_grace: float = 5.0, max_dead_letters: int = 1000) -> None:
        self._grace = wait_grace
        self._subscriptions = SubscriptionIndex()
        self._mailboxes: dict[str, _Mailbox] = {}
        self.dead_letters: deque[DeadLetter] = deque(maxlen=max_dead_letters)
        """The latest refused messages (``dead_letter``), oldest first; older ones are dropped."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._subscriptions.clear()
        self._mailboxes.clear()

    @property
    def connected(self) -> bool:
        return self._state == "opened"

    @property
    def active_subscriptions(self) -> int:
        return len(self._subscriptions)

    async def publish(self, event: Event) -> bool:
        self._check_open()
        key = routing_key(event.kind, event.name)
        subs = self._subscriptions.matching(key)
        for sub in subs:
            sub.deliver(event)
        routed = bool(subs)
        now = asyncio.get_running_loop().time()
        for wait_id, box in list(self._mailboxes.items()):
            if box.expires <= now:
                del self._mailboxes[wait_id]
            elif box.attached is None and pattern_matches(box.binding_key, key):
                box.events.append(event)
                routed = True
        return routed

    async def dead_letter(self, source: str, body: bytes, headers: Mapping[str, str]) -> None:
        self._check_open()
        self.dead_letters.append(DeadLetter(source, bytes(body), dict(headers)))

    def subscribe(
        self, kind: Kind, pattern: str, deadline: datetime, *, wait_id: str | None = None
    ) -> Subscription:
        return _MemorySubscription(self, kind, pattern, deadline, check_wait_id(wait_id))

    def _attach(self, sub: _MemorySubscription, wait_id: str | None) -> None:
        self._subscriptions.add(sub)
        if wait_id is None:
            return
        box = self._mailboxes.get(wait_id)
        now = asyncio.get_running_loop().time()
        if box is None or box.expires <= now or box.binding_key != sub.binding_key:
            expires = now + seconds_until(sub.deadline + timedelta(seconds=self._grace))
            box = self._mailboxes[wait_id] = _Mailbox(sub.binding_key, expires)
        for event in box.events:
            sub.deliver(event)
        box.events.clear()
        box.attached = sub

    def _detach(self, sub: _MemorySubscription, wait_id: str | None, *, keep: bool) -> None:
        self._subscriptions.remove(sub)
        if wait_id is None:
            return
        box = self._mailboxes.get(wait_id)
        if box is None or box.attached is not sub:
            return
        if keep:
            # The waiter went away without finishing: keep what it had not taken yet.
            box.attached = None
            while not sub._events.empty():
                box.events.append(sub._events.get_nowait())
        else:
            del self._mailboxes[wait_id]
