"""Groups: events that start work. A group is a named, durable subscription whose consumers share
its events (each event to one of them), at least once, with retries after a backoff, dead letters
after ``max_attempts``, and de-duplication of redelivered events (``dedup_key``).

``client.subscribe(pattern, group=G, kind=K)`` gives a ``GroupSubscription``; iterating it gives
``Delivery`` objects that the handler settles exactly once: ``ack``, ``retry`` or
``dead_letter``. A delivery left unsettled when its consumer goes away is delivered again. The
buses implement the transport (``_bus/_amqp_groups.py``, ``_bus/_memory_groups.py``); what is the
same for both lives here.
"""

from __future__ import annotations

import abc
import re
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from ._clock import SYSTEM_CLOCK, Clock
from ._event import Event
from ._exceptions import ClientStateError, InvalidInput

__all__ = [
    "DeadLetter",
    "Delivery",
    "GroupInfo",
    "GroupOptions",
    "GroupSubscription",
    "SeenIds",
    "check_group_name",
    "dedup_key",
]

_GROUP = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


def check_group_name(group: str) -> str:
    """A group's name: 1 to 100 of letters, digits and ``_ . : -`` (it names queues)."""
    if not isinstance(group, str) or not _GROUP.fullmatch(group):
        raise InvalidInput(
            f"group must be 1 to 100 characters of A-Z a-z 0-9 _ . : -, not {group!r}"
        )
    return group


def dedup_key(event: Event) -> str:
    """What de-duplication knows an event by: its id together with who sent it and under which
    name (CloudEvents identifies an event by ``source`` and ``id``), so that one sender reusing
    another's id never suppresses the other's event; only a true redelivery matches."""
    sender = event.principal if event.principal is not None else ""
    return "\0".join((event.source, sender, event.kind, event.name, event.event_id))


@dataclass(frozen=True, slots=True)
class GroupOptions:
    """How a group behaves; fixed when its queue is first made (``[groups]`` in the settings)."""

    prefetch: int = 16
    max_attempts: int = 8
    dedup_window: float = 600.0
    dedup_max: int = 100_000
    retry_initial: float = 1.0
    retry_max: float = 300.0
    max_length: int = 100_000

    @property
    def dedup(self) -> bool:
        return self.dedup_window > 0


class SeenIds:
    """Event ids acknowledged within the last ``window`` seconds, at most ``limit`` of them (the
    oldest go first: past the limit, de-duplication forgets early)."""

    def __init__(self, window: float, limit: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self.window = window
        self.limit = limit
        self._clock = clock
        self._until: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, event_id: object) -> bool:
        until = self._until.get(event_id)  # type: ignore[call-overload]
        return until is not None and until > self._clock.monotonic()

    def add(self, event_id: str) -> None:
        now = self._clock.monotonic()
        self._until[event_id] = now + self.window
        self._until.move_to_end(event_id)
        while self._until:
            oldest, until = next(iter(self._until.items()))
            if until > now and len(self._until) <= self.limit:
                break
            del self._until[oldest]

    def __len__(self) -> int:
        return len(self._until)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a group gave up on, with why and when."""

    event: Event
    reason: str
    attempts: int
    first_failure: datetime | None
    last_failure: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.event.to_json(),
            "reason": self.reason,
            "attempts": self.attempts,
            "first_failure": self.first_failure.isoformat() if self.first_failure else None,
            "last_failure": self.last_failure.isoformat() if self.last_failure else None,
        }


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A group as an operator sees it: what it is bound to, the events waiting in it (``depth``,
    not counting those out with a consumer or waiting for a retry), the consumers attached and
    its dead letters."""

    name: str
    bindings: tuple[str, ...]
    depth: int
    consumers: int
    dead_letters: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bindings": list(self.bindings),
            "depth": self.depth,
            "consumers": self.consumers,
            "dead_letters": self.dead_letters,
        }


@dataclass(eq=False)
class Delivery(abc.ABC):
    """One event handed to one consumer of a group. Settle it exactly once."""

    event: Event
    attempt: int
    settled: str | None = field(default=None, init=False)

    def _settle(self, how: str) -> None:
        if self.settled is not None:
            raise ClientStateError(
                f"the delivery of {self.event.event_id!r} was already settled ({self.settled})"
            )
        self.settled = how

    async def ack(self) -> None:
        """The event was handled: it is not delivered again (nor, within the de-duplication
        window, any copy of it)."""
        self._settle("ack")
        await self._ack()

    async def retry(self, reason: str, *, at_least: float = 0.0) -> None:
        """Deliver it again after a backoff (not sooner than ``at_least`` seconds); past the
        group's ``max_attempts`` it is dead-lettered instead (then ``settled`` reads
        ``"dead_letter"``)."""
        self._settle("retry")
        if await self._retry(reason, at_least):
            self.settled = "dead_letter"

    async def dead_letter(self, reason: str) -> None:
        """Give up on it: it goes to the group's dead letters, with the reason."""
        self._settle("dead_letter")
        await self._dead_letter(reason)

    @abc.abstractmethod
    async def _ack(self) -> None: ...

    @abc.abstractmethod
    async def _retry(self, reason: str, at_least: float) -> bool:
        """Retry it; True if it was dead-lettered instead (its attempts are spent)."""

    @abc.abstractmethod
    async def _dead_letter(self, reason: str) -> None: ...


class GroupSubscription(abc.ABC):
    """A consumer of a group: ``async with`` joins it, ``async for delivery in sub`` takes its
    deliveries, leaving hands back the ones not settled (they are delivered again)."""

    def __init__(self, group: str, kind: str, pattern: str, options: GroupOptions) -> None:
        self.group = group
        self.kind = kind
        self.pattern = pattern
        self.options = options

    @abc.abstractmethod
    async def __aenter__(self) -> Self: ...

    @abc.abstractmethod
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[Delivery]: ...
