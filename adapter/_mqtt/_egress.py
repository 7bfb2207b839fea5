"""Egress: internal events whose names match ``mqtt.egress`` patterns, published to devices on
``<prefix>/out/...`` (docs/devices.md, "Waiting from a device").

Each pattern has a task that holds a subscription on the bus. A subscription lasts an hour; the next
one binds a minute before it ends (events both catch are dropped by id), so there is no gap. A task
that fails is logged, counted (``customevent_mqtt_egress_restarts_total``) and restarted with
backoff; ``customevent_mqtt_egress_running`` says whether each pattern is bound.

An event read from the bus is untrusted (anyone allowed to publish ``internal.*`` sets its routing
key and headers): one that MQTT cannot carry is never handed to paho, which would resend it on
every reconnect after the broker dropped the connection for it. It is dropped, counted in
``customevent_mqtt_egress_dropped_total{reason}`` and logged, one line each.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
from tenacity import RetryCallState

from .._client import Client
from .._event import Event
from .._retry import egress_bind_retrying, egress_restart_retrying, failure_of
from .._settings import MqttSettings
from ._connection import MqttLink
from ._mapping import egress_message, egress_problem

__all__ = ["EGRESS_OVERLAP", "EGRESS_SPAN", "Egress"]

log = logging.getLogger("adapter.mqtt")

EGRESS_SPAN = timedelta(hours=1)
EGRESS_OVERLAP = timedelta(minutes=1)
_SEEN = 4096  # event ids remembered to drop the copies the overlap delivers twice


class Egress:
    """One supervised task per ``mqtt.egress`` pattern, publishing through the link."""

    def __init__(self, settings: MqttSettings, client: Client, link: MqttLink) -> None:
        self._settings = settings
        self._client = client
        self._metrics = client.metrics
        self._link = link
        self._tasks: list[asyncio.Task[None]] = []
        self._running: set[str] = set()

    @property
    def running(self) -> frozenset[str]:
        """The patterns whose subscription is bound right now."""
        return frozenset(self._running)

    def start(self) -> None:
        for pattern in self._settings.egress:
            self._metrics.mqtt_egress_running.labels(pattern=pattern).set(0)
            self._tasks.append(
                asyncio.create_task(self._supervised(pattern), name=f"mqtt-egress-{pattern}")
            )

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for pattern in self._running:
            self._metrics.mqtt_egress_running.labels(pattern=pattern).set(0)
        self._running.clear()

    async def _supervised(self, pattern: str) -> None:
        retrying = egress_restart_retrying(lambda state: self._failed(pattern, state))
        await retrying(self._serve, pattern)

    def _failed(self, pattern: str, state: RetryCallState) -> None:
        self._set_running(pattern, False)
        self._metrics.mqtt_egress_restarts.labels(pattern=pattern).inc()
        error = failure_of(state)
        pause = state.next_action.sleep if state.next_action is not None else 0.0
        log.error(
            "MQTT egress %r failed; restarting in %.1fs",
            pattern,
            pause,
            exc_info=error,
        )

    def _set_running(self, pattern: str, running: bool) -> None:
        if running:
            self._running.add(pattern)
        else:
            self._running.discard(pattern)
        self._metrics.mqtt_egress_running.labels(pattern=pattern).set(1 if running else 0)

    async def _serve(self, pattern: str) -> None:
        seen: OrderedDict[str, None] = OrderedDict()
        async with asyncio.TaskGroup() as group:
            while True:
                bound = asyncio.Event()
                deadline = datetime.now(UTC) + EGRESS_SPAN
                group.create_task(
                    self._read(pattern, deadline, bound, seen), name=f"mqtt-egress-read-{pattern}"
                )
                await bound.wait()
                self._set_running(pattern, True)
                # The next subscription binds while this one still listens: no gap, and the
                # events both catch are dropped by id.
                await asyncio.sleep((EGRESS_SPAN - EGRESS_OVERLAP).total_seconds())

    async def _read(
        self, pattern: str, deadline: datetime, bound: asyncio.Event, seen: OrderedDict[str, None]
    ) -> None:
        retrying = egress_bind_retrying(lambda state: self._cannot_bind(pattern, state))
        await retrying(self._read_once, pattern, deadline, bound, seen)

    def _cannot_bind(self, pattern: str, state: RetryCallState) -> None:
        error = failure_of(state)
        log.warning("MQTT egress %r: cannot bind (%s); retrying", pattern, error)

    async def _read_once(
        self, pattern: str, deadline: datetime, bound: asyncio.Event, seen: OrderedDict[str, None]
    ) -> None:
        async with self._client.bus.subscribe("internal", pattern, deadline) as sub:
            bound.set()
            while (event := await sub.get()) is not None:
                if event.event_id in seen:
                    continue
                seen[event.event_id] = None
                if len(seen) > _SEEN:
                    seen.popitem(last=False)
                self._publish(event)

    def _publish(self, event: Event) -> None:
        link = self._link
        message = egress_message(self._settings.prefix, event, v5=link.v5)
        problem = egress_problem(message, max_packet=link.max_packet)
        if problem is not None:
            reason, detail = problem
            self._drop(event, reason, detail)
            return
        rc = link.publish(message.topic, message.payload, qos=1, properties=message.properties)
        # NO_CONN: paho keeps the message and sends it once reconnected.
        if rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self._metrics.mqtt_egress_sent.inc()
        else:
            self._drop(event, "queue", mqtt.error_string(rc))

    def _drop(self, event: Event, reason: str, detail: str) -> None:
        self._metrics.mqtt_egress_dropped.labels(reason=reason).inc()
        log.warning(
            "MQTT egress: event %r (id %r) dropped (%s): %s",
            event.name,
            event.event_id,
            reason,
            detail,
        )
