"""What every bus offers: confirmed publishing, and subscriptions that end at a deadline."""

from __future__ import annotations

import abc
import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

from .._event import Event
from .._exceptions import ClientStateError, InvalidInput
from .._names import Kind, pattern_matches

__all__ = [
    "Bus",
    "DeadLetter",
    "Subscription",
    "SubscriptionIndex",
    "check_wait_id",
    "seconds_until",
]

_WAIT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def check_wait_id(wait_id: str | None) -> str | None:
    """A resumable wait's id: 1 to 128 of letters, digits and ``_ . : -``."""
    if wait_id is not None and not _WAIT_ID.fullmatch(wait_id):
        raise InvalidInput("wait_id must be 1 to 128 characters of A-Z a-z 0-9 _ . : -")
    return wait_id


def seconds_until(deadline: datetime) -> float:
    return (deadline - datetime.now(UTC)).total_seconds()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message an edge refused, kept for an operator: its raw bytes and why (``headers``)."""

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

    def deliver(self, event: Event) -> None:
        """Hand an event to the subscription (called by the bus, on the event loop)."""
        self._events.put_nowait(event)

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
    _state = "unopened"

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
    async def publish(self, event: Event) -> bool:
        """Publish with a broker confirm; True if at least one subscription was bound to it."""

    @abc.abstractmethod
    def subscribe(
        self, kind: Kind, pattern: str, deadline: datetime, *, wait_id: str | None = None
    ) -> Subscription:
        """A subscription to ``<kind>.<pattern>`` until ``deadline``; bind with ``async with``.

        With ``wait_id``, the subscription is resumable: events caught while nobody listens are
        kept until the deadline (plus a grace) for the next subscription with the same id.
        """

    @abc.abstractmethod
    async def dead_letter(self, source: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Keep a message the edge ``source`` (``"mqtt"``) refused, with a confirm where the bus
        has one: its raw ``body`` and the ``headers`` that say why. Raises ``BusUnavailable``
        like ``publish`` while that cannot be done."""
