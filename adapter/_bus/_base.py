"""What every bus offers: confirmed publishing, and subscriptions that end at a deadline."""

from __future__ import annotations

import abc
import asyncio
import math
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

from .._event import Event
from .._exceptions import ClientStateError, InvalidInput, LimitExceeded, WaitConflict
from .._groups import DeadLetter, GroupOptions, GroupSubscription
from .._names import Kind, pattern_matches

__all__ = [
    "Bus",
    "RefusedMessage",
    "ResumableWaits",
    "Subscription",
    "SubscriptionIndex",
    "check_wait_id",
    "seconds_until",
]

MAX_WAIT_ID = 128
_WAIT_ID = re.compile(r"[A-Za-z0-9_.:-]+")


def check_wait_id(wait_id: str | None, *, reserved: int = 0) -> str | None:
    """A resumable wait's id: 1 to 128 of letters, digits and ``_ . : -`` (less ``reserved``,
    the room a front end needs to make the id private to its caller). The one place that says
    what a wait id may be."""
    if wait_id is None:
        return None
    longest = MAX_WAIT_ID - reserved
    if not (isinstance(wait_id, str) and len(wait_id) <= longest and _WAIT_ID.fullmatch(wait_id)):
        raise InvalidInput(f"wait_id must be 1 to {longest} characters of A-Z a-z 0-9 _ . : -")
    return wait_id


def seconds_until(deadline: datetime) -> float:
    return (deadline - datetime.now(UTC)).total_seconds()


class ResumableWaits:
    """The resumable waits alive in one process, open or kept for a comeback until their
    deadline plus the grace, bounded by ``limits.max_resumable_waits``: each holds a queue at the
    broker (or a mailbox in memory), and an open one an AMQP channel. A wait id belongs to the
    binding key it was first held with for as long as it is alive."""

    def __init__(self, limit: int, grace: float) -> None:
        self.limit = limit
        self._grace = grace
        # wait id -> (binding key, when it may be forgotten: loop time, inf while open)
        self._alive: dict[str, tuple[str, float]] = {}

    def hold(self, wait_id: str, binding_key: str) -> None:
        """Count an opening wait; ``WaitConflict`` if the id is alive for another binding,
        ``LimitExceeded`` if it would pass the limit (``retry_after``: until the first kept wait
        may be forgotten)."""
        now = asyncio.get_running_loop().time()
        known = self._alive.get(wait_id)
        if known is not None and known[1] <= now:
            del self._alive[wait_id]
            known = None
        if known is not None and known[0] != binding_key:
            raise WaitConflict(wait_id, held=known[0], asked=binding_key)
        if known is None and len(self._alive) >= self.limit:
            for other, (_, until) in list(self._alive.items()):
                if until <= now:
                    del self._alive[other]
            if len(self._alive) >= self.limit:
                soonest = min(until for _, until in self._alive.values())
                wait = soonest - now if soonest != math.inf else 60.0
                raise LimitExceeded(
                    "too many resumable waits alive in this process",
                    limit=self.limit,
                    setting="limits.max_resumable_waits",
                    retry_after=max(1, math.ceil(wait)),
                )
        self._alive[wait_id] = (binding_key, math.inf)

    def release(self, wait_id: str, kept_until: datetime | None) -> None:
        """A wait closed: forgotten at once when finished, else once its keeping expires."""
        known = self._alive.get(wait_id)
        if known is None:
            return
        if kept_until is None:
            del self._alive[wait_id]
            return
        until = seconds_until(kept_until + timedelta(seconds=self._grace))
        self._alive[wait_id] = (known[0], asyncio.get_running_loop().time() + until)

    def __len__(self) -> int:
        return len(self._alive)


@dataclass(frozen=True, slots=True)
class RefusedMessage:
    """A message an edge refused (an MQTT poison message), kept for an operator: its raw bytes
    and why (``headers``). Not a group's dead letter (``adapter.DeadLetter``), which is an event
    a group gave up on."""

    source: str
    body: bytes
    headers: dict[str, str]
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class Subscription(abc.ABC):
    """Events matching one binding until a deadline.

    ``async with`` binds (events sent after ``__aenter__`` returns are caught) and unbinds on exit.
    ``await sub.get()`` gives the next event, or None once the deadline has passed.
    """

    def __init__(self, kind: Kind, pattern: str, deadline: datetime) -> None:
        self.kind = kind
        self.pattern = pattern
        self.binding_key = f"{kind}.{pattern}"
        self.literal = "*" not in pattern and "#" not in pattern
        self.deadline = deadline
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._loop_deadline = asyncio.get_running_loop().time() + seconds_until(deadline)
        # The ids last handed out, on an exact name: a retained event can come twice, from the
        # wait's own binding and from the retained events (adapter/_bus/_retained.py).
        self._seen: deque[str] | None = deque(maxlen=16) if self.literal else None

    def deliver(self, event: Event) -> bool:
        """Hand an event to the subscription (called by the bus, on the event loop); False if
        it was handed the same event (by id) just before."""
        seen = self._seen
        if seen is not None:
            if event.event_id in seen:
                return False
            seen.append(event.event_id)
        self._events.put_nowait(event)
        return True

    @property
    def expired(self) -> bool:
        return asyncio.get_running_loop().time() >= self._loop_deadline

    async def get(self) -> Event | None:
        """The next event, or None at the deadline."""
        if not self._events.empty():
            return self._take(self._events.get_nowait())
        remaining = self._loop_deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return None
        try:
            async with asyncio.timeout(remaining):
                event = await self._events.get()
        except TimeoutError:
            return None
        return self._take(event)

    def _take(self, event: Event) -> Event:
        """Hook for subscriptions that must acknowledge what they hand out."""
        return event

    @abc.abstractmethod
    async def __aenter__(self) -> Self: ...

    @abc.abstractmethod
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class SubscriptionIndex:
    """The subscriptions of a bus (or of one wait queue), found by routing key: a dict for
    literal bindings, a scan only over those with wildcards."""

    def __init__(self) -> None:
        self._literal: dict[str, set[Subscription]] = {}
        self._patterns: set[Subscription] = set()

    def add(self, sub: Subscription) -> None:
        if sub.literal:
            self._literal.setdefault(sub.binding_key, set()).add(sub)
        else:
            self._patterns.add(sub)

    def remove(self, sub: Subscription) -> None:
        if not sub.literal:
            self._patterns.discard(sub)
            return
        subs = self._literal.get(sub.binding_key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._literal[sub.binding_key]

    def matching(self, key: str) -> list[Subscription]:
        """Every subscription whose binding matches the routing key."""
        subs = list(self._literal.get(key, ()))
        subs.extend(s for s in self._patterns if pattern_matches(s.binding_key, key))
        return subs

    def clear(self) -> None:
        self._literal.clear()
        self._patterns.clear()

    def __len__(self) -> int:
        return len(self._patterns) + sum(len(subs) for subs in self._literal.values())


class Bus(abc.ABC):
    """A topic bus for events. Use it as an async context manager; it is opened once."""

    name: str = "bus"
    #: ``messaging.system`` of its spans (``adapter/_tracing.py``).
    messaging_system: str = "customevent"
    #: The kind a send or wait uses when the caller (the CLI) names none.
    default_kind: Kind = "internal"
    _state = "unopened"

    @property
    def destination(self) -> str:
        """Where a send goes, as its spans name it (``messaging.destination.name``)."""
        return self.name

    @property
    def where(self) -> str:
        """Where this bus's events travel, for messages to the user (never a password)."""
        return f"the {self.name} bus"

    async def __aenter__(self) -> Self:
        if self._state != "unopened":
            raise ClientStateError(
                f"this {self.name} bus was already {self._state}; make a new one"
            )
        self._state = "opening"
        try:
            await self.start()
        except BaseException:
            self._state = "closed"
            raise
        self._state = "opened"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = "closed"
        await self.close()

    def _check_open(self) -> None:
        if self._state != "opened":
            raise ClientStateError(
                f"the {self.name} bus is {self._state}; use it inside async with"
            )

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """True while the bus can confirm publishes."""

    @abc.abstractmethod
    async def publish(self, event: Event, *, retain: timedelta | None = None) -> bool:
        """Publish with a broker confirm; True if at least one subscription was bound to it.

        With ``retain`` (checked by the caller), a wait on the event's kind and exact name that
        starts within that time receives it at once, unless a later retained send replaced it.
        """

    @abc.abstractmethod
    def subscribe(
        self, kind: Kind, pattern: str, deadline: datetime, *, wait_id: str | None = None
    ) -> Subscription:
        """A subscription to ``<kind>.<pattern>`` until ``deadline``; bind with ``async with``.

        With ``wait_id``, the subscription is resumable: events caught while nobody listens are
        kept until the deadline (plus a grace) for the next subscription with the same id.
        """

    @abc.abstractmethod
    def subscribe_group(
        self, group: str, kind: Kind, pattern: str, options: GroupOptions
    ) -> GroupSubscription:
        """A consumer of the group ``group`` (created on first use, bound to
        ``<kind>.<pattern>``); join it with ``async with``."""

    @abc.abstractmethod
    async def dead_letters(self, group: str) -> list[DeadLetter]:
        """The group's dead letters, oldest first, left where they are."""

    @abc.abstractmethod
    async def replay(self, group: str, event_id: str | None = None) -> int:
        """Deliver the group's dead letters (those of ``event_id`` only, if given) to the group
        again, as new first attempts; the number replayed."""

    @abc.abstractmethod
    async def keep_refused(self, source: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Keep a message the edge ``source`` (``"mqtt"``) refused, with a confirm where the bus
        has one: its raw ``body`` and the ``headers`` that say why. Raises ``BusUnavailable``
        like ``publish`` while that cannot be done."""
