"""The bridge's MQTT connection: connects and reconnects with backoff, holds the subscription, and
hands each message to the ingress, all on the event loop (paho is driven by ``_driver``).

Only the blocking TCP connect and TLS handshake of paho's ``reconnect`` run in a worker thread, as
in aiomqtt. A connection counts as up once the broker accepted it (CONNACK), and the subscription
as active once the broker granted it (SUBACK).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client import Gauge
from tenacity import RetryCallState

from .._nodes import redact_url
from .._retry import MQTT_AFTER_LOSS, failure_of, mqtt_reconnect_retrying
from .._settings import MqttSettings
from .._tls import client_tls_context
from ._driver import BufferedPaho, PahoDriver
from ._mapping import MQTT_MAX_PACKET, new_properties

__all__ = ["MqttLink"]

log = logging.getLogger("adapter.mqtt")

_CONNACK_TIMEOUT = 10.0


class _ConnectFailed(Exception):
    """A connection attempt that reached the broker but did not end in an accepted CONNACK."""


class MqttLink:
    """One MQTT connection with the bridge's subscription, kept up from ``start`` to ``close``.

    Calls ``on_message(message)`` for each PUBLISH and ``on_up(session_present)`` when a
    connection is accepted, on the event loop.
    """

    def __init__(
        self,
        settings: MqttSettings,
        topic_filter: str,
        *,
        on_message: Callable[[mqtt.MQTTMessage], None],
        on_up: Callable[[bool], None],
        connected: Gauge,
    ) -> None:
        assert settings.url is not None
        self._settings = settings
        self.shown_url = redact_url(settings.url)
        self.v5 = settings.protocol == "5"
        self.topic_filter = topic_filter
        self._on_message = on_message
        self._on_up = on_up
        self._connected = connected
        self._loop = asyncio.get_running_loop()
        self.paho = self._make_paho()
        self.driver = PahoDriver(
            self.paho,
            keepalive=settings.keepalive,
            shown_url=self.shown_url,
            lost=self._went_down,
        )
        self.session = 0  # counts accepted connections: an ack is only meaningful on its own
        self.up = False
        self.max_packet = MQTT_MAX_PACKET  # what the broker takes (MQTT v5 CONNACK may say less)
        self.subscribed = asyncio.Event()
        self._subscribe_mid: int | None = None
        self._connack: asyncio.Future[None] | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _make_paho(self) -> BufferedPaho:
        settings = self._settings
        assert settings.url is not None
        url = urlsplit(settings.url)
        paho = BufferedPaho(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            clean_session=None if self.v5 else False,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            manual_ack=True,
        )
        if url.username is not None:
            password = url.password
            paho.username_pw_set(
                unquote(url.username), unquote(password) if password is not None else None
            )
        if url.scheme == "mqtts":
            paho.tls_set_context(client_tls_context(settings, what="MQTT"))
        # Outgoing (egress) messages: paho's own window and queue, so a stalled broker cannot make
        # the bridge grow without bound.
        paho.max_inflight_messages_set(settings.max_inflight)
        paho.max_queued_messages_set(settings.max_inflight * 16)
        paho.on_connect = self._on_connect
        paho.on_disconnect = self._on_disconnect
        paho.on_subscribe = self._on_subscribe
        paho.on_message = self._on_paho_message
        properties: Properties | None = None
        if self.v5:
            properties = new_properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = settings.session_expiry
            # The broker sends at most this many unacknowledged messages: the bridge's backpressure.
            properties.ReceiveMaximum = min(settings.max_inflight, 65535)
        # Only stores where and how to connect: _connect_once connects.
        paho.connect_async(
            url.hostname or "localhost",
            url.port or (8883 if url.scheme == "mqtts" else 1883),
            keepalive=settings.keepalive,
            clean_start=False if self.v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        return paho

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background, and again after every loss."""
        self._task = self._loop.create_task(self._maintain(), name="mqtt-connection")

    async def close(self) -> None:
        """Disconnect and stop reconnecting. Unacknowledged messages stay with the broker."""
        self.driver.closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.paho.socket() is not None:
            self.paho.disconnect()
            self.driver.flush()  # sends the DISCONNECT; paho then closes the socket
        self.driver.drop()
        self._went_down()

    async def _maintain(self) -> None:
        while True:
            # Every failure is retried: a broker that is down, a refusal, a TLS error alike; each
            # is logged, and the wait grows to 30 s. A new connection starts the waits afresh.
            async for attempt in mqtt_reconnect_retrying(self._attempt_failed):
                with attempt:
                    await self._connect_once()
            await self._lost.wait()
            # Not at once: a broker that ends every connection (two bridges with one client id
            # take it over from each other) is not hammered.
            await asyncio.sleep(MQTT_AFTER_LOSS)

    async def _connect_once(self) -> None:
        self.driver.drop()
        self._lost.clear()
        connack = self._connack = self._loop.create_future()
        # The TCP connect and TLS handshake block: a thread, bounded by paho's connect timeout.
        # Cancelled (close), the thread is still awaited, so that the socket it opens is closed
        # after it.
        self.driver.connecting = True
        future = self._loop.run_in_executor(None, self.paho.reconnect)
        try:
            await asyncio.shield(future)
        except BaseException as exc:
            connack.cancel()
            if isinstance(exc, asyncio.CancelledError):
                with contextlib.suppress(Exception):
                    await future
            raise
        finally:
            self.driver.connecting = False
        self.driver.schedule_flush()  # the CONNECT packet
        try:
            async with asyncio.timeout(_CONNACK_TIMEOUT):
                await connack
        except TimeoutError:
            raise _ConnectFailed("no CONNACK from the broker") from None

    def _attempt_failed(self, state: RetryCallState) -> None:
        error = failure_of(state)
        pause = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "MQTT broker at %s: connection attempt %d failed (%s); retrying in %.1fs",
            self.shown_url,
            state.attempt_number,
            str(error) or type(error).__name__,
            pause,
        )

    # -- what the ingress and egress use -----------------------------------------------------

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a message of the current connection."""
        self.paho.ack(mid, qos)

    def publish(
        self, topic: str, payload: bytes, *, qos: int, properties: Properties | None
    ) -> int:
        """Publish; paho keeps a QoS 1 message (NO_CONN) and sends it once reconnected."""
        return self.paho.publish(topic, payload, qos=qos, properties=properties).rc

    def pause_reading(self) -> None:
        self.driver.pause_reading()

    def resume_reading(self) -> None:
        self.driver.resume_reading()

    # -- paho's callbacks (event loop) -------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        connack = self._connack
        if reason_code.is_failure:
            log.error(
                "MQTT broker at %s refused the bridge (%s); check mqtt.url and mqtt.client_id",
                self.shown_url,
                reason_code,
            )
            if connack is not None and not connack.done():
                connack.set_exception(_ConnectFailed(f"refused: {reason_code}"))
            return
        self.session += 1
        self.up = True
        broker_max = getattr(properties, "MaximumPacketSize", None) if properties else None
        self.max_packet = broker_max if isinstance(broker_max, int) else MQTT_MAX_PACKET
        log.info(
            "MQTT bridge connected to %s (session %s)",
            self.shown_url,
            "resumed" if flags.session_present else "new",
        )
        self._on_up(flags.session_present)
        if self.v5:
            # Retained messages are old state, not sends: never replay them into events.
            options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
            _, self._subscribe_mid = self.paho.subscribe(self.topic_filter, options=options)
        else:
            _, self._subscribe_mid = self.paho.subscribe(self.topic_filter, qos=1)
        if connack is not None and not connack.done():
            connack.set_result(None)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_up = self.up
        self._went_down()
        if not self.driver.closing and was_up:
            log.warning("MQTT bridge lost %s (%s); reconnecting", self.shown_url, reason_code)

    def _went_down(self) -> None:
        self.up = False
        self.subscribed.clear()
        self._connected.set(0)
        self._lost.set()
        connack = self._connack
        if connack is not None and not connack.done():
            connack.set_exception(_ConnectFailed("the connection closed before CONNACK"))

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if mid != self._subscribe_mid:
            return
        failed = [code for code in reason_codes if code.is_failure]
        if failed:
            log.error(
                "MQTT broker at %s refused the subscription %r (%s); check its ACL",
                self.shown_url,
                self.topic_filter,
                failed[0],
            )
            return
        if self.up:
            self.subscribed.set()
            self._connected.set(1)

    def _on_paho_message(
        self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        try:
            self._on_message(message)
        except Exception:
            # Never into paho: it would re-raise through loop_read. The message stays unacked.
            log.exception("MQTT bridge: unexpected error taking a message")
