"""The MQTT side of the bridge daemon: ``MqttBridge`` and the device-message mapping.

One module per concern: ``_mapping`` (messages to events and back, pure functions),
``_connection`` (paho on the event loop), ``_ingress`` (devices to the bus), ``_egress`` (the bus
to devices), ``_metrics``; ``_bridge`` puts them together.
"""

from ._bridge import MqttBridge
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
