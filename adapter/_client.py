"""``Client``: send custom events and wait for them, on whichever bus the settings name."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Generator, Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

from ._bus import Bus, MemoryBus, Subscription
from ._bus._base import seconds_until
from ._event import Event, SendResult, check_event_id
from ._exceptions import (
    BusUnavailable,
    ClientStateError,
    ConfigurationError,
    InvalidDeadline,
    InvalidInput,
)
from ._groups import DeadLetter, GroupOptions, GroupSubscription, check_group_name
from ._names import Kind, validate_kind, validate_name, validate_pattern
from ._properties import check_limits, check_properties, parse_properties
from ._settings import Settings, load_settings
from ._tracing import consuming, enabled, publishing, with_current_trace

__all__ = [
    "Client",
    "Expectation",
    "check_retain",
    "make_bus",
    "parse_deadline_text",
    "parse_duration_text",
    "resolve_deadline",
]


def resolve_deadline(until: datetime | timedelta) -> datetime:
    """An aware UTC deadline from an aware datetime or a timedelta from now; ``InvalidDeadline``
    for one that UTC cannot hold (past the year 9999, or before the year 1, once its offset is
    applied)."""
    if isinstance(until, timedelta):
        try:
            return datetime.now(UTC) + until
        except OverflowError:
            raise InvalidDeadline(f"{until} from now is past the year 9999") from None
    if isinstance(until, datetime):
        if until.tzinfo is None or until.utcoffset() is None:
            raise InvalidDeadline(
                f"{until.isoformat()} has no time zone; give an aware datetime or a timedelta"
            )
        try:
            return until.astimezone(UTC)
        except OverflowError:
            raise InvalidDeadline(
                f"{until.isoformat()} is outside the years 1 to 9999 once in UTC"
            ) from None
    raise InvalidDeadline(f"until must be a datetime or a timedelta, not {type(until).__name__}")


_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# A bind still in flight at the deadline gets this long to finish: the round trip to a daemon or
# a broker that answers, not the wait for one that does not.
_BIND_MARGIN = 1.0
_SECONDS = re.compile(r"\d+(?:\.\d+)?")


def parse_duration_text(text: str, what: str = "the duration") -> timedelta:
    """A duration from text: ``30s``, ``5m``, ``1h30m``, ``250ms``, ``2d``; a bare number is
    seconds. ``what`` names the option or parameter in the error; ``OverflowError`` for one
    too long for a ``timedelta``."""
    text = text.strip()
    if _SECONDS.fullmatch(text):
        text += "s"  # a bare number is seconds, in the CLI as over HTTP
    if text.startswith("-"):
        raise InvalidInput(f"{what} {text!r} is negative")
    if not (text and _DURATION.sub("", text) == "" and _DURATION.match(text)):
        raise InvalidInput(f"{what} {text!r} is not a duration (30s, 5m, 1h)")
    seconds = sum(float(m["value"]) * _UNITS[m["unit"]] for m in _DURATION.finditer(text))
    return timedelta(seconds=seconds)  # OverflowError past 999999999 days: the caller's words


def parse_deadline_text(text: str, what: str = "the deadline") -> datetime:
    """A deadline from text: a duration (``30s``, ``5m``, ``1h30m``, ``250ms``; a bare number is
    seconds) from now, or an RFC 3339 time with a zone. ``what`` names the option or parameter in
    the error."""
    text = text.strip()
    if text.startswith("-"):
        raise InvalidInput(f"{what} {text!r} is negative: give a duration from now or a time")
    if _SECONDS.fullmatch(text) or (_DURATION.match(text) and _DURATION.sub("", text) == ""):
        try:
            return datetime.now(UTC) + parse_duration_text(text, what)
        except OverflowError:
            raise InvalidInput(f"{what} {text!r} is too far in the future") from None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"{what} {text!r} is neither a duration (30s, 5m, 1h) nor an RFC 3339 time "
            "(2026-01-02T15:04:05Z)"
        ) from None
    if moment.tzinfo is None:
        raise InvalidInput(f"{what} {text!r} has no time zone offset (add Z or +01:00)")
    try:
        return resolve_deadline(moment)
    except InvalidDeadline:
        raise InvalidDeadline(
            f"{what} {text!r} is outside the years 1 to 9999 once in UTC"
        ) from None


def check_retain(retain: timedelta | None, max_retain: float) -> timedelta | None:
    """A send's ``retain``: None, or a positive ``timedelta`` of at most ``amqp.max_retain``."""
    if retain is None:
        return None
    if not isinstance(retain, timedelta):
        raise InvalidInput(f"retain must be a timedelta, not {type(retain).__name__}")
    seconds = retain.total_seconds()
    if seconds <= 0:
        raise InvalidInput(f"retain must be positive, not {seconds:g}s")
    if seconds > max_retain:
        raise InvalidInput(f"retain {seconds:g}s is longer than amqp.max_retain ({max_retain:g}s)")
    return retain


_BUS_SCHEMES = ("amqp://", "amqps://", "http://", "https://", "memory://")


def _check_bus_url(url: str) -> str:
    if not url.startswith(_BUS_SCHEMES):
        raise ConfigurationError(
            "a bus URL is amqp://, amqps:// (RabbitMQ), http://, https:// (a bridge daemon) or "
            f"memory:// (in-process), not {url.split(':')[0]!r}"
        )
    return url


def make_bus(settings: Settings, url: str | None = None, *, token: str | None = None) -> Bus:
    """The bus for ``url``: ``amqp(s)://`` RabbitMQ, ``http(s)://`` a bridge daemon (``token``
    a bearer token, default ``$CUSTOMEVENT_TOKEN``), ``memory://`` in-process. Without a URL, the
    bus the settings ask for: RabbitMQ when ``amqp.url`` is set, else in-process."""
    url = _check_bus_url(url) if url is not None else settings.amqp.url
    if token is not None and not (url or "").startswith(("http://", "https://")):
        raise ConfigurationError("a token is for a bridge daemon: give an http(s):// URL with it")
    if url is None or url.startswith("memory://"):
        return MemoryBus(
            wait_grace=settings.amqp.wait_grace,
            limits=settings.limits,
            max_retained_names=settings.amqp.max_retained_names,
        )
    if url.startswith(("http://", "https://")):
        from ._bus._http import HttpBus

        if token is None:
            token = os.environ.get("CUSTOMEVENT_TOKEN")
        return HttpBus(url, token=token)
    from ._bus.amqp import AmqpBus

    amqp = settings.amqp
    if url != amqp.url:
        amqp = amqp.model_copy(update={"url": url})
    return AmqpBus(amqp, connection_name=amqp.connection_name, limits=settings.limits)


class Expectation:
    """A wait bound before the event can be triggered: ``async with client.expect(...) as w``,
    trigger, then ``event = await w`` (None at the deadline)."""

    def __init__(self, client: Client, subscription: Subscription | None) -> None:
        self._client = client
        self._subscription = subscription
        self._result: Event | None = None
        self._done = False

    async def __aenter__(self) -> Self:
        if self._subscription is not None:
            await self._client._bind(self._subscription)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._subscription is not None:
            await self._client._unbind(self._subscription, exc_type, exc, tb)

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
    Use it as ``async with Client(...) as client``; a client is opened once.
    """

    def __init__(
        self,
        settings: Settings | str | None = None,
        *,
        bus: Bus | None = None,
        token: str | None = None,
    ) -> None:
        url = None
        if isinstance(settings, str):
            url = _check_bus_url(settings)
            settings = load_settings(amqp={"url": url if url.startswith("amqp") else None})
        self.settings = settings if settings is not None else load_settings()
        self.bus = bus if bus is not None else make_bus(self.settings, url, token=token)
        self._state = "unopened"
        self._active_waits = 0

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
        return self._active_waits

    async def _bind(self, subscription: Subscription) -> None:
        """Bind a wait, by its deadline (plus a moment for the round trip) at the latest: a bus
        that cannot bind it by then (a broker that stopped answering) is unavailable, and the
        caller hears so in time."""
        try:
            remaining = max(seconds_until(subscription.deadline), 0.0)
            async with asyncio.timeout(remaining + _BIND_MARGIN):
                await subscription.__aenter__()
        except TimeoutError:
            raise BusUnavailable(
                f"the {self.bus.name} bus could not bind the wait before its deadline"
            ) from None
        self._active_waits += 1

    async def _unbind(
        self,
        subscription: Subscription,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._active_waits -= 1
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
        return SendResult(event_id=event.event_id, routed=routed)

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
    ) -> Expectation:
        """A wait that binds on ``async with`` entry, before the caller triggers the event.

        ``name`` may be a pattern whose words are ``*`` (one word) or ``#`` (any number).
        """
        self._check_open()
        checked_kind: Kind = validate_kind(kind)
        validate_pattern(name)
        deadline = resolve_deadline(until)
        if deadline <= datetime.now(UTC):
            return Expectation(self, None)
        return Expectation(self, self.bus.subscribe(checked_kind, name, deadline, wait_id=wait_id))

    def subscribe(
        self,
        pattern: str,
        *,
        group: str,
        kind: str = "internal",
        prefetch: int | None = None,
        max_attempts: int | None = None,
        dedup_window: float | timedelta | None = None,
    ) -> GroupSubscription:
        """Join the group ``group``: every event whose name matches ``pattern`` is handed to one
        consumer of the group, at least once, whichever process runs it.

        ``async with client.subscribe("vm.*", group="reload") as deliveries:`` then
        ``async for d in deliveries:`` and settle each with ``await d.ack()``,
        ``await d.retry(reason)`` or ``await d.dead_letter(reason)``. The options default to the
        ``[groups]`` settings and are fixed when the group is first made.
        """
        self._check_open()
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
        return self.bus.subscribe_group(
            check_group_name(group), validate_kind(kind), validate_pattern(pattern), options
        )

    async def dead_letters(self, group: str) -> list[DeadLetter]:
        """The dead letters of ``group``, oldest first (they stay where they are)."""
        self._check_open()
        return await self.bus.dead_letters(check_group_name(group))

    async def replay(self, group: str, *, event_id: str | None = None) -> int:
        """Deliver the dead letters of ``group`` (only ``event_id``'s, if given) to the group
        again; the number replayed."""
        self._check_open()
        return await self.bus.replay(check_group_name(group), event_id)

    async def wait_custom_event_until(
        self,
        kind: str,
        name: str,
        until: datetime | timedelta,
        *,
        wait_id: str | None = None,
    ) -> Event | None:
        """Wait for an event until a deadline; None at the deadline (as vRO returns null)."""
        async with self.expect(kind, name, until=until, wait_id=wait_id) as waiter:
            return await waiter
