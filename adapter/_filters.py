"""Filters: which events of a group its consumer takes, in the dialects of the CloudEvents
Subscriptions API (``exact``, ``prefix``, ``suffix``, ``all``, ``any``, ``not``).

A filter looks at an event's attributes ``name``, ``kind`` and ``source`` and at its properties:
any other key is a property of that name, and ``properties.<key>`` is always the property
``<key>`` (so a property that is itself called ``name`` is ``properties.name``). A list of
filters holds when every one of them does. Every expression is checked here, once, with bounds on
its depth, its size and its values, and an error that names where it breaks a rule
(``filters[1].any[0].prefix``).

A consumer acknowledges an event its filters leave out and counts it
(``customevent_filtered_total``, by group): it is never retried or dead-lettered.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

from prometheus_client import Counter

from ._event import Event
from ._exceptions import InvalidInput, InvalidProperties
from ._groups import Delivery, GroupSubscription
from ._properties import check_property

__all__ = [
    "DIALECTS",
    "MAX_FILTER_DEPTH",
    "MAX_FILTER_NODES",
    "MAX_FILTER_VALUE_BYTES",
    "EventFilter",
    "FilteredSubscription",
    "parse_filter_items",
    "parse_filters",
]

#: Bounds on one group's filters: each event a consumer takes runs them all, and a trigger's come
#: from configuration that may be generated.
MAX_FILTER_DEPTH: Final = 8
MAX_FILTER_NODES: Final = 64
MAX_FILTER_VALUE_BYTES: Final = 1024

DIALECTS: Final = ("exact", "prefix", "suffix", "all", "any", "not")
ATTRIBUTES: Final = ("name", "kind", "source")
_PROPERTY_PREFIX = "properties."


def attribute(event: Event, key: str) -> str | None:
    """The value a filter sees under ``key``; None when the event has no such property."""
    if key.startswith(_PROPERTY_PREFIX):
        return event.properties.get(key[len(_PROPERTY_PREFIX) :])
    if key == "name":
        return event.name
    if key == "kind":
        return event.kind
    if key == "source":
        return event.source
    return event.properties.get(key)


class EventFilter(abc.ABC):
    """A checked filter expression."""

    @abc.abstractmethod
    def matches(self, event: Event) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Compare(EventFilter):
    dialect: str
    pairs: tuple[tuple[str, str], ...]

    def matches(self, event: Event) -> bool:
        for key, value in self.pairs:
            found = attribute(event, key)
            if found is None:
                return False
            if self.dialect == "exact":
                if found != value:
                    return False
            elif self.dialect == "prefix":
                if not found.startswith(value):
                    return False
            elif not found.endswith(value):
                return False
        return True


@dataclass(frozen=True, slots=True)
class _All(EventFilter):
    parts: tuple[EventFilter, ...]

    def matches(self, event: Event) -> bool:
        return all(part.matches(event) for part in self.parts)


@dataclass(frozen=True, slots=True)
class _Any(EventFilter):
    parts: tuple[EventFilter, ...]

    def matches(self, event: Event) -> bool:
        return any(part.matches(event) for part in self.parts)


@dataclass(frozen=True, slots=True)
class _Not(EventFilter):
    part: EventFilter

    def matches(self, event: Event) -> bool:
        return not self.part.matches(event)


class _Parser:
    def __init__(self) -> None:
        self.nodes = 0

    def _count(self, where: str) -> None:
        self.nodes += 1
        if self.nodes > MAX_FILTER_NODES:
            raise InvalidInput(
                f"{where}: the filters have more than {MAX_FILTER_NODES} expressions and "
                "attributes in all"
            )

    def many(self, value: object, where: str, depth: int) -> tuple[EventFilter, ...]:
        if not isinstance(value, list | tuple):
            raise InvalidInput(f"{where}: expected a list of filters, not {type(value).__name__}")
        if not value:
            raise InvalidInput(f"{where}: an empty list of filters")
        if len(value) > MAX_FILTER_NODES:
            raise InvalidInput(f"{where}: more than {MAX_FILTER_NODES} filters")
        return tuple(self.one(item, f"{where}[{i}]", depth) for i, item in enumerate(value))

    def one(self, value: object, where: str, depth: int) -> EventFilter:
        if depth > MAX_FILTER_DEPTH:
            raise InvalidInput(f"{where}: filters nested more than {MAX_FILTER_DEPTH} deep")
        self._count(where)
        if not isinstance(value, Mapping):
            raise InvalidInput(
                f"{where}: a filter is a table with one dialect ({', '.join(DIALECTS)}), "
                f"not {type(value).__name__}"
            )
        if len(value) != 1:
            raise InvalidInput(
                f"{where}: a filter has exactly one dialect ({', '.join(DIALECTS)}), "
                f"not {len(value)}"
            )
        ((dialect, body),) = value.items()
        here = f"{where}.{dialect}" if isinstance(dialect, str) and len(dialect) <= 20 else where
        if dialect in ("exact", "prefix", "suffix"):
            return _Compare(dialect, self.pairs(body, here, empty_ok=dialect == "exact"))
        if dialect == "all":
            return _All(self.many(body, here, depth + 1))
        if dialect == "any":
            return _Any(self.many(body, here, depth + 1))
        if dialect == "not":
            return _Not(self.one(body, here, depth + 1))
        shown = repr(dialect)[:40]
        raise InvalidInput(
            f"{where}: unknown filter dialect {shown}; the dialects are {', '.join(DIALECTS)}"
        )

    def pairs(self, body: object, where: str, *, empty_ok: bool) -> tuple[tuple[str, str], ...]:
        if not isinstance(body, Mapping) or not body:
            raise InvalidInput(
                f"{where}: expected a table of attribute = value (name, kind, source or a property)"
            )
        pairs: list[tuple[str, str]] = []
        for key, text in body.items():
            self._count(where)
            if not isinstance(key, str) or not isinstance(text, str):
                raise InvalidInput(
                    f"{where}: attribute names and values are strings, not "
                    f"{type(key).__name__} = {type(text).__name__}"
                )
            size = len(key.encode("utf-8", "surrogatepass")) + len(
                text.encode("utf-8", "surrogatepass")
            )
            if size > MAX_FILTER_VALUE_BYTES:
                raise InvalidInput(
                    f"{where}: {key[:40]!r} is more than {MAX_FILTER_VALUE_BYTES} bytes with "
                    "its value"
                )
            name = key[len(_PROPERTY_PREFIX) :] if key.startswith(_PROPERTY_PREFIX) else key
            try:
                check_property(name, text)
            except InvalidProperties as exc:
                raise InvalidInput(f"{where}: {exc.rule}") from None
            if not (text or empty_ok):
                raise InvalidInput(
                    f"{where}: {key[:40]!r} has an empty value, which every value matches"
                )
            pairs.append((key, text))
        return tuple(pairs)


def parse_filters(value: object, what: str = "filters") -> EventFilter | None:
    """A list of filter expressions (every one must hold), or one, checked and ready; None for
    none (``None`` or an empty list). ``InvalidInput`` names where a rule breaks."""
    if value is None or (isinstance(value, list | tuple) and not value):
        return None
    parser = _Parser()
    if isinstance(value, Mapping):
        return parser.one(value, what, 1)
    return _All(parser.many(value, what, 1))


def parse_filter_items(items: Iterable[str], what: str = "--filter") -> EventFilter | None:
    """``KEY=VALUE`` texts (``listen --filter``), each an ``exact`` filter; all must hold."""
    filters: list[dict[str, dict[str, str]]] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"{what} {item[:60]!r}: expected KEY=VALUE")
        filters.append({"exact": {key: value}})
        if len(filters) > MAX_FILTER_NODES:
            raise InvalidInput(f"{what}: more than {MAX_FILTER_NODES} filters")
    return parse_filters(filters, what)


class FilteredSubscription(GroupSubscription):
    """A group consumer that hands out only what its filter takes, and acknowledges (and
    counts on ``left_out``) the rest."""

    def __init__(
        self, inner: GroupSubscription, event_filter: EventFilter, left_out: Counter
    ) -> None:
        super().__init__(inner.group, inner.kind, inner.pattern, inner.options)
        self._inner = inner
        self._filter = event_filter
        self.filtered = 0
        self._left_out_counter = left_out

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._inner.__aexit__(exc_type, exc, tb)

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return _Taken(self, aiter(self._inner))

    def _left_out(self) -> None:
        self.filtered += 1
        self._left_out_counter.labels(self.group).inc()


class _Taken:
    """The deliveries a filter takes. A plain iterator, not a generator: a cancelled ``anext``
    (``listen`` stopping) must not end the iteration for good."""

    def __init__(self, outer: FilteredSubscription, inner: AsyncIterator[Delivery]) -> None:
        self._outer = outer
        self._inner = inner

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Delivery:
        while True:
            delivery = await anext(self._inner)
            if self._outer._filter.matches(delivery.event):
                return delivery
            await delivery.ack()
            self._outer._left_out()
