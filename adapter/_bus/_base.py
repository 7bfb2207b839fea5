"""What every bus offers: confirmed publishing, and subscriptions that end at a deadline."""

from __future__ import annotations

import abc
import asyncio
import math
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar

from .._event import Event
from .._exceptions import ClientStateError, InvalidInput, LimitExceeded, WaitConflict
from .._groups import DeadLetter, GroupInfo, GroupOptions, GroupSubscription
from .._names import Kind, pattern_matches

if TYPE_CHECKING:
    from .._setup_bounds import SetUpBounds

T = TypeVar("T")

__all__ = [
    "BROKER_SCHEMES",
    "BUS_SCHEMES",
    "DAEMON_SCHEMES",
    "Bus",
    "RefusedMessage",
    "ResumableWaits",
    "Subscription",
    "SubscriptionIndex",
    "check_wait_id",
    "scheme_of",
    "seconds_until",
]

# The one list of bus URL schemes: RabbitMQ, a bridge daemon (HttpBus), the in-process bus.
BROKER_SCHEMES = ("amqp", "amqps")
DAEMON_SCHEMES = ("http", "https")
BUS_SCHEMES = (*BROKER_SCHEMES, *DAEMON_SCHEMES, "memory")


def scheme_of(url: str | None) -> str:
    """The scheme of a bus URL as written (``amqp`` of ``amqp://...``); empty when it has none."""
    scheme, sep, _ = (url or "").partition("://")
    return scheme if sep else ""


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

    A process may hold a hundred thousand of these at once, so a subscription is slotted and
    makes its mailbox and its list of the ids it handed out on its first event, not before.
    """

    __slots__ = (
        "__weakref__",
        "_answered_unmatched",
        "_events",
        "_getter",
        "_hits",
        "_loop_deadline",
        "_refused",
        "_seen",
        "_tally",
        "_tally_base",
        "binding_key",
        "deadline",
        "kind",
        "literal",
        "match",
        "match_keys",
        "match_values",
        "pattern",
    )

    def __init__(
        self,
        kind: Kind,
        pattern: str,
        deadline: datetime,
        match: Mapping[str, str] | None = None,
    ) -> None:
        self.kind = kind
        self.pattern = pattern
        self.binding_key = f"{kind}.{pattern}"
        self.literal = "*" not in pattern and "#" not in pattern
        self.deadline = deadline
        #: The property values an event must carry to answer this wait (checked by the caller).
        self.match: dict[str, str] | None = dict(match) if match else None
        self.match_keys: tuple[str, ...] = tuple(sorted(self.match)) if self.match else ()
        self.match_values: tuple[str, ...] = tuple(
            self.match[k] for k in self.match_keys if self.match is not None
        )
        # Events on its binding that it let pass: counted where it is indexed (a tally of the
        # events its bucket saw, less those that matched), and one by one where it is offered
        # events directly (a resumable wait's own queue or mailbox).
        self._tally: _Tally | None = None
        self._tally_base = 0
        self._hits = 0
        self._refused = 0
        self._answered_unmatched: int | None = None  # the count when its first event came
        self._events: deque[Event] | None = None  # handed to it, not yet taken
        self._getter: asyncio.Future[None] | None = None  # set when an event is handed to it
        self._loop_deadline = asyncio.get_running_loop().time() + seconds_until(deadline)
        # The ids last handed out, on an exact name: a retained event can come twice, from the
        # wait's own binding and from the retained events (adapter/_bus/_retained.py).
        self._seen: deque[str] | None = None

    def matches(self, event: Event) -> bool:
        """True if the event carries every property value of ``match``."""
        match = self.match
        if match is None:
            return True
        properties = event.properties
        return all(properties.get(key) == value for key, value in match.items())

    @property
    def unmatched(self) -> int:
        """Events that reached this wait's binding while it was bound and did not match, until
        the first that did (the one that answers it)."""
        if self._answered_unmatched is not None:
            return self._answered_unmatched
        tally = self._tally
        indexed = tally.arrivals - self._tally_base - self._hits if tally is not None else 0
        return max(indexed, 0) + self._refused

    def offer(self, event: Event) -> bool:
        """``deliver`` for an event not yet matched (a resumable wait's own queue, a mailbox):
        False, and counted as unmatched, if it does not match."""
        return self.offer_check(event) and self.deliver(event)

    def offer_check(self, event: Event) -> bool:
        """``matches``, counting the event as unmatched when it does not."""
        if self.matches(event):
            return True
        self._refused += 1
        return False

    def deliver(self, event: Event) -> bool:
        """Hand an event to the subscription (called by the bus, on the event loop); False if
        it was handed the same event (by id) just before, or it does not match."""
        if self.match is not None and not self.matches(event):
            return False
        if self.literal:
            seen = self._seen
            if seen is None:
                seen = self._seen = deque(maxlen=16)
            elif event.event_id in seen:
                return False
            seen.append(event.event_id)
        events = self._events
        if events is None:
            events = self._events = deque()
        events.append(event)
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)
        if self._answered_unmatched is None and self.match is not None:
            self._answered_unmatched = self.unmatched
        return True

    def take_all(self) -> list[Event]:
        """The events handed to it and not yet taken, now taken."""
        events, self._events = self._events, None
        return list(events) if events else []

    @property
    def expired(self) -> bool:
        return asyncio.get_running_loop().time() >= self._loop_deadline

    async def get(self) -> Event | None:
        """The next event, or None at the deadline."""
        loop = asyncio.get_running_loop()
        while not self._events:
            remaining = self._loop_deadline - loop.time()
            if remaining <= 0:
                return None
            getter = self._getter
            if getter is None or getter.done():
                getter = self._getter = loop.create_future()
            # asyncio.wait, not a timeout around the future: a second caller of get() shares
            # the future, and neither one's deadline or cancellation may cancel it.
            await asyncio.wait((getter,), timeout=remaining)
        return self._take(self._events.popleft())

    def _take(self, event: Event) -> Event:
        """Hook for subscriptions that must acknowledge what they hand out."""
        return event

    async def enter(self, setups: SetUpBounds, owner: T) -> T:
        """``async with`` entry as a client makes it (``Expectation``): ``__aenter__`` bounded by
        the deadline plus a margin, counted in ``setups.active``; gives ``owner``. A client's
        entry is this one coroutine: a subscription whose set-up is its own may inline it here
        and keep a burst of waits to one coroutine each (the AMQP waits do)."""
        task, cancelling, slot = setups.start(self.deadline)
        try:
            await self.__aenter__()
        except asyncio.CancelledError:
            setups.cut(slot, task, cancelling)
            raise
        finally:
            slot.leave(task)
        setups.active += 1
        return owner

    @abc.abstractmethod
    async def __aenter__(self) -> Self: ...

    @abc.abstractmethod
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@dataclass(eq=False, slots=True)
class _Tally:
    """How many events reached one binding key of an index that has match waits."""

    arrivals: int = 0


@dataclass(eq=False, slots=True)
class _Slot:
    """The subscriptions of an index on one literal binding key: those without a match, and
    those with one, by the names they match on, then by the values (so an event finds its
    waits with one dict lookup per set of names, however many waits there are)."""

    plain: set[Subscription] = field(default_factory=set)
    by_match: dict[tuple[str, ...], dict[tuple[str, ...], set[Subscription]]] = field(
        default_factory=dict
    )
    tally: _Tally = field(default_factory=_Tally)
    size: int = 0


class SubscriptionIndex:
    """The subscriptions of a bus (or of one wait queue), found by routing key and properties:
    dicts for literal bindings (and, within one, for the waits' ``match``), a scan only over
    those with wildcards. The index a wait is bound through counts what it let pass
    (``unmatched``); another that looks it up too (the retained events') is made with
    ``counting=False``."""

    def __init__(self, *, counting: bool = True) -> None:
        self._counting = counting
        # A key that one wait without a match holds maps to that wait, not to a slot: most
        # waits are alone on their name, and a slot with its set costs several hundred bytes.
        self._literal: dict[str, _Slot | Subscription] = {}
        self._patterns: set[Subscription] = set()

    def add(self, sub: Subscription) -> None:
        if not sub.literal:
            self._patterns.add(sub)
            return
        slot = self._literal.get(sub.binding_key)
        if slot is None:
            if sub.match is None:
                self._literal[sub.binding_key] = sub
                return
            slot = self._literal[sub.binding_key] = _Slot()
        elif isinstance(slot, Subscription):
            alone = slot
            slot = self._literal[sub.binding_key] = _Slot(plain={alone}, size=1)
        slot.size += 1
        if sub.match is None:
            slot.plain.add(sub)
            return
        by_values = slot.by_match.setdefault(sub.match_keys, {})
        by_values.setdefault(sub.match_values, set()).add(sub)
        if self._counting:
            sub._tally, sub._tally_base, sub._hits = slot.tally, slot.tally.arrivals, 0

    def remove(self, sub: Subscription) -> None:
        if not sub.literal:
            self._patterns.discard(sub)
            return
        slot = self._literal.get(sub.binding_key)
        if slot is None:
            return
        if isinstance(slot, Subscription):
            if slot is sub:
                del self._literal[sub.binding_key]
            return
        if sub.match is None:
            if sub not in slot.plain:
                return
            slot.plain.discard(sub)
        else:
            by_values = slot.by_match.get(sub.match_keys, {})
            subs = by_values.get(sub.match_values)
            if subs is None or sub not in subs:
                return
            subs.discard(sub)
            if not subs:
                del by_values[sub.match_values]
                if not by_values:
                    del slot.by_match[sub.match_keys]
        slot.size -= 1
        if slot.size == 0:
            del self._literal[sub.binding_key]

    def binds(self, key: str) -> bool:
        """True if any subscription's binding matches the routing key (before the event is
        read: a message nobody here waits for is not decoded)."""
        return key in self._literal or any(
            pattern_matches(s.binding_key, key) for s in self._patterns
        )

    def matching(self, key: str, event: Event | None = None) -> list[Subscription]:
        """Every subscription whose binding matches the routing key and, given the event, whose
        ``match`` it satisfies; the waits that it does not satisfy count it as unmatched."""
        subs: list[Subscription] = []
        slot = self._literal.get(key)
        if isinstance(slot, Subscription):
            subs.append(slot)
        elif slot is not None:
            subs.extend(slot.plain)
            if slot.by_match and event is not None:
                counting = self._counting
                slot.tally.arrivals += 1
                properties = event.properties
                for names, by_values in slot.by_match.items():
                    values = tuple(properties.get(name) for name in names)
                    found = by_values.get(values)  # type: ignore[arg-type]
                    if found:
                        if counting:
                            for sub in found:
                                sub._hits += 1
                        subs.extend(found)
        for sub in self._patterns:
            if pattern_matches(sub.binding_key, key) and (
                event is None or (sub.offer_check(event) if self._counting else sub.matches(event))
            ):
                subs.append(sub)
        return subs

    def literal_keys(self) -> list[str]:
        """The literal binding keys it holds subscriptions for."""
        return list(self._literal)

    def clear(self) -> None:
        self._literal.clear()
        self._patterns.clear()

    def __len__(self) -> int:
        return len(self._patterns) + sum(
            1 if isinstance(slot, Subscription) else slot.size for slot in self._literal.values()
        )


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
        self,
        kind: Kind,
        pattern: str,
        deadline: datetime,
        *,
        wait_id: str | None = None,
        match: Mapping[str, str] | None = None,
    ) -> Subscription:
        """A subscription to ``<kind>.<pattern>`` until ``deadline``; bind with ``async with``.

        With ``wait_id``, the subscription is resumable: events caught while nobody listens are
        kept until the deadline (plus a grace) for the next subscription with the same id.
        With ``match`` (checked by the caller), only events carrying those property values
        answer it; waits on one name share its binding whatever they match.
        """

    @abc.abstractmethod
    def subscribe_group(
        self, group: str, kind: Kind, pattern: str, options: GroupOptions
    ) -> GroupSubscription:
        """A consumer of the group ``group`` (created on first use, bound to
        ``<kind>.<pattern>``); join it with ``async with``."""

    @abc.abstractmethod
    async def dead_letters(self, group: str) -> list[DeadLetter]:
        """The group's dead letters, oldest first, left where they are; ``GroupNotFound`` for
        a group that does not exist."""

    @abc.abstractmethod
    async def replay(self, group: str, event_id: str | None = None) -> int:
        """Deliver the group's dead letters (those of ``event_id`` only, if given) to the group
        again, as new first attempts; the number replayed. ``GroupNotFound`` for a group that
        does not exist."""

    # -- managing groups: each raises ``GroupNotFound`` for a group that does not exist -------

    @abc.abstractmethod
    async def groups(self, known: Iterable[str] = ()) -> list[GroupInfo]:
        """The groups of this bus, by name: those it has a record of, and those of ``known``
        (names the caller knows, such as its triggers') that exist."""

    @abc.abstractmethod
    async def group_info(self, group: str) -> GroupInfo:
        """One group's bindings, depth, consumers and dead letters."""

    async def group_counts(self, group: str) -> GroupInfo:
        """``group_info`` where the bindings may be left empty: for a bus that keeps them apart
        from the counts (RabbitMQ's registry of groups), a cheaper read, made for gauges."""
        return await self.group_info(group)

    @abc.abstractmethod
    async def purge_group(self, group: str) -> int:
        """Drop the events waiting in the group (those waiting for a retry too, not those out
        with a consumer); the number dropped."""

    @abc.abstractmethod
    async def delete_group(self, group: str, *, force: bool = False) -> GroupInfo:
        """Delete the group, its retries and its dead letters; what it held just before.
        ``GroupInUse`` while consumers are attached, unless ``force``."""

    @abc.abstractmethod
    async def purge_dead(self, group: str) -> int:
        """Drop the group's dead letters; the number dropped."""

    @abc.abstractmethod
    async def keep_refused(self, source: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Keep a message the edge ``source`` (``"mqtt"``) refused, with a confirm where the bus
        has one: its raw ``body`` and the ``headers`` that say why. Raises ``BusUnavailable``
        like ``publish`` while that cannot be done."""
