"""The MQTT side of the bridge daemon: device sends from Mosquitto into RabbitMQ, and opt-in egress
of events back out to devices.

Ingress: paho's network thread receives each PUBLISH and hands it to the event loop
(``loop.call_soon_threadsafe``); nothing else runs on that thread. On the loop, workers turn the
message into an event and publish it with a broker confirm, many at once. Acknowledgements go back
to the MQTT broker in arrival order, each only once RabbitMQ confirmed the message (or, for a
poison message, its dead-letter copy). The broker never has more than ``mqtt.max_inflight``
unacknowledged messages out to the bridge (MQTT v5 Receive Maximum), so during a RabbitMQ outage the
bridge holds a bounded set and the rest stays queued in Mosquitto's persistent session.

See docs/devices.md for the device's side of the contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client import Counter, Gauge

from .._bus._amqp import AmqpBus, redact_url
from .._client import Client
from .._event import Event, encode_body
from .._exceptions import (
    BusUnavailable,
    ClientStateError,
    ConfigurationError,
    InvalidEventName,
    InvalidInput,
    InvalidProperties,
    PropertiesTooLarge,
    PublishRejected,
)
from .._names import name_from_topic
from .._properties import string_object
from .._settings import Settings
from .._tls import client_tls_context

__all__ = [
    "DEADLETTER_ROUTING_KEY",
    "DEVICE_WORD",
    "MqttBridge",
    "egress_topic",
    "event_from_mqtt",
    "principal_from_name",
]

log = logging.getLogger("adapter.mqtt")

DEVICE_WORD = "device"
"""Topics ``<prefix>/external/device/<client id>/...`` carry their sender's identity (the broker's
ACL lets a device publish only under its own client id); see ``principal_from_name``."""

DEADLETTER_ROUTING_KEY = "deadletter.mqtt"

# An egress subscription lasts this long; the next one binds before the current one ends.
EGRESS_SPAN = timedelta(hours=1)
EGRESS_OVERLAP = timedelta(minutes=1)
_EGRESS_SEEN = 4096  # event ids remembered to drop the copies the overlap delivers twice
_RETRY_FIRST = 0.1
_RETRY_MAX = 2.0

RECEIVED = Counter("customevent_mqtt_received", "MQTT messages received by the bridge")
REDELIVERED = Counter(
    "customevent_mqtt_redelivered",
    "MQTT messages received with the DUP flag (sent before; possibly published twice)",
)
PUBLISHED = Counter("customevent_mqtt_published", "MQTT messages published as events and acked")
POISON = Counter(
    "customevent_mqtt_poison",
    "MQTT messages refused (acknowledged, logged and dead-lettered), by reason",
    ["reason"],
)
RETRIES = Counter(
    "customevent_mqtt_publish_retries", "publishes to the bus retried (bus down or refusing)"
)
CONNECTED = Gauge(
    "customevent_mqtt_connected",
    "1 while the bridge is connected to the MQTT broker with its subscription in place, else 0",
)
IN_FLIGHT = Gauge("customevent_mqtt_in_flight", "MQTT messages received and not yet acknowledged")
OVERRUNS = Counter(
    "customevent_mqtt_window_overruns",
    "messages taken beyond mqtt.max_inflight so that paho could keep the connection alive",
)
EGRESS_SENT = Counter("customevent_mqtt_egress", "events published to MQTT devices")
EGRESS_DROPPED = Counter(
    "customevent_mqtt_egress_dropped", "events not published to MQTT (client queue full)"
)


# -- message mapping (pure functions, on the event loop) -----------------------------------------


def principal_from_name(name: str) -> str | None:
    """The sending device of an event named ``device.<client id>...``, else None.

    MQTT does not tell a subscriber who published a message, so the identity travels in the topic;
    it is trustworthy only because the broker's ACL (``pattern write
    <prefix>/external/device/%c/#``, with client id = user name) refuses any other subtree.
    """
    words = name.split(".", 2)
    if len(words) >= 2 and words[0] == DEVICE_WORD:
        return words[1]
    return None


def egress_topic(prefix: str, name: str) -> str:
    """The topic an egress event goes out on: ``<prefix>/out/<name with '.' written as '/'>``."""
    return f"{prefix}/out/{name.replace('.', '/')}"


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # As in serializedProperties, a name given twice is an error, not "last wins".
            raise InvalidProperties(f"property {key!r} given twice in the JSON object")
        result[key] = value
    return result


def _payload_properties(
    payload: bytes | bytearray, content_type: str | None, max_bytes: int
) -> dict[str, Any] | str:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in ("", "application/json", "text/plain"):
        raise InvalidProperties(
            f"content type {content_type!r} is neither application/json nor text/plain"
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidProperties(f"payload is not UTF-8 (byte {exc.start})") from None
    if media == "application/json" or (not media and text.lstrip().startswith("{")):
        # JSON escapes take at most 6 bytes per byte of text: anything longer cannot fit the limit.
        if len(payload) > 6 * max_bytes + 1024:
            raise PropertiesTooLarge(
                f"{len(payload)} bytes of JSON, more than an event of {max_bytes} bytes can take",
                limit=max_bytes,
                size=len(payload),
            )
        try:
            value = json.loads(text, object_pairs_hook=_reject_duplicates)
        except ValueError as exc:
            raise InvalidProperties(f"payload is not JSON: {exc}") from None
        return string_object(value, "the JSON payload")
    return text


def event_from_mqtt(
    client: Client,
    prefix: str,
    topic: str,
    payload: bytes | bytearray,
    content_type: str | None = None,
) -> Event:
    """The external event a device sent, or ``InvalidInput`` saying what is wrong with it.

    The payload is serializedProperties text or a JSON object of strings: the MQTT v5 content type
    (``text/plain`` or ``application/json``) decides when given, else a payload starting with
    ``{`` is JSON.
    """
    kind, name = name_from_topic(prefix, topic)
    if kind != "external":
        raise InvalidEventName(topic, "devices send external events only")
    properties = _payload_properties(payload, content_type, client.settings.limits.max_bytes)
    return client.prepare_event(
        name, properties, kind=kind, source="mqtt", principal=principal_from_name(name)
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, InvalidEventName):
        return "topic"
    if isinstance(exc, PropertiesTooLarge):
        return "oversize"
    if isinstance(exc, InvalidInput):
        return "payload"
    return "error"


def _content_type(message: mqtt.MQTTMessage) -> str | None:
    properties = message.properties
    value = getattr(properties, "ContentType", None) if properties is not None else None
    return value if isinstance(value, str) else None


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def _topic_text(message: mqtt.MQTTMessage) -> str:
    try:
        return message.topic
    except UnicodeDecodeError:
        return repr(message._topic)


# -- the bridge ----------------------------------------------------------------------------------


class _Window:
    """Room for messages in hand. paho's thread takes a slot per QoS 1 message; the loop gives it
    back once the message is acknowledged (or abandoned)."""

    def __init__(self, size: int) -> None:
        self._condition = threading.Condition()
        self._free = size
        self._closed = False

    def take(self, timeout: float) -> bool:
        with self._condition:
            room = self._condition.wait_for(lambda: self._free > 0 or self._closed, timeout)
            self._free -= 1
            return room

    def give(self) -> None:
        with self._condition:
            self._free += 1
            self._condition.notify()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()


@dataclass(slots=True, eq=False)
class _Delivery:
    message: mqtt.MQTTMessage
    session: int  # the MQTT connection it arrived on: an ack is only meaningful there
    done: bool = False


class MqttBridge:
    """Bridges MQTT device sends to the bus, and (opt-in) bus events back out to devices.

    ``async with MqttBridge(settings, client):`` inside an opened ``Client``. It subscribes to
    ``<prefix>/external/#`` at QoS 1 with a persistent session (a shared subscription when
    ``mqtt.shared_group`` is set), acknowledges each message only after the bus confirmed it, and
    reconnects by itself. ``connected`` is True while the subscription is active.
    """

    def __init__(self, settings: Settings, client: Client) -> None:
        if not settings.mqtt.url:
            raise ConfigurationError("the MQTT bridge needs mqtt.url (CUSTOMEVENT_MQTT__URL)")
        self.settings = settings
        self._mqtt = settings.mqtt
        self._client = client
        self._url = urlsplit(settings.mqtt.url)
        self._shown_url = redact_url(settings.mqtt.url)
        self._v5 = settings.mqtt.protocol == "5"
        base = f"{settings.mqtt.prefix}/external/#"
        group = settings.mqtt.shared_group
        self.topic_filter = f"$share/{group}/{base}" if group else base
        self._state = "unopened"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paho: mqtt.Client | None = None
        self._session = 0
        self._abandon_before = 0
        self._link_up = False
        self._subscribed = asyncio.Event()
        self._subscribe_mid: int | None = None
        self._unacked: deque[_Delivery] = deque()
        self._window = _Window(settings.mqtt.max_inflight)
        self._inbox: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._drain_scheduled = False
        self._work: asyncio.Queue[_Delivery] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._outage_logged = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "unopened":
            raise ClientStateError(f"this MQTT bridge is already {self._state}; make a new one")
        self._state = "opened"
        self._loop = asyncio.get_running_loop()
        self._paho = self._make_paho()
        try:
            self._paho.connect_async(
                self._url.hostname or "localhost",
                self._url.port or (8883 if self._url.scheme == "mqtts" else 1883),
                keepalive=self._mqtt.keepalive,
                clean_start=False if self._v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                properties=self._connect_properties(),
            )
            self._paho.loop_start()
        except BaseException:
            self._state = "closed"
            raise
        workers = self._mqtt.max_inflight
        self._tasks = [
            asyncio.create_task(self._ingress_worker(), name=f"mqtt-ingress-{i}")
            for i in range(workers)
        ]
        self._tasks.extend(
            asyncio.create_task(self._egress(pattern), name=f"mqtt-egress-{pattern}")
            for pattern in self._mqtt.egress
        )
        log.info(
            "MQTT bridge: connecting to %s as %r, subscribing to %r",
            self._shown_url,
            self._mqtt.client_id,
            self.topic_filter,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state != "opened":
            return
        self._state = "closed"
        paho, self._paho = self._paho, None
        self._link_down()
        self._window.close()
        if paho is not None:
            # Messages in hand stay unacknowledged: the persistent session gives them back later.
            paho.disconnect()
            await asyncio.to_thread(paho.loop_stop)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        IN_FLIGHT.dec(len(self._unacked))
        self._unacked.clear()

    def _make_paho(self) -> mqtt.Client:
        paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._mqtt.client_id,
            clean_session=None if self._v5 else False,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            manual_ack=True,
        )
        if self._url.username is not None:
            password = self._url.password
            paho.username_pw_set(
                unquote(self._url.username), unquote(password) if password is not None else None
            )
        if self._url.scheme == "mqtts":
            paho.tls_set_context(client_tls_context(self._mqtt, what="MQTT"))
        paho.reconnect_delay_set(1, 30)
        # Outgoing (egress) messages: paho's own window and queue, so a stalled broker cannot make
        # the bridge grow without bound.
        paho.max_inflight_messages_set(self._mqtt.max_inflight)
        paho.max_queued_messages_set(self._mqtt.max_inflight * 16)
        paho.on_connect = self._on_connect
        paho.on_connect_fail = self._on_connect_fail
        paho.on_disconnect = self._on_disconnect
        paho.on_subscribe = self._on_subscribe
        paho.on_message = self._on_message
        return paho

    def _connect_properties(self) -> Properties | None:
        if not self._v5:
            return None
        properties = _properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self._mqtt.session_expiry
        # The broker sends at most this many unacknowledged messages: the bridge's backpressure.
        properties.ReceiveMaximum = min(self._mqtt.max_inflight, 65535)
        return properties

    @property
    def connected(self) -> bool:
        """True while connected to the MQTT broker with the subscription in place."""
        return self._link_up and self._subscribed.is_set()

    async def wait_connected(self) -> None:
        """Wait until ``connected`` (bound it with ``asyncio.timeout``)."""
        await self._subscribed.wait()

    @property
    def in_flight(self) -> int:
        """Messages received and not yet acknowledged to the MQTT broker."""
        return len(self._unacked)

    # -- paho's thread: hand over and return -------------------------------------------------

    def _hand_over(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        # One inbox keeps messages and connection changes in order; one wake-up per burst rather
        # than per message keeps paho's thread and the loop from fighting over the GIL.
        self._inbox.append((callback, args))
        if not self._drain_scheduled:
            self._drain_scheduled = True
            # A closed loop means the bridge is gone: the broker keeps the message for next time.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._drain_inbox)

    def _drain_inbox(self) -> None:
        self._drain_scheduled = False
        inbox = self._inbox
        while inbox:
            callback, args = inbox.popleft()
            callback(*args)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._hand_over(self._connected, flags.session_present, reason_code)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._hand_over(self._connect_failed)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._hand_over(self._disconnected, reason_code)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._hand_over(self._subscribe_answered, mid, reason_codes)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # Backpressure: with mqtt.max_inflight messages in hand, stop reading until one is acked.
        # MQTT v5's Receive Maximum should make this wait rare, but Mosquitto before 2.0.13 can
        # overshoot it (its inflight quota bugs). The wait is bounded so that paho still answers
        # keepalives while RabbitMQ is down: at worst one message more per half keepalive.
        if message.qos > 0 and not self._window.take(self._mqtt.keepalive / 2):
            OVERRUNS.inc()
        self._hand_over(self._arrived, message)

    # -- connection state (event loop) -------------------------------------------------------

    def _connected(self, session_present: bool, reason_code: ReasonCode) -> None:
        paho = self._paho
        if paho is None:
            return
        if reason_code.is_failure:
            log.error(
                "MQTT broker at %s refused the bridge (%s); check mqtt.url and mqtt.client_id",
                self._shown_url,
                reason_code,
            )
            return
        self._session += 1
        self._link_up = True
        if session_present:
            # The broker still holds every unacknowledged message and sends it again on this
            # connection: those not yet published need not be (and cannot be acked from here).
            self._abandon_before = self._session
        log.info(
            "MQTT bridge connected to %s (session %s)",
            self._shown_url,
            "resumed" if session_present else "new",
        )
        if self._v5:
            # Retained messages are old state, not sends: never replay them into events.
            options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
            _, self._subscribe_mid = paho.subscribe(self.topic_filter, options=options)
        else:
            _, self._subscribe_mid = paho.subscribe(self.topic_filter, qos=1)

    def _link_down(self) -> None:
        self._link_up = False
        self._subscribed.clear()
        CONNECTED.set(0)

    def _connect_failed(self) -> None:
        if self._state == "opened":
            log.warning("MQTT broker at %s is unreachable; retrying", self._shown_url)

    def _disconnected(self, reason_code: ReasonCode) -> None:
        was_up = self._link_up
        self._link_down()
        if self._state == "opened" and was_up:
            log.warning(
                "MQTT bridge lost %s (%s); %d messages in hand will come again; reconnecting",
                self._shown_url,
                reason_code,
                len(self._unacked),
            )

    def _subscribe_answered(self, mid: int, reason_codes: list[ReasonCode]) -> None:
        if mid != self._subscribe_mid:
            return
        failed = [code for code in reason_codes if code.is_failure]
        if failed:
            log.error(
                "MQTT broker at %s refused the subscription %r (%s); check its ACL",
                self._shown_url,
                self.topic_filter,
                failed[0],
            )
            return
        if self._link_up:
            self._subscribed.set()
            CONNECTED.set(1)

    # -- ingress (event loop) ----------------------------------------------------------------

    def _arrived(self, message: mqtt.MQTTMessage) -> None:
        RECEIVED.inc()
        if message.dup:
            REDELIVERED.inc()
        delivery = _Delivery(message, self._session)
        if message.qos > 0:
            self._unacked.append(delivery)
            IN_FLIGHT.inc()
        self._work.put_nowait(delivery)

    def _settle(self, delivery: _Delivery) -> None:
        delivery.done = True
        unacked = self._unacked
        paho = self._paho
        # MQTT wants acks in arrival order: a confirmed message waits for those before it.
        while unacked and unacked[0].done:
            head = unacked.popleft()
            IN_FLIGHT.dec()
            self._window.give()
            if paho is not None and self._link_up and head.session == self._session:
                paho.ack(head.message.mid, head.message.qos)

    def _abandoned(self, delivery: _Delivery) -> bool:
        return delivery.session < self._abandon_before

    async def _ingress_worker(self) -> None:
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

    async def _handle(self, delivery: _Delivery) -> None:
        if self._abandoned(delivery):
            return
        message = delivery.message
        topic = _topic_text(message)
        content_type = _content_type(message)
        try:
            if message.retain:
                raise InvalidProperties("a retained message is stored state, not a send")
            event = event_from_mqtt(
                self._client, self._mqtt.prefix, topic, message.payload, content_type
            )
        except Exception as exc:
            reason = "retained" if message.retain else _reason(exc)
            detail = str(exc)
            POISON.labels(reason=reason).inc()
            log.warning(
                "MQTT message on %r refused (%s): %s; acknowledged and dead-lettered",
                topic,
                reason,
                exc,
            )
            await self._until_confirmed(
                delivery,
                lambda: self._dead_letter(message, topic, content_type, reason, detail),
            )
            return
        if await self._until_confirmed(delivery, lambda: self._client.send_event(event)):
            PUBLISHED.inc()

    async def _until_confirmed(
        self, delivery: _Delivery, attempt: Callable[[], Awaitable[object]]
    ) -> bool:
        """Retry until the bus confirms; False if the broker will redeliver the message anyway."""
        pause = _RETRY_FIRST
        while not self._abandoned(delivery):
            try:
                await attempt()
            except (BusUnavailable, PublishRejected) as exc:
                RETRIES.inc()
                if not self._outage_logged:
                    self._outage_logged = True
                    log.warning(
                        "MQTT bridge: the bus did not confirm (%s); holding %d messages "
                        "unacknowledged and retrying",
                        exc,
                        len(self._unacked),
                    )
                await asyncio.sleep(pause)
                pause = min(pause * 2, _RETRY_MAX)
                continue
            if self._outage_logged:
                self._outage_logged = False
                log.warning("MQTT bridge: the bus confirms again")
            return True
        return False

    async def _dead_letter(
        self,
        message: mqtt.MQTTMessage,
        topic: str,
        content_type: str | None,
        reason: str,
        detail: str,
    ) -> None:
        bus = self._client.bus
        if not isinstance(bus, AmqpBus):
            return  # the in-process bus has no one to inspect it: the log line and counter remain
        headers: dict[str, str] = {
            "x-mqtt-topic": topic,
            "x-deadletter-reason": reason,
            "x-deadletter-detail": detail[:1000],
            "x-event-source": "mqtt",
        }
        if content_type is not None:
            headers["x-mqtt-content-type"] = content_type
        await bus.publish_raw(
            DEADLETTER_ROUTING_KEY,
            bytes(message.payload),
            content_type="application/octet-stream",
            message_id=str(uuid.uuid4()),
            timestamp=datetime.now(UTC),
            headers=headers,
            what="the dead letter",
        )

    # -- egress (event loop) -----------------------------------------------------------------

    async def _egress(self, pattern: str) -> None:
        seen: OrderedDict[str, None] = OrderedDict()
        async with asyncio.TaskGroup() as group:
            while True:
                bound = asyncio.Event()
                deadline = datetime.now(UTC) + EGRESS_SPAN
                group.create_task(
                    self._egress_reader(pattern, deadline, bound, seen),
                    name=f"mqtt-egress-read-{pattern}",
                )
                await bound.wait()
                # The next subscription binds while this one still listens: no gap, and the
                # events both catch are dropped by id.
                await asyncio.sleep((EGRESS_SPAN - EGRESS_OVERLAP).total_seconds())

    async def _egress_reader(
        self, pattern: str, deadline: datetime, bound: asyncio.Event, seen: OrderedDict[str, None]
    ) -> None:
        pause = _RETRY_FIRST
        while True:
            try:
                async with self._client.bus.subscribe("internal", pattern, deadline) as sub:
                    bound.set()
                    while (event := await sub.get()) is not None:
                        if event.event_id in seen:
                            continue
                        seen[event.event_id] = None
                        if len(seen) > _EGRESS_SEEN:
                            seen.popitem(last=False)
                        self._publish_out(event)
                    return
            except BusUnavailable as exc:
                log.warning("MQTT egress %r: cannot bind (%s); retrying", pattern, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, _RETRY_MAX)

    def _publish_out(self, event: Event) -> None:
        paho = self._paho
        if paho is None:
            return
        properties: Properties | None = None
        if self._v5:
            properties = _properties(PacketTypes.PUBLISH)
            properties.ContentType = "application/json"
            user = [("event_id", event.event_id), ("source", event.source)]
            if event.principal is not None:
                user.append(("principal", event.principal))
            properties.UserProperty = user
        info = paho.publish(
            egress_topic(self._mqtt.prefix, event.name),
            encode_body(event.properties),
            qos=1,
            properties=properties,
        )
        # NO_CONN: paho keeps the message and sends it once reconnected.
        if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            EGRESS_SENT.inc()
        else:
            EGRESS_DROPPED.inc()
            log.warning(
                "MQTT egress: event %r not published (%s)", event.name, mqtt.error_string(info.rc)
            )
