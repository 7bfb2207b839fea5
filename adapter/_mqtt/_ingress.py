"""Device messages into events on the bus, each acknowledged to the MQTT broker only once the bus
confirmed it (or, for a poison message, its dead letter), in arrival order.

Workers on the event loop publish many messages at once. At most ``mqtt.max_inflight`` QoS 1
messages are in hand: the broker honours it (MQTT v5 Receive Maximum), and the connection stops
reading when it is reached (MQTT 3.1.1, and brokers that overshoot). QoS 0 messages carry no such
window, so at most ``mqtt.max_inflight_qos0`` are held; past it a QoS 0 message is dropped and
counted, as QoS 0 allows. While the bus is down, messages in hand are retried with backoff and the
rest wait at the broker, in the bridge's persistent session.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from .._client import Client
from .._exceptions import InvalidProperties, LimitExceeded
from .._retry import (
    INGRESS_RETRIED,
    failure_of,
    ingress_publish_retrying,
    retry_after_first_failure,
)
from .._settings import MqttSettings
from ._connection import MqttLink
from ._mapping import (
    DEADLETTER_SOURCE,
    dead_letter_headers,
    event_from_mqtt,
    message_content_type,
    message_topic,
    refusal_reason,
    retain_from_mqtt,
    with_mqtt_trace,
)

__all__ = ["Ingress"]

log = logging.getLogger("adapter.mqtt")


@dataclass(slots=True, eq=False)
class _Delivery:
    message: mqtt.MQTTMessage
    session: int  # the MQTT connection it arrived on: an ack is only meaningful there
    done: bool = False


class Ingress:
    """The ingress half of the bridge: takes the link's messages, publishes them, acks them."""

    def __init__(self, settings: MqttSettings, client: Client) -> None:
        self._settings = settings
        self._client = client
        self._metrics = client.metrics
        self._link: MqttLink | None = None
        self._abandon_before = 0
        self._unacked: deque[_Delivery] = deque()
        self._qos0_held = 0
        self._work: asyncio.Queue[_Delivery] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._outage_logged = False

    @property
    def in_flight(self) -> int:
        """QoS 1 messages received and not yet acknowledged to the MQTT broker."""
        return len(self._unacked)

    @property
    def held_qos0(self) -> int:
        """QoS 0 messages received and not yet confirmed by the bus (nor given up)."""
        return self._qos0_held

    def start(self, link: MqttLink) -> None:
        self._link = link
        self._workers = [
            asyncio.create_task(self._worker(), name=f"mqtt-ingress-{i}")
            for i in range(self._settings.max_inflight)
        ]

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        # Messages in hand stay unacknowledged: the persistent session gives them back later.
        self._metrics.mqtt_in_flight.dec(len(self._unacked))
        self._unacked.clear()

    # -- from the connection (event loop) ----------------------------------------------------

    def link_up(self, session_present: bool) -> None:
        if session_present and self._link is not None:
            # The broker still holds every unacknowledged message and sends it again on this
            # connection: those not yet published need not be (and cannot be acked from here).
            self._abandon_before = self._link.session

    def arrived(self, message: mqtt.MQTTMessage) -> None:
        self._metrics.mqtt_received.inc()
        if message.dup:
            self._metrics.mqtt_redelivered.inc()
        link = self._link
        assert link is not None
        delivery = _Delivery(message, link.session)
        if message.qos > 0:
            unacked = self._unacked
            if len(unacked) >= self._settings.max_inflight:
                self._metrics.mqtt_overruns.inc()
            unacked.append(delivery)
            self._metrics.mqtt_in_flight.inc()
            if len(unacked) >= self._settings.max_inflight:
                link.pause_reading()
        elif self._qos0_held >= self._settings.max_inflight_qos0:
            self._metrics.mqtt_qos0_dropped.inc()
            return
        else:
            self._qos0_held += 1
        self._work.put_nowait(delivery)

    # -- workers (event loop) ----------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            delivery = await self._work.get()
            try:
                await self._handle(delivery)
            except Exception:
                # A bug must not stall the acks behind this message, nor ack it unconfirmed: it
                # stays unacknowledged and the broker sends it again after the next reconnect.
                log.exception("MQTT bridge: unexpected error handling a message")
                delivery.session = -1
            self._settle(delivery)

    def _settle(self, delivery: _Delivery) -> None:
        if delivery.message.qos == 0:
            self._qos0_held -= 1
            return
        delivery.done = True
        unacked = self._unacked
        link = self._link
        assert link is not None
        # MQTT wants acks in arrival order: a confirmed message waits for those before it.
        acked = 0
        while unacked and unacked[0].done:
            head = unacked.popleft()
            acked += 1
            if link.up and head.session == link.session:
                link.ack(head.message.mid, head.message.qos)
        if acked:
            self._metrics.mqtt_in_flight.dec(acked)
            if len(unacked) < self._settings.max_inflight:
                link.resume_reading()

    def _abandoned(self, delivery: _Delivery) -> bool:
        return delivery.session < self._abandon_before

    async def _handle(self, delivery: _Delivery) -> None:
        if self._abandoned(delivery):
            return
        message = delivery.message
        topic = message_topic(message)
        content_type = message_content_type(message)
        try:
            if message.retain:
                raise InvalidProperties("a retained message is stored state, not a send")
            event = event_from_mqtt(
                self._client, self._settings.prefix, topic, message.payload, content_type
            )
            event = with_mqtt_trace(event, message)
            retain = retain_from_mqtt(message, self._client.settings.amqp.max_retain)
        except Exception as exc:
            reason = "retained" if message.retain else refusal_reason(exc)
            await self._refuse(delivery, topic, content_type, reason, exc)
            return
        send = self._client.send_event
        try:
            if await self._until_confirmed(delivery, lambda: send(event, retain=retain)):
                self._metrics.mqtt_published.inc()
        except LimitExceeded as exc:  # retained: the cap on retained names
            await self._refuse(delivery, topic, content_type, "limit", exc)

    async def _refuse(
        self,
        delivery: _Delivery,
        topic: str,
        content_type: str | None,
        reason: str,
        exc: BaseException,
    ) -> None:
        """Count, log and dead-letter a message the bridge will not publish as an event; it is
        acknowledged once the dead letter is kept."""
        self._metrics.mqtt_poison.labels(reason=reason).inc()
        log.warning(
            "MQTT message on %r refused (%s): %s; acknowledged and dead-lettered",
            topic,
            reason,
            exc,
        )
        headers = dead_letter_headers(topic, reason, str(exc), content_type)
        body = bytes(delivery.message.payload)
        bus = self._client.bus
        await self._until_confirmed(
            delivery, lambda: bus.keep_refused(DEADLETTER_SOURCE, body, headers)
        )

    async def _until_confirmed(
        self, delivery: _Delivery, attempt: Callable[[], Awaitable[object]]
    ) -> bool:
        """Retry until the bus confirms; False if the broker will redeliver the message anyway."""
        try:
            await attempt()  # the common case, without the retry machinery
        except INGRESS_RETRIED as exc:
            failure = exc
        else:
            self._confirmed()
            return True
        retrying = ingress_publish_retrying(
            abandoned=lambda: self._abandoned(delivery),
            before_sleep=lambda state: self._unconfirmed(failure_of(state)),
        )
        result: bool = await retry_after_first_failure(
            retrying, failure, self._confirm, delivery, attempt
        )
        return result

    async def _confirm(self, delivery: _Delivery, attempt: Callable[[], Awaitable[object]]) -> bool:
        if self._abandoned(delivery):
            return False
        await attempt()
        self._confirmed()
        return True

    def _unconfirmed(self, exc: BaseException | None) -> None:
        self._metrics.mqtt_retries.inc()
        if not self._outage_logged:
            self._outage_logged = True
            log.warning(
                "MQTT bridge: the bus did not confirm (%s); holding %d messages "
                "unacknowledged and retrying",
                exc,
                len(self._unacked) + self._qos0_held,
            )

    def _confirmed(self) -> None:
        if self._outage_logged:
            self._outage_logged = False
            log.warning("MQTT bridge: the bus confirms again")
