"""``Client``: send custom events and wait for them, on whichever bus the settings name."""

from __future__ import annotations

import os
from collections.abc import Coroutine, Generator, Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

from ._bus import Bus, MemoryBus, Subscription
from ._bus._base import BROKER_SCHEMES, BUS_SCHEMES, DAEMON_SCHEMES, scheme_of
from ._event import Event, SendResult, check_event_id
from ._exceptions import (
    ClientStateError,
    ConfigurationError,
    InvalidInput,
)
from ._filters import EventFilter, FilteredSubscription, parse_filters
from ._groups import DeadLetter, GroupInfo, GroupOptions, GroupSubscription, check_group_name
from ._match import check_match
from ._metrics import Metrics, default_metrics
from ._names import Kind, validate_kind, validate_name, validate_pattern
from ._properties import check_limits, check_properties, parse_properties
from ._settings import Settings, default_settings, load_settings
from ._setup_bounds import SetUpBounds
from ._times import check_retain, resolve_deadline
from ._tracing import consuming, enabled, publishing, with_current_trace

__all__ = [
    "Client",
    "Expectation",
    "make_bus",
]


# A bind still in flight at the deadline gets this long to finish: the round trip to a daemon or
# a broker that answers, not the wait for one that does not.
_BIND_MARGIN = 1.0


def _check_bus_url(url: str) -> str:
    if scheme_of(url) not in BUS_SCHEMES:
        raise ConfigurationError(
            "a bus URL is amqp://, amqps:// (RabbitMQ), http://, https:// (a bridge daemon) or "
            f"memory:// (in-process), not {url.split(':')[0]!r}"
        )
    return url


def make_bus(
    settings: Settings,
    url: str | None = None,
    *,
    token: str | None = None,
    metrics: Metrics | None = None,
) -> Bus:
    """The bus for ``url``: ``amqp(s)://`` RabbitMQ, ``http(s)://`` a bridge daemon (``token``
    a bearer token, default ``$CUSTOMEVENT_TOKEN``), ``memory://`` in-process. Without a URL, the
    bus the settings ask for: RabbitMQ when ``amqp.url`` is set, else in-process. RabbitMQ counts
    the messages it refuses on ``metrics`` (default ``default_metrics()``)."""
    url = _check_bus_url(url) if url is not None else settings.amqp.url
    if token is not None and scheme_of(url) not in DAEMON_SCHEMES:
        raise ConfigurationError("a token is for a bridge daemon: give an http(s):// URL with it")
    if url is None or scheme_of(url) == "memory":
        return MemoryBus(
            wait_grace=settings.amqp.wait_grace,
            limits=settings.limits,
            max_retained_names=settings.amqp.max_retained_names,
        )
    if scheme_of(url) in DAEMON_SCHEMES:
        from ._bus._http import HttpBus

        if token is None:
            token = os.environ.get("CUSTOMEVENT_TOKEN")
        return HttpBus(url, token=token)
    from ._bus.amqp import AmqpBus

    amqp = settings.amqp
    if url != amqp.url:
        amqp = amqp.model_copy(update={"url": url})
    return AmqpBus(
        amqp, connection_name=amqp.connection_name, limits=settings.limits, metrics=metrics
    )


async def _itself(expectation: Expectation) -> Expectation:
    return expectation


class Expectation:
    """A wait bound before the event can be triggered: ``async with client.expect(...) as w``,
    trigger, then ``event = await w`` (None at the deadline)."""

    __slots__ = ("_client", "_done", "_result", "_subscription")

    def __init__(self, client: Client, subscription: Subscription | None) -> None:
        self._client = client
        self._subscription = subscription
        self._result: Event | None = None
        self._done = False

    def __aenter__(self) -> Coroutine[Any, Any, Expectation]:
        # Bound by its deadline (plus a moment for the round trip) at the latest: a bus that
        # cannot bind it by then (a broker that stopped answering) is unavailable, and the
        # caller hears so in time. Not a coroutine of its own: the subscription's entry is the
        # only one a wait holds while it is set up (a burst of 100,000 held 26 MiB for this
        # one), and one timer bounds the waits whose bounds are alike (``_setup_bounds``).
        subscription = self._subscription
        if subscription is None:
            return _itself(self)
        return subscription.enter(self._client._setups, self)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._subscription is not None:
            await self._client._unbind(self._subscription, exc_type, exc, tb)

    @property
    def unmatched(self) -> int:
        """Events on the wait's name that arrived while it was bound but did not carry its
        ``match`` (0 without one)."""
        return self._subscription.unmatched if self._subscription is not None else 0

    async def get(self) -> Event | None:
        """The event, or None at the deadline; the same answer on every call."""
        if not self._done:
            if self._subscription is not None:
                self._result = await self._subscription.get()
                if self._result is not None and enabled():
                    bus = self._client.bus
                    with consuming(
                        self._result, system=bus.messaging_system, destination=bus.destination
                    ):
                        pass  # the wait's answer: the process span marks when it arrived
            self._done = True
        return self._result

    def __await__(self) -> Generator[Any, None, Event | None]:
        return self.get().__await__()


class Client:
    """Sends custom events and waits for them.

    ``Client()`` reads the settings (environment, ``CUSTOMEVENT_CONFIG``); ``Client(url)`` takes
    an ``amqp://`` URL for RabbitMQ, ``memory://`` for the in-process bus, or ``http://`` /
    ``https://`` for a bridge daemon (``http://user:password@host:8280``, or ``token=`` for a
    bearer token; only external events over HTTP); ``Client(settings)`` takes settings.
    ``Client(bus=...)`` uses that bus, and without settings reads none: every key at its default.
    ``metrics`` is where it counts (a daemon gives its own); by default the process's, on
    prometheus_client's default registry.
    Use it as ``async with Client(...) as client``; a client is opened once.
    """

    def __init__(
        self,
        settings: Settings | str | None = None,
        *,
        bus: Bus | None = None,
        token: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        url = None
        if isinstance(settings, str):
            url = _check_bus_url(settings)
            broker = scheme_of(url) in BROKER_SCHEMES
            settings = load_settings(amqp={"url": url if broker else None})
        if settings is None:
            # A given bus needs nothing from the environment: a test or an embedding passes it
            # all, and a stray CUSTOMEVENT_* variable must not change (or break) that client.
            settings = default_settings() if bus is not None else load_settings()
        self.settings = settings
        self.metrics = metrics if metrics is not None else default_metrics()
        self.bus = (
            bus if bus is not None else make_bus(settings, url, token=token, metrics=self.metrics)
        )
        self._state = "unopened"
        self._setups = SetUpBounds(self.bus.name, _BIND_MARGIN)

    async def __aenter__(self) -> Self:
        if self._state != "unopened":
            raise ClientStateError(f"this client is already {self._state}; make a new Client")
        await self.bus.__aenter__()
        self._state = "opened"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state == "opened":
            self._state = "closed"
            await self.bus.__aexit__(exc_type, exc, tb)

    def _check_open(self) -> None:
        if self._state != "opened":
            raise ClientStateError(
                f"the client is {self._state}; use it inside 'async with Client(...) as client'"
            )

    @property
    def active_waits(self) -> int:
        """Waits bound right now through this client."""
        return self._setups.active

    async def _unbind(
        self,
        subscription: Subscription,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._setups.active -= 1
        await subscription.__aexit__(exc_type, exc, tb)

    def prepare_event(
        self,
        name: str,
        properties: Mapping[str, str] | str | None = None,
        *,
        kind: str = "internal",
        event_id: str | None = None,
        source: str = "amqp",
        principal: str | None = None,
    ) -> Event:
        """Validate a send and build its event, without sending it."""
        limits = self.settings.limits
        if isinstance(properties, str) or properties is None:
            props = parse_properties(
                properties, max_bytes=limits.max_bytes, max_properties=limits.max_properties
            )
        elif isinstance(properties, Mapping):
            props = check_properties(properties)
            check_limits(props, max_bytes=limits.max_bytes, max_properties=limits.max_properties)
        else:
            raise InvalidInput("properties must be a mapping of strings or serializedProperties")
        return Event(
            name=validate_name(name),
            kind=validate_kind(kind),
            properties=props,
            event_id=check_event_id(event_id),
            source=source,
            principal=principal,
        )

    async def send_custom_event(
        self,
        name: str,
        properties: Mapping[str, str] | str | None = None,
        *,
        kind: str = "internal",
        event_id: str | None = None,
        source: str = "amqp",
        principal: str | None = None,
        retain: timedelta | None = None,
    ) -> SendResult:
        """Send an event; returns once the bus confirmed it.

        ``properties`` is a mapping of strings or serializedProperties text. With ``retain``
        (at most ``amqp.max_retain``), a wait that starts on this kind and exact name within
        that time still receives the event, at once, as long as no later retained send
        replaced it. Raises ``InvalidInput`` for a bad name, properties or ``retain``,
        ``LimitExceeded`` when ``amqp.max_retained_names`` names are retained already,
        ``BusUnavailable`` when the broker did not confirm.
        """
        self._check_open()
        event = self.prepare_event(
            name, properties, kind=kind, event_id=event_id, source=source, principal=principal
        )
        return await self.send_event(event, retain=retain)

    async def send_event(self, event: Event, *, retain: timedelta | None = None) -> SendResult:
        """Send an event built by ``prepare_event`` (``retain`` as for ``send_custom_event``)."""
        self._check_open()
        retain = check_retain(retain, self.settings.amqp.max_retain)
        if enabled():
            return await self._send_traced(event, retain)
        # Tracing off: the trace context the event or the caller has travels on unchanged.
        event = with_current_trace(event)
        # Without retain, the call every Bus has made since before retain existed.
        routed = await (
            self.bus.publish(event) if retain is None else self.bus.publish(event, retain=retain)
        )
        return SendResult(event_id=event.event_id, routed=routed, retained=retain is not None)

    async def _send_traced(self, event: Event, retain: timedelta | None) -> SendResult:
        bus = self.bus
        with publishing(event, system=bus.messaging_system, destination=bus.destination) as out:
            routed = await (bus.publish(out) if retain is None else bus.publish(out, retain=retain))
        return SendResult(event_id=out.event_id, routed=routed)

    def expect(
        self,
        kind: str,
        name: str,
        *,
        until: datetime | timedelta,
        wait_id: str | None = None,
        match: Mapping[str, str] | None = None,
    ) -> Expectation:
        """A wait that binds on ``async with`` entry, before the caller triggers the event.

        ``name`` may be a pattern whose words are ``*`` (one word) or ``#`` (any number). With
        ``match`` (property values, all of which must hold; at most 16), only an event carrying
        them answers the wait; others leave it waiting and count in ``unmatched``.
        """
        self._check_open()
        checked_kind: Kind = validate_kind(kind)
        validate_pattern(name)
        checked_match = check_match(match)
        deadline = resolve_deadline(until)
        if deadline <= datetime.now(UTC):
            return Expectation(self, None)
        if checked_match is None:
            # The call every Bus has taken since before match existed.
            sub = self.bus.subscribe(checked_kind, name, deadline, wait_id=wait_id)
        else:
            sub = self.bus.subscribe(
                checked_kind, name, deadline, wait_id=wait_id, match=checked_match
            )
        return Expectation(self, sub)

    def subscribe(
        self,
        pattern: str,
        *,
        group: str,
        kind: str = "internal",
        prefetch: int | None = None,
        max_attempts: int | None = None,
        dedup_window: float | timedelta | None = None,
        filters: object = None,
    ) -> GroupSubscription:
        """Join the group ``group``: every event whose name matches ``pattern`` is handed to one
        consumer of the group, at least once, whichever process runs it.

        ``async with client.subscribe("vm.*", group="reload") as deliveries:`` then
        ``async for d in deliveries:`` and settle each with ``await d.ack()``,
        ``await d.retry(reason)`` or ``await d.dead_letter(reason)``. The options default to the
        ``[groups]`` settings and are fixed when the group is first made.

        ``filters`` (CloudEvents Subscriptions API dialects, e.g.
        ``[{"prefix": {"name": "vm."}}, {"exact": {"env": "prod"}}]``, all must hold) leave
        events out: this consumer acknowledges them unhandled and counts them
        (``customevent_filtered_total``); give every consumer of a group the same filters.
        """
        self._check_open()
        event_filter = filters if isinstance(filters, EventFilter) else parse_filters(filters)
        defaults = self.settings.groups
        window = dedup_window if dedup_window is not None else defaults.dedup_window
        options = GroupOptions(
            prefetch=prefetch if prefetch is not None else defaults.prefetch,
            max_attempts=max_attempts if max_attempts is not None else defaults.max_attempts,
            dedup_window=window.total_seconds() if isinstance(window, timedelta) else window,
            dedup_max=defaults.dedup_max,
            retry_initial=defaults.retry_initial,
            retry_max=defaults.retry_max,
            max_length=defaults.max_length,
        )
        subscription = self.bus.subscribe_group(
            check_group_name(group), validate_kind(kind), validate_pattern(pattern), options
        )
        if event_filter is None:
            return subscription
        return FilteredSubscription(subscription, event_filter, self.metrics.filtered)

    async def dead_letters(self, group: str) -> list[DeadLetter]:
        """The dead letters of ``group``, oldest first (they stay where they are)."""
        self._check_open()
        return await self.bus.dead_letters(check_group_name(group))

    async def replay(self, group: str, *, event_id: str | None = None) -> int:
        """Deliver the dead letters of ``group`` (only ``event_id``'s, if given) to the group
        again; the number replayed. ``DeadLetterNotFound`` when ``event_id`` has none."""
        self._check_open()
        return await self.bus.replay(check_group_name(group), event_id)

    # -- managing groups: ``GroupNotFound`` for a group that does not exist ------------------

    async def groups(self) -> list[GroupInfo]:
        """The groups of the bus, by name, with their bindings, depth (events waiting),
        consumers and dead letters; the triggers of the settings are looked up by name too."""
        self._check_open()
        return await self.bus.groups(trigger.name for trigger in self.settings.triggers)

    async def group_info(self, group: str, *, bindings: bool = True) -> GroupInfo:
        """One group's bindings, depth, consumers and dead letters. ``bindings=False``: the
        counts alone, which on RabbitMQ are two passive declarations (the bindings come from
        the registry of groups, every record of it read); for gauges read again and again."""
        self._check_open()
        name = check_group_name(group)
        if bindings:
            return await self.bus.group_info(name)
        return await self.bus.group_counts(name)

    async def purge_group(self, group: str) -> int:
        """Drop the events waiting in ``group`` (and those waiting for a retry); the number
        dropped. Deliveries out with a consumer are not touched."""
        self._check_open()
        return await self.bus.purge_group(check_group_name(group))

    async def delete_group(self, group: str, *, force: bool = False) -> GroupInfo:
        """Delete ``group`` with its retry and dead-letter queues; what it held just before.
        ``GroupInUse`` while consumers are attached, unless ``force`` (which cuts them off)."""
        self._check_open()
        return await self.bus.delete_group(check_group_name(group), force=force)

    async def purge_dead_letters(self, group: str) -> int:
        """Drop the dead letters of ``group``; the number dropped."""
        self._check_open()
        return await self.bus.purge_dead(check_group_name(group))

    async def wait_custom_event_until(
        self,
        kind: str,
        name: str,
        until: datetime | timedelta,
        *,
        wait_id: str | None = None,
        match: Mapping[str, str] | None = None,
    ) -> Event | None:
        """Wait for an event until a deadline; None at the deadline (as vRO returns null). With
        ``match``, only an event carrying those property values answers."""
        async with self.expect(kind, name, until=until, wait_id=wait_id, match=match) as waiter:
            return await waiter
