"""The MQTT side of the bridge daemon: ``MqttBridge`` and the device-message mapping.

One module per concern: ``_mapping`` (messages to events and back, pure functions),
``_connection`` (paho on the event loop), ``_ingress`` (devices to the bus), ``_egress`` (the bus
to devices); ``_bridge`` puts them together.
"""

from typing import TYPE_CHECKING, Any

from ._mapping import (
    DEADLETTER_ROUTING_KEY,
    DEVICE_WORD,
    egress_topic,
    event_from_mqtt,
    principal_from_name,
)

__all__ = [
    "DEADLETTER_ROUTING_KEY",
    "DEVICE_WORD",
    "MqttBridge",
    "egress_topic",
    "event_from_mqtt",
    "principal_from_name",
]

if TYPE_CHECKING:
    from ._bridge import MqttBridge


def __getattr__(name: str) -> Any:
    # The bridge (and with it the MQTT metrics) loads only when a daemon runs MQTT: importing the
    # pure mapping (as the AsyncAPI document does) must not make a daemon without MQTT export
    # customevent_mqtt_connected 0, which an alert would read as a link down.
    if name == "MqttBridge":
        from ._bridge import MqttBridge

        return MqttBridge
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
