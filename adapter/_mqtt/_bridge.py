"""The MQTT side of the bridge daemon: device sends from the MQTT broker into the bus, and opt-in
egress of events back out to devices. ``MqttBridge`` puts together the connection
(``_connection``), the ingress (``_ingress``) and the egress (``_egress``).

See docs/devices.md for the device's side of the contract.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Self

from .._client import Client
from .._exceptions import ClientStateError, ConfigurationError
from .._settings import Settings
from ._connection import MqttLink
from ._egress import Egress
from ._ingress import Ingress

__all__ = ["MqttBridge"]

log = logging.getLogger("adapter.mqtt")


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
        self._client = client
        base = f"{settings.mqtt.prefix}/external/#"
        group = settings.mqtt.shared_group
        self.topic_filter = f"$share/{group}/{base}" if group else base
        self._state = "unopened"
        self._link: MqttLink | None = None
        self._ingress = Ingress(settings.mqtt, client)
        self._egress: Egress | None = None

    async def __aenter__(self) -> Self:
        if self._state != "unopened":
            raise ClientStateError(f"this MQTT bridge is already {self._state}; make a new one")
        self._state = "opened"
        mqtt = self.settings.mqtt
        ingress = self._ingress
        try:
            link = self._link = MqttLink(
                mqtt,
                self.topic_filter,
                on_message=ingress.arrived,
                on_up=ingress.link_up,
                connected=self._client.metrics.mqtt_connected,
            )
        except BaseException:
            self._state = "closed"
            raise
        ingress.start(link)
        self._egress = Egress(mqtt, self._client, link)
        self._egress.start()
        link.start()
        log.info(
            "MQTT bridge: connecting to %s as %r, subscribing to %r",
            link.shown_url,
            mqtt.client_id,
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
        if self._link is not None:
            await self._link.close()
        if self._egress is not None:
            await self._egress.close()
        await self._ingress.close()

    @property
    def connected(self) -> bool:
        """True while connected to the MQTT broker with the subscription in place."""
        link = self._link
        return link is not None and link.up and link.subscribed.is_set()

    async def wait_connected(self) -> None:
        """Wait until ``connected`` (bound it with ``asyncio.timeout``)."""
        link = self._link
        if link is None:
            raise ClientStateError("the MQTT bridge is not open; use it inside async with")
        await link.subscribed.wait()

    @property
    def connections(self) -> int:
        """Connections the MQTT broker accepted since ``async with``: 1 while the first holds."""
        return self._link.session if self._link is not None else 0

    @property
    def in_flight(self) -> int:
        """QoS 1 messages received and not yet acknowledged to the MQTT broker."""
        return self._ingress.in_flight

    @property
    def held_qos0(self) -> int:
        """QoS 0 messages received and not yet confirmed by the bus."""
        return self._ingress.held_qos0

    @property
    def egress_running(self) -> frozenset[str]:
        """The ``mqtt.egress`` patterns whose subscription is bound right now."""
        return self._egress.running if self._egress is not None else frozenset()
