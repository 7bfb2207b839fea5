"""``AmqpBus``: the RabbitMQ bus, put together from its parts.

- ``_link.BrokerLink``: the connection, its channels, publishing with a confirm;
- ``_codec``: a message and an event, both ways (the one reader of what arrives);
- ``_queues``: the name and arguments of every queue;
- ``_waits.Waits``: wait queues and resumable waits;
- ``_groups.AmqpGroups``: groups, their retries and dead letters;
- ``_retained.RetainedStream``: retained events.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta

from ..._clock import SYSTEM_CLOCK, Clock
from ..._event import Event
from ..._groups import DeadLetter, GroupInfo, GroupOptions, GroupSubscription
from ..._metrics import Metrics, default_metrics
from ..._names import Kind, routing_key
from ..._settings import AmqpSettings, LimitsSettings
from ..._version import APP_ID
from .._base import Bus, Subscription, check_wait_id
from ._codec import Policy, encode_body, message_headers
from ._groups import AmqpGroups
from ._link import BrokerLink
from ._metrics import Refusals
from ._retained import RetainedStream
from ._waits import Waits

__all__ = ["AmqpBus"]


class AmqpBus(Bus):
    """The RabbitMQ bus: a durable topic exchange, confirmed publishing, wait queues."""

    name = "RabbitMQ"
    messaging_system = "rabbitmq"

    def __init__(
        self,
        settings: AmqpSettings,
        *,
        connection_name: str = APP_ID,
        limits: LimitsSettings | None = None,
        metrics: Metrics | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self._clock = clock
        # Refusals count on the owner's registry: the daemon's, or the process's for a library.
        refused = Refusals((metrics if metrics is not None else default_metrics()).bus_refused)
        self.limits = limits if limits is not None else LimitsSettings()
        self.link = BrokerLink(settings, connection_name=connection_name)
        trusted = set(settings.trusted_publishers)
        if self.link.user is not None:
            trusted.add(self.link.user)
        self.policy = Policy(
            exchange=settings.exchange,
            trusted_publishers=frozenset(trusted),
            max_bytes=self.limits.max_bytes,
            max_properties=self.limits.max_properties,
        )
        self._retained = RetainedStream(
            self.link,
            self.policy,
            max_names=settings.max_retained_names,
            is_open=lambda: self._state == "opened",
            refused=refused,
            clock=clock,
        )
        self.waits = Waits(
            self.link,
            self.policy,
            limits=self.limits,
            retained=self._retained,
            check_open=self._check_open,
            refused=refused,
        )
        self._groups = AmqpGroups(
            self.link, self.policy, check_open=self._check_open, refused=refused, clock=clock
        )
        self.link.on_reconnect.append(self._reconnected)

    @property
    def destination(self) -> str:
        return self.settings.exchange

    @property
    def where(self) -> str:
        return self.link.where

    @property
    def node(self) -> str | None:
        """The node this bus is connected to (password hidden), or None while it is not."""
        return self.link.node

    @property
    def on_reconnect(self) -> list[Callable[[], None]]:
        """Callbacks (no argument) run after each reconnection to the broker."""
        return self.link.on_reconnect

    @property
    def connected(self) -> bool:
        return self.link.connected

    async def start(self) -> None:
        await self.link.open()
        try:
            await self.waits.open()
        except BaseException:
            await self.link.close()
            raise

    def _reconnected(self) -> None:
        self.waits.rebind_soon()

    async def close(self) -> None:
        await self._groups.close()
        await self._retained.close()
        await self.waits.close()
        await self.link.close()

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, event: Event, *, retain: timedelta | None = None) -> bool:
        if retain is None:
            return await self._publish_event(event)
        view = await self._retained.caught_up()
        key = routing_key(event.kind, event.name)
        reserved = view.reserve(key, self._clock.time() + retain.total_seconds())
        try:
            routed, _ = await asyncio.gather(
                self._publish_event(event), self._retained.retain(event, retain)
            )
        except BaseException:
            if reserved:
                view.release(key)
            raise
        return routed

    async def _publish_event(self, event: Event) -> bool:
        self._check_open()
        return await self.link.publish_raw(
            routing_key(event.kind, event.name),
            encode_body(event.properties),
            content_type="application/json",
            message_id=event.event_id,
            timestamp=event.sent_at,
            headers=message_headers(event),
            what=f"the event {event.name!r}",
        )

    async def keep_refused(self, source: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Publish the refused message to routing key ``deadletter.<source>`` of the exchange,
        persistent and confirmed; bind a queue there to inspect them (docs/devices.md)."""
        self._check_open()
        await self.link.publish_raw(
            f"deadletter.{source}",
            bytes(body),
            content_type="application/octet-stream",
            message_id=str(uuid.uuid4()),
            timestamp=datetime.now(UTC),
            headers=dict(headers),
            what="the dead letter",
        )

    # -- waiting ---------------------------------------------------------------------------

    def subscribe(
        self,
        kind: Kind,
        pattern: str,
        deadline: datetime,
        *,
        wait_id: str | None = None,
        match: Mapping[str, str] | None = None,
    ) -> Subscription:
        return self.waits.subscribe(kind, pattern, deadline, check_wait_id(wait_id), match)

    def subscribe_group(
        self, group: str, kind: Kind, pattern: str, options: GroupOptions
    ) -> GroupSubscription:
        self._check_open()
        return self._groups.subscribe(group, kind, pattern, options)

    async def dead_letters(self, group: str) -> list[DeadLetter]:
        self._check_open()
        return await self._groups.dead_letters(group)

    async def replay(self, group: str, event_id: str | None = None) -> int:
        self._check_open()
        return await self._groups.replay(group, event_id)

    async def groups(self, known: Iterable[str] = ()) -> list[GroupInfo]:
        self._check_open()
        return await self._groups.groups(known)

    async def group_info(self, group: str) -> GroupInfo:
        self._check_open()
        return await self._groups.info(group)

    async def group_counts(self, group: str) -> GroupInfo:
        self._check_open()
        return await self._groups.info(group, bindings=False)

    async def purge_group(self, group: str) -> int:
        self._check_open()
        return await self._groups.purge(group)

    async def delete_group(self, group: str, *, force: bool = False) -> GroupInfo:
        self._check_open()
        return await self._groups.delete(group, force=force)

    async def purge_dead(self, group: str) -> int:
        self._check_open()
        return await self._groups.purge_dead(group)

    @property
    def active_wait_queues(self) -> int:
        return self.waits.active_wait_queues
