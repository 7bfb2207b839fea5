"""The MQTT side of the bridge daemon (issue 4): ``MqttBridge`` and the device-message mapping."""

from ._bridge import (
    DEADLETTER_ROUTING_KEY,
    DEVICE_WORD,
    MqttBridge,
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
